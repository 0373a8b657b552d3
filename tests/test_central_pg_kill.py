"""Central on PostgreSQL as a real process (``[database] url``), fed by a gateway over a real
Mosquitto, SIGKILLed mid-stream and started again: every order the gateway sent is at central
exactly once, validated and allocated in real time once, and the stock balances (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central.allocate import inventory
from central.allocate.allocation import SourcingRule
from central.orders import masters
from ops.broker import Mosquitto
from runtime.pgdb import PgDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, SOON
from tests.conftest import wait_for
from tests.pg import pg_database
from tests.procs import central_db, central_proc, central_settled
from tests.test_spine import backlog_empty, central_in_process, gateway_in_process, order_body, settled

ORDERS = 600


def _seed(url: str) -> None:
    conn = central_db(Path(), url)
    try:
        conn.execute("BEGIN")
        for kind, text in (("locations", LOCATIONS_CSV), ("items", ITEMS_CSV), ("customers", CUSTOMERS_CSV)):
            masters.import_csv(conn, kind, text)
        conn.execute("UPDATE customers SET credit_limit = ? WHERE code = 'S001'", (10**12,))
        inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
        inventory.set_stock(conn, "DC1", "MILK", 1_000_000)
        inventory.set_stock(conn, "DC1", "BREAD", 1_000_000)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _body(i: int) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "handheld",
        "order_type": "normal",
        "requested_date": SOON,
        "lines": [{"sku": "MILK", "qty": 6 * (1 + i % 3)}, {"sku": "BREAD", "qty": 1 + i % 4}],
        "source_ref": f"k{i}",
    }


def _count(url: str, sql: str) -> int:
    conn = central_db(Path(), url)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
async def test_central_on_postgresql_sigkilled_mid_stream_loses_nothing_doubles_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    with pg_database("pgkill") as url:
        central = central_proc(tmp_path, broker.port, db_url=url)
        await asyncio.to_thread(_seed, url)
        central.start()
        submitted: list[str] = []
        try:
            async with gateway_in_process(tmp_path, broker.port, ack_timeout=1.0) as (box, _sync):

                async def feed() -> None:
                    for i in range(ORDERS):
                        rec = await box.submit("order", _body(i))
                        submitted.append(rec.id)
                        if i % 10 == 9:
                            await asyncio.sleep(0.01)

                feeding = asyncio.create_task(feed())
                try:
                    await wait_for(
                        lambda: _count(url, "SELECT count(*) FROM orders") >= ORDERS // 5,
                        timeout=60,
                        what="central to take a fifth of the stream",
                    )
                    central.kill()  # SIGKILL, mid-stream: the gateway goes on submitting
                    taken = _count(url, "SELECT count(*) FROM orders")
                    assert taken < ORDERS, "killed mid-stream, not after it"
                    await asyncio.to_thread(central.start)
                    await feeding
                finally:
                    feeding.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feeding
                await wait_for(lambda: backlog_empty(box), timeout=120, what="gateway outbox drained")
                await wait_for(
                    lambda: central_settled(tmp_path, url), timeout=60, what="central processed all"
                )
        finally:
            central.kill()

        conn = central_db(tmp_path, url)
        try:
            ids = [r[0] for r in conn.execute("SELECT record_id FROM orders")]
            statuses = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
            events = conn.execute(
                "SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE event = 'allocated'"
            ).fetchone()
            lines = conn.execute(
                "SELECT l.sku, sum(l.qty), (SELECT sum(a.qty) FROM allocations a WHERE a.sku = l.sku)"
                " FROM order_lines l GROUP BY l.sku ORDER BY l.sku"
            ).fetchall()
            stock = dict(
                conn.execute("SELECT sku, allocated FROM inventory WHERE location = 'DC1'").fetchall()
            )
            processed = conn.execute("SELECT count(*) FROM processed WHERE status = 'accepted'").fetchone()[0]
        finally:
            conn.close()
    assert len(submitted) == ORDERS
    assert sorted(ids) == sorted(submitted), "every order the gateway sent is at central: 0 lost"
    assert len(set(ids)) == len(ids), "and once: 0 duplicated"
    assert processed == ORDERS
    assert statuses == {"allocated": ORDERS}, statuses
    assert tuple(events) == (ORDERS, ORDERS), "each order allocated once"
    for sku, ordered, allocated in lines:
        assert ordered == allocated, f"{sku}: every line allocated in full, once"
        assert stock[sku] == allocated, f"{sku}: the stock's allocated balance matches the allocations"


async def test_central_rides_out_its_postgresql_connections_ended_mid_stream(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The server ends every session of central's database (a failover, an admin) three times
    while orders stream in: the jobs caught in it fail as not committed, central reconnects and
    goes on, the gateway's resends fill the gaps - every order once."""
    with pg_database("pgdrop") as url:
        async with (
            central_in_process(tmp_path, broker.port, url) as (consumer, cdb),
            gateway_in_process(tmp_path, broker.port, ack_timeout=1.0) as (box, _sync),
        ):
            await consumer.connected.wait()
            submitted: list[str] = []
            for round_ in range(3):
                for i in range(100):
                    rec = await box.submit("order", order_body(f"d{round_}-{i}"))
                    submitted.append(rec.id)
                    if i == 50:
                        await asyncio.to_thread(_end_sessions, url)
            await wait_for(lambda: backlog_empty(box), timeout=60, what="gateway outbox drained")
            await wait_for(lambda: settled(cdb), timeout=30, what="central processed all")
            ids = await cdb.read(lambda c: [r[0] for r in c.execute("SELECT record_id FROM orders")])
            assert isinstance(cdb, PgDB)
            assert cdb.reconnects >= 1, "the writer's session was ended and made again"
            assert not consumer_failed(consumer)
    assert sorted(ids) == sorted(submitted), "every order at central"
    assert len(set(ids)) == len(ids), "once"


def _end_sessions(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        n = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert n is not None and n[0] >= 1


def consumer_failed(consumer: Any) -> bool:
    return bool(consumer.hub.internal_errors)
