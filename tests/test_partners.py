"""Partners into the one order record (issue 18, item 6) through central's real app: a 3PL
and a drop-ship supplier report on orders they fulfil with their own key over
``POST /api/partner/orders/{no}/events``; the events land in the order's history with the
partner named and move the lines' steps and the order's status; an event id is taken once
(the same event again: the first answer, replayed; another event under it: 422); a partner
touches only its own orders (403), a user's token or no key is not a partner (401). The tests
taking ``central_backend`` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from central.migrations import all_migrations
from central.process import partners
from ops import cli
from runtime import dbapi
from tests.central_fixtures import Central
from tests.process_fixtures import order, process_central, release_tick, second_worker

THREE_PL = """
[[definitions]]
name = "appliances-3pl"
order_types = ["normal"]
when = { item_class = "appliance" }
partner = "TPL1"
steps = ["allocate", "release_to_dc", "partner_confirm", "pick", "ship", "deliver"]
"""


async def partner_post(
    c: Central, key: str, no: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with c.client.post(
        f"/api/partner/orders/{no}/events",
        json=body,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    ) as r:
        return r.status, await r.json(), dict(r.headers)


async def add_partner(c: Central, code: str, kind: str) -> str:
    st, out = await c.req("POST", "/api/partners", json={"code": code, "kind": kind, "name": f"{code} Ltd"})
    assert st == 201, out
    return str(out["key"])


async def test_3pl_events_move_its_lines_and_land_in_the_history(
    tmp_path: Path, central_backend: str
) -> None:
    async with process_central(tmp_path, target=central_backend) as c:
        st, out = await c.req("POST", "/api/process/import", data=THREE_PL)
        assert st == 422 and "'TPL1' is not an active 3PL partner" in out["errors"][0]["reason"], out
        st, out = await c.req("POST", "/api/partners", "order_desk", json={"code": "TPL1", "kind": "3pl"})
        assert st == 403, out
        tpl = await add_partner(c, "TPL1", "3pl")
        st, out = await c.req("POST", "/api/process/import", data=THREE_PL)
        assert st == 201, out

        st, washer = await c.req("POST", "/api/orders", "order_desk", json=order(("WASHER", 1)))
        st, mixed = await c.req("POST", "/api/orders", "order_desk", json=order(("WASHER", 1), ("MILK", 6)))
        st, milk = await c.req("POST", "/api/orders", "order_desk", json=order(("MILK", 6)))
        assert washer["work_units"] == [
            {
                "definition": "appliances-3pl",
                "version": 1,
                "partner": "TPL1",
                "step": "release_to_dc",
                "lines": [1],
            }
        ]
        assert await release_tick(c) == 3
        no = washer["order_no"]

        # who may post: a partner key, for its own orders only
        ev = {"event_id": "TPL1-0001", "type": "confirmed"}
        for key in ("", c.tokens["supervisor"], "pk_not-a-key"):
            st, out, hdrs = await partner_post(c, key, no, ev)
            assert st == 401 and hdrs.get("WWW-Authenticate", "").startswith("Bearer"), out
        for other in (milk["order_no"], "SO99999999"):
            st, out, _ = await partner_post(c, tpl, other, ev)
            assert st == 403 and out["error"] == f"partner 'TPL1' does not fulfil order '{other}'", out
        st, out, _ = await partner_post(c, tpl, no, {"event_id": "TPL1-0001", "type": "shipped"})
        assert st == 400 and out["error"] == "carrier: required", out
        st, out, _ = await partner_post(c, tpl, no, ev, {"Idempotency-Key": "other"})
        assert st == 400 and "differs from event_id" in out["error"], out

        # confirmed: once, the same event again is the first answer replayed
        st, first, hdrs = await partner_post(c, tpl, no, ev)
        assert st == 201 and "Idempotent-Replayed" not in hdrs, first
        assert (first["status"], first["work_units"][0]["step"]) == ("released", "pick")
        st, again, hdrs = await partner_post(c, tpl, no, ev, {"Idempotency-Key": "TPL1-0001"})
        assert (st, again, hdrs.get("Idempotent-Replayed")) == (201, first, "true")
        st, out, _ = await partner_post(c, tpl, no, {**ev, "type": "refused", "reason": "no van"})
        assert st == 422 and out["error"] == "event_id 'TPL1-0001' was already used for another event", out

        # shipped with carrier and tracking: picked and shipped by the partner
        shipped = {"event_id": "TPL1-0002", "type": "shipped", "carrier": "DHL", "tracking": "JJD000390007"}
        st, out, _ = await partner_post(c, tpl, no, shipped)
        assert st == 201 and out["status"] == "shipped", out
        st, out, _ = await partner_post(c, tpl, no, {"event_id": "TPL1-0003", "type": "delivered"})
        assert st == 201 and out["status"] == "delivered" and out["work_units"][0]["step"] == "done", out
        st, o = await c.req("GET", f"/api/orders/{no}", "viewer")
        hist = [(e["event"], e["detail"], e["actor"]) for e in o["events"] if e["actor"] == "partner:TPL1"]
        assert hist == [
            ("partner", "3PL TPL1 confirmed (event TPL1-0001)", "partner:TPL1"),
            (
                "work unit finished",
                "partner_confirm: line 1 (appliances-3pl v1, partner TPL1)",
                "partner:TPL1",
            ),
            ("work unit started", "pick: line 1 (appliances-3pl v1, partner TPL1)", "partner:TPL1"),
            (
                "partner",
                "3PL TPL1 shipped; carrier DHL tracking JJD000390007 (event TPL1-0002)",
                "partner:TPL1",
            ),
            ("picked", "picked: shipped by TPL1: carrier DHL tracking JJD000390007", "partner:TPL1"),
            ("work unit finished", "pick: line 1 (appliances-3pl v1, partner TPL1)", "partner:TPL1"),
            ("work unit finished", "ship: line 1 (appliances-3pl v1, partner TPL1)", "partner:TPL1"),
            ("work unit started", "deliver: line 1 (appliances-3pl v1, partner TPL1)", "partner:TPL1"),
            ("shipped", "shipped by TPL1: carrier DHL tracking JJD000390007", "partner:TPL1"),
            ("partner", "3PL TPL1 delivered (event TPL1-0003)", "partner:TPL1"),
            ("delivered", "delivered by TPL1", "partner:TPL1"),
            ("work unit finished", "deliver: line 1 (appliances-3pl v1, partner TPL1)", "partner:TPL1"),
        ]

        # a mixed order: the 3PL ships its line, the order waits for the DC's line
        mno = mixed["order_no"]
        st, out, _ = await partner_post(c, tpl, mno, {**shipped, "event_id": "TPL1-0004", "lines": [1]})
        assert st == 201 and out["status"] == "released", out
        st, out, _ = await partner_post(c, tpl, mno, {**shipped, "event_id": "TPL1-0005", "lines": [2]})
        assert st == 409 and out["error"] == "line 2 is not an open line of this order fulfilled by TPL1", out
        st, o = await c.req("POST", f"/api/orders/{mno}/status", json={"status": "picked"})
        st, o = await c.req(
            "POST", f"/api/orders/{mno}/steps/ship", "order_desk", json={"carrier": "own van"}
        )
        assert st == 200 and o["status"] == "shipped", o
        # refused: recorded with the reason, the order stays for the desk
        st, out, _ = await partner_post(
            c, tpl, mno, {"event_id": "TPL1-0006", "type": "refused", "reason": "no"}
        )
        assert st == 201 and out["status"] == "shipped", out

        st, listed = await c.req("GET", "/api/partners", "viewer")
        assert listed["partners"][0]["code"] == "TPL1" and "key" not in listed["partners"][0]


async def test_one_event_sent_to_two_workers_at_once_takes_effect_once(
    tmp_path: Path, central_backend: str
) -> None:
    """A 3PL's retry reaching two workers at once: one answer made, the others replay it;
    one entry in the history."""
    async with process_central(tmp_path, target=central_backend) as a:
        tpl = await add_partner(a, "TPL1", "3pl")
        st, out = await a.req("POST", "/api/process/import", data=THREE_PL)
        assert st == 201, out
        st, washer = await a.req("POST", "/api/orders", "order_desk", json=order(("WASHER", 1)))
        assert st == 201 and await release_tick(a) == 1
        no = washer["order_no"]
        async with second_worker(central_backend, a) as b:
            ev = {"event_id": "TPL1-0001", "type": "confirmed"}
            got = await asyncio.gather(*(partner_post(w, tpl, no, ev) for w in (a, b, a, b)))
        assert [st for st, _, _ in got] == [201] * 4, got
        assert sorted(h.get("Idempotent-Replayed", "") for _, _, h in got) == ["", "true", "true", "true"]
        assert len({json.dumps(body, sort_keys=True) for _, body, _ in got}) == 1
        st, o = await a.req("GET", f"/api/orders/{no}", "viewer")
        assert [e["detail"] for e in o["events"] if e["event"] == "partner"] == [
            "3PL TPL1 confirmed (event TPL1-0001)"
        ]


async def test_a_drop_ship_supplier_reports_over_rest(tmp_path: Path, central_backend: str) -> None:
    async with process_central(tmp_path, target=central_backend) as c:
        st, out = await c.req("POST", "/api/partners", json={"code": "NOPE", "kind": "supplier"})
        assert st == 400 and "supplier location" in out["error"], out
        sup1, sup2 = await add_partner(c, "SUP1", "supplier"), await add_partner(c, "SUP2", "supplier")
        st, o = await c.req(
            "POST", "/api/orders", "order_desk", json=order(("MILK", 12), order_type="drop-ship")
        )
        assert st == 201 and o["status"] == "released", o
        no = o["order_no"]
        assert o["lines"][0]["process"]["partner"] == "SUP1" and o["lines"][0]["process"]["step"] == "ship"
        st, out, _ = await partner_post(c, sup2, no, {"event_id": "x1", "type": "confirmed"})
        assert st == 403, out
        ship = {"event_id": "DN-77", "type": "shipped", "carrier": "UPS", "tracking": "1Z999"}
        st, out, _ = await partner_post(c, sup1, no, ship)
        assert st == 201 and out["status"] == "shipped", out
        st, out, _ = await partner_post(c, sup1, no, {"event_id": "DN-78", "type": "delivered"})
        assert st == 201 and out["status"] == "delivered", out
        st, o = await c.req("GET", f"/api/orders/{no}", "viewer")
        hist = [(e["event"], e["detail"]) for e in o["events"] if e["actor"] == "partner:SUP1"]
        assert hist == [
            (
                "supplier",
                "supplier SUP1 shipped ref 1Z999: shipped; carrier UPS tracking 1Z999 (event DN-77)",
            ),
            ("shipped", "every supplier shipped"),
            ("partner", "supplier SUP1 delivered (event DN-78)"),
            ("delivered", "delivered by SUP1"),
        ]
        assert o["drop_ship"][0]["supplier_ref"] == "1Z999"


def test_partner_cli_adds_lists_and_removes(central_backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``storegate partner add | list | remove`` on central's database (a SQLite file or a
    PostgreSQL URL): the key printed once (only its hash kept), a supplier partner only for a
    supplier location, a removed partner's key refused."""

    def storegate(*args: str) -> tuple[int, str, str]:
        """The CLI's own entry point, in process."""
        rc = cli.main(["partner", *args, "--db", central_backend])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = storegate("add", "TPL1", "--kind", "3pl", "--name", "Fast Logistics")
    assert rc == 0, err
    key = out.strip()
    assert key.startswith("pk_")
    rc, _, err = storegate("add", "SUPX", "--kind", "supplier")
    assert rc == 1 and "supplier location" in err
    listed = json.loads(storegate("list")[1])["partners"]
    assert [(p["code"], p["kind"], p["name"], p["active"]) for p in listed] == [
        ("TPL1", "3pl", "Fast Logistics", True)
    ]
    conn = dbapi.connect(central_backend, migrations=all_migrations())
    try:
        assert key not in str(conn.execute("SELECT * FROM partners").fetchall())  # only its hash
        assert partners.authenticate(conn, f"Bearer {key}").code == "TPL1"
        assert storegate("remove", "TPL1")[0] == 0
        with pytest.raises(partners.PartnerError) as e:
            partners.authenticate(conn, f"Bearer {key}")
        assert e.value.status == 401
    finally:
        conn.close()
    assert storegate("remove", "NOPE")[0] == 1
