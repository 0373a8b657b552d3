"""Promising and scheduling end to end (issue 18, items 1 and 2), through the real services: a
real central process (``storegate central``: its REST API over HTTP, its own clock, real
SQLite), a real Mosquitto and a real store gateway process.

A promise kept at central holds stock against an order the store sends over the broker (the
gateway's order gets only what is not promised); central's own clock expires the promise at its
``hold_until`` and the stock is free again; a second promise is claimed by an order entered at
central whose line carries an installation booked into a delivery slot; the next order for that
slot is held with the free slots offered; the installation's completion is an event in the
order's history, and cancelling the held order frees its place. Then the store sells with an
installation at its own gateway: the order record carries the line's service over the broker,
central books it; the next one for that slot is held, and the store sees why."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from central.allocate import inventory
from central.migrations import all_migrations
from central.orders import masters
from central.web import auth
from ops.broker import Mosquitto, free_port
from runtime.clock import now_ms
from runtime.sqlitedb import apply_migrations, connect
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON
from tests.conftest import wait_for
from tests.procs import ROOT, Proc, basic_auth, central_db, gateway_proc, seed_viewer
from tests.promise_fixtures import day

DEADLINE = 30.0
DESK = ("desk", "desk-pass")
PROMISE_MASTERS = (
    (
        "customers",
        "code,name,grade,gateway,region,route\nS001,Store One,A,store-1,N,R-N\nS002,Store Two,B,,N,R-N\n",
    ),
    ("sourcing", "zone,location,cost,preferred\nN,DC1,1,yes\n"),
    ("lead_times", "location,zone,lead_days,transit_days\nDC1,N,1,1\n"),
    ("services", "code,kind,description,slot_units\nINSTALL,field,installation,1\n"),
    ("slots", "route,weekday,slot,capacity\n" + "".join(f"R-N,{d},AM,1\n" for d in masters.WEEKDAYS)),
)


def central_with_masters(tmp: Path, broker_port: int) -> Proc:
    """Central with the test masters, store S001 (gateway store-1) in zone N on route R-N,
    20 MILK at DC1, an order-desk user, its clock ticking every 0.2 s and no automatic
    release to picking."""
    db = tmp / "central" / "central.db"
    seed_viewer(db)
    conn = connect(db)
    try:
        apply_migrations(conn, all_migrations())
        conn.execute("BEGIN IMMEDIATE")
        for kind, text in (
            ("locations", LOCATIONS_CSV),
            ("items", ITEMS_CSV),
            ("prices", PRICES_CSV),
            ("customers", CUSTOMERS_CSV),
            *PROMISE_MASTERS,
        ):
            masters.import_csv(conn, kind, text)
        inventory.set_stock(conn, "DC1", "MILK", 20, bin="01-01")
        iterations, auth.PBKDF2_ITERATIONS = auth.PBKDF2_ITERATIONS, 1_000
        try:
            auth.add_user(conn, DESK[0], auth.Role.ORDER_DESK, password=DESK[1])
        finally:
            auth.PBKDF2_ITERATIONS = iterations
        conn.execute("COMMIT")
    finally:
        conn.close()
    port = free_port()
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n[broker]\nport = {broker_port}\nclient_id = "central-test"\n'
        f"[http]\nport = {port}\n[release]\nenabled = false\n[schedule]\nevery_s = 0.2\n"
    )
    return Proc("central", cfg, port, tmp / "central.log")


def call(central: Proc, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the central process as the order desk (HTTP Basic)."""
    req = urllib.request.Request(
        central.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **basic_auth(DESK)},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def gateway_order(gw: Proc, body: dict[str, Any]) -> tuple[int, Any]:
    """``POST /api/orders`` at the store's gateway (its order entry)."""
    return gw.post("/api/orders", body)


def store_status(gw: Proc, record_id: str) -> Any:
    """``storegate order --status ID``: what the store knows of its order."""
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "order", "--gateway-url", gw.url, "--status", record_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def bookings_of(tmp: Path, record_id: str) -> list[tuple[str, str, str]]:
    """(day, slot, status) of the service bookings of a gateway's order at central."""
    conn = central_db(tmp)
    try:
        return conn.execute(
            "SELECT b.day, b.slot, b.status FROM service_bookings b JOIN orders o ON o.order_id = b.order_id"
            " WHERE o.record_id = ? ORDER BY b.booking_id",
            (record_id,),
        ).fetchall()
    finally:
        conn.close()


def milk_allocated(tmp: Path) -> int:
    conn = central_db(tmp)
    try:
        (n,) = conn.execute(
            "SELECT allocated FROM inventory WHERE location = 'DC1' AND sku = 'MILK'"
        ).fetchone()
        return int(n)
    finally:
        conn.close()


def order_allocated(tmp: Path, record_id: str) -> tuple[str, int] | None:
    """(status, units allocated) of a gateway's order at central, once it is allocated."""
    conn = central_db(tmp)
    try:
        row = conn.execute(
            "SELECT o.status, coalesce((SELECT sum(a.qty) FROM allocations a WHERE a.order_id = o.order_id"
            " AND a.status = 'allocated'), 0) FROM orders o WHERE o.record_id = ?",
            (record_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))
    finally:
        conn.close()


async def test_promises_and_service_slots_through_the_real_services(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_with_masters(tmp_path, broker.port)
    gw = gateway_proc(tmp_path, broker.port, "store-1")
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)

        # 1. a promise of 15 MILK kept for three seconds
        until = now_ms() + 3_000
        status, kept = await asyncio.to_thread(
            call,
            central,
            "POST",
            "/api/promise",
            {"customer": "S001", "hold_until": until, "lines": [{"sku": "MILK", "qty": 15}]},
        )
        assert status == 201 and kept["status"] == "held", kept
        assert kept["lines"][0]["location"] == "DC1" and kept["lines"][0]["date"] == day(2)
        assert milk_allocated(tmp_path) == 15

        # 2. the store orders 12 over the broker: allocation gets only the 5 not promised
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "ops.cli",
                "order",
                "--gateway-url",
                gw.url,
                "--customer",
                "S001",
                "--date",
                SOON,
                "--line",
                "MILK=12",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rid = json.loads(done.stdout)["id"]
        await wait_for(
            lambda: order_allocated(tmp_path, rid) == ("allocated", 5),
            timeout=DEADLINE,
            what="the store's order allocated with the 5 units not promised",
        )
        assert milk_allocated(tmp_path) == 20

        # 3. central's clock expires the promise at its deadline: its 15 units are free again
        async def expired() -> bool:
            status, got = await asyncio.to_thread(call, central, "GET", f"/api/promise/{kept['ref']}")
            return status == 200 and got["status"] == "expired"

        await wait_for(expired, timeout=DEADLINE, what="the promise expired by central's schedule")
        assert now_ms() >= until
        assert milk_allocated(tmp_path) == 5
        status, runs = await asyncio.to_thread(call, central, "GET", "/api/schedule/runs")
        assert [r["item"] for r in runs["runs"] if r["job"] == "promise-expiry"] == [f"{kept['ref']}@{until}"]

        # 4. a new promise, claimed by an order entered at central with an installation booked
        status, kept2 = await asyncio.to_thread(
            call,
            central,
            "POST",
            "/api/promise",
            {"customer": "S001", "reserve": True, "lines": [{"sku": "MILK", "qty": 6}]},
        )
        assert status == 201
        when = day(2)
        line = {"sku": "MILK", "qty": 6, "service": {"code": "INSTALL", "date": when, "slot": "AM"}}
        status, first = await asyncio.to_thread(
            call,
            central,
            "POST",
            "/api/orders",
            {
                "customer": "S001",
                "order_type": "normal",
                "requested_date": when,
                "promise": kept2["ref"],
                "lines": [line],
            },
        )
        assert status == 201 and first["status"] == "allocated", first
        assert first["services"][0]["status"] == "booked"
        status, got = await asyncio.to_thread(call, central, "GET", f"/api/promise/{kept2['ref']}")
        assert got["status"] == "fulfilled" and got["order_id"] == first["order_id"]
        assert milk_allocated(tmp_path) == 11

        # 5. the next order for the same slot is held, the free slots offered
        status, second = await asyncio.to_thread(
            call,
            central,
            "POST",
            "/api/orders",
            {
                "customer": "S002",
                "order_type": "normal",
                "requested_date": when,
                "lines": [{**line, "qty": 1}],
            },
        )
        assert status == 201 and second["status"] == "held"
        assert second["hold_reason"] == (
            f"slot full: line 1 INSTALL on {when} AM (route R-N); free: "
            + ", ".join(f"{day(n)} AM" for n in range(3, 8))
        )

        # 6. the installation is done: an event in the order's one history
        bid = first["services"][0]["booking_id"]
        status, done_b = await asyncio.to_thread(
            call,
            central,
            "POST",
            f"/api/orders/{first['order_no']}/services/{bid}/complete",
            {"note": "fitted"},
        )
        assert status == 200 and done_b["status"] == "completed" and done_b["completed_by"] == "desk"
        status, o = await asyncio.to_thread(call, central, "GET", f"/api/orders/{first['order_no']}")
        events = [(e["event"], e["detail"], e["actor"]) for e in o["events"]]
        assert ("service booked", f"line 1 INSTALL on {when} AM (route R-N)", "desk") in events
        assert events[-1] == ("service completed", f"line 1 INSTALL ({when} AM): fitted", "desk")
        assert [e[0] for e in events].index("promise fulfilled") < [e[0] for e in events].index("allocated")

        # 7. the held order is cancelled: its waiting booking goes, the slot stays the first's
        status, _ = await asyncio.to_thread(
            call, central, "POST", f"/api/orders/{second['order_no']}/cancel", {}
        )
        assert status == 200
        status, got = await asyncio.to_thread(
            call, central, "GET", f"/api/orders/{second['order_no']}/services"
        )
        assert [b["status"] for b in got["services"]] == ["cancelled"]
        status, slots = await asyncio.to_thread(
            call, central, "GET", f"/api/slots?route=R-N&from={when}&days=1"
        )
        assert slots["slots"] == [{"date": when, "slot": "AM", "capacity": 1, "booked": 1, "free": 0}]

        # 8. the store sells with an installation at its gateway: over the broker, booked at central
        later = day(3)
        sale = {
            "customer": "S001",
            "requested_date": later,
            "lines": [{"sku": "MILK", "qty": 1, "service": {"code": "INSTALL", "date": later, "slot": "AM"}}],
        }
        status, first_gw = await asyncio.to_thread(gateway_order, gw, sale)
        assert status == 201, first_gw
        await wait_for(
            lambda: bookings_of(tmp_path, first_gw["id"]) == [(later, "AM", "booked")],
            timeout=DEADLINE,
            what="the store's installation booked at central",
        )
        status, second_gw = await asyncio.to_thread(gateway_order, gw, sale)
        assert status == 201, second_gw

        async def held_at_the_store() -> bool:
            view = await asyncio.to_thread(store_status, gw, second_gw["id"])
            return view is not None and view["status"] == "held"

        await wait_for(held_at_the_store, timeout=DEADLINE, what="the store sees its order held: slot full")
        view = await asyncio.to_thread(store_status, gw, second_gw["id"])
        assert view["detail"].startswith(
            f"slot full: line 1 INSTALL on {later} AM (route R-N); free: {day(4)} AM"
        )
        assert bookings_of(tmp_path, second_gw["id"]) == [(later, "AM", "waiting")]
    finally:
        gw.kill()
        central.kill()
