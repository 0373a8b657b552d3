"""The availability monitor (issue 18, item 5) end to end through central's real services:
orders entered over central's real aiohttp app (allocated in real time by the real hub) make
the velocity; central's real scheduler tick runs the monitor; the alert shows on the
dashboard's REST (``/api/alerts``) and is not closed by the fleet's own evaluation; a person
accepts a transfer (reservation + expected receipt; booking it in moves the stock) and
dismisses a supplier order; episodes open once and close as the situation changes."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from central import schedule, wiring
from central.allocate import inventory
from central.allocate.availability import DAY_MS, AvailabilitySettings, Monitor
from central.allocate.waves import AllocationSettings
from central.fleet import AlertThresholds, Fleet
from central.migrations import all_migrations, central_db
from central.orders import masters
from central.web import allocation_api, auth, availability_api, dashboard
from central.web.api import create_app
from ops import cli
from ops.broker import Mosquitto
from runtime import dbapi
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import SOON
from tests.conftest import wait_for
from tests.procs import basic_auth, central_proc

auth.PBKDF2_ITERATIONS = 1_000

LOCATIONS = """code,kind,name,region,gateway
DC1,dc,Main DC,,dc-1
DC2,dc,North DC,N,dc-2
STORE1,store,Store One,N,store-1
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
"""
SOURCING = """zone,location,cost,preferred,transfer
N,DC2,0,1,0
N,DC1,5,0,0
*,DC1,0,1,0
"""
STOCK = [("DC1", "MILK", 300), ("DC2", "MILK", 60), ("DC2", "BREAD", 35), ("DC1", "WATER", 10)]


class Central:
    def __init__(
        self,
        db: DurableDB,
        client: TestClient[Any, Any],
        tokens: dict[str, str],
        fleet: Fleet,
        monitor: Monitor,
    ) -> None:
        self.db, self.client, self.tokens, self.fleet, self.monitor = db, client, tokens, fleet, monitor
        # central's own scheduler, with the monitor on its tick (as central.app wires it)
        self.scheduler = schedule.Scheduler(
            db, schedule.ScheduleSettings(), on_work=lambda: None, monitors=[monitor.tick]
        )

    async def req(self, method: str, path: str, user: str = "boss", **kw: Any) -> tuple[int, Any]:
        async with self.client.request(
            method, path, headers={"Authorization": f"Bearer {self.tokens[user]}"}, **kw
        ) as r:
            return r.status, await r.json()

    async def ok(self, method: str, path: str, user: str = "boss", **kw: Any) -> Any:
        status, body = await self.req(method, path, user, **kw)
        assert status in (200, 201), (method, path, status, body)
        return body

    async def order(self, sku: str, qty: int) -> str:
        body = {
            "customer": "S001",
            "order_type": "normal",
            "requested_date": SOON,
            "lines": [{"sku": sku, "qty": qty}],
        }
        created = await self.ok("POST", "/api/orders", "desk", json=body)
        assert created["status"] == "allocated"
        no: str = created["order_no"]
        return no

    async def stock_alerts(self, *, all_: bool = False) -> list[dict[str, Any]]:
        """The dashboard's alert list (``GET /api/alerts``), this monitor's kind."""
        body = await self.ok("GET", "/api/alerts", "eyes", params={"all": "1"} if all_ else {})
        return [a for a in body["alerts"] if a["kind"] == "stock_out_risk"]

    async def proposals(self, **params: str) -> dict[str, dict[str, Any]]:
        body = await self.ok("GET", "/api/availability/alerts", "eyes", params=params)
        return {p["sku"]: p for p in body["proposals"]}


@asynccontextmanager
async def running(tmp_path: Path, target: str | None = None) -> AsyncIterator[Central]:
    db = central_db(target or tmp_path / "central.db", wiring.hub(AllocationSettings()))
    await db.open()
    try:
        users = {
            "boss": auth.Role.SUPERVISOR,
            "desk": auth.Role.ORDER_DESK,
            "controller": auth.Role.INVENTORY_CONTROLLER,
            "eyes": auth.Role.VIEWER,
            "store1": auth.Role.INVENTORY_CONTROLLER,
        }
        tokens = {n: await db.write(lambda c, n=n, r=r: auth.add_user(c, n, r)) for n, r in users.items()}
        fleet = Fleet(db, AlertThresholds())
        app = create_app(db=db)
        dashboard.add_routes(app, fleet=fleet, db=db)
        allocation_api.add_routes(app)
        monitor = Monitor(db, AvailabilitySettings())
        availability_api.add_routes(app, settings=monitor.settings, monitor=monitor)
        async with TestClient(TestServer(app)) as client:
            c = Central(db, client, tokens, fleet, monitor)
            for kind, text in (
                ("locations", LOCATIONS),
                ("items", ITEMS),
                ("customers", CUSTOMERS),
                ("sourcing", SOURCING),
            ):
                await c.ok("POST", f"/api/masters/{kind}/import", data=text)
            for loc, sku, qty in STOCK:
                await c.ok("POST", "/api/inventory/stock", json={"location": loc, "sku": sku, "on_hand": qty})
            await c.ok("PUT", "/api/users/store1/scope", json={"locations": ["STORE1"]})
            yield c
    finally:
        await db.close()


async def test_fast_seller_alerts_once_is_transferred_and_the_alert_closes(
    tmp_path: Path, central_backend: str
) -> None:
    async with running(tmp_path, central_backend) as c:
        # today's orders from store S001 (zone N, served first by DC2): 8 x 7 milk, 3 x 10 bread
        for _ in range(8):
            await c.order("MILK", 7)
        for _ in range(3):
            await c.order("BREAD", 10)
        await c.scheduler.tick()

        rows = (await c.ok("GET", "/api/availability", "eyes", params={"location": "DC2"}))["rows"]
        milk = next(r for r in rows if r["sku"] == "MILK")
        # 56 units in 7 days = 8/day (28-day average 2/day: the larger counts); 60 - 56 allocated = 4
        assert (milk["units_7d"], milk["velocity_7d"], milk["velocity_28d"], milk["velocity"]) == (
            56,
            8.0,
            2.0,
            8.0,
        )
        assert (milk["available"], milk["cover_days"], milk["threshold_days"], milk["at_risk"]) == (
            4,
            0.5,
            5.0,
            True,
        )

        risky = (await c.ok("GET", "/api/availability", "store1", params={"at_risk": "1"}))["rows"]
        assert [(r["location"], r["sku"], r["cover_days"]) for r in risky] == [
            ("DC2", "MILK", 0.5),  # lowest cover first; DC2 serves STORE1's zone: visible to it
            ("DC2", "BREAD", round(5 / (30 / 7), 2)),
        ]

        props = await c.proposals()
        # milk: 8/day x 14 days target - 4 = 108, DC1 holds 300 with no demand of its own
        assert {k: (p["kind"], p["source"], p["qty"]) for k, p in props.items()} == {
            "MILK": ("transfer", "DC1", 108),
            "BREAD": ("supplier_order", "SUP1", 55),  # 30/7 x 14 - 5; nobody holds spare bread
        }
        alerts = await c.stock_alerts()
        assert {(a["gateway"], a["device_id"]) for a in alerts} == {("DC2", "MILK"), ("DC2", "BREAD")}
        milk_alert = next(a for a in alerts if a["device_id"] == "MILK")
        assert milk_alert["message"] == (
            "MILK at DC2: 0.5 days of cover at 8.0/day; propose transfer of 108 from DC1"
        )

        # a user bound to STORE3 (zone S, served by DC1 only) does not see DC2's stock alerts
        await c.ok("PUT", "/api/users/eyes/scope", json={"locations": ["STORE3"]})
        assert await c.stock_alerts() == []
        await c.ok("PUT", "/api/users/eyes/scope", json={"kind": "all"})

        # more ticks and the fleet's own evaluation: no second alert, none closed
        await c.scheduler.tick()
        await c.fleet.evaluate()
        await c.scheduler.tick()
        assert len(await c.stock_alerts(all_=True)) == 2
        assert len(await c.stock_alerts()) == 2

        # a store user may not decide a DC's proposal; a viewer not at all
        mid = props["MILK"]["proposal_id"]
        status, body = await c.req("POST", f"/api/availability/proposals/{mid}/accept", "store1")
        assert status == 403 and "only at its own location(s), not 'DC2'" in body["error"]
        status, body = await c.req("POST", f"/api/availability/proposals/{mid}/accept", "eyes")
        assert status == 403 and "needs inventory_controller" in body["error"]

        accepted = await c.ok("POST", f"/api/availability/proposals/{mid}/accept", "controller")
        assert (accepted["status"], accepted["decided_by"], accepted["qty"]) == (
            "accepted",
            "controller",
            108,
        )
        assert [a["device_id"] for a in await c.stock_alerts()] == ["BREAD"]  # milk's closed at once
        status, body = await c.req("POST", f"/api/availability/proposals/{mid}/accept", "controller")
        assert status == 409 and "is accepted" in body["error"]
        dc1 = (await c.ok("GET", "/api/inventory/items/MILK"))["locations"]
        assert {r["location"]: r["available"] for r in dc1}["DC1"] == 192  # 108 held for the transfer

        # the expected receipt counts at once: cover back to (4 + 108) / 8 = 14 days, episode ends
        out = await c.ok("GET", "/api/availability", "eyes", params={"location": "DC2", "sku": "MILK"})
        assert (out["rows"][0]["incoming"], out["rows"][0]["cover_days"]) == (108, 14.0)
        await c.scheduler.tick()
        assert "MILK" not in await c.proposals()
        ended = (await c.proposals(all="1", sku="MILK"))["MILK"]
        assert ended["status"] == "accepted" and ended["closed_ms"] is not None

        # booking the transfer in moves the units: DC2 +108, DC1 -108 and its hold released
        rid = accepted["receipt_id"]
        got = await c.ok("POST", f"/api/inventory/receipts/{rid}/receive", "controller")
        assert got["transferred_from"] == "DC1"
        item = await c.ok("GET", "/api/inventory/items/MILK")
        assert {r["location"]: (r["on_hand"], r["allocated"]) for r in item["locations"]} == {
            "DC1": (192, 0),
            "DC2": (168, 56),
        }
        audit = (await c.ok("GET", "/api/inventory/audit", params={"sku": "MILK"}))["audit"]
        assert [(a["action"], a["location"], a["before_qty"], a["after_qty"]) for a in audit[:2]] == [
            ("transfer out", "DC1", 300, 192),
            ("receive", "DC2", 60, 168),
        ]

        # bread: dismissed -> its alert closes and later ticks stay quiet while it is still low
        bid = props["BREAD"]["proposal_id"]
        await c.ok(
            "POST", f"/api/availability/proposals/{bid}/dismiss", "controller", json={"reason": "promo ends"}
        )
        assert await c.stock_alerts() == []
        await c.scheduler.tick()
        assert await c.stock_alerts() == [] and len(await c.stock_alerts(all_=True)) == 2
        assert (await c.proposals())["BREAD"]["status"] == "dismissed"
        # restocked: the episode ends; run low again later: a new episode, a new alert
        await c.ok(
            "POST",
            "/api/inventory/stock",
            "controller",
            json={"location": "DC2", "sku": "BREAD", "on_hand": 200},
        )
        await c.scheduler.tick()
        assert "BREAD" not in await c.proposals()
        await c.ok(
            "POST",
            "/api/inventory/stock",
            "controller",
            json={"location": "DC2", "sku": "BREAD", "on_hand": 40},
        )
        await c.scheduler.tick()
        again = (await c.proposals())["BREAD"]
        assert again["proposal_id"] != bid and again["status"] == "open"
        assert [a["device_id"] for a in await c.stock_alerts()] == ["BREAD"]


async def test_two_workers_open_an_episode_once_and_decide_it_once(
    tmp_path: Path, central_backend: str
) -> None:
    """Two apps on one database (two workers) evaluate at once, then accept one proposal at
    once: one episode and one alert open, one acceptance reserves and expects the transfer."""
    async with running(tmp_path, central_backend) as c:
        for _ in range(8):
            await c.order("MILK", 7)  # DC2: 4 left at 8 a day
        db2 = central_db(central_backend, wiring.hub(AllocationSettings()))
        await db2.open()
        try:
            app2 = create_app(db=db2)
            allocation_api.add_routes(app2)
            availability_api.add_routes(
                app2, settings=AvailabilitySettings(), monitor=Monitor(db2, AvailabilitySettings())
            )
            async with TestClient(TestServer(app2)) as client2:
                b = Central(db2, client2, c.tokens, c.fleet, c.monitor)
                both = (c, b, c, b)
                ran = await asyncio.gather(
                    *(w.req("POST", "/api/availability/evaluate", "controller") for w in both)
                )
                assert [s for s, _ in ran] == [200] * 4, ran
                assert sum(body["opened"] for _, body in ran) == 1
                (milk,) = (await c.proposals()).values()
                assert [(a["gateway"], a["device_id"]) for a in await c.stock_alerts()] == [("DC2", "MILK")]
                url = f"/api/availability/proposals/{milk['proposal_id']}/accept"
                decided = await asyncio.gather(*(w.req("POST", url, "controller", json={}) for w in both))
        finally:
            await db2.close()
        assert sorted(s for s, _ in decided) == [200, 409, 409, 409], decided

        def counts(conn: Any) -> tuple[int, int]:
            res = conn.execute("SELECT count(*) FROM allocations WHERE kind = 'reservation'").fetchone()[0]
            rec = conn.execute("SELECT count(*) FROM receipts WHERE location = 'DC2'").fetchone()[0]
            return int(res), int(rec)

        assert await c.db.read(counts) == (1, 1)


async def test_velocity_windows_and_the_cli(
    tmp_path: Path, central_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(tmp_path, central_backend) as c:
        await c.order("MILK", 28)
        # that order was placed 10 days ago: it counts in the 28-day average only
        ten_days_ago = now_ms() - 10 * DAY_MS
        await c.db.write(lambda conn: conn.execute("UPDATE orders SET created_at = ?", (ten_days_ago,)))
        await c.order("MILK", 7)
        rows = (await c.ok("GET", "/api/availability", "eyes", params={"sku": "MILK", "location": "DC2"}))[
            "rows"
        ]
        r = rows[0]
        assert (r["units_7d"], r["units_28d"], r["velocity_7d"], r["velocity_28d"]) == (7, 35, 1.0, 1.25)
        assert r["velocity"] == 1.25 and r["cover_days"] == round(25 / 1.25, 2) and not r["at_risk"]
        # no demand at all: no velocity, endless cover (None), never at risk
        water = (await c.ok("GET", "/api/availability", "eyes", params={"sku": "WATER"}))["rows"][0]
        assert (water["velocity"], water["cover_days"], water["at_risk"]) == (0.0, None, False)
        # a cancelled order is no demand
        no = await c.order("MILK", 20)
        await c.ok("POST", f"/api/orders/{no}/cancel", "desk", json={"reason": "test"})
        r = (await c.ok("GET", "/api/availability", "eyes", params={"sku": "MILK", "location": "DC2"}))[
            "rows"
        ][0]
        assert r["units_7d"] == 7

        # the CLI against the same running central (a real port)
        url = str(c.client.make_url("/"))
        argv = ["availability", "list", "--url", url, f"--token={c.tokens['eyes']}", "--location", "DC2"]
        assert await asyncio.to_thread(cli.main, argv) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == ["location", "sku", "avail", "in", "vel/d", "cover", "d", "risk"]
        assert out[1].split() == ["DC2", "MILK", "25", "0", "1.25", "20.0"]
        for _ in range(2):
            await c.order("MILK", 10)  # 27 in 7 days: 3.86/day, 5 left: 1.3 days
        assert (
            await asyncio.to_thread(
                cli.main, ["availability", "evaluate", "--url", url, f"--token={c.tokens['controller']}"]
            )
            == 0
        )
        capsys.readouterr()
        assert (
            await asyncio.to_thread(
                cli.main, ["availability", "alerts", "--url", url, f"--token={c.tokens['eyes']}"]
            )
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        pid, loc, sku, status, kind, qty, source = lines[1].split()
        assert qty == "49"  # 27 units in 7 days x 14 days (54) - 5 available
        assert (loc, sku, status, kind, source) == ("DC2", "MILK", "open", "transfer", "DC1")
        argv = [
            "availability",
            "dismiss",
            pid,
            "--reason",
            "counted",
            "--url",
            url,
            f"--token={c.tokens['eyes']}",  # a token may start with "-": one argument
        ]
        assert await asyncio.to_thread(cli.main, argv) == 1
        assert "needs inventory_controller" in capsys.readouterr().err
        argv[-1] = f"--token={c.tokens['controller']}"
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert '"status": "dismissed"' in capsys.readouterr().out


# -- the real central process: the monitor on its own scheduler tick ----------------------------


def _http(
    url: str, method: str = "GET", token: str = "", body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        headers.update(basic_auth())
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def test_the_central_process_alerts_on_its_own_tick(
    tmp_path: Path, broker: Mosquitto, central_backend: str
) -> None:
    """``storegate central`` as a child process (on its SQLite file, or on PostgreSQL with
    ``[database] url``): orders over its REST, the alert appears on its dashboard's
    ``/api/alerts`` from its scheduler tick alone (nobody asks it to evaluate), accepted with
    ``storegate availability``, the episode ends on a later tick."""
    db_url = central_backend if dbapi.is_postgres_url(central_backend) else None
    proc = central_proc(tmp_path, broker.port, db_url=db_url)
    with proc.config.open("a") as f:
        f.write("[schedule]\nevery_s = 0.2\n[release]\nenabled = false\n[availability]\nlead_days = 2\n")
    conn = dbapi.connect(db_url or tmp_path / "central" / "central.db", migrations=all_migrations())
    try:
        dbapi.begin(conn)
        for kind, text in (
            ("locations", LOCATIONS),
            ("items", ITEMS),
            ("customers", CUSTOMERS),
            ("sourcing", SOURCING),
        ):
            masters.import_csv(conn, kind, text)
        for loc, sku, qty in STOCK:
            inventory.set_stock(conn, loc, sku, qty)
        desk = auth.add_user(conn, "desk", auth.Role.ORDER_DESK)
        controller = auth.add_user(conn, "controller", auth.Role.INVENTORY_CONTROLLER)
        conn.execute("COMMIT")
    finally:
        conn.close()
    proc.start()
    try:
        for _ in range(8):  # 56 milk today at DC2's 60: 4 left, 8 a day, half a day of cover
            body = {
                "customer": "S001",
                "order_type": "normal",
                "requested_date": SOON,
                "lines": [{"sku": "MILK", "qty": 7}],
            }
            status, got = await asyncio.to_thread(_http, f"{proc.url}/api/orders", "POST", desk, body)
            assert status == 201 and got["status"] == "allocated", got

        def stock_alerts() -> list[dict[str, Any]]:
            status, body = _http(f"{proc.url}/api/alerts")
            assert status == 200, body
            return [a for a in body["alerts"] if a["kind"] == "stock_out_risk"]

        # a tick may come between two orders and open the episode early; a later one brings
        # its figures up to date - wait for the state after the last order
        await wait_for(
            lambda: (
                [a["message"] for a in stock_alerts()]
                == ["MILK at DC2: 0.5 days of cover at 8.0/day; propose transfer of 108 from DC1"]
            ),
            timeout=30,
            what="the stock-out alert on the dashboard, after all 8 orders",
        )
        [alert] = stock_alerts()
        assert (alert["gateway"], alert["device_id"]) == ("DC2", "MILK")
        _, body = await asyncio.to_thread(_http, f"{proc.url}/api/availability/alerts", "GET", controller)
        [p] = body["proposals"]
        # threshold from the config: lead 2 + safety 2
        assert (p["threshold_days"], p["kind"], p["source"], p["qty"]) == (4.0, "transfer", "DC1", 108)
        # the token from the environment, as an operator would keep it
        argv = ["availability", "accept", str(p["proposal_id"]), "--url", proc.url]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STOREGATE_TOKEN", controller)
            assert await asyncio.to_thread(cli.main, argv) == 0
        assert stock_alerts() == []

        def ended() -> bool:
            _, body = _http(f"{proc.url}/api/availability/alerts?all=1", "GET", controller)
            return bool(body["proposals"][0]["closed_ms"])

        await wait_for(ended, timeout=30, what="the episode to end on a later tick")
        _, body = await asyncio.to_thread(
            _http, f"{proc.url}/api/availability/alerts?all=1", "GET", controller
        )
        assert [(q["proposal_id"], q["status"]) for q in body["proposals"]] == [
            (p["proposal_id"], "accepted")
        ]
        _, body = await asyncio.to_thread(_http, f"{proc.url}/api/alerts?all=1")
        assert [a["device_id"] for a in body["alerts"] if a["kind"] == "stock_out_risk"] == ["MILK"]  # once
    finally:
        proc.stop()
