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
The inbox of applied downlink ids (the downlink's duplicate check) follows the uplink's rule
the other way round: central puts ``acked_below`` on every downlink message (an MQTT 5 user
property: the lowest ``seq`` still in its downlink outbox for us); after ``GRACE_S`` such a
report becomes the mark, and inbox rows with a lower ``seq`` received before the report go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from functools import partial

from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

# Timing constants: module level so tests can shrink them.
RECORD_RESULTS_KEEP_S = 7 * 24 * 3600.0  # longer than central's processing lag behind receipt
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 2000  # rows per write job: device submits never wait long behind it
GRACE_S = 3600.0  # central's downlink report takes effect this long after it came

MIGRATIONS = [
    Migration(
        "retention_0001_inbox_mark",
        """
        CREATE TABLE inbox_mark (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            mark INTEGER NOT NULL DEFAULT 0,
            mark_at INTEGER NOT NULL DEFAULT 0,
            candidate INTEGER,
            candidate_at INTEGER
        );
        """,
    )
]

# one statement, so one snapshot: a record being committed meanwhile has a seq >= the answer
_ACKED_BELOW = (
    "SELECT coalesce((SELECT min(seq) FROM outbox),"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'outbox') + 1, 1)"
)


def acked_below(conn: sqlite3.Connection) -> int:
    """Every record with a lower ``seq`` has left the outbox for good."""
    value: int = conn.execute(_ACKED_BELOW).fetchone()[0]
    return value


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


def report_downlink(conn: sqlite3.Connection, acked_below: int, at: int) -> None:
    """Central said every downlink record for us with ``seq < acked_below`` left its outbox
    (received at ``at``). Kept as the candidate unless an older one waits to be promoted."""
    conn.execute(
        "INSERT INTO inbox_mark (one, candidate, candidate_at) VALUES (1, ?, ?)"
        " ON CONFLICT(one) DO UPDATE SET candidate = excluded.candidate, candidate_at = excluded.candidate_at"
        " WHERE candidate IS NULL",
        (acked_below, at),
    )


def promote_downlink(conn: sqlite3.Connection, *, now: int, grace_ms: int) -> tuple[int, int] | None:
    """Promote a candidate at least ``grace_ms`` old; the mark and its report's time."""
    conn.execute(
        "UPDATE inbox_mark SET mark = candidate, mark_at = candidate_at,"
        " candidate = NULL, candidate_at = NULL"
        " WHERE candidate IS NOT NULL AND candidate_at <= ?",
        (now - grace_ms,),
    )
    row = conn.execute("SELECT mark, mark_at FROM inbox_mark WHERE mark > 0").fetchone()
    return (row[0], row[1]) if row else None


def prunable_inbox(conn: sqlite3.Connection, *, mark: int, mark_at: int, after: str, limit: int) -> list[str]:
    """The next ``limit`` inbox ids after ``after`` below the mark and received before its
    report (a central whose database was replaced numbers its downlink from 1 again: later
    rows are not covered). On the read connection: the writer only deletes."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM inbox WHERE id > ? AND seq < ? AND received_at < ? ORDER BY id LIMIT ?",
            (after, mark, mark_at, limit),
        )
    ]


def delete_inbox(conn: sqlite3.Connection, *, ids: list[str], mark: int, mark_at: int) -> int:
    return conn.execute(
        "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?)) AND seq < ? AND received_at < ?",
        (json.dumps(ids), mark, mark_at),
    ).rowcount


async def prune_once(
    db: DurableDB,
    *,
    now: int | None = None,
    batch: int | None = None,
    downlink_mark: tuple[int, int] | None = None,
    grace_s: float | None = None,
) -> int:
    """One pass; ``downlink_mark`` is central's latest ``acked_below`` and when it came."""
    t = now_ms() if now is None else now
    before = t - int(RECORD_RESULTS_KEEP_S * 1000)
    limit = PRUNE_BATCH if batch is None else batch
    total, after = 0, ""
    while ids := await db.read(partial(prunable_record_results, before_ms=before, after=after, limit=limit)):
        total += await db.write(partial(delete_record_results, ids=ids, before_ms=before))
        after = ids[-1]
    if downlink_mark is not None:
        await db.write(partial(report_downlink, acked_below=downlink_mark[0], at=downlink_mark[1]))
    grace_ms = int((GRACE_S if grace_s is None else grace_s) * 1000)
    mark = await db.write(partial(promote_downlink, now=t, grace_ms=grace_ms))
    if mark is None:
        return total
    after = ""
    while ids := await db.read(
        partial(prunable_inbox, mark=mark[0], mark_at=mark[1], after=after, limit=limit)
    ):
        total += await db.write(partial(delete_inbox, ids=ids, mark=mark[0], mark_at=mark[1]))
        after = ids[-1]
    return total


async def run(db: DurableDB, gateway_id: str, downlink_mark: Callable[[], tuple[int, int] | None]) -> None:
    """Prune every ``PRUNE_INTERVAL_S`` (the rule's state is in the database: restart-safe);
    ``downlink_mark`` gives central's latest ``acked_below`` (``Sync.downlink_acked_below``)."""
    while True:
        try:
            n = await prune_once(db, downlink_mark=downlink_mark())
        except StorageFull as e:  # a delete needs room in the WAL too: the next pass does it
            log.warning("gw=%s retention: pruning waits for room: %s", gateway_id, e)
            n = 0
        if n:
            log.info("gw=%s retention: %d record results pruned", gateway_id, n)
        await asyncio.sleep(PRUNE_INTERVAL_S)
