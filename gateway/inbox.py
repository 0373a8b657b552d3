"""The gateway's durable inbox for records from central (order status, master updates,
pick tasks): each record id is applied once, in the same transaction that remembers it,
and acked to central only after that commit.

Handlers register per record type: ``@handler("master_items") def f(conn, record): ...``;
raise :class:`InboxRejected` for a record that can never apply (it is acked ``rejected``
with the reason, so central stops resending it and shows the reason), :class:`InboxNotYet`
for one that cannot apply yet (left unacked: central sends it again).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from gateway import GatewayError
from protocols.bounded import bounded_reason
from protocols.envelope import Ack, AckStatus, Record
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, Migration, is_storage_full, savepoint

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(
        "inbox_0001",
        """
        CREATE TABLE inbox (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            received_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )
]


class InboxRejected(GatewayError):
    """A downlink record that can never apply; ``reason`` (cut to
    :data:`protocols.bounded.MAX_REASON` characters) goes back to central in the ack."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


class InboxNotYet(GatewayError):
    """The record cannot apply yet (it answers for something this gateway has not finished
    recording): left unacked, central sends it again later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


InboxHandler = Callable[[sqlite3.Connection, Record], None]


class Inbox:
    def __init__(self, db: DurableDB) -> None:
        self.db = db
        self.handlers: dict[str, InboxHandler] = {}
        self.applied = 0
        self.errors = 0
        self.listeners: list[Callable[[tuple[Record, ...]], None]] = []

    def register(self, record_type: str, fn: InboxHandler) -> None:
        self.handlers[record_type] = fn

    def _apply(self, conn: sqlite3.Connection, records: tuple[Record, ...]) -> list[Ack]:
        acks = []
        t = now_ms()
        for rec in records:
            row = conn.execute("SELECT status, reason FROM inbox WHERE id = ?", (rec.id,)).fetchone()
            if row is not None:
                status = AckStatus.REJECTED if row[0] == "rejected" else AckStatus.DUPLICATE
                acks.append(Ack(rec.id, status, row[1]))
                continue
            fn = self.handlers.get(rec.type)
            status, reason = AckStatus.ACCEPTED, None
            if fn is None:
                status, reason = AckStatus.REJECTED, f"this gateway has no handler for {rec.type!r}"
            else:
                try:
                    with savepoint(conn, "inbox_rec"):
                        fn(conn, rec)
                except InboxRejected as e:
                    status, reason = AckStatus.REJECTED, e.reason
                except InboxNotYet as e:
                    log.info("downlink record %s (%s) left unacked for now: %s", rec.id, rec.type, e.reason)
                    continue
                except Exception as e:
                    if is_storage_full(e):  # the whole job fails: nothing applied, nothing acked
                        raise
                    # Our bug or another storage fault: undone, left unacked, central resends later.
                    log.exception("downlink record %s (%s) failed; left unacked for retry", rec.id, rec.type)
                    self.errors += 1
                    continue
            conn.execute(
                "INSERT INTO inbox (id, seq, type, status, reason, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (rec.id, rec.seq, rec.type, status.value, reason, t),
            )
            acks.append(Ack(rec.id, status, reason))
        return acks

    async def handle(self, records: tuple[Record, ...]) -> list[Ack]:
        """Apply records from central durably; return the acks to send back."""
        acks = await self.db.write(lambda conn: self._apply(conn, records))
        self.applied += sum(1 for a in acks if a.status is AckStatus.ACCEPTED)
        for listener in self.listeners:
            listener(records)
        return acks
