"""The gateway's durable outbox: every uplink record waits here until central's
application-level ack names it.

Records are packed to msgpack once, at submit, and stored as blobs in ``seq`` order; the
sync task streams them out of SQLite in batches (the backlog is never held in memory).
``seq`` is the per-gateway increasing sequence number (AUTOINCREMENT: never reused, even
after the outbox drains).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgpack

from gateway.inbox import InboxNotYet, InboxRejected
from protocols import ids
from protocols.bounded import value_repr
from protocols.envelope import Ack, AckStatus, Record, pack_record
from runtime.clock import now_ms
from runtime.sqlitedb import ClosedError, DurableDB, Migration, insert_rows, is_storage_full, savepoint

MIGRATIONS = [
    Migration(
        "outbox_0001",
        """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            ts INTEGER NOT NULL,
            packed BLOB NOT NULL
        );
        CREATE TABLE record_results (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            ref TEXT,
            acked_at INTEGER NOT NULL
        );
        """,
    )
]


@dataclass(frozen=True, slots=True)
class Backlog:
    count: int
    oldest_ts: int | None  # creation time (ms) of the oldest unacked record

    def oldest_age_s(self, now: int | None = None) -> float:
        if self.oldest_ts is None:
            return 0.0
        return max(0.0, ((now or now_ms()) - self.oldest_ts) / 1000)


_Item = tuple[str, dict[str, Any], str | None, "asyncio.Future[Record]"]


class _Batch:
    """Submits waiting for the same database job."""

    __slots__ = ("items", "taken")

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.taken = False


class Outbox:
    def __init__(self, db: DurableDB) -> None:
        self.db = db
        self._seq: int | None = None
        self._batch: _Batch | None = None
        self._batch_lock = threading.Lock()
        self._packer = msgpack.Packer(use_bin_type=True)  # used only on the writer thread
        self.new_records = asyncio.Event()
        self.submitted = 0
        self.acked = 0
        self.acks_repeated = 0  # `duplicate` acks: records central had taken before
        self.rejected = 0

    def _next_seq(self, conn: sqlite3.Connection) -> int:
        # Runs only on the writer thread. After a rolled-back job the counter may skip
        # a number: sequences are increasing, not contiguous.
        if self._seq is None:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            self._seq = row[0] if row else 0
        self._seq += 1
        return self._seq

    def _reserve_seqs(self, conn: sqlite3.Connection, n: int) -> int:
        """Take ``n`` sequence numbers at once; returns the first."""
        first = self._next_seq(conn)
        self._seq = first + n - 1
        return first

    def add(
        self,
        conn: sqlite3.Connection,
        type: str,
        body: dict[str, Any],
        *,
        record_id: str | None = None,
        ts: int | None = None,
    ) -> Record:
        """Put a record in the outbox. Call inside a ``db.write`` job, so it commits
        atomically with the caller's own writes."""
        rec = Record(
            id=record_id or ids.new_record_id(),  # time-ordered: the id index grows at its end
            seq=self._next_seq(conn),
            type=type,
            ts=ts if ts is not None else now_ms(),
            body=body,
        )
        conn.execute(
            "INSERT INTO outbox (seq, id, type, ts, packed) VALUES (?, ?, ?, ?, ?)",
            (rec.seq, rec.id, rec.type, rec.ts, pack_record(rec)),
        )
        return rec

    async def submit(self, type: str, body: dict[str, Any], *, record_id: str | None = None) -> Record:
        """Durably enqueue one record; returns after the commit (fsync) that holds it.

        Concurrent submits share one database job: the first opens a batch and queues its
        job, the next ones join it until the writer thread takes it, and the job inserts
        them all with a few multi-row statements (``insert_rows``). A record that cannot be
        inserted (say a repeated ``record_id``) fails alone: its caller gets the error, its
        neighbours still commit.
        """
        fut: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        with self._batch_lock:
            batch = self._batch
            if batch is None or batch.taken:
                batch = self._batch = _Batch()
                opened = True
            else:
                opened = False
            batch.items.append((type, body, record_id, fut))
        if opened:
            self.db.write(partial(self._write_batch, batch)).add_done_callback(
                partial(self._batch_done, batch)
            )
        return await fut

    def _write_batch(self, batch: _Batch, conn: sqlite3.Connection) -> list[Record | Exception]:
        with self._batch_lock:
            batch.taken = True  # later submits open a new batch
        items = batch.items
        n = len(items)
        now = now_ms()
        first = self._reserve_seqs(conn, n)
        fresh = ids.new_record_ids(n, now)
        pack = self._packer.pack
        recs: list[Record | Exception] = []
        rows = []
        try:
            for i, (t, body, given_id, _fut) in enumerate(items):
                rid = given_id or fresh[i]
                seq = first + i
                wire = {"id": rid, "seq": seq, "type": t, "ts": now, "body": body}  # = pack_record's
                recs.append(Record(rid, seq, t, now, body))
                rows.append((seq, rid, t, now, pack(wire)))
        except Exception:  # a body msgpack cannot encode: one by one, so only it fails
            self._packer = msgpack.Packer(use_bin_type=True)
            return [self._insert_one(conn, t, body, rid) for t, body, rid, _fut in items]
        try:
            with savepoint(conn, "outbox_batch"):
                insert_rows(conn, "INSERT INTO outbox (seq, id, type, ts, packed)", rows)
        except Exception as e:  # one bad record (say a repeated id): one by one, so only it fails
            if is_storage_full(e):  # not one record's fault: the whole job fails (StorageFull)
                raise
            return [self._insert_one(conn, t, body, rid) for t, body, rid, _fut in items]
        return recs

    def _insert_one(
        self, conn: sqlite3.Connection, type: str, body: dict[str, Any], record_id: str | None
    ) -> Record | Exception:
        try:
            with savepoint(conn, "outbox_one"):
                return self.add(conn, type, body, record_id=record_id)
        except Exception as e:
            if is_storage_full(e):
                raise
            return e

    def _batch_done(self, batch: _Batch, job: asyncio.Future[list[Record | Exception]]) -> None:
        if job.cancelled() or job.exception() is not None:  # not committed: all fail
            err = ClosedError("database closed") if job.cancelled() else job.exception()
            for *_, fut in batch.items:
                if not fut.done():
                    fut.set_exception(err)  # type: ignore[arg-type]
            return
        done = 0
        for (*_, fut), result in zip(batch.items, job.result(), strict=True):
            if isinstance(result, Exception):
                if not fut.done():
                    fut.set_exception(result)
                continue
            done += 1
            if not fut.done():
                fut.set_result(result)
        self.submitted += done
        if done:
            self.new_records.set()

    def notify(self, n: int = 1) -> None:
        """Tell the sync task that records were added by a caller's own ``db.write`` job."""
        self.submitted += n
        self.new_records.set()

    async def pending(self, *, after_seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        """The next unacked records after ``after_seq``, as (seq, id, packed)."""

        def q(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
            return conn.execute(
                "SELECT seq, id, packed FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()

        return await self.db.read(q)

    async def apply_acks(self, acks: Iterable[Ack]) -> int:
        """Remove acknowledged records; remember what central said about each."""
        acks = list(acks)
        if not acks:
            return 0
        t = now_ms()

        # Most acks say only a status (a message's acks are usually all "accepted"): those
        # records move to record_results and leave the outbox in two statements per status,
        # all in SQL. Acks with a reason or a ref go one row each.
        # A `duplicate` answers a record central took earlier, whose first ack was lost on the
        # way (the gateway resent it): for the store it was accepted once, and is kept so; the
        # repeat is only counted (``acks_repeated``, a sign of lost acks or a slow central).
        repeated = sum(1 for a in acks if a.status is AckStatus.DUPLICATE)
        acks = [
            dataclasses.replace(a, status=AckStatus.ACCEPTED) if a.status is AckStatus.DUPLICATE else a
            for a in acks
        ]
        plain: dict[AckStatus, list[str]] = {}
        other: list[Ack] = []
        for a in acks:
            if a.reason is None and a.ref is None:
                plain.setdefault(a.status, []).append(a.id)
            else:
                other.append(a)

        def job(conn: sqlite3.Connection) -> int:
            # An id no longer in the outbox was acked earlier (a repeated ack): nothing to do.
            removed = 0
            for status, acked in plain.items():
                # the ids as one JSON array: the same two statements (kept prepared) for any count
                some = json.dumps(acked)
                conn.execute(
                    "INSERT OR REPLACE INTO record_results (id, type, status, reason, ref, acked_at)"
                    " SELECT id, type, ?, NULL, NULL, ? FROM outbox"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (status.value, t, some),
                )
                removed += conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (some,)
                ).rowcount
            if other:
                types = dict(
                    conn.execute(
                        "SELECT id, type FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps([a.id for a in other]),),
                    )
                )
                live = [a for a in other if a.id in types]
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(a.id,) for a in live])
                conn.executemany(
                    "INSERT OR REPLACE INTO record_results (id, type, status, reason, ref, acked_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(a.id, types[a.id], a.status.value, a.reason, a.ref, t) for a in live],
                )
                removed += len(live)
            return removed

        removed = await self.db.write(job)
        self.acked += removed
        self.acks_repeated += repeated
        self.rejected += sum(1 for a in acks if a.status is AckStatus.REJECTED)
        return removed

    async def backlog(self) -> Backlog:
        def q(conn: sqlite3.Connection) -> Backlog:
            count = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            oldest = conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
            return Backlog(count=count, oldest_ts=oldest[0] if oldest else None)

        return await self.db.read(q)

    async def result(self, record_id: str) -> dict[str, Any] | None:
        """What central said about a record, or its pending state."""

        def q(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT id, type, status, reason, ref, acked_at FROM record_results WHERE id = ?",
                (record_id,),
            ).fetchone()
            if row:
                return dict(zip(("id", "type", "status", "reason", "ref", "acked_at"), row, strict=True))
            row = conn.execute("SELECT id, type, seq FROM outbox WHERE id = ?", (record_id,)).fetchone()
            if row:
                return {"id": row[0], "type": row[1], "seq": row[2], "status": "pending"}
            return None

        return await self.db.read(q)


RECORD_RESULT = "record_result"


def apply_record_result(conn: sqlite3.Connection, rec: Record) -> None:
    """Inbox handler: central accepted a record on receipt but refused it in processing
    (body ``{"id", "status", "reason"}``); keep its final answer for the store to see."""
    rid, status, reason = rec.body.get("id"), rec.body.get("status"), rec.body.get("reason")
    if not isinstance(rid, str) or status not in ("accepted", "rejected"):
        raise InboxRejected(f"record_result: bad body {value_repr(rec.body)}")
    updated = conn.execute(
        "UPDATE record_results SET status = ?, reason = ? WHERE id = ?",
        (status, reason if isinstance(reason, str) else None, rid),
    ).rowcount
    if not updated and conn.execute("SELECT 1 FROM outbox WHERE id = ?", (rid,)).fetchone():
        # central's ack for the record has not been applied here yet (a full disk refused it,
        # or it is on its way): the final answer would be lost, so it waits for the next send
        raise InboxNotYet(f"record_result for {rid}: its ack is not applied yet")
