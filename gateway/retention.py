"""Retention at the gateway: the watermark central's rule needs, and pruning of history.

``acked_below`` is what the gateway reports in its status (``protocols/WIRE.md``, retention):
the lowest ``seq`` still in the outbox, or the next ``seq`` when it is empty. Every record
with a lower ``seq`` was acked by central and deleted here, and ``seq`` is never reused, so
no such record is ever sent again: central may forget those ids (after its grace period).

``record_results`` (what central answered for each of our records, shown by
``GET /api/records/<id>``) is history, not a duplicate check: those records left the outbox
and are never resent, so rows older than ``RECORD_RESULTS_KEEP_S`` go, in small batches.
The inbox of applied downlink ids is kept: central does not yet tell us which downlink
records it can no longer resend (see WIRE.md).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from ops.sqlitedb import DurableDB

log = logging.getLogger(__name__)

# Timing constants: module level so tests can shrink them.
RECORD_RESULTS_KEEP_S = 7 * 24 * 3600.0  # longer than central's processing lag behind receipt
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 2000  # rows per write job: device submits never wait long behind it

# one statement, so one snapshot: a record being committed meanwhile has a seq >= the answer
_ACKED_BELOW = (
    "SELECT coalesce((SELECT min(seq) FROM outbox),"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'outbox') + 1, 1)"
)


def acked_below(conn: sqlite3.Connection) -> int:
    """Every record with a lower ``seq`` has left the outbox for good."""
    value: int = conn.execute(_ACKED_BELOW).fetchone()[0]
    return value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def prune_record_results(conn: sqlite3.Connection, before_ms: int, *, limit: int) -> int:
    return conn.execute(
        "DELETE FROM record_results WHERE id IN (SELECT id FROM record_results WHERE acked_at < ? LIMIT ?)",
        (before_ms, limit),
    ).rowcount


async def prune_once(db: DurableDB, *, now: int | None = None, batch: int | None = None) -> int:
    before = (now_ms() if now is None else now) - int(RECORD_RESULTS_KEEP_S * 1000)
    limit = PRUNE_BATCH if batch is None else batch
    total = 0
    while True:
        n = await db.write(lambda conn: prune_record_results(conn, before, limit=limit))
        total += n
        if n < limit:
            return total


async def run(db: DurableDB, gateway_id: str) -> None:
    """Prune every ``PRUNE_INTERVAL_S`` (the rule is on timestamps in the database: restart-safe)."""
    while True:
        n = await prune_once(db)
        if n:
            log.info("gw=%s retention: %d record results pruned", gateway_id, n)
        await asyncio.sleep(PRUNE_INTERVAL_S)
