"""Retention at the gateway: the watermark central's rule needs, and pruning of history.

``acked_below`` is what the gateway reports in its status (``protocols/WIRE.md``, retention):
the lowest ``seq`` still in the outbox, or the next ``seq`` when it is empty. Every record
with a lower ``seq`` was acked by central and deleted here, and ``seq`` is never reused, so
no such record is ever sent again: central may forget those ids (after its grace period).

``record_results`` (what central answered for each of our records, shown by
``GET /api/records/<id>``) is history, not a duplicate check: those records left the outbox
and are never resent, so rows older than ``RECORD_RESULTS_KEEP_S`` go, in small batches -
except ``rejected`` ones (a store's exceptions, few) and those of a reorder still open (the
stock rule reads its answer). Candidates are found on the read connection and deleted by id,
conditions checked again, so the writer is held only for the deletes.
The inbox of applied downlink ids is kept: central does not yet tell us which downlink
records it can no longer resend (see WIRE.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from functools import partial

from ops.sqlitedb import DurableDB, StorageFull

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


_PRUNABLE = (
    "acked_at < ? AND status != 'rejected'"
    " AND id NOT IN (SELECT record_id FROM stock_reorders WHERE closed_at IS NULL)"
)


def prunable_record_results(conn: sqlite3.Connection, before_ms: int, *, after: str, limit: int) -> list[str]:
    """The next ``limit`` prunable ids after ``after``, in id order (time-ordered ids: the
    oldest first)."""
    return [
        r[0]
        for r in conn.execute(
            f"SELECT id FROM record_results WHERE id > ? AND {_PRUNABLE} ORDER BY id LIMIT ?",
            (after, before_ms, limit),
        )
    ]


def delete_record_results(conn: sqlite3.Connection, ids: list[str], before_ms: int) -> int:
    return conn.execute(
        f"DELETE FROM record_results WHERE id IN (SELECT value FROM json_each(?)) AND {_PRUNABLE}",
        (json.dumps(ids), before_ms),
    ).rowcount


async def prune_once(db: DurableDB, *, now: int | None = None, batch: int | None = None) -> int:
    before = (now_ms() if now is None else now) - int(RECORD_RESULTS_KEEP_S * 1000)
    limit = PRUNE_BATCH if batch is None else batch
    total, after = 0, ""
    while ids := await db.read(partial(prunable_record_results, before_ms=before, after=after, limit=limit)):
        total += await db.write(partial(delete_record_results, ids=ids, before_ms=before))
        after = ids[-1]
    return total


async def run(db: DurableDB, gateway_id: str) -> None:
    """Prune every ``PRUNE_INTERVAL_S`` (the rule is on timestamps in the database: restart-safe)."""
    while True:
        try:
            n = await prune_once(db)
        except StorageFull as e:  # a delete needs room in the WAL too: the next pass does it
            log.warning("gw=%s retention: pruning waits for room: %s", gateway_id, e)
            n = 0
        if n:
            log.info("gw=%s retention: %d record results pruned", gateway_id, n)
        await asyncio.sleep(PRUNE_INTERVAL_S)
