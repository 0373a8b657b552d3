"""Central on SQLite and on PostgreSQL gives the same results (issue 17).

The same masters, stock and gateway messages go through the real path - each message received
and processed by ``ingest.apply_envelope`` in its own job of the database's group commit
(``runtime.sqlitedb.DurableDB`` / ``runtime.pgdb.PgDB``), real-time allocation on - and every
table ends with the same rows on both backends: the same order ids and numbers, checks,
history, allocations, runs (inputs and traces), shortages, held orders, status downlink and
acks. Only clock readings and random record ids differ, and are blanked.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from central import wiring
from central.allocate import waves
from central.intake.ingest import apply_envelope, quick_checks, receive_uplink
from central.migrations import all_migrations
from ops import bench_allocation as bench
from protocols import envelope, topics
from protocols.envelope import AckStatus, Record
from runtime.dbapi import IntegrityError, open_db
from tests.central_dump import dump, mixed_envelopes
from tests.conftest import wait_for
from tests.pg import pg_database


def _seed(conn: Any) -> list[str]:
    names = bench._seed_masters(conn, skus=120)
    rng = random.Random(7)
    conn.executemany(  # scarce stock on some items: short lines, back orders
        "UPDATE inventory SET on_hand = ? WHERE sku = ? AND location = ?",
        [(rng.randint(0, 30), s, loc) for s in names[:40] for loc in bench.LOCS],
    )
    conn.executemany(  # low credit: held orders
        "UPDATE customers SET credit_limit = 3000 WHERE code = ?", [(f"C{c}",) for c in range(0, 200, 17)]
    )
    conn.execute("UPDATE customers SET backorder_policy = 'next-order' WHERE code IN ('C1', 'C2', 'C3')")
    return names


def _master_version(conn: Any) -> int:
    return int(conn.execute("SELECT version FROM master_version").fetchone()[0])


async def _run(target: str) -> tuple[dict[str, list[Any]], list[Any]]:
    hub = wiring.hub(waves.AllocationSettings(realtime=True))
    db = open_db(target, migrations=all_migrations(), on_connect=hub.attach)
    async with db:
        names = await db.write(_seed)
        version = await db.read(_master_version)
        acks = []
        for env in mixed_envelopes(names, random.Random(8), orders=300):
            topic = topics.uplink(env.gw)
            got = await db.write(lambda c, e=env, t=topic: apply_envelope(c, topic_gw=e.gw, topic=t, env=e))
            acks += [(a.id, a.status, a.reason, a.ref) for a in got]
        # orders move customers' open value, not what the masters snapshot holds: on
        # PostgreSQL its version stays, so the snapshot stays cached
        assert await db.read(_master_version) == version
        return await db.read(dump), acks


async def test_same_messages_leave_the_same_rows_on_sqlite_and_postgresql(tmp_path: Path) -> None:
    lite, lite_acks = await _run(str(tmp_path / "central.db"))
    with pg_database() as url:
        pg, pg_acks = await _run(url)
    assert pg_acks == lite_acks
    assert sorted(pg) == sorted(lite), "the same tables"
    statuses = {o["status"] for o in lite["orders"]}
    assert {"allocated", "cancelled"} <= statuses, f"the run should exercise allocation: {statuses}"
    assert lite["shortages"], "and shortages"
    assert any(o["status"] == "held" for o in lite["orders"]), "and held orders"
    for t in sorted(lite):
        assert pg[t] == lite[t], f"table {t} differs between SQLite and PostgreSQL"


async def test_one_record_received_by_two_writers_at_once_is_kept_once() -> None:
    """Exactly-once receipt between central workers on one PostgreSQL database: a record
    redelivered to a second worker while the first holds it uncommitted. The second's insert
    of the record id waits for the first's commit, then fails as a unique violation
    (``runtime.dbapi.IntegrityError``, which the consumer leaves unacked); the record is
    stored and queued once, and a later repeat gets the first answer."""
    body = {
        "customer": "S001",
        "channel": "handheld",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "A", "qty": 1}],
    }
    rec = Record("rec-both", 1, "order", 1, body)
    raw = envelope.encode(gw="store-1", sent=0, records=[rec])
    topic = topics.uplink("store-1")

    def receive(c: Any) -> list[Any]:
        up = envelope.decode_uplink(raw, quick=quick_checks(wiring.hub()))
        return [(a.id, a.status) for a in receive_uplink(c, topic_gw="store-1", topic=topic, up=up)]

    with pg_database("pgboth") as url:
        async with (
            open_db(url, migrations=all_migrations()) as one,
            open_db(url, migrations=all_migrations()) as two,
        ):
            held, release = threading.Event(), threading.Event()

            def first(c: Any) -> list[Any]:
                out = receive(c)
                held.set()
                release.wait(20)  # committed only once the second waits on its row
                return out

            f1 = one.write(first)
            await asyncio.to_thread(held.wait, 20)
            f2 = two.write(receive)
            await wait_for(lambda: _waits_on_a_lock(url), what="the second writer to wait on the record")
            release.set()
            assert await f1 == [("rec-both", AckStatus.ACCEPTED)]
            with pytest.raises(IntegrityError):
                await f2
            assert await two.write(receive) == [("rec-both", AckStatus.DUPLICATE)]
            kept = await one.read(
                lambda c: (
                    c.execute("SELECT count(*) FROM processed").fetchone()[0],
                    c.execute("SELECT coalesce(sum(count), 0) FROM work_queue").fetchone()[0],
                )
            )
    assert kept == (1, 1)


def _waits_on_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] >= 1
