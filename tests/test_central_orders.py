"""Central order processing through the real aiohttp app and a real SQLite file."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from central import wiring
from central.orders import lifecycle
from tests.central_fixtures import SOON, TODAY, central, order


async def test_masters_import_crud_and_publish(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st, milk = await c.req("GET", "/api/masters/items/MILK", "viewer")
        assert st == 200 and milk["gtins"] == ["04012345678901"] and milk["storage"] == {"DC1": "A-01-01"}
        st, prices = await c.req("GET", "/api/masters/prices/A", "viewer")
        assert st == 200 and prices["tolerance_pct"] == 5 and len(prices["breaks"]) == 2
        st, _ = await c.req(
            "PUT", "/api/masters/items/MILK", json={"price": 110, "pack_size": 6, "gtins": ["04012345678901"]}
        )
        assert st == 200
        # every mapped gateway got the item master; store-1 priced at its class A price
        rows = await c.db.read(
            lambda conn: conn.execute("SELECT gateway, type FROM downlink_outbox ORDER BY seq").fetchall()
        )
        assert {gw for gw, t in rows if t == "master_items"} == {"dc-1", "sup-1", "store-1"}
        # bad rows: a reason naming the field, and nothing written
        st, body = await c.req("PUT", "/api/masters/customers/S009", json={"grade": "Z"})
        assert st == 400 and "grade" in body["error"]
        bad_csv = "code,name,grade\nS010,Ten,A\nS011,Eleven,Q\n"
        st, body = await c.req("POST", "/api/masters/customers/import", data=bad_csv)
        assert st == 400 and "line 3" in body["error"]
        st, _ = await c.req("GET", "/api/masters/customers/S010", "viewer")
        assert st == 404
        st, body = await c.req("DELETE", "/api/masters/customers/S003")
        assert st == 200
        st, body = await c.req("GET", "/api/masters/customers/S003")
        assert body["active"] == 0


async def test_roles_and_bad_input_write_nothing(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        before = await c.count("orders")
        async with c.client.get("/api/orders") as r:
            assert r.status == 401 and "authentication" in (await r.json())["error"]
        st, body = await c.req("POST", "/api/orders", "viewer", json=order())
        assert st == 403 and "order_desk" in body["error"]
        st, body = await c.req("PUT", "/api/masters/items/X", "order_desk", json={})
        assert st == 403 and "supervisor" in body["error"]
        async with c.client.post(
            "/api/orders",
            data=b"{not json",
            headers={**c.h("order_desk"), "Content-Type": "application/json"},
        ) as r:
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
        st, body = await c.req("POST", "/api/orders", "order_desk", json=order(customer="NOPE"))
        assert st == 422 and "unknown customer 'NOPE'" in body["error"]
        st, body = await c.req(
            "POST", "/api/orders", "order_desk", json=order(lines=[{"sku": "MILK", "qty": -1}])
        )
        assert st == 400 and "qty" in body["error"]
        st, body = await c.req(
            "POST", "/api/orders", "order_desk", json=order(lines=[{"sku": "NOPE", "qty": 1}])
        )
        assert st == 422 and "unknown item" in body["error"]
        past = (TODAY - dt.timedelta(days=3)).isoformat()
        st, body = await c.req("POST", "/api/orders", "order_desk", json=order(requested_date=past))
        assert st == 422 and "requested date" in body["error"]
        assert await c.count("orders") == before
        # Basic auth works too (the viewer has a password)
        basic = base64.b64encode(b"viewer-user:pw").decode()
        async with c.client.get("/api/orders", headers={"Authorization": f"Basic {basic}"}) as r:
            assert r.status == 200
        async with c.client.get(
            "/api/orders", headers={"Authorization": "Basic " + base64.b64encode(b"viewer-user:x").decode()}
        ) as r:
            assert r.status == 401


async def test_manual_order_checks_history_and_queries(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st, o = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(
                lines=[{"gtin": "04012345678901", "qty": 60, "price": 90}, {"sku": "BREAD", "qty": 3}]
            ),
        )
        assert st == 201, o
        assert o["status"] == "validated" and o["order_no"].startswith("SO")
        assert o["value"] == 60 * 90 + 3 * 250  # class A quantity break for 60 milk
        assert [ln["sku"] for ln in o["lines"]] == ["MILK", "BREAD"]
        assert {ch["name"]: ch["outcome"] for ch in o["checks"]} == {
            "completeness": "pass",
            "price": "pass",
            "credit": "pass",
            "packaging": "pass",
        }
        assert "price labels" in o["requirements"]
        assert [e["event"] for e in o["events"]] == ["received", "validated"]
        assert "credit: pass" in o["events"][1]["detail"]
        # queries
        for q in (f"order_no={o['order_no']}", "customer=S001", "status=validated", "channel=manual"):
            st, res = await c.req("GET", f"/api/orders?{q}", "viewer")
            assert [x["order_no"] for x in res["orders"]] == [o["order_no"]], q
        st, res = await c.req("GET", "/api/customers/S001/credit", "viewer")
        assert res["open_orders"] == o["value"]
        # the originating store is told (customer S001 is mapped to gateway store-1)
        bodies = await c.db.read(
            lambda conn: conn.execute(
                "SELECT count(*) FROM downlink_outbox WHERE gateway = 'store-1' AND type = 'order_status'"
            ).fetchone()[0]
        )
        assert bodies == 1  # received -> validated coalesced into one status record
        # idempotent manual entry
        st1, a = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(),
            headers={**c.h("order_desk"), "Idempotency-Key": "k1"},
        )
        st2, b = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(),
            headers={**c.h("order_desk"), "Idempotency-Key": "k1"},
        )
        assert (st1, st2) == (201, 201) and a == b  # the first answer again (test_central_idempotency)


async def test_credit_and_price_holds_decided_by_supervisor(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        # S002: limit 5000, receivables 4000; 12 milk at 100 = 1200 -> over
        st, o = await c.req("POST", "/api/orders", "order_desk", json=order(customer="S002"))
        assert st == 201 and o["status"] == "held"
        assert (
            "credit: hold" in o["hold_reason"]
            and "4000 + open orders 0 + this order 1200" in o["hold_reason"]
        )
        st, _ = await c.req("POST", f"/api/orders/{o['order_no']}/approve", "order_desk", json={})
        assert st == 403
        st, ok = await c.req(
            "POST", f"/api/orders/{o['order_no']}/approve", json={"reason": "paid yesterday"}
        )
        assert st == 200 and ok["status"] == "validated"
        events = [(e["event"], e["actor"]) for e in ok["events"]]
        assert ("hold approved", "supervisor-user") in events and ok["events"][-1]["detail"].startswith(
            "hold approved"
        )
        # a quoted price outside tolerance: class B tolerance 2%, list 100, quote 90
        st, p = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(customer="S001", lines=[{"sku": "MILK", "qty": 6, "price": 80}]),
        )
        assert p["status"] == "held" and "outside 5% tolerance" in p["hold_reason"]
        st, r = await c.req(
            "POST", f"/api/orders/{p['order_no']}/reject", json={"reason": "price agreed wrongly"}
        )
        assert st == 200 and r["status"] == "cancelled"
        assert any(
            e["event"] == "hold rejected" and e["detail"] == "price agreed wrongly" for e in r["events"]
        )
        st, _ = await c.req("POST", f"/api/orders/{p['order_no']}/approve", json={})
        assert st == 409


async def test_changes_and_cancel_while_state_allows(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st, o = await c.req(
            "POST", "/api/orders", "order_desk", json=order(customer="S002")
        )  # held on credit
        no = o["order_no"]
        st, o2 = await c.req(
            "POST",
            f"/api/orders/{no}/changes",
            "order_desk",
            json={"action": "set_qty", "line_no": 1, "qty": 6},
        )
        assert st == 200 and o2["status"] == "validated"  # 4000 + 6 x 100 <= 5000: passes now
        st, o3 = await c.req(
            "POST",
            f"/api/orders/{no}/changes",
            "order_desk",
            json={"action": "add_line", "sku": "BREAD", "qty": 1},
        )
        assert st == 200 and [ln["line_no"] for ln in o3["lines"]] == [1, 2]
        st, o4 = await c.req(
            "POST", f"/api/orders/{no}/changes", "order_desk", json={"action": "cancel_line", "line_no": 2}
        )
        assert st == 200 and o4["lines"][1]["cancelled"]
        st, o5 = await c.req(
            "POST", f"/api/orders/{no}/cancel", "order_desk", json={"reason": "store closed"}
        )
        assert st == 200 and o5["status"] == "cancelled"
        st, body = await c.req(
            "POST",
            f"/api/orders/{no}/changes",
            "order_desk",
            json={"action": "set_qty", "line_no": 1, "qty": 1},
        )
        assert st == 409 and "cancelled" in body["error"]
        st, body = await c.req("POST", f"/api/orders/{no}/status", json={"status": "shipped"})
        assert st == 409 and "cannot go from cancelled to shipped" in body["error"]


async def test_on_validated_hook_runs_in_the_same_transaction(tmp_path: Path, central_backend: str) -> None:
    """A hook of the hub's own (no allocation tables here: no give-back hook either)."""
    seen: list[int] = []

    def allocate(conn, order_id):  # type: ignore[no-untyped-def]
        seen.append(order_id)
        lifecycle.transition(conn, order_id, "allocated", actor="allocator", detail="all lines from DC1")

    hub = wiring.hub()
    hub.on_validated.append(allocate)
    async with central(tmp_path, hub=hub, target=central_backend) as c:
        await c.load_masters()
        st, o = await c.req("POST", "/api/orders", "order_desk", json=order())
        assert o["status"] == "allocated" and seen == [o["order_id"]]
        # an allocated order may still change: validated again, the hook allocates again
        st, changed = await c.req(
            "POST",
            f"/api/orders/{o['order_no']}/changes",
            "order_desk",
            json={"action": "set_qty", "line_no": 1, "qty": 1},
        )
        assert st == 200 and changed["status"] == "allocated" and seen == [o["order_id"]] * 2
        # cash sale and drop-ship do not go through allocation
        st, cs = await c.req("POST", "/api/orders", "order_desk", json=order(order_type="cash-sale"))
        assert cs["status"] == "delivered" and seen == [o["order_id"]] * 2


async def test_contract_voucher_consignment_desks(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st, body = await c.req(
            "POST",
            "/api/contracts",
            json={
                "code": "C1",
                "customer": "S001",
                "lines": [{"sku": "MILK", "qty": 6}],
                "dates": [TODAY.isoformat(), SOON],
            },
        )
        assert st == 201, body
        st, made = await c.req("POST", "/api/contracts/run", json={"today": TODAY.isoformat()})
        assert len(made["orders"]) == 1
        st, again = await c.req("POST", "/api/contracts/run", json={"today": TODAY.isoformat()})
        assert again["orders"] == []
        st, co = await c.req("GET", f"/api/orders/{made['orders'][0]}", "viewer")
        assert co["order_type"] == "contract" and co["channel"] == "schedule" and co["status"] == "validated"
        # voucher: consumed once
        st, _ = await c.req(
            "POST", "/api/vouchers", "order_desk", json={"code": "V1", "sku": "BREAD", "qty": 2}
        )
        st, v1 = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(order_type="voucher", source_ref="V1", lines=[{"sku": "BREAD", "qty": 2}]),
        )
        assert v1["status"] == "validated" and v1["value"] == 0
        st, body = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(order_type="voucher", source_ref="V1", lines=[{"sku": "BREAD", "qty": 2}]),
        )
        assert st == 422 and f"already consumed by {v1['order_no']}" in body["error"]
        # consignment: deposits, withdrawal checked and priced at the deposit price (oldest first)
        await c.req(
            "POST",
            "/api/consignment/deposits",
            "order_desk",
            json={"customer": "S001", "sku": "WATER", "qty": 10, "price": 70},
        )
        await c.req(
            "POST",
            "/api/consignment/deposits",
            "order_desk",
            json={"customer": "S001", "sku": "WATER", "qty": 10, "price": 60},
        )
        st, w = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(order_type="consignment", lines=[{"sku": "WATER", "qty": 12}]),
        )
        assert w["status"] == "validated" and w["value"] == 10 * 70 + 2 * 60
        st, lots = await c.req("GET", "/api/consignment/S001", "viewer")
        assert [lot["remaining"] for lot in lots["lots"]] == [0, 8]
        st, body = await c.req(
            "POST",
            "/api/orders",
            "order_desk",
            json=order(order_type="consignment", lines=[{"sku": "WATER", "qty": 9}]),
        )
        assert st == 422 and "balance" in body["error"]
        st, _ = await c.req("POST", f"/api/orders/{w['order_no']}/cancel", "order_desk", json={})
        st, lots = await c.req("GET", "/api/consignment/S001", "viewer")
        assert [lot["remaining"] for lot in lots["lots"]] == [10, 10]
