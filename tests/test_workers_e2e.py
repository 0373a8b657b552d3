"""Three central workers on one database, a real broker, three store gateways streaming orders
and changes to them against limited stock, and one worker SIGKILLed mid-stream (issue 17).

Real processes throughout: ``storegate central --config central.toml --worker I`` three times
(the broker's shared subscription spreads the uplinks over them), ``storegate gateway`` per
store, clients posting to each gateway's HTTP API with an ``Idempotency-Key`` and retrying the
way a till does. After the kill the two left must finish everything, the dead worker's
downlink leases taken over. Then:

- 0 lost, 0 duplicated: every order a gateway acknowledged is at central exactly once;
- stock exact: per location and sku, the open allocations add up to ``allocated``, which is
  at most ``on_hand``; no order line holds more than it ordered; each order is in
  ``alloc_orders`` at most once;
- change sequences in order: each changed order's ``change_seq`` is the number of changes
  posted to it, nothing is left parked, and its quantity is the last change's;
- downlink applied once: central's downlink outbox is empty (every record acked), every
  record the gateways acked is in their inbox, and every store shows each of its orders in
  the status central holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.allocate import inventory
from central.allocate.allocation import SourcingRule
from central.migrations import central_db
from central.orders import masters
from central.web import auth
from ops.broker import Mosquitto, free_port
from tests.central_fixtures import ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON
from tests.conftest import wait_for
from tests.procs import Proc

STORES = ("store-1", "store-2", "store-3")
CUSTOMERS_CSV = """code,name,grade,credit_limit,receivables,gateway,delivery_requirements,delivery_window
S001,Store One,A,10000000,0,store-1,,
S002,Store Two,A,10000000,0,store-2,,
S003,Store Three,A,10000000,0,store-3,,
"""
CUSTOMER = dict(zip(STORES, ("S001", "S002", "S003"), strict=True))
WORKERS = 3
ORDERS_PER_STORE = 40
MILK_ON_HAND = 360  # 3 x 40 orders of 6 to 12 units: far more is asked than there is
BREAD_ON_HAND = 100
DEADLINE_S = float(os.environ.get("SG_WORKERS_DEADLINE_S", "90"))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "central" / "central.db")
        return
    from tests.pg import pg_database

    with pg_database("workers") as url:
        yield url


class Db:
    """The test's own look at central's database (SQLite read-only, or PostgreSQL)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.target.startswith("postgresql://"):
            import psycopg

            from runtime.pgdb import PgConnection  # SQLite's SQL: ? placeholders, a % is a %

            with psycopg.connect(self.target, autocommit=True) as raw:
                return [tuple(r) for r in PgConnection(raw).execute(sql, args).fetchall()]
        conn = sqlite3.connect(f"file:{self.target}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.rows(sql, args)[0][0]


async def _seed(target: str) -> None:
    db = central_db(target)
    await db.open()
    try:

        def seed(conn: Any) -> None:
            for kind, text in (
                ("locations", LOCATIONS_CSV),
                ("items", ITEMS_CSV),
                ("prices", PRICES_CSV),
                ("customers", CUSTOMERS_CSV),
            ):
                masters.import_csv(conn, kind, text)
            inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
            inventory.set_stock(conn, "DC1", "MILK", MILK_ON_HAND, bin="01-01")
            inventory.set_stock(conn, "DC1", "BREAD", BREAD_ON_HAND, bin="01-02")
            iterations, auth.PBKDF2_ITERATIONS = auth.PBKDF2_ITERATIONS, 1_000
            try:
                auth.add_user(conn, "ops-viewer", auth.Role.VIEWER, password="viewer-pass")
            finally:
                auth.PBKDF2_ITERATIONS = iterations

        await db.write(seed)
    finally:
        await db.close()


def _workers(tmp: Path, broker_port: int, target: str) -> list[Proc]:
    port = free_port()
    while any(not _free(port + i) for i in range(WORKERS)):
        port = free_port()
    db = f'[database]\nurl = "{target}"\n' if target.startswith("postgresql://") else ""
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n{db}[broker]\nport = {broker_port}\nclient_id = "central"\n'
        f"[http]\nport = {port}\n[release]\nenabled = false\n"
    )
    return [
        Proc("central", cfg, port + i, tmp / f"central-{i}.log", args=("--worker", str(i)))
        for i in range(WORKERS)
    ]


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gateway(tmp: Path, broker_port: int, gw: str) -> Proc:
    port = free_port()
    cfg = tmp / f"{gw}.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "{CUSTOMER[gw]}"\ndata_dir = "{tmp / gw}"\n'
        f"[mqtt]\nport = {broker_port}\n[http]\nport = {port}\n[sync]\nack_timeout_s = 2.0\n"
    )
    return Proc("gateway", cfg, port, tmp / f"{gw}.log")


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    """POST until a definite answer, with the same key (a till's retry)."""
    for _ in range(600):
        try:
            async with s.post(url, json=body, headers={"Idempotency-Key": key}) as r:
                if r.status in (200, 201):
                    doc: dict[str, Any] = await r.json()
                    return doc
                if 400 <= r.status < 500 and r.status not in (408, 409, 425, 429):
                    raise AssertionError(f"{url} refused {body}: {r.status} {await r.text()}")
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: no answer for {key}")


class Store:
    def __init__(self, proc: Proc, gw: str) -> None:
        self.proc = proc
        self.gw = gw
        self.orders: dict[str, str] = {}  # source ref -> record id, as the gateway acknowledged
        self.changes: dict[str, list[int]] = {}  # record id -> the qty each change set, in order

    async def stream(self, s: aiohttp.ClientSession, *, posted: asyncio.Event, kill_after: int) -> None:
        for n in range(ORDERS_PER_STORE):
            ref = f"{self.gw}-{n:03d}"
            lines = [{"sku": "MILK", "qty": 6 * (1 + n % 2)}]
            if n % 4 == 0:
                lines.append({"sku": "BREAD", "qty": 3})
            body = {
                "customer": CUSTOMER[self.gw],
                "channel": "manual",
                "order_type": "normal",
                "requested_date": SOON,
                "lines": lines,
                "source_ref": ref,
            }
            doc = await _post(s, f"{self.proc.url}/api/orders", body, ref)
            rid = str(doc["id"])
            self.orders[ref] = rid
            if n % 5 == 2:  # some orders are changed twice, right away (often before central saw them)
                for k, qty in enumerate((12, 18)):
                    change = {"action": "set_qty", "line_no": 1, "qty": qty, "reason": f"change {k + 1}"}
                    got = await _post(s, f"{self.proc.url}/api/orders/{rid}/changes", change, f"{ref}-c{k}")
                    assert got["change_seq"] == k + 1, got
                    self.changes.setdefault(rid, []).append(qty)
            if n == kill_after:
                posted.set()

    async def health(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        async with s.get(f"{self.proc.url}/api/health") as r:
            doc: dict[str, Any] = await r.json()
            return doc

    def inbox(self) -> tuple[set[str], dict[str, str]]:
        conn = sqlite3.connect(f"file:{self.proc.config.parent / self.gw / self.gw}.db?mode=ro", uri=True)
        try:
            ids = {r[0] for r in conn.execute("SELECT id FROM inbox")}
            status = dict(conn.execute("SELECT record_id, status FROM order_status").fetchall())
            return ids, status
        finally:
            conn.close()


async def test_three_workers_one_killed_mid_stream_nothing_lost_or_twice_stock_exact(
    tmp_path: Path, broker: Mosquitto, backend: str
) -> None:
    await _seed(backend)
    db = Db(backend)
    workers = _workers(tmp_path, broker.port, backend)
    stores = [Store(_gateway(tmp_path, broker.port, gw), gw) for gw in STORES]
    try:
        for w in workers:
            w.start()
        for st in stores:
            st.proc.start()
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            posted = asyncio.Event()
            streams = [
                asyncio.create_task(st.stream(s, posted=posted, kill_after=ORDERS_PER_STORE // 3))
                for st in stores
            ]
            await asyncio.wait_for(posted.wait(), DEADLINE_S)
            # the worker holding most gateways' downlink dies without a word
            owners = db.rows("SELECT owner FROM leases WHERE name LIKE 'downlink/%'")
            counts = {i: sum(1 for (o,) in owners if o.startswith(f"central-{i}@")) for i in range(WORKERS)}
            victim = max(counts, key=lambda i: (counts[i], i))
            proc = workers[victim].proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            workers[victim].proc = None
            await asyncio.wait_for(asyncio.gather(*streams), DEADLINE_S)

            async def settled() -> bool:
                for st in stores:
                    if (await st.health(s))["backlog"] != 0:
                        return False
                marks = ",".join("?" * len(STORES))
                return (
                    db.one("SELECT count(*) FROM work_queue") == 0
                    and db.one(f"SELECT count(*) FROM downlink_outbox WHERE gateway IN ({marks})", STORES)
                    == 0
                )

            await wait_for(settled, timeout=DEADLINE_S, interval=0.5, what="every record through, both ways")
        survivors = [(i, w) for i, w in enumerate(workers) if i != victim]
        for i, w in survivors:
            assert w.proc is not None and w.proc.poll() is None, f"worker {i} died (see {w.log.name})"
        views: list[dict[str, Any]] = []

        def taken_over() -> bool:
            # the dead worker's leases expire leases.TTL_S after its last renewal: its jobs (and
            # its presence) may outlive the settling above, if it sent no store's downlink
            views[:] = [w.get("/api/health")["worker"] for _i, w in survivors]
            return (
                all(v["live_workers"] == WORKERS - 1 for v in views)
                and len([j for v in views for j in v["jobs"]]) == 3
            )

        await wait_for(taken_over, timeout=30, interval=0.5, what="the dead worker's jobs taken over")
        assert [v["name"] for v in views] == [f"central-{i}" for i, _w in survivors]
        sending = [gw for v in views for gw in v["downlink_gateways"]]
        assert set(STORES) <= set(sending) and len(sending) == len(set(sending))  # each store one sender
        # each job in one worker (release is off in this config: its task ends at once)
        assert sorted(j for v in views for j in v["jobs"]) == [
            "job/fleet-alerts",
            "job/retention",
            "job/schedule",
        ]
        for w in workers:
            errors = [ln for ln in w.log.read_text().splitlines() if " ERROR " in ln]
            assert errors == [], (w.log.name, errors[:3])

        # 0 lost, 0 duplicated
        acked = {rid: ref for st in stores for ref, rid in st.orders.items()}
        at_central = db.rows("SELECT record_id, source_ref, order_id, status FROM orders")
        seen: dict[str, int] = {}
        for rid, _ref, _oid, _status in at_central:
            seen[rid] = seen.get(rid, 0) + 1
        assert len(acked) == len(STORES) * ORDERS_PER_STORE
        assert [rid for rid in acked if rid not in seen] == []  # lost
        assert [rid for rid, n in seen.items() if n > 1] == []  # duplicated
        assert {ref for _rid, ref, _o, _s in at_central} == set(acked.values())

        # stock exact
        for loc, sku, on_hand, allocated, open_sum in db.rows(
            "SELECT i.location, i.sku, i.on_hand, i.allocated,"
            " (SELECT coalesce(sum(a.qty), 0) FROM allocations a WHERE a.location = i.location"
            "  AND a.sku = i.sku AND a.status = 'allocated')"
            " FROM inventory i ORDER BY i.location, i.sku"
        ):
            assert allocated == open_sum, (loc, sku, allocated, open_sum)
            assert 0 <= allocated <= on_hand, (loc, sku, allocated, on_hand)
        assert db.one("SELECT allocated FROM inventory WHERE sku = 'MILK'") > 0  # stock was promised
        over = db.rows(
            "SELECT l.order_id, l.line_no, l.qty, sum(a.qty) FROM order_lines l JOIN allocations a"
            " ON a.order_id = l.order_id AND a.line_no = l.line_no AND a.status = 'allocated'"
            " GROUP BY l.order_id, l.line_no, l.qty HAVING sum(a.qty) > l.qty"
        )
        assert over == []  # no line allocated more than it asks, so no order allocated twice
        assert db.rows("SELECT order_id FROM alloc_orders GROUP BY order_id HAVING count(*) > 1") == []

        # change sequences kept
        assert db.one("SELECT count(*) FROM parked_changes") == 0
        changed = {rid: qtys for st in stores for rid, qtys in st.changes.items()}
        assert changed
        for rid, qtys in changed.items():
            ((seq, qty),) = db.rows(
                "SELECT o.change_seq, l.qty FROM orders o JOIN order_lines l ON l.order_id = o.order_id"
                " WHERE o.record_id = ? AND l.line_no = 1",
                (rid,),
            )
            assert (seq, qty) == (len(qtys), qtys[-1]), rid

        # downlink applied once at the stores: all acked, all in the inboxes, statuses agree
        # (dc-1 and sup-1 run no gateway here: what central queued for them waits)
        results = db.rows("SELECT id, gateway FROM downlink_results")
        assert results
        status_at_central = {rid: status for rid, _ref, _oid, status in at_central}
        for st in stores:
            ids, shown = st.inbox()
            assert {i for i, gw in results if gw == st.gw} <= ids
            for rid in st.orders.values():
                assert shown.get(rid) == status_at_central[rid], (st.gw, rid)
        took_over = db.rows("SELECT name, owner FROM leases WHERE name LIKE 'downlink/%'")
        assert all(not o.startswith(f"central-{victim}@") for _n, o in took_over)
    finally:
        for st in stores:
            st.proc.stop()
        for w in workers:
            w.stop()
