"""Role-scoped inventory visibility (issue 18, item 4), through central's real aiohttp app on a
real database (``backend_app``: once on SQLite, once on PostgreSQL; ``app``: SQLite): every
refusal a scoped user gets, every read and write it is allowed, the stock-write roles
(order_desk may no longer overwrite on hand) and the audit of who did it, the REST and the
CLI that manage users' scopes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from central import wiring
from central.allocate.waves import AllocationSettings
from central.migrations import central_db
from central.web import allocation_api, auth, availability_api, console
from central.web.api import create_app
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import SOON

auth.PBKDF2_ITERATIONS = 1_000

LOCATIONS = """code,kind,name,region,gateway
DC1,dc,Main DC,,dc-1
DC2,dc,North DC,N,dc-2
STORE1,store,Store One,N,store-1
STORE2,store,Store Two,N,store-2
STORE3,store,Store Three,S,store-3
SUP1,supplier,Dairy,,
"""
ITEMS = """sku,description,supplier,price
MILK,Milk,SUP1,100
BREAD,Bread,SUP1,250
WATER,Water,SUP2,80
"""
CUSTOMERS = """code,name,grade,credit_limit,receivables,gateway,region
S001,Store One,A,,0,store-1,N
S002,Store Two,A,,0,store-2,N
"""
SOURCING = """zone,location,cost,preferred,transfer
N,DC2,0,1,0
N,DC1,5,0,0
N,STORE2,9,0,1
*,DC1,0,1,0
"""
STOCK = [("DC1", "MILK", 100), ("DC1", "BREAD", 50), ("DC1", "WATER", 30), ("DC2", "MILK", 40)]
STOCK += [("STORE1", "MILK", 5), ("STORE2", "MILK", 7), ("STORE3", "MILK", 9)]

# name -> (role, scope)
USERS: dict[str, tuple[auth.Role, dict[str, Any] | None]] = {
    "boss": (auth.Role.SUPERVISOR, None),
    "desk": (auth.Role.ORDER_DESK, None),
    "controller": (auth.Role.INVENTORY_CONTROLLER, None),
    "store1": (auth.Role.INVENTORY_CONTROLLER, {"kind": "locations", "locations": ["STORE1"]}),
    "store1-eyes": (auth.Role.VIEWER, {"kind": "locations", "locations": ["STORE1"]}),
    "store1-desk": (auth.Role.ORDER_DESK, {"kind": "locations", "locations": ["STORE1"]}),
    "water": (auth.Role.INVENTORY_CONTROLLER, {"supplier": "SUP2"}),
}


class App:
    def __init__(self, db: DurableDB, client: TestClient[Any, Any], tokens: dict[str, str]) -> None:
        self.db, self.client, self.tokens = db, client, tokens

    async def req(self, method: str, path: str, user: str = "boss", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        async with self.client.request(method, path, headers=headers, **kw) as r:
            return r.status, await r.json()

    async def ok(self, method: str, path: str, user: str = "boss", **kw: Any) -> Any:
        status, body = await self.req(method, path, user, **kw)
        assert status in (200, 201), (method, path, user, status, body)
        return body

    async def refused(self, method: str, path: str, user: str, **kw: Any) -> str:
        status, body = await self.req(method, path, user, **kw)
        assert status == 403, (method, path, user, status, body)
        reason: str = body["error"]
        return reason


@asynccontextmanager
async def running(tmp_path: Path, target: str | None = None) -> AsyncIterator[App]:
    db = central_db(target or tmp_path / "central.db", wiring.hub(AllocationSettings()))
    await db.open()
    try:
        tokens = {}
        for name, (role, _scope) in USERS.items():
            tokens[name] = await db.write(lambda c, n=name, r=role: auth.add_user(c, n, r, password="pw"))
        app = create_app(db=db)
        allocation_api.add_routes(app)
        availability_api.add_routes(app)
        console.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            a = App(db, client, tokens)
            for kind, text in (
                ("locations", LOCATIONS),
                ("items", ITEMS),
                ("customers", CUSTOMERS),
                ("sourcing", SOURCING),
            ):
                await a.ok("POST", f"/api/masters/{kind}/import", data=text)
            for loc, sku, qty in STOCK:
                await a.ok("POST", "/api/inventory/stock", json={"location": loc, "sku": sku, "on_hand": qty})
            for name, (_role, scope) in USERS.items():
                if scope is not None:
                    await a.ok("PUT", f"/api/users/{name}/scope", json=scope)
            yield a
    finally:
        await db.close()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with running(tmp_path) as a:
        yield a


@pytest.fixture
async def backend_app(tmp_path: Path, central_backend: str) -> AsyncIterator[App]:
    """``app`` on each backend: the tests reading through distinct SQL take this one."""
    async with running(tmp_path, central_backend) as a:
        yield a


def _locs(item: dict[str, Any]) -> dict[str, int]:
    return {r["location"]: r["on_hand"] for r in item["locations"]}


# -- reads ----------------------------------------------------------------------------------


async def test_head_office_sees_every_location(app: App) -> None:
    item = await app.ok("GET", "/api/inventory/items/MILK", "desk")
    assert _locs(item) == {"DC1": 100, "DC2": 40, "STORE1": 5, "STORE2": 7, "STORE3": 9}
    assert item["on_hand"] == 161


async def test_store_user_sees_its_stock_and_the_dcs_serving_it(backend_app: App) -> None:
    me = await backend_app.ok("GET", "/api/me/scope", "store1-eyes")
    # zone N's sourcing rules name DC2, DC1 and (as a transfer source) STORE2: another store's
    # stock is left out
    assert me["own"] == ["STORE1"] and me["serving"] == ["DC1", "DC2"]
    item = await backend_app.ok("GET", "/api/inventory/items/MILK", "store1-eyes")
    assert _locs(item) == {"DC1": 100, "DC2": 40, "STORE1": 5}
    assert item["on_hand"] == 145 and item["available"] == 145
    for loc in ("STORE1", "DC1", "DC2"):
        assert (await backend_app.ok("GET", f"/api/inventory/locations/{loc}", "store1-eyes"))[
            "location"
        ] == loc
    atp = await backend_app.ok("GET", "/api/inventory/atp", "store1-eyes", params={"sku": "MILK"})
    assert atp["atp"][0]["atp"] == 145


async def test_store_user_is_refused_another_stores_stock_with_the_reason(app: App) -> None:
    for loc in ("STORE2", "STORE3"):
        reason = await app.refused("GET", f"/api/inventory/locations/{loc}", "store1-eyes")
        assert reason == (
            "user 'store1-eyes' is bound to STORE1 (served by DC1, DC2);"
            f" the stock of {loc!r} is not visible to it"
        )
    reason = await app.refused(
        "GET", "/api/inventory/atp", "store1-eyes", params={"sku": "MILK", "location": "STORE2"}
    )
    assert "'STORE2' is not visible" in reason
    await app.refused("GET", "/api/inventory/audit", "store1-eyes", params={"location": "STORE3"})
    await app.refused("GET", "/api/availability", "store1-eyes", params={"location": "STORE2"})


async def test_supplier_user_sees_only_the_items_it_supplies(app: App) -> None:
    item = await app.ok("GET", "/api/inventory/items/WATER", "water")
    assert _locs(item) == {"DC1": 30}
    reason = await app.refused("GET", "/api/inventory/items/MILK", "water")
    assert reason == "user 'water' is bound to supplier 'SUP2'; item 'MILK' is not one it supplies"
    dc1 = await app.ok("GET", "/api/inventory/locations/DC1", "water")
    assert [i["sku"] for i in dc1["items"]] == ["WATER"]
    await app.refused("GET", "/api/inventory/atp", "water", params={"sku": "BREAD"})
    assert (await app.ok("GET", "/api/me/scope", "water"))["items"] == ["WATER"]


# -- writes ---------------------------------------------------------------------------------


async def test_order_desk_can_no_longer_overwrite_on_hand(app: App) -> None:
    status, body = await app.req(
        "POST", "/api/inventory/stock", "desk", json={"location": "DC1", "sku": "MILK", "on_hand": 0}
    )
    assert status == 403
    assert body["error"] == (
        "user 'desk' has role order_desk; POST /api/inventory/stock needs inventory_controller"
    )
    item = await app.ok("GET", "/api/inventory/items/MILK")
    assert _locs(item)["DC1"] == 100  # untouched


async def test_stock_writes_by_role_and_scope_are_audited(backend_app: App) -> None:
    def put(user: str, loc: str, qty: int) -> Any:
        return backend_app.req(
            "POST",
            "/api/inventory/stock",
            user,
            json={"location": loc, "sku": "MILK", "on_hand": qty, "reason": "count"},
        )

    # the store's inventory controller counts its own shelf
    status, body = await put("store1", "STORE1", 3)
    assert status == 200 and _locs(body) == {"DC1": 100, "DC2": 40, "STORE1": 3}
    # ... but not the DC that serves it, nor another store
    for loc in ("DC1", "STORE2"):
        status, body = await put("store1", loc, 1)
        assert status == 403
        assert "may set on hand only at its own location(s), not" in body["error"]
    # a store user with a viewer or order-desk role: the role refuses first
    for user, role in (("store1-eyes", "viewer"), ("store1-desk", "order_desk")):
        status, body = await put(user, "STORE1", 1)
        assert status == 403 and f"has role {role}" in body["error"]
    # a supplier user never writes stock, whatever its role
    status, body = await put("water", "DC1", 1)
    assert status == 403 and "a supplier user cannot set on hand" in body["error"]
    # head office's controller anywhere
    status, _ = await put("controller", "DC1", 90)
    assert status == 200
    audit = (await backend_app.ok("GET", "/api/inventory/audit", params={"sku": "MILK"}))["audit"]
    assert [(a["actor"], a["location"], a["before_qty"], a["after_qty"]) for a in audit[:2]] == [
        ("controller", "DC1", 100, 90),
        ("store1", "STORE1", 5, 3),
    ]
    assert audit[1]["detail"] == "count" and audit[1]["action"] == "set"
    # the store user reads its own audit rows and those of the DCs, never another store's
    mine = (await backend_app.ok("GET", "/api/inventory/audit", "store1", params={"sku": "MILK"}))["audit"]
    assert {a["location"] for a in mine} == {"STORE1", "DC1", "DC2"}


async def test_receiving_needs_the_controller_at_its_own_location(app: App) -> None:
    rids = {}
    for loc in ("STORE1", "DC1"):
        body = await app.ok(
            "POST",
            "/api/inventory/receipts",
            "desk",
            json={"location": loc, "sku": "MILK", "qty": 6, "expected": "2026-12-06"},
        )
        rids[loc] = body["receipt_id"]
    # expecting a receipt somewhere else is refused to a store user
    status, body = await app.req(
        "POST",
        "/api/inventory/receipts",
        "store1-desk",
        json={"location": "DC1", "sku": "MILK", "qty": 1, "expected": "2026-12-06"},
    )
    assert status == 403 and "may expect a receipt only at its own location(s)" in body["error"]
    status, body = await app.req("POST", f"/api/inventory/receipts/{rids['STORE1']}/receive", "desk")
    assert status == 403 and "needs inventory_controller" in body["error"]
    status, body = await app.req("POST", f"/api/inventory/receipts/{rids['DC1']}/receive", "store1")
    assert status == 403 and "not 'DC1'" in body["error"]
    out = await app.ok("POST", f"/api/inventory/receipts/{rids['STORE1']}/receive", "store1")
    assert out["qty"] == 6
    [row] = (await app.ok("GET", "/api/inventory/audit", params={"location": "STORE1"}))["audit"][:1]
    assert (row["actor"], row["action"], row["before_qty"], row["after_qty"]) == ("store1", "receive", 5, 11)


async def test_reservations_stay_with_the_order_desk_within_its_view(app: App) -> None:
    body = {"location": "DC2", "sku": "MILK", "qty": 2, "ref": "quote 7"}
    assert (await app.req("POST", "/api/inventory/reservations", "store1-desk", json=body))[0] == 201
    body["location"] = "STORE2"
    await app.refused("POST", "/api/inventory/reservations", "store1-desk", json=body)


async def test_shortages_show_a_store_only_its_own_customers(app: App) -> None:
    def add(c: Any) -> None:
        for oid, cust, sku in ((1, "S001", "MILK"), (2, "S002", "MILK"), (3, "S002", "WATER")):
            c.execute(
                "INSERT INTO shortages (order_id, line_no, sku, qty, action, reason, customer, created_at)"
                " VALUES (?, 1, ?, 1, 'backorder', 'short', ?, 0)",
                (oid, sku, cust),
            )

    await app.db.write(add)
    assert len((await app.ok("GET", "/api/shortages", "desk"))["shortages"]) == 3
    mine = (await app.ok("GET", "/api/shortages", "store1-eyes"))["shortages"]
    assert [(s["customer"], s["sku"]) for s in mine] == [("S001", "MILK")]
    theirs = (await app.ok("GET", "/api/shortages", "water"))["shortages"]
    assert [(s["customer"], s["sku"]) for s in theirs] == [("S002", "WATER")]


# -- managing scopes -------------------------------------------------------------------------


async def test_scope_rest_checks_who_and_what(backend_app: App) -> None:
    users = {u["name"]: u for u in (await backend_app.ok("GET", "/api/users"))["users"]}
    assert users["store1"]["scope"] == {"kind": "locations", "locations": ["STORE1"]}
    assert users["boss"]["scope"] == {"kind": "all"}
    assert "token_sha256" not in users["boss"]
    reason = await backend_app.refused("PUT", "/api/users/store1/scope", "controller", json={"kind": "all"})
    assert "needs supervisor" in reason
    await backend_app.refused("GET", "/api/users/boss/scope", "store1")
    assert (await backend_app.ok("GET", "/api/users/store1/scope", "store1"))["own"] == ["STORE1"]
    for body, status, why in (
        ({"kind": "locations", "locations": ["NOWHERE"]}, 400, "'NOWHERE' is not in the locations master"),
        ({"supplier": "NOBODY"}, 400, "'NOBODY' supplies no item"),
        ({"kind": "locations", "locations": ["DC1"], "supplier": "SUP1"}, 400, "not both"),
        ({"kind": "everything"}, 400, "kind: one of all, locations, supplier"),
    ):
        got = await backend_app.req("PUT", "/api/users/store1/scope", json=body)
        assert got[0] == status and why in got[1]["error"], (body, got)
    got = await backend_app.req("PUT", "/api/users/ghost/scope", json={"kind": "all"})
    assert got == (404, {"error": "no user 'ghost'"})
    # widening the store user to all: it sees STORE2 at once
    await backend_app.ok("PUT", "/api/users/store1-eyes/scope", json={"kind": "all"})
    assert (await backend_app.ok("GET", "/api/inventory/locations/STORE2", "store1-eyes"))[
        "location"
    ] == "STORE2"


def test_users_cli_sets_and_lists_scopes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "c.db")
    assert auth.main(["add", "ann", "--role", "inventory_controller", "--db", db]) == 0
    capsys.readouterr()
    assert auth.main(["scope", "ann", "--locations", "NOPE", "--db", db]) == 1
    assert "'NOPE' is not in the locations master" in capsys.readouterr().err
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO locations (code, kind) VALUES ('STORE9', 'store')")
    conn.commit()
    conn.close()
    assert auth.main(["scope", "ann", "--locations", "STORE9", "--db", db]) == 0
    assert capsys.readouterr().out == 'ann: {"kind": "locations", "locations": ["STORE9"]}\n'
    assert auth.main(["list", "--db", db]) == 0
    [line] = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert (row["name"], row["role"], row["scope"]["locations"]) == (
        "ann",
        "inventory_controller",
        ["STORE9"],
    )
    # made again (a new token, another role): the scope stays
    assert auth.main(["add", "ann", "--role", "viewer", "--db", db]) == 0
    capsys.readouterr()
    assert auth.main(["list", "--db", db]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["role"], row["scope"]) == ("viewer", {"kind": "locations", "locations": ["STORE9"]})
    assert auth.main(["scope", "ann", "--all", "--db", db]) == 0
    assert capsys.readouterr().out == 'ann: {"kind": "all"}\n'


async def test_orders_show_a_store_its_customers_and_a_supplier_its_items(backend_app: App) -> None:
    nos = {}
    for cust, sku in (("S001", "MILK"), ("S002", "MILK"), ("S002", "WATER")):
        body = {
            "customer": cust,
            "order_type": "normal",
            "requested_date": SOON,
            "lines": [{"sku": sku, "qty": 1}],
        }
        nos[(cust, sku)] = (await backend_app.ok("POST", "/api/orders", "desk", json=body))["order_no"]
    everyone = (await backend_app.ok("GET", "/api/orders", "desk"))["orders"]
    assert len(everyone) == 3
    mine = (await backend_app.ok("GET", "/api/orders", "store1-eyes"))["orders"]
    assert [o["order_no"] for o in mine] == [nos[("S001", "MILK")]]
    other = nos[("S002", "MILK")]
    reason = await backend_app.refused("GET", f"/api/orders/{other}", "store1-eyes")
    assert reason.endswith(f"order {other} is customer 'S002''s, not one of its own")
    assert (await backend_app.ok("GET", f"/api/orders/{nos[('S001', 'MILK')]}", "store1-eyes"))[
        "customer"
    ] == "S001"
    water = (await backend_app.ok("GET", "/api/orders", "water"))["orders"]
    assert [o["order_no"] for o in water] == [nos[("S002", "WATER")]]
    reason = await backend_app.refused("GET", f"/api/orders/{nos[('S001', 'MILK')]}", "water")
    assert reason.endswith("has none of its items")


# -- DC work, documents, returns, quarantine (what hangs off orders and gateways) -------------


async def _orders_in_waves(app: App) -> tuple[dict[str, int], dict[str, str], int, int]:
    """Three orders allocated at once - S001 milk (from DC2), S002 milk (DC2), S002 water (DC1) -
    put in two waves as a batch run would: wave 1 S001's milk and S002's water, wave 2 S002's milk."""
    oids, nos = {}, {}
    for key, cust, sku in (("o1", "S001", "MILK"), ("o2", "S002", "MILK"), ("o3", "S002", "WATER")):
        body = {
            "customer": cust,
            "order_type": "normal",
            "requested_date": SOON,
            "lines": [{"sku": sku, "qty": 2}],
        }
        made = await app.ok("POST", "/api/orders", "desk", json=body)
        oids[key], nos[key] = made["order_id"], made["order_no"]

    def waves(c: Any) -> tuple[int, int]:
        ids = []
        for members in ((oids["o1"], oids["o3"]), (oids["o2"],)):
            wid = c.execute(
                "INSERT INTO waves (batch_key, cutoff, created_at) VALUES ('zone', 0, 0)"
            ).lastrowid
            for oid in members:
                c.execute("INSERT INTO wave_orders (wave_id, order_id) VALUES (?, ?)", (wid, oid))
                c.execute("UPDATE allocations SET wave_id = ? WHERE order_id = ?", (wid, oid))
            ids.append(wid)
        return ids[0], ids[1]

    w1, w2 = await app.db.write(waves)
    return oids, nos, w1, w2


async def _text(app: App, path: str, user: str) -> tuple[int, str]:
    async with app.client.get(path, headers={"Authorization": f"Bearer {app.tokens[user]}"}) as r:
        return r.status, await r.text()


async def test_waves_and_pick_lists_show_a_user_only_its_orders(app: App) -> None:
    oids, _, w1, w2 = await _orders_in_waves(app)
    assert [w["wave_id"] for w in (await app.ok("GET", "/api/waves", "desk"))["waves"]] == [w2, w1]
    # a store user: the wave with its customer's order, and only that order in it
    assert [w["wave_id"] for w in (await app.ok("GET", "/api/waves", "store1-eyes"))["waves"]] == [w1]
    assert (await app.ok("GET", f"/api/waves/{w1}", "store1-eyes"))["orders"] == [oids["o1"]]
    reason = await app.refused("GET", f"/api/waves/{w2}", "store1-eyes")
    assert (
        reason
        == f"user 'store1-eyes' is bound to STORE1 (served by DC1, DC2); wave {w2} holds none of its orders"
    )
    # a supplier user: the waves picking its items' orders
    assert [w["wave_id"] for w in (await app.ok("GET", "/api/waves", "water"))["waves"]] == [w1]
    assert (await app.ok("GET", f"/api/waves/{w1}", "water"))["orders"] == [oids["o3"]]
    await app.refused("GET", f"/api/waves/{w2}", "water")
    # the schedule: the DC's plan, shown for the visible waves; naming another is refused
    plan = await app.ok("GET", "/api/waves/schedule", "store1-eyes")
    assert [w["wave_id"] for w in plan["unscheduled"]] == [w1]
    await app.refused("GET", "/api/waves/schedule", "water", params={"waves": str(w2)})
    # pick lists: the lines of its own orders only, numbered as the DC walks the whole wave
    status, text = await _text(app, f"/api/documents/picklist/{w1}.csv", "desk")
    assert status == 200 and len(text.splitlines()) == 3
    status, text = await _text(app, f"/api/documents/picklist/{w1}.csv", "store1-eyes")
    assert status == 200 and text.splitlines()[1:] == [f"1,2,DC2,,MILK,2,{oids['o1']},1"]
    status, text = await _text(app, f"/api/documents/picklist/{w1}.csv", "water")
    assert status == 200 and text.splitlines()[1:] == [f"1,1,DC1,,WATER,2,{oids['o3']},1"]
    for user in ("store1-eyes", "water"):
        status, text = await _text(app, f"/api/documents/picklist/{w2}.html", user)
        assert status == 403 and "holds none of its orders" in text
    # an allocation run's trace spans every order and location: all-scope users only
    run_id = await app.db.read(lambda c: c.execute("SELECT max(run_id) FROM alloc_runs").fetchone()[0])
    assert (await _text(app, f"/api/allocation/runs/{run_id}", "desk"))[0] == 200
    # making and releasing waves is the DC's work for every store
    assert "making waves (of every store's orders)" in await app.refused("POST", "/api/waves", "store1-desk")
    reason = await app.refused("GET", f"/api/allocation/runs/{run_id}", "store1-eyes")
    assert reason.endswith(
        f"allocation run {run_id} (every order and location it touched) is visible only to all-scope users"
    )


async def test_delivery_notes_returns_and_shortage_report_by_scope(app: App) -> None:
    oids, nos, _, _ = await _orders_in_waves(app)
    # delivery notes follow the order: another customer's is refused, a supplier gets its lines
    status, text = await _text(app, f"/api/documents/delivery-note/{oids['o1']}.csv", "store1-eyes")
    assert status == 200 and text.splitlines()[1].startswith("1,MILK,2,2,0")
    status, text = await _text(app, f"/api/documents/delivery-note/{oids['o2']}.csv", "store1-eyes")
    assert status == 403 and "is customer 'S002''s, not one of its own" in text
    status, text = await _text(app, f"/api/documents/delivery-note/{oids['o1']}.csv", "water")
    assert status == 403 and "has none of its items" in text
    assert (await _text(app, f"/api/documents/delivery-note/{oids['o3']}.csv", "water"))[0] == 200
    # a restocking return: back on hand at DC2, audited with who booked it, in the same write
    for key in ("o1", "o2"):
        for step in ("released", "picked", "shipped"):
            await app.ok("POST", f"/api/orders/{nos[key]}/status", json={"status": step})
    ret = {"order_id": oids["o2"], "line_no": 1, "qty": 1, "reason": "unwanted"}
    reason = await app.refused("POST", "/api/returns", "store1-desk", json=ret)
    assert "is customer 'S002''s" in reason
    # nor may a store's desk change another customer's order (the answer would show it)
    reason = await app.refused("POST", f"/api/orders/{nos['o2']}/cancel", "store1-desk")
    assert "is customer 'S002''s" in reason
    rma = await app.ok("POST", "/api/returns", "store1-desk", json={**ret, "order_id": oids["o1"]})
    assert (rma["disposition"], rma["location"]) == ("restock", "DC2")
    [row] = (await app.ok("GET", "/api/inventory/audit", "boss", params={"location": "DC2"}))["audit"][:1]
    assert (row["actor"], row["action"], row["sku"], row["before_qty"], row["after_qty"]) == (
        "store1-desk",
        "return",
        "MILK",
        40,
        41,
    )
    assert row["detail"] == f"RMA{rma['rma_id']:08d} order {nos['o1']} line 1: +1 (unwanted)"
    # the RMA and the order's returns: the store's own, not the supplier of another item
    assert (await app.ok("GET", f"/api/returns/{rma['rma_id']}", "store1-eyes"))["sku"] == "MILK"
    await app.refused("GET", f"/api/returns/{rma['rma_id']}", "water")
    assert (
        len((await app.ok("GET", "/api/returns", "store1-eyes", params={"order_id": oids["o1"]}))["returns"])
        == 1
    )
    await app.refused("GET", "/api/returns", "store1-eyes", params={"order_id": oids["o2"]})
    # the shortage report: its own customers' shortages, a supplier its items'
    await app.db.write(
        lambda c: c.executemany(
            "INSERT INTO shortages (order_id, line_no, sku, qty, action, reason, customer, created_at)"
            " VALUES (?, 1, ?, 1, 'backorder', 'short', ?, 0)",
            [(oids["o1"], "MILK", "S001"), (oids["o2"], "MILK", "S002"), (oids["o3"], "WATER", "S002")],
        )
    )
    status, text = await _text(app, "/api/documents/shortages.csv?by=customer", "store1-eyes")
    assert status == 200 and text.splitlines() == ["customer,lines,units,orders,items", "S001,1,1,1,MILK"]
    status, text = await _text(app, "/api/documents/shortages.csv?by=item", "water")
    assert status == 200 and text.splitlines() == ["item,lines,units,orders,customers", "WATER,1,1,1,S002"]


async def test_quarantine_credit_and_consignment_by_scope(app: App) -> None:
    await app.db.write(
        lambda c: c.executemany(
            "INSERT INTO quarantine (gateway, topic, reason, at) VALUES (?, ?, 'bad record', 0)",
            [(gw, f"storegate/v1/{gw}/up") for gw in ("store-1", "store-2", "dc-1")],
        )
    )
    assert len((await app.ok("GET", "/api/quarantine", "desk"))["quarantine"]) == 3
    # a store user: what its own gateway sent (not the DC serving it: its records are every store's)
    mine = (await app.ok("GET", "/api/quarantine", "store1-eyes"))["quarantine"]
    assert [q["gateway"] for q in mine] == ["store-1"]
    reason = await app.refused("GET", "/api/quarantine", "water")
    assert reason == (
        "user 'water' is bound to supplier 'SUP2'; quarantined records are visible only to all-scope"
        " users and the gateway's store"
    )
    assert (await app.ok("GET", "/api/customers/S001/credit", "store1-eyes"))["customer"] == "S001"
    reason = await app.refused("GET", "/api/customers/S002/credit", "store1-eyes")
    assert reason.endswith("customer 'S002' is not one of its own: its credit is not visible to it")
    await app.refused("GET", "/api/customers/S002/credit", "water")
    await app.refused("GET", "/api/consignment/S002", "store1-eyes")
    assert (await app.ok("GET", "/api/consignment/S001", "store1-eyes"))["lots"] == []
