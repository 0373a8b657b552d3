"""Allocation against a real database (SQLite and PostgreSQL): stock, waves, shortages, release,
documents, returns, replay - and the REST routes through a real aiohttp app."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from central.allocate import demand, inventory, shortage, waves
from central.allocate.allocation import CustomerPref, SourcingRule
from central.fulfil import documents, returns
from central.schema import MIGRATIONS
from central.web import allocation_api, auth
from central.web.api import DB_KEY, errors
from tests.db_conn import open_conn, open_database

TODAY = dt.date(2026, 1, 10)
SETTINGS = waves.AllocationSettings(batch=waves.BatchRules(("zone",)))


def _conn(target: str) -> sqlite3.Connection:
    conn: sqlite3.Connection = open_conn(target, [*MIGRATIONS, *inventory.MIGRATIONS])
    return conn


def _order(
    conn: sqlite3.Connection, oid: int, customer: str, *lines: tuple[str, int], status: str = "validated"
) -> None:
    conn.execute(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, created_at, received_at, updated_at)"
        " VALUES (?, ?, ?, 'gw1', ?, ?, 'rest', 'normal', '2026-02-01', ?, 0, ?, 0)",
        (oid, f"SO{oid:08d}", f"r{oid}", oid, customer, status, oid * 1000),
    )
    conn.executemany(
        "INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price, amount)"
        " VALUES (?, ?, ?, ?, 100, ?)",
        [(oid, i + 1, s, q, 100 * q) for i, (s, q) in enumerate(lines)],
    )
    conn.execute("UPDATE orders SET value = ? WHERE order_id = ?", (100 * sum(q for _, q in lines), oid))


def _setup(conn: sqlite3.Connection) -> None:
    inventory.set_sourcing(
        conn,
        [
            SourcingRule("N", "DC-N", 1, preferred=True),
            SourcingRule("N", "DC-S", 5),
            SourcingRule("S", "DC-S", 1, preferred=True),
            SourcingRule("S", "DC-N", 5),
        ],
    )
    inventory.set_stock(conn, "DC-N", "A", 10, bin="01-02-A", supplier="SUP1")
    inventory.set_stock(conn, "DC-N", "B", 4, bin="01-01-C", supplier="SUP2")
    inventory.set_stock(conn, "DC-S", "A", 0, bin="09-01-A")
    demand.set_profile(conn, "GOLD", demand.CustomerProfile(grade="A", zone="N", salesperson="ann"))
    demand.set_profile(conn, "BRONZE", demand.CustomerProfile(grade="C", zone="N", salesperson="bob"))
    demand.set_profile(
        conn, "WAITER", demand.CustomerProfile(grade="B", zone="S", pref=CustomerPref.DELAY, delay_days=2)
    )


def _check_invariant(conn: sqlite3.Connection) -> None:
    for loc, sku, on_hand, allocated in conn.execute(
        "SELECT location, sku, on_hand, allocated FROM inventory"
    ):
        assert 0 <= allocated <= on_hand, (loc, sku)
        live = conn.execute(
            "SELECT coalesce(sum(qty), 0) FROM allocations"
            " WHERE location = ? AND sku = ? AND status = 'allocated'",
            (loc, sku),
        ).fetchone()[0]
        assert live == allocated, (loc, sku)


def test_wave_priority_backorder_release_and_documents(central_backend: str) -> None:
    conn = _conn(central_backend)
    _setup(conn)
    _order(conn, 1, "BRONZE", ("A", 8), ("B", 2))
    _order(conn, 2, "GOLD", ("A", 6), ("B", 1))
    _order(conn, 3, "WAITER", ("A", 3))
    out = waves.run_wave(conn, cutoff=10_000, now=1, today=TODAY, settings=SETTINGS)
    _check_invariant(conn)
    assert [w["batch_key"] for w in out] == ["zone=N", "zone=S"]
    # GOLD (grade A) first: 6 of A; BRONZE gets the remaining 4, 4 back-ordered
    got = {(r["line_no"], r["qty"]) for r in inventory.order_allocations(conn, 2)}
    assert got == {(1, 6), (2, 1)}
    short = shortage.list_shortages(conn, filters={"order_id": "1"})
    assert [(s["sku"], s["qty"], s["action"], s["status"]) for s in short] == [("A", 4, "backorder", "open")]
    assert short[0]["salesperson"] == "bob" and short[0]["supplier"] == "SUP1"
    held = conn.execute("SELECT status, deadline FROM alloc_orders WHERE order_id = 3").fetchone()
    assert held == ("held", "2026-01-12")
    # a second wave finds nothing new
    assert waves.run_wave(conn, cutoff=10_000, now=2, today=TODAY, settings=SETTINGS) == []
    # stock arrives at DC-N: back orders released automatically, in priority order
    rid = inventory.expect_receipt(conn, "DC-N", "A", 2, TODAY + dt.timedelta(days=1), supplier="SUP1")
    assert inventory.atp(conn, "A", [TODAY, TODAY + dt.timedelta(days=1)]) == [
        {"date": "2026-01-10", "atp": 0},
        {"date": "2026-01-11", "atp": 0},  # 2 coming, 7 owed (4 back-ordered + 3 held)
    ]
    res = shortage.receive(conn, receipt_id=rid, now=3, today=TODAY)
    _check_invariant(conn)
    assert res["release_run"] is not None
    # WAITER (grade B) ranks before BRONZE (grade C); DC-N is zone S's second source
    s3 = shortage.list_shortages(conn, filters={"order_id": "3"})[0]
    assert (s3["status"], s3["filled"]) == ("open", 2)
    s1 = shortage.list_shortages(conn, filters={"order_id": "1"})[0]
    assert (s1["status"], s1["filled"]) == ("open", 0)
    # replay of every stored run reproduces its trace exactly
    for (run_id,) in conn.execute("SELECT run_id FROM alloc_runs").fetchall():
        assert inventory.replay_run(conn, run_id)["identical"]
    # documents
    wave_n = out[0]["wave_id"]
    rows = documents.pick_rows(conn, wave_n, cart_orders=1)
    assert [r["cart"] for r in rows] == [1, 1, 2, 2]
    assert [r["bin"] for r in rows if r["cart"] == 1] == ["01-01-C", "01-02-A"]  # storage sequence
    assert documents.pick_list(conn, wave_n, fmt="csv").startswith("cart,seq,location,bin,sku,qty")
    note = documents.delivery_rows(conn, 3)
    assert note[0]["shipped"] == 2 and note[0]["short"] == 1 and "delay" in note[0]["shortage"]
    assert "class='short'" in documents.delivery_note(conn, 3, fmt="html")
    rep = shortage.report(conn, "customer")
    assert rep == [
        {"customer": "BRONZE", "lines": 1, "units": 4, "orders": 1, "items": ["A"]},
        {"customer": "WAITER", "lines": 1, "units": 1, "orders": 1, "items": ["A"]},
    ]
    # the delay limit passes: the held order is cancelled and gives its stock back
    assert shortage.expire_delays(conn, today=TODAY + dt.timedelta(days=3), now=4) == [3]
    _check_invariant(conn)
    assert inventory.order_allocations(conn, 3)[0]["status"] == "released"
    conn.close()


def test_realtime_ship_with_next_and_returns(central_backend: str) -> None:
    conn = _conn(central_backend)
    _setup(conn)
    demand.set_profile(conn, "NEXT", demand.CustomerProfile(zone="N", pref=CustomerPref.SHIP_WITH_NEXT))
    _order(conn, 1, "NEXT", ("B", 6))
    waves.allocate_now(conn, 1, now=1, today=TODAY)
    [s] = shortage.list_shortages(conn, filters={"order_id": "1"})
    assert (s["qty"], s["action"]) == (2, "ship_with_next")
    inventory.add_stock(conn, "DC-N", "B", 5)
    # stock alone does not release a ship-with-next shortage ...
    assert shortage.release_backorders(conn, {"B"}, now=2, today=TODAY) is None
    # ... the customer's next order does, in the same run
    _order(conn, 2, "NEXT", ("A", 1))
    waves.allocate_now(conn, 2, now=3, today=TODAY)
    assert shortage.list_shortages(conn, filters={"order_id": "1"})[0]["status"] == "filled"
    assert sum(r["qty"] for r in inventory.order_allocations(conn, 1)) == 6
    _check_invariant(conn)
    # returns (once delivered): restock to the shipping location, credit the customer
    conn.execute("UPDATE orders SET status = 'delivered' WHERE order_id = 1")
    on_hand = inventory.stock(conn, location="DC-N", sku="B")[0].on_hand
    rma = returns.create_rma(conn, order_id=1, line_no=1, qty=2, reason="unwanted", now=5)
    assert (rma.disposition, rma.location, rma.credit) == ("restock", "DC-N", 200)
    assert inventory.stock(conn, location="DC-N", sku="B")[0].on_hand == on_hand + 2
    assert returns.receivable_balance(conn, "NEXT") == -200
    scrap = returns.create_rma(conn, order_id=1, line_no=1, qty=1, reason="damaged", now=6)
    assert scrap.disposition == "scrap"
    with pytest.raises(returns.ReturnError):
        returns.create_rma(conn, order_id=1, line_no=1, qty=4, reason="unwanted", now=7)
    # reservations count as allocated and cannot exceed on hand
    rid = inventory.reserve(conn, "DC-N", "A", 2, ref="promo", now=8)
    with pytest.raises(inventory.InventoryError):
        inventory.reserve(conn, "DC-N", "A", 1000, ref="too much", now=8)
    inventory.release_reservation(conn, rid)
    _check_invariant(conn)
    conn.close()


@pytest.fixture
async def client(central_backend: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    db = open_database(central_backend, [*MIGRATIONS, *inventory.MIGRATIONS], synchronous="NORMAL")
    await db.open()

    def seed(conn: sqlite3.Connection) -> None:
        _setup(conn)
        _order(conn, 1, "GOLD", ("A", 12), ("B", 1))

    await db.write(seed)
    token = await db.write(lambda c: auth.add_user(c, "desk", auth.Role.ORDER_DESK))
    app = web.Application(middlewares=[errors])
    app[DB_KEY] = db
    allocation_api.add_routes(app)
    async with TestClient(TestServer(app), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c
    await db.close()


async def test_rest_routes_need_a_user_and_the_right_role(
    client: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    async with TestClient(TestServer(client.app)) as anon:
        r = await anon.get("/api/shortages")
        assert r.status == 401 and "authentication required" in (await r.json())["error"]
    viewer = await client.app[DB_KEY].write(lambda c: auth.add_user(c, "eyes", auth.Role.VIEWER))
    r = await client.post(
        "/api/waves", json={"cutoff": 10_000}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert r.status == 403 and "needs order_desk" in (await r.json())["error"]
    r = await client.get("/api/shortages", headers={"Authorization": f"Bearer {viewer}"})
    assert r.status == 200


async def test_rest_routes(client: TestClient[web.Request, web.Application]) -> None:
    r = await client.post("/api/waves", json={"cutoff": 10_000, "batch_by": ["zone"]})
    assert r.status == 201
    [wave] = (await r.json())["waves"]
    assert wave["short_units"] == 2
    item = await (await client.get("/api/inventory/items/A")).json()
    assert item["allocated"] == 10 and item["available"] == 0
    loc = await (await client.get("/api/inventory/locations/DC-N")).json()
    assert {i["sku"] for i in loc["items"]} == {"A", "B"}
    short = await (await client.get("/api/shortages", params={"customer": "GOLD"})).json()
    assert short["shortages"][0]["qty"] == 2
    assert (await client.get("/api/shortages", params={"colour": "red"})).status == 400
    r = await client.post(
        "/api/inventory/receipts", json={"location": "DC-N", "sku": "A", "qty": 2, "expected": "2026-01-11"}
    )
    rid = (await r.json())["receipt_id"]
    atp = await (await client.get("/api/inventory/atp", params={"sku": "A", "dates": "2026-01-11"})).json()
    assert atp["atp"] == [{"date": "2026-01-11", "atp": 0}]
    r = await client.post(f"/api/inventory/receipts/{rid}/receive")
    assert r.status == 403 and "needs inventory_controller" in (await r.json())["error"]  # not the desk
    counter = await client.app[DB_KEY].write(
        lambda c: auth.add_user(c, "counter", auth.Role.INVENTORY_CONTROLLER)
    )
    rel = await (
        await client.post(
            f"/api/inventory/receipts/{rid}/receive", headers={"Authorization": f"Bearer {counter}"}
        )
    ).json()
    assert rel["release_run"] is not None
    alloc = await (await client.get("/api/allocation/orders/1")).json()
    assert sum(a["qty"] for a in alloc["allocations"] if a["line_no"] == 1) == 12
    trace = await (await client.get(f"/api/allocation/runs/{wave['run_id']}")).text()
    assert "preferred for zone N" in trace
    rep = await (await client.get(f"/api/allocation/runs/{wave['run_id']}", params={"replay": "1"})).json()
    assert rep["identical"] is True
    csv_ = await client.get(f"/api/documents/picklist/{wave['wave_id']}.csv")
    assert csv_.status == 200 and csv_.content_type == "text/csv"
    assert (await client.get("/api/documents/delivery-note/1.html")).status == 200
    assert (
        "item,lines" in await (await client.get("/api/documents/shortages.csv", params={"status": ""})).text()
    )
    assert (await client.get("/api/documents/shortages.pdf")).status == 400
    r = await client.post("/api/returns", json={"order_id": 1, "line_no": 2, "qty": 1, "reason": "defective"})
    assert r.status == 409  # allocated: not shipped yet
    await client.app[DB_KEY].write(
        lambda c: c.execute("UPDATE orders SET status = 'shipped' WHERE order_id = 1")
    )
    r = await client.post("/api/returns", json={"order_id": 1, "line_no": 2, "qty": 1, "reason": "defective"})
    assert r.status == 201 and (await r.json())["disposition"] == "return_to_supplier"
    r = await client.post("/api/returns", json={"order_id": 1, "line_no": 2, "qty": 5, "reason": "unwanted"})
    assert r.status == 400
    r = await client.post(
        "/api/inventory/reservations", json={"location": "DC-N", "sku": "A", "qty": 99, "ref": "x"}
    )
    assert r.status == 409
    assert (await client.get("/api/waves/999")).status == 404


def test_add_stock_removes_units_from_an_existing_row(tmp_path: Path) -> None:
    """A negative ``add_stock`` (a transfer leaving its source) was refused every time: the
    upsert's candidate row (on hand < 0) failed the CHECK before becoming the update."""
    conn = _conn(str(tmp_path / "central.db"))
    inventory.set_stock(conn, "DC1", "A", 10)
    inventory.add_stock(conn, "DC1", "A", -3)
    assert inventory.on_hand(conn, "DC1", "A") == 7
    with pytest.raises(inventory.InventoryError, match="cannot change on hand by -8"):
        inventory.add_stock(conn, "DC1", "A", -8)
    with pytest.raises(inventory.InventoryError, match="no inventory row"):
        inventory.add_stock(conn, "DC9", "A", -1)
    assert inventory.on_hand(conn, "DC1", "A") == 7
