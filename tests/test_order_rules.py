"""Order rules through central's real REST app on a real SQLite file (every migration):
what an order is worth (priority by value, return credits, receivables), which orders take
returns, and the other rules of issue 15."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from central import schedule, wiring
from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.fulfil import release
from central.hub import Hub
from central.migrations import all_migrations, central_db
from central.orders import masters, ordertypes, valuation
from central.web import allocation_api, auth, release_api
from central.web.api import create_app
from ops.broker import Mosquitto
from runtime import dbapi
from runtime.dbapi import is_postgres_url
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.db_conn import open_conn
from tests.procs import central_db as procs_db
from tests.procs import central_proc

auth.PBKDF2_ITERATIONS = 1_000
TODAY = dt.datetime.now(dt.UTC).date()
LATER = (TODAY + dt.timedelta(days=5)).isoformat()

ITEMS = """sku,description,price,storage
A,Apples,100,DC1=01-01
B,Beans,99,DC1=01-02
"""


ROOT = Path(__file__).resolve().parent.parent


def storegate(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``storegate`` CLI as a real process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


class Desk:
    """The real app (orders, masters, allocation, returns, release) on a real database."""

    def __init__(self, db: DurableDB, client: TestClient[Any, Any], token: str) -> None:
        self.db = db
        self.client = client
        self.h = {"Authorization": f"Bearer {token}"}

    async def req(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.client.request(method, path, headers=self.h, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.req(method, path, **kw)
        assert status in (200, 201), (method, path, status, body)
        return body

    async def masters(self, customers: str, items: str = ITEMS) -> None:
        await self.ok("POST", "/api/masters/locations/import", data="code,kind,gateway\nDC1,dc,dc-1\n")
        await self.ok("POST", "/api/masters/items/import", data=items)
        await self.ok("POST", "/api/masters/customers/import", data=customers)

    async def stock(self, sku: str, qty: int) -> None:
        await self.ok("POST", "/api/inventory/stock", json={"location": "DC1", "sku": sku, "on_hand": qty})

    async def order(self, customer: str, *lines: tuple[str, int], date: str = LATER) -> dict[str, Any]:
        body = {
            "customer": customer,
            "order_type": "normal",
            "requested_date": date,
            "lines": [{"sku": s, "qty": q} for s, q in lines],
        }
        out: dict[str, Any] = await self.ok("POST", "/api/orders", json=body)
        return out

    async def status(self, order_no: str, *statuses: str) -> None:
        for s in statuses:
            await self.ok("POST", f"/api/orders/{order_no}/status", json={"status": s})

    async def credit(self, customer: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.ok("GET", f"/api/customers/{customer}/credit")
        return out


# the hub desk() opens central with (central.wiring): set by the realtime / batch fixtures
DESK_HUB: Hub | None = None


@pytest.fixture
def realtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """Allocation at once, as central runs by default."""
    hub = wiring.hub(waves.AllocationSettings(realtime=True))
    monkeypatch.setattr(sys.modules[__name__], "DESK_HUB", hub)
    yield hub


@pytest.fixture
def batch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """Allocation in waves only."""
    hub = wiring.hub(waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",))))
    monkeypatch.setattr(sys.modules[__name__], "DESK_HUB", hub)
    yield hub


@asynccontextmanager
async def desk(tmp_path: Path, target: str | None = None, *, sourcing: bool = True) -> AsyncIterator[Desk]:
    """``target``: central's database (``central_backend``), default a SQLite file in ``tmp_path``."""
    db = central_db(target or tmp_path / "central.db", DESK_HUB)
    await db.open()
    try:
        token = await db.write(lambda c: auth.add_user(c, "boss", auth.Role.SUPERVISOR))
        if sourcing:
            await db.write(lambda c: inventory.set_sourcing(c, [SourcingRule("*", "DC1", 1, preferred=True)]))
        app = create_app(db=db)
        allocation_api.add_routes(app)
        release_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield Desk(db, client, token)
    finally:
        await db.close()


# -- 1. money: every order line valued at its validated unit price, less the discount ------


def test_line_amount_rounds_the_discount_half_up() -> None:
    assert valuation.line_amount(3, 100) == 300
    assert valuation.line_amount(3, 100, 10) == 270
    assert valuation.line_amount(3, 99, 12.5) == 260  # 259.875
    assert valuation.line_amount(1, 1, 50) == 1  # 0.5 rounds up
    assert valuation.line_amount(4, None, 10) == 0


async def test_priority_by_value_uses_the_validated_price_less_discount(
    tmp_path: Path, central_backend: str, batch: Hub
) -> None:
    """Two orders for scarce stock, same grade, no special priority: the more valuable one
    is served first. Neither quotes a price, so only the validated unit price values them."""
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code,grade,discount_pct\nSMALL,B,0\nBIG,B,10\n")
        await d.stock("A", 6)
        small = await d.order("SMALL", ("A", 4))  # 400, received first
        big = await d.order("BIG", ("A", 6))  # 600 less 10% = 540
        assert (small["value"], big["value"]) == (400, 540)
        assert [ln["amount"] for ln in big["lines"]] == [540]
        (wave,) = (await d.ok("POST", "/api/waves", json={}))["waves"]
        trace = await d.ok("GET", f"/api/allocation/runs/{wave['run_id']}")
        assert f"order {big['order_id']} customer BIG zone - [special=- grade=B value=540" in trace
        assert f"order {small['order_id']} customer SMALL zone - [special=- grade=B value=400" in trace
        assert trace.index("customer BIG") < trace.index("customer SMALL")
        got = await d.ok("GET", f"/api/allocation/orders/{big['order_id']}")
        assert sum(a["qty"] for a in got["allocations"]) == 6
        got = await d.ok("GET", f"/api/allocation/orders/{small['order_id']}")
        assert got["allocations"] == [] and got["shortages"][0]["qty"] == 4


async def test_returns_credit_the_net_amount_and_the_receivables(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    """Delivered: the value goes on the receivables; each return credits its share of the
    line's net amount there (and in the ledger), a line returned in full exactly its amount."""
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code,credit_limit,discount_pct\nC1,100000,12.5\n")
        await d.stock("A", 10)
        await d.stock("B", 10)
        o = await d.order("C1", ("A", 2), ("B", 3))  # 200 - 12.5% = 175; 297 - 12.5% = 260
        assert o["status"] == "allocated" and o["value"] == 435
        assert (await d.credit("C1"))["open_orders"] == 435
        await d.status(o["order_no"], "released", "picked", "shipped", "delivered")
        c = await d.credit("C1")
        assert (c["receivables"], c["open_orders"]) == (435, 0)
        credits = []
        for qty in (1, 2):
            rma = await d.ok(
                "POST",
                "/api/returns",
                json={"order_id": o["order_id"], "line_no": 2, "qty": qty, "reason": "unwanted"},
            )
            credits.append(rma["credit"])
        assert credits == [87, 173]  # 260 x 1/3 rounded, then the rest of the line
        assert (await d.credit("C1"))["receivables"] == 175
        status, body = await d.req(
            "POST",
            "/api/returns",
            json={"order_id": o["order_id"], "line_no": 2, "qty": 1, "reason": "unwanted"},
        )
        assert status == 400 and "already returned" in body["error"]
        ledger = await d.db.read(
            lambda c: c.execute("SELECT sum(amount) FROM receivables WHERE customer = 'C1'").fetchone()[0]
        )
        assert ledger == -260
        # the rest comes back as a whole: returned settles what the RMAs did not credit
        await d.status(o["order_no"], "returned")
        c = await d.credit("C1")
        assert (c["receivables"], c["open_orders"]) == (0, 0)


async def test_returned_before_delivery_owes_nothing(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    """Shipped (value still open), part returned, then the rest refused at the door."""
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code,credit_limit\nC1,100000\n")
        await d.stock("A", 10)
        o = await d.order("C1", ("A", 5))
        await d.status(o["order_no"], "released", "picked", "shipped")
        rma = await d.ok(
            "POST",
            "/api/returns",
            json={"order_id": o["order_id"], "line_no": 1, "qty": 2, "reason": "damaged"},
        )
        assert rma["credit"] == 200
        c = await d.credit("C1")
        assert (c["receivables"], c["open_orders"]) == (-200, 500)  # owes 300 in all
        await d.status(o["order_no"], "returned")
        c = await d.credit("C1")
        assert (c["receivables"], c["open_orders"]) == (0, 0)


# -- 8. returns only on orders the customer has had -----------------------------------------


async def test_returns_only_on_shipped_or_delivered_orders(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code\nC1\n")
        await d.stock("A", 10)
        o = await d.order("C1", ("A", 4))
        body = {"order_id": o["order_id"], "line_no": 1, "qty": 1, "reason": "unwanted"}
        assert o["status"] == "allocated"
        for status in ("allocated", "released", "picked"):
            if status != "allocated":
                await d.status(o["order_no"], status)
            code, err = await d.req("POST", "/api/returns", json=body)
            assert code == 409, (status, err)
            assert err["error"] == (
                f"order {o['order_id']} line 1: order {o['order_no']} is {status};"
                " returns are taken only on shipped or delivered orders"
            )
        on_hand = await d.ok("GET", "/api/inventory/items/A")
        assert await d.db.read(lambda c: c.execute("SELECT count(*) FROM rmas").fetchone()[0]) == 0
        assert await d.ok("GET", "/api/inventory/items/A") == on_hand  # nothing restocked
        await d.status(o["order_no"], "shipped")
        assert (await d.ok("POST", "/api/returns", json=body))["credit"] == 100
        await d.status(o["order_no"], "delivered")
        assert (await d.ok("POST", "/api/returns", json=body))["credit"] == 100
        await d.status(o["order_no"], "returned")
        code, err = await d.req("POST", "/api/returns", json=body)
        assert code == 409 and "is returned" in err["error"]
        code, err = await d.req("POST", "/api/returns", json={**body, "order_id": 999})
        assert code == 400 and err["error"] == "order 999 line 1: no such order"


# -- 7. orders of a batch wave wait for their wave -------------------------------------------


async def test_auto_release_leaves_wave_orders_to_their_wave(
    tmp_path: Path, central_backend: str, batch: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code\nC1\nC2\n")
        await d.stock("A", 20)
        await d.stock("B", 20)
        w1 = await d.order("C1", ("A", 2), ("B", 1))
        w2 = await d.order("C2", ("B", 3))
        (wave,) = (await d.ok("POST", "/api/waves", json={}))["waves"]
        assert wave["outcomes"] == {"allocated": 2}
        # an order allocated in real time meanwhile is the release tick's to send
        batch.allocation = waves.AllocationSettings(realtime=True)
        rt = await d.order("C2", ("A", 1))
        assert rt["status"] == "allocated"
        releaser = release.Releaser(d.db, release.ReleaseSettings(), on_release=lambda: None)
        assert await releaser.tick() == 1
        assert await releaser.tick() == 0
        for o, status in ((w1, "allocated"), (w2, "allocated"), (rt, "released")):
            assert (await d.ok("GET", f"/api/orders/{o['order_no']}"))["status"] == status
        # the wave's pick list and release still hold all of its lines
        pick_list = await d.ok("GET", f"/api/documents/picklist/{wave['wave_id']}.csv")
        assert len(pick_list.strip().splitlines()) == 1 + 3
        out = await d.ok("POST", f"/api/waves/{wave['wave_id']}/release")
        assert (out["tasks"], out["orders"]) == (3, 2)
        for o in (w1, w2):
            assert (await d.ok("GET", f"/api/orders/{o['order_no']}"))["status"] == "released"
        waves_of = await d.db.read(
            lambda c: c.execute("SELECT DISTINCT wave FROM pick_tasks ORDER BY wave").fetchall()
        )
        assert waves_of == [(f"O{rt['order_id']}",), (f"W{wave['wave_id']}",)]


# -- 4. central's clock: contract deliveries and delay limits, once per item -----------------


def _day(n: int) -> str:
    return (TODAY + dt.timedelta(days=n)).isoformat()


async def test_schedule_runs_each_due_item_once_across_a_crash_and_a_restart(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    clock = [TODAY]
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code,backorder_policy,backorder_limit_days\nC1,backorder,\nWAIT,all-at-once,1\n")
        await d.stock("A", 100)
        await d.stock("B", 1)
        body = {"code": "K1", "customer": "C1", "lines": [{"sku": "A", "qty": 2}]}
        dates = [_day(-2), _day(-1), _day(0), _day(3)]
        await d.ok("POST", "/api/contracts", json={**body, "dates": dates})
        held = await d.order("WAIT", ("B", 3))  # 1 of 3 in stock: held until complete, 1 day at most
        assert await d.db.read(
            lambda c: c.execute(
                "SELECT status, deadline FROM alloc_orders WHERE order_id = ?", (held["order_id"],)
            ).fetchone()
        ) == ("held", _day(1))
        sched = schedule.Scheduler(
            d.db, schedule.ScheduleSettings(per_job=2), on_work=lambda: None, today=lambda: clock[0]
        )
        ran = await sched.tick()
        assert [(r.job, r.item) for r in ran] == [("contract", f"K1@{x}") for x in dates[:3]]
        assert await sched.tick() == []
        # three days on: the last delivery and the delay limit are due; a job that does them
        # and then fails (a crash before COMMIT) leaves no trace of either
        clock[0] = TODAY + dt.timedelta(days=3)

        def crash(conn: Any) -> None:
            assert len(schedule.run_due(conn, today=clock[0], now=1, limit=10)) == 2
            raise RuntimeError("power cut")

        with pytest.raises(RuntimeError):
            await d.db.write(crash)
        assert await d.db.read(lambda c: c.execute("SELECT count(*) FROM schedule_runs").fetchone()[0]) == 3
    # a restart: the same file, a new process's scheduler
    async with desk(tmp_path, central_backend) as d:
        sched = schedule.Scheduler(
            d.db, schedule.ScheduleSettings(), on_work=lambda: None, today=lambda: clock[0]
        )
        ran = await sched.tick()
        assert [(r.job, r.item) for r in ran] == [
            ("contract", f"K1@{dates[3]}"),
            ("delay-expiry", f"{held['order_id']}@{_day(1)}"),
        ]
        assert await sched.tick() == []
        runs = (await d.ok("GET", "/api/schedule/runs"))["runs"]
        assert len(runs) == 5
        made = await d.ok("GET", "/api/orders?channel=schedule")
        assert sorted(o["record_id"] for o in made["orders"]) == [f"contract:K1:{x}" for x in dates]
        assert (await d.ok("GET", f"/api/orders/{held['order_no']}"))["status"] == "cancelled"
        short = await d.ok("GET", f"/api/shortages?order_id={held['order_id']}")
        assert [s["status"] for s in short["shortages"]] == ["expired"]
        # by hand, the same path: nothing left to make
        assert (await d.ok("POST", "/api/contracts/run", json={"today": _day(3)}))["orders"] == []


async def test_central_runs_the_schedule_on_its_clock_once_across_sigkill(
    tmp_path: Path, broker: Mosquitto, central_backend: str
) -> None:
    """The real central process: due contract deliveries become orders without any request,
    one per job; SIGKILLed midway and started again, every delivery has exactly one order."""
    n = 60
    url = central_backend if is_postgres_url(central_backend) else None
    proc = central_proc(tmp_path, broker.port, db_url=url)
    with proc.config.open("a") as f:
        f.write("[schedule]\nevery_s = 0.05\nper_job = 1\n[release]\nenabled = false\n")
    conn = open_conn(url or tmp_path / "central" / "central.db", all_migrations(), synchronous="NORMAL")
    try:
        masters.import_csv(conn, "customers", "code\nC1\n")
        masters.import_csv(conn, "items", "sku,price\nA,100\n")
        dates = [(TODAY - dt.timedelta(days=i)).isoformat() for i in range(n)]
        ordertypes.add_contract(conn, code="K1", customer="C1", lines={"A": 1}, dates=dates)
    finally:
        conn.close()

    def count(sql: str) -> int:
        c = procs_db(tmp_path, url)
        try:
            return int(c.execute(sql).fetchone()[0])
        finally:
            c.close()

    proc.start(wait=False)  # watch the file from the first moment, to kill it midway
    try:
        await wait_for(
            lambda: count("SELECT count(*) FROM schedule_runs") > 0, timeout=30, what="a first run"
        )
        proc.kill()
        before = count("SELECT count(*) FROM schedule_runs")
        assert before < n, "the kill came too late to land midway"
        proc.start()
        await wait_for(
            lambda: count("SELECT count(*) FROM contract_deliveries WHERE order_id IS NULL") == 0,
            timeout=60,
            what="every delivery made",
        )
    finally:
        proc.stop()
    assert count("SELECT count(*) FROM orders WHERE channel = 'schedule'") == n
    assert count("SELECT count(DISTINCT order_id) FROM contract_deliveries") == n
    assert count("SELECT count(*) FROM schedule_runs WHERE job = 'contract'") == n


# -- 6. split lines, sourcing rules and AS/RS totes are masters ------------------------------

LOCATIONS = "code,kind,gateway\nDC1,dc,dc-1\nDC2,dc,dc-2\nSTORE1,store,store-1\n"


async def test_allow_split_and_sourcing_rules_are_masters(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    async with desk(tmp_path, central_backend, sourcing=False) as d:
        await d.ok("POST", "/api/masters/locations/import", data=LOCATIONS)
        await d.ok("POST", "/api/masters/items/import", data=ITEMS)
        await d.ok(
            "POST", "/api/masters/customers/import", data="code,region,allow_split\nSPLIT,N,yes\nWHOLE,N,\n"
        )
        assert (await d.ok("GET", "/api/masters/customers/SPLIT"))["allow_split"] == 1
        assert (await d.ok("GET", "/api/masters/customers/WHOLE"))["allow_split"] == 0
        rules = "zone,location,cost,preferred,transfer\nN,DC1,1,yes,\nN,DC2,2,,\n*,DC2,1,1,0\n"
        assert (await d.ok("POST", "/api/masters/sourcing/import", data=rules))["imported"] == 3
        zone = await d.ok("GET", "/api/masters/sourcing/N")
        assert zone["rules"] == [
            {"location": "DC1", "cost": 1, "preferred": 1, "transfer": 0},
            {"location": "DC2", "cost": 2, "preferred": 0, "transfer": 0},
        ]
        assert [z["zone"] for z in (await d.ok("GET", "/api/masters/sourcing"))["sourcing"]] == ["*", "N"]
        for loc in ("DC1", "DC2"):
            for sku in ("A", "B"):
                await d.ok("POST", "/api/inventory/stock", json={"location": loc, "sku": sku, "on_hand": 4})
        split = await d.order("SPLIT", ("A", 6))
        whole = await d.order("WHOLE", ("B", 6))
        got = await d.ok("GET", f"/api/allocation/orders/{split['order_id']}")
        assert sorted((a["location"], a["qty"]) for a in got["allocations"]) == [("DC1", 4), ("DC2", 2)]
        got = await d.ok("GET", f"/api/allocation/orders/{whole['order_id']}")
        assert [(a["location"], a["qty"]) for a in got["allocations"]] == [("DC1", 4)]
        assert got["shortages"][0]["qty"] == 2
        # a bad row names its line and field, and no row of the file is stored
        bad = "zone,location,cost\nS,DC1,1\nS,DC9,1\n"
        status, err = await d.req("POST", "/api/masters/sourcing/import", data=bad)
        assert status == 400
        assert (
            err["error"] == "sourcing 'S': location: line 3: 'DC9' is not an active location in the masters"
        )
        status, _ = await d.req("GET", "/api/masters/sourcing/S")
        assert status == 404
        for row, reason in (
            ({"location": "DC1", "preferred": True, "transfer": True}, "preferred"),
            ({"location": "DC1", "cost": -1}, "cost"),
            ({"location": "DC1", "priority": 1}, "priority: unknown field"),
        ):
            status, err = await d.req("PUT", "/api/masters/sourcing/S", json=row)
            assert status == 400 and reason in err["error"], err
        # deleting a zone removes its rules
        assert (await d.ok("DELETE", "/api/masters/sourcing/*"))["deleted"] == "*"
        status, _ = await d.req("GET", "/api/masters/sourcing/*")
        assert status == 404


async def test_asrs_totes_are_a_master_named_on_pick_tasks(
    tmp_path: Path, central_backend: str, realtime: Hub
) -> None:
    async with desk(tmp_path, central_backend) as d:
        await d.ok("POST", "/api/masters/locations/import", data=LOCATIONS)
        await d.masters("code\nC1\n")
        totes = "tote,location,sku,tote_location\nT00001,DC1,A,A01-03-07\n"
        assert (await d.ok("POST", "/api/masters/totes/import", data=totes))["imported"] == 1
        assert await d.ok("GET", "/api/masters/totes/T00001") == {
            "tote": "T00001",
            "location": "DC1",
            "sku": "A",
            "tote_location": "A01-03-07",
        }
        for row, reason in (
            ({"location": "STORE1", "sku": "B", "tote_location": "A01"}, "'STORE1' is a store, not a dc"),
            ({"location": "DC1", "sku": "ZZ", "tote_location": "A01"}, "'ZZ' is not an active item"),
            ({"location": "DC1", "sku": "B", "tote_location": "A 01"}, "tote_location: 'A 01' is not"),
            ({"location": "DC1", "sku": "B", "tote_location": ""}, "tote_location: '' is not"),
        ):
            status, err = await d.req("PUT", "/api/masters/totes/T00002", json=row)
            assert status == 400 and reason in err["error"], err
        status, err = await d.req(
            "PUT", "/api/masters/totes/T00001", json={"location": "DC1", "sku": "B", "tote_location": "A01"}
        )
        assert status == 400 and err["error"] == "totes 'T00001': tote: already holds 'A' at DC1"
        await d.stock("A", 5)
        o = await d.order("C1", ("A", 2))
        await d.db.write(lambda c: release.release_allocated(c, limit=10))
        task = await d.db.read(lambda c: c.execute("SELECT tote, tote_location FROM pick_tasks").fetchone())
        assert task == ("T00001", "A01-03-07")
        assert (await d.ok("GET", f"/api/orders/{o['order_no']}"))["status"] == "released"


def test_sourcing_and_totes_import_from_the_cli_all_rows_or_none(
    tmp_path: Path, central_backend: str
) -> None:
    db = central_backend

    def masters_import(*args: str) -> subprocess.CompletedProcess[str]:
        return storegate("masters", "import", *args, "--db", str(db))

    files = {
        "locations": LOCATIONS,
        "items": ITEMS,
        "sourcing": "zone,location,cost,preferred\nN,DC1,1,yes\nN,DC2,3,no\n",
        "totes": "tote,location,sku,tote_location\nT1,DC1,A,A01-01\nT2,DC2,B,B01-01\n",
    }
    bad = {
        "sourcing": "zone,location,cost\nS,DC1,1\nS,DC2,x\n",
        "totes": "tote,location,sku,tote_location\nT3,DC1,B,A01-02\nT3,DC2,A,A01-03\n",
    }
    for kind, text in bad.items():
        (tmp_path / f"{kind}.csv").write_text(text)
    assert masters_import("locations", str(_write(tmp_path, "locations", files["locations"]))).returncode == 0
    assert masters_import("items", str(_write(tmp_path, "items", files["items"]))).returncode == 0
    out = masters_import("sourcing", str(tmp_path / "sourcing.csv"))
    assert (
        out.returncode == 1
        and out.stderr.strip() == "error: sourcing 'S': cost: line 3: 'x' is not an integer"
    )
    out = masters_import("totes", str(tmp_path / "totes.csv"))
    assert out.returncode == 1
    assert out.stderr.strip() == "error: totes 'T3': tote: line 3: already holds 'B' at DC1"
    conn = dbapi.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM alloc_sourcing").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pick_totes").fetchone()[0] == 0
    finally:
        conn.close()
    for kind in ("sourcing", "totes"):
        out = masters_import(kind, str(_write(tmp_path, kind, files[kind])))
        assert (out.returncode, out.stdout.strip()) == (0, f"imported 2 {kind}"), out.stderr
    conn = dbapi.connect(db)
    try:
        assert conn.execute(
            "SELECT zone, location, cost, preferred, transfer FROM alloc_sourcing ORDER BY 2"
        ).fetchall() == [
            ("N", "DC1", 1, 1, 0),
            ("N", "DC2", 3, 0, 0),
        ]
        assert conn.execute(
            "SELECT tote, location, sku, tote_location FROM pick_totes ORDER BY 1"
        ).fetchall() == [
            ("T1", "DC1", "A", "A01-01"),
            ("T2", "DC2", "B", "B01-01"),
        ]
    finally:
        conn.close()


def _write(tmp_path: Path, kind: str, text: str) -> Path:
    path = tmp_path / f"good-{kind}.csv"
    path.write_text(text)
    return path


# -- 5. standard pick time from the item master; the wave schedule over REST and the CLI -----


async def test_pick_time_uses_the_item_master_and_the_schedule_is_reachable(
    tmp_path: Path, central_backend: str, batch: Hub
) -> None:
    items = "sku,price,pack_size,pick_seconds,storage\nCASE,10,6,5,DC1=01-01\nLOOSE,10,1,0,DC1=01-02\n"
    start = 1_800_000_000_000
    async with desk(tmp_path, central_backend) as d:
        await d.masters("code,region\nC1,N\nC2,S\n", items=items)
        await d.stock("CASE", 100)
        await d.stock("LOOSE", 100)
        await d.order("C1", ("CASE", 14))
        (w1,) = (await d.ok("POST", "/api/waves", json={"departure": start + 60_000}))["waves"]
        await d.order("C2", ("LOOSE", 3))
        (w2,) = (await d.ok("POST", "/api/waves", json={"departure": start + 200_000}))["waves"]
        # 14 of CASE = 2 cases of 6 (12 s each) + 2 eaches at the item's own 5 s, + 8 s search
        # + 30 s paperwork; 3 LOOSE eaches at the standard 3 s + 8 + 30
        assert (w1["pick_seconds"], w2["pick_seconds"]) == (72.0, 47.0)
        plan = await d.ok("GET", f"/api/waves/schedule?teams=1&start={start}")
        assert plan["waves"] == [
            {
                "wave_id": w1["wave_id"],
                "team": 1,
                "start": start,
                "finish": start + 72_000,
                "departure": start + 60_000,
                "slack_s": -12,
                "late": True,
            },
            {
                "wave_id": w2["wave_id"],
                "team": 1,
                "start": start + 72_000,
                "finish": start + 119_000,
                "departure": start + 200_000,
                "slack_s": 81,
                "late": False,
            },
        ]
        two = await d.ok("GET", f"/api/waves/schedule?teams=2&start={start}&load_s=10&waves={w2['wave_id']}")
        assert [(w["team"], w["finish"]) for w in two["waves"]] == [(1, start + 57_000)]
        for bad, reason in (
            ("teams=0", "teams must be >= 1"),
            ("waves=99", "no wave 99"),
            ("team=2", "unknown"),
        ):
            status, err = await d.req("GET", f"/api/waves/schedule?{bad}")
            assert status == 400 and reason in err["error"], err
    iso = dt.datetime.fromtimestamp(start / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    db = central_backend  # the same database the REST schedule read, SQLite or PostgreSQL
    out = await asyncio.to_thread(
        storegate, "pick-schedule", "--db", db, "--teams", "1", "--start", iso, "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["waves"] == plan["waves"]
    out = await asyncio.to_thread(storegate, "pick-schedule", "--db", db, "--start", iso)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[-2:] == ["-12", "LATE"]
    out = await asyncio.to_thread(storegate, "pick-schedule", "--db", db, "--wave", "99")
    assert (out.returncode, out.stderr.strip()) == (1, f"error: {db}: no wave 99")
