"""Process definitions (issue 18, item 3) through central's real app on a real database:
the master is validated whole (every error, nothing stored), versioned (an order keeps its
version), selects a definition per line by its conditions (lines split into work units), the
work units' start and finish are events in the order's history, a ``vas`` step holds the release
to the DC until the desk finishes it, and the ship step is a work unit the desk finishes. The
tests taking ``central_backend`` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from central.orders import orders
from central.orders.validation import LineIn, OrderIn
from runtime.clock import now_ms
from tests.central_fixtures import SOON
from tests.process_fixtures import events, order, process_central, release_tick, second_worker

ENGRAVED = """
[[definitions]]
name = "engraved"
order_types = ["normal"]
steps = ["allocate", "vas", "release_to_dc", "pick", "ship", "deliver"]
when = { item_class = "jewellery" }
"""

BROKEN = """
[[definitions]]
name = "bad-steps"
order_types = ["normal"]
steps = ["allocate", "polish", "release_to_dc", "release_to_dc", "ship", "pick", "deliver"]

[[definitions]]
name = "bad-when"
order_types = ["normal", "teleport"]
steps = ["allocate", "release_to_dc", "pick", "ship", "deliver"]
when = { colour = "red" }

[[definitions]]
name = "engraved"
order_types = ["normal"]
steps = ["allocate", "vas", "release_to_dc", "pick", "ship"]
"""


async def test_a_master_with_errors_is_refused_whole_with_every_reason(tmp_path: Path) -> None:
    async with process_central(tmp_path) as c:
        st, out = await c.req("POST", "/api/process/import", data=BROKEN)
        assert st == 422, out
        reasons = {(e["definition"], e["field"], e["reason"]) for e in out["errors"]}
        assert reasons == {
            (
                "bad-steps",
                "steps",
                "unknown step 'polish'; known: allocate, vas, schedule_service, release_to_dc,"
                " pass_to_supplier, partner_confirm, pick, ship, deliver, hand_over",
            ),
            ("bad-steps", "steps", "duplicate step 'release_to_dc'"),
            ("bad-steps", "steps", "impossible order: 'pick' cannot come after 'ship'"),
            (
                "bad-when",
                "order_types",
                "unknown order type 'teleport'; known: consignment, contract, normal,"
                " voucher, cash-sale, drop-ship",
            ),
            (
                "bad-when",
                "when.colour",
                "unknown condition field 'colour'; known: item_class, service, supplier,"
                " customer_grade, channel, drop_ship",
            ),
            ("engraved", "steps", "missing step 'deliver': every 'normal' order passes it"),
            (
                "engraved",
                "when",
                "same order type 'normal' and conditions as 'bad-steps', which comes first: never used",
            ),
        }
        # nothing stored: still the built-in version 0
        st, shown = await c.req("GET", "/api/process", "viewer")
        assert (st, shown["version"], shown["definitions"], shown["versions"]) == (200, 0, [], [])
        # not TOML at all: 400
        st, out = await c.req("POST", "/api/process/import", data="[[definitions]\nname =")
        assert st == 400 and out["error"].startswith("not valid TOML"), out
        # a viewer may not import
        st, out = await c.req("POST", "/api/process/import", "viewer", data=ENGRAVED)
        assert st == 403, out


async def test_lines_split_by_definition_versions_kept_vas_holds_the_release(
    tmp_path: Path, central_backend: str
) -> None:
    async with process_central(tmp_path, target=central_backend) as c:
        # before any master: the default definition, version 0, step from the status
        st, before = await c.req("POST", "/api/orders", "order_desk", json=order(("MILK", 12)))
        assert st == 201 and before["status"] == "allocated", before
        assert before["lines"][0]["process"] == {
            "definition": "default",
            "version": 0,
            "step": "release_to_dc",
            "steps": ["allocate", "release_to_dc", "pick", "ship", "deliver"],
            "partner": "",
        }

        st, out = await c.req("POST", "/api/process/import", data=ENGRAVED)
        assert (st, out["version"], out["definitions"]) == (201, 1, ["engraved"]), out
        st, again = await c.req("POST", "/api/process/import", data=ENGRAVED)
        assert (st, again["version"], again["unchanged"]) == (200, 1, True)  # same master: no new version

        # a ring (jewellery) and milk: two definitions, two work units
        st, o = await c.req(
            "POST", "/api/orders", "order_desk", json=order(("RING", 1), ("MILK", 6), ("BREAD", 2))
        )
        assert st == 201 and o["status"] == "allocated", o
        no = o["order_no"]
        assert [
            (ln["process"]["definition"], ln["process"]["version"], ln["process"]["step"])
            for ln in o["lines"]
        ] == [
            ("engraved", 1, "vas"),
            ("default", 0, "release_to_dc"),
            ("default", 0, "release_to_dc"),
        ]
        assert o["work_units"] == [
            {"definition": "engraved", "version": 1, "partner": "", "step": "vas", "lines": [1]},
            {"definition": "default", "version": 0, "partner": "", "step": "release_to_dc", "lines": [2, 3]},
        ]
        assert [(e, d) for e, d, _ in await events(c, no) if e.startswith("work unit")] == [
            ("work unit started", "allocate: line 1 (engraved v1)"),
            ("work unit finished", "allocate: line 1 (engraved v1)"),
            ("work unit started", "vas: line 1 (engraved v1)"),
        ]

        # the release waits for the engraving; the order before the master goes
        assert await release_tick(c) == 1
        st, o = await c.req("GET", f"/api/orders/{no}", "viewer")
        assert o["status"] == "allocated"
        st, before2 = await c.req("GET", f"/api/orders/{before['order_no']}", "viewer")
        assert before2["status"] == "released" and before2["lines"][0]["process"]["step"] == "pick"
        # the history of a default-definition order reads as before: status events only
        assert not [e for e in before2["events"] if e["event"].startswith("work unit")]

        # a new version: new orders take it, the order above keeps version 1
        v2 = ENGRAVED.replace('"vas", ', '"vas", "schedule_service", ')
        st, out = await c.req("POST", "/api/process/import", data=v2)
        assert (st, out["version"]) == (201, 2), out
        st, newer = await c.req("POST", "/api/orders", "order_desk", json=order(("RING", 1)))
        assert newer["lines"][0]["process"]["version"] == 2
        assert "schedule_service" in newer["lines"][0]["process"]["steps"]
        st, o = await c.req("GET", f"/api/orders/{no}", "viewer")
        assert (
            o["lines"][0]["process"]["version"] == 1
            and "schedule_service" not in o["lines"][0]["process"]["steps"]
        )
        st, shown = await c.req("GET", "/api/process/1", "viewer")
        assert st == 200 and shown["definitions"][0]["steps"] == [
            "allocate",
            "vas",
            "release_to_dc",
            "pick",
            "ship",
            "deliver",
        ]

        # the desk cannot ship what is not picked; it finishes the engraving
        st, err = await c.req("POST", f"/api/orders/{no}/steps/ship", "order_desk", json={})
        assert st == 409 and "no line of this order (allocated) is at step 'ship'" in err["error"], err
        st, err = await c.req("POST", f"/api/orders/{no}/steps/allocate", "order_desk", json={})
        assert st == 409 and "finished by central itself" in err["error"], err
        st, o = await c.req(
            "POST", f"/api/orders/{no}/steps/vas", "order_desk", json={"detail": "engraved 'A+B'"}
        )
        assert st == 200 and o["lines"][0]["process"]["step"] == "release_to_dc", o
        st, err = await c.req("POST", f"/api/orders/{no}/steps/vas", "order_desk", json={})
        assert st == 409, err  # once
        assert await release_tick(c) == 1
        st, o = await c.req("GET", f"/api/orders/{no}", "viewer")
        assert o["status"] == "released"
        assert {(u["definition"], u["step"]) for u in o["work_units"]} == {
            ("engraved", "pick"),
            ("default", "pick"),
        }

        # picked (by hand here; the DC's pick results do the same), then the ship step with
        # carrier and tracking, then delivered
        st, o = await c.req("POST", f"/api/orders/{no}/status", json={"status": "picked"})
        assert st == 200 and o["lines"][0]["process"]["step"] == "ship", o
        st, o = await c.req(
            "POST",
            f"/api/orders/{no}/steps/ship",
            "order_desk",
            json={"carrier": "DHL", "tracking": "JJD0001"},
        )
        assert st == 200 and o["status"] == "shipped", o
        shipped = [e for e in o["events"] if e["event"] == "shipped"]
        assert shipped and shipped[0]["detail"] == "ship: carrier DHL tracking JJD0001"
        assert shipped[0]["actor"] == "order_desk-user"
        st, o = await c.req("POST", f"/api/orders/{no}/steps/deliver", "order_desk", json={})
        assert st == 200 and o["status"] == "delivered"
        assert [ln["process"]["step"] for ln in o["lines"]] == ["done", "done", "done"]
        work = [(e, d) for e, d, _ in await events(c, no) if e.startswith("work unit")]
        steps = ("allocate", "vas", "release_to_dc", "pick", "ship", "deliver")
        assert work == [
            (f"work unit {what}", f"{step}: line 1 (engraved v1)")
            for step in steps
            for what in ("started", "finished")
        ]
        vas = [e for e in o["events"] if e["detail"] == "vas: line 1 (engraved v1)"]
        assert vas[-1]["actor"] == "order_desk-user"


async def test_gateway_orders_in_a_batch_walk_the_definition_too(
    tmp_path: Path, central_backend: str
) -> None:
    """A gateway's orders are created set-based when they take the common path; with a master
    imported they must get their definition all the same (the batch path steps aside)."""

    def new(i: int, sku: str) -> orders.NewOrder:
        order = OrderIn(
            customer="S001",
            order_type="normal",
            requested_date=dt.date.fromisoformat(SOON),
            lines=(LineIn(line_no=1, qty=1, sku=sku),),
        )
        return orders.NewOrder(f"gw-rec-{i}", "store-1", i, "handheld", 0, "test", order)

    async with process_central(tmp_path, target=central_backend) as c:
        st, out = await c.req("POST", "/api/process/import", data=ENGRAVED)
        assert st == 201, out
        made = await c.db.write(
            lambda conn: orders.create_batch(conn, [new(1, "RING"), new(2, "MILK")], now=now_ms())
        )
        assert len(made) == 2
        expect = {"gw-rec-1": ("engraved", "vas", 1), "gw-rec-2": ("default", "release_to_dc", 0)}
        for rid, want in expect.items():
            st, o = await c.req("GET", f"/api/orders/{rid}", "viewer")
            assert o["status"] == "allocated", (o["hold_reason"], o["checks"])
            got = o["lines"][0]["process"]
            assert (got["definition"], got["step"], got["version"]) == want, rid


async def test_two_workers_importing_one_master_at_once_store_one_version(
    tmp_path: Path, central_backend: str
) -> None:
    """Two apps on one database (two workers) import the same master at once: one version,
    the other imports find it unchanged (none fails on the version number taken meanwhile)."""
    async with process_central(tmp_path, target=central_backend) as a:
        async with second_worker(central_backend, a) as b:
            got = await asyncio.gather(
                *(w.req("POST", "/api/process/import", data=ENGRAVED) for w in (a, b, a, b))
            )
        assert sorted(s for s, _ in got) == [200, 200, 200, 201], got
        assert {body["version"] for _, body in got} == {1}
        status, shown = await a.req("GET", "/api/process", "viewer")
        assert status == 200 and shown["versions"] == [1]
