"""Retention of central's per-record history: which rows may go, and the job that removes them.

``processed`` (the id of every uplink record received, for exactly-once) is the table a
careless rule would break: an id may be forgotten only once its gateway can never send that
record again. A gateway sends a record only while it is in its outbox, and it removes a
record from its outbox only on our ack; its ``seq`` numbers increase and are never reused.
So each gateway reports, in its retained status, ``acked_below``: the lowest ``seq`` still in
its outbox (or the next ``seq`` it will use when the outbox is empty). Every record of that
gateway with a lower ``seq`` has been acked and deleted there and will never be sent again -
among those central had received when the report arrived (a gateway whose database was
replaced starts again at ``seq`` 1, so later rows are never taken for covered).

A copy sent before the report may still be in flight (in the broker's queue, or another
central worker's hands: the status topic is not ordered with the uplink), so a report takes
effect only after ``GRACE_S``: it is kept as a *candidate* and promoted to the gateway's
*mark* once it is that old. Rows of ``processed`` with ``seq`` below the mark go, oldest
first, a small batch per write job. A gateway that never reports (an older version) keeps
all its ids, as before. Age alone would not be safe: a store may hold a record unsent (or
its ack lost) for as long as it is offline, and business data never expires.

``downlink_results`` (what each gateway answered to our downlink records) is history only:
the gateway acked the record, so it left our downlink outbox and is never sent again; rows
older than ``DOWNLINK_RESULTS_KEEP_S`` go. ``quarantine`` is kept: it is for a person.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from functools import partial

from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

# Timing constants: module level so tests can shrink them.
GRACE_S = 3600.0  # a watermark report takes effect this long after central received it
DOWNLINK_RESULTS_KEEP_S = 7 * 24 * 3600.0
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 2000  # rows per write job: the writer is never held long

MIGRATIONS = [
    Migration(
        "retention_0001_marks",
        """
        CREATE TABLE retention_marks (
            gateway TEXT PRIMARY KEY,
            mark INTEGER NOT NULL DEFAULT 0,
            mark_at INTEGER NOT NULL DEFAULT 0,
            candidate INTEGER,
            candidate_at INTEGER
        );
        """,
    )
]


def report(conn: sqlite3.Connection, gateway: str, acked_below: int, now: int) -> None:
    """A gateway says every record of its with ``seq < acked_below`` left its outbox."""
    row = conn.execute(
        "SELECT candidate, candidate_at FROM retention_marks WHERE gateway = ?", (gateway,)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO retention_marks (gateway, candidate, candidate_at) VALUES (?, ?, ?)",
            (gateway, acked_below, now),
        )
    elif row[0] is None:
        conn.execute(
            "UPDATE retention_marks SET candidate = ?, candidate_at = ? WHERE gateway = ?",
            (acked_below, now, gateway),
        )
    # else: keep the older candidate until it is promoted (a newer one would never age)


def promote(conn: sqlite3.Connection, *, now: int, grace_ms: int) -> None:
    """A candidate at least ``grace_ms`` old becomes the gateway's mark, with the time it was
    received (``mark_at``): the pair is always one real report."""
    conn.execute(
        "UPDATE retention_marks SET mark = candidate, mark_at = candidate_at,"
        " candidate = NULL, candidate_at = NULL"
        " WHERE candidate IS NOT NULL AND candidate_at <= ?",
        (now - grace_ms,),
    )


def marks(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """Per gateway, its mark and when central received the report that set it."""
    return {
        gw: (mark, at)
        for gw, mark, at in conn.execute("SELECT gateway, mark, mark_at FROM retention_marks WHERE mark > 0")
    }


def prune_processed(conn: sqlite3.Connection, *, gateway: str, mark: int, mark_at: int, limit: int) -> int:
    """Delete up to ``limit`` of ``gateway``'s ``processed`` rows with ``seq < mark`` received
    before the report that set the mark. A report covers only what central had received when
    it was sent, so rows received later - a gateway whose database was replaced starts its
    ``seq`` again at 1 - are never taken for covered."""
    return conn.execute(
        "DELETE FROM processed WHERE record_id IN (SELECT record_id FROM processed"
        " WHERE gateway = ? AND seq < ? AND processed_at < ? ORDER BY seq LIMIT ?)",
        (gateway, mark, mark_at, limit),
    ).rowcount


def old_downlink_results(conn: sqlite3.Connection, before_ms: int, *, after: str, limit: int) -> list[str]:
    """The next ``limit`` ids acked before ``before_ms``, after ``after`` in id order (read
    side: the writer is held only for the delete)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM downlink_results WHERE id > ? AND acked_at < ? ORDER BY id LIMIT ?",
            (after, before_ms, limit),
        )
    ]


def delete_downlink_results(conn: sqlite3.Connection, ids: list[str], before_ms: int) -> int:
    """Delete ``ids`` (one :func:`old_downlink_results` batch, in id order) - by their range: a
    row that came into it since was acked now, not before ``before_ms``, and stays."""
    if not ids:
        return 0
    return conn.execute(
        "DELETE FROM downlink_results WHERE id >= ? AND id <= ? AND acked_at < ?",
        (ids[0], ids[-1], before_ms),
    ).rowcount


@dataclass(slots=True)
class PruneStats:
    processed: int = 0
    downlink_results: int = 0


async def prune_once(
    db: DurableDB, *, now: int | None = None, grace_s: float | None = None, batch: int | None = None
) -> PruneStats:
    """One pass: promote aged reports, then delete in batches of ``batch`` rows (one write
    job each) until nothing is left to delete."""
    t = now_ms() if now is None else now
    grace_ms = int((GRACE_S if grace_s is None else grace_s) * 1000)
    limit = PRUNE_BATCH if batch is None else batch
    stats = PruneStats()
    await db.write(lambda conn: promote(conn, now=t, grace_ms=grace_ms))
    for gw, (mark, mark_at) in (await db.read(marks)).items():
        while True:
            n = await db.write(partial(prune_processed, gateway=gw, mark=mark, mark_at=mark_at, limit=limit))
            stats.processed += n
            if n < limit:
                break
    before = t - int(DOWNLINK_RESULTS_KEEP_S * 1000)
    after = ""
    while ids := await db.read(partial(old_downlink_results, before_ms=before, after=after, limit=limit)):
        stats.downlink_results += await db.write(partial(delete_downlink_results, ids=ids, before_ms=before))
        after = ids[-1]
    return stats


async def run(db: DurableDB) -> None:
    """Prune every ``PRUNE_INTERVAL_S``; all state is in the database, so a restart resumes."""
    while True:
        try:
            stats = await prune_once(db)
        except StorageFull as e:  # a delete needs room in the WAL too: the next pass does it
            log.warning("retention: pruning waits for room: %s", e)
            stats = PruneStats()
        if stats.processed or stats.downlink_results:
            log.info(
                "retention: %d processed ids, %d downlink results pruned",
                stats.processed,
                stats.downlink_results,
            )
        await asyncio.sleep(PRUNE_INTERVAL_S)
