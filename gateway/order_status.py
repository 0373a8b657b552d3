"""The latest status central reported for each order this gateway sent (``order_status``
downlink records), so the HT or terminal can show it while central is unreachable.

Wiring: add :data:`MIGRATIONS` to the gateway's migrations and
``inbox.register(RECORD, apply_order_status)``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.inbox import InboxRejected
from protocols.envelope import Record
from protocols.order_changes import parse_order_status
from protocols.records import RecordSchemaError
from runtime.sqlitedb import Migration

RECORD = "order_status"

MIGRATIONS = [
    Migration(
        "order_status_0001",
        """
        CREATE TABLE order_status (
            record_id TEXT PRIMARY KEY,
            order_no TEXT NOT NULL,
            status TEXT NOT NULL,
            detail TEXT NOT NULL,
            version INTEGER NOT NULL,
            at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX order_status_no ON order_status(order_no);
        """,
    )
]


@dataclass(frozen=True, slots=True)
class OrderStatus:
    record_id: str
    order_no: str
    status: str
    detail: str
    version: int
    at: int


def apply_order_status(conn: sqlite3.Connection, rec: Record) -> None:
    """Inbox handler: keep the newest status per order (a higher ``version`` wins)."""
    try:
        st = parse_order_status(rec.body)
    except RecordSchemaError as e:
        raise InboxRejected(e.reason) from None
    conn.execute(
        "INSERT INTO order_status (record_id, order_no, status, detail, version, at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(record_id) DO UPDATE SET order_no = excluded.order_no, status = excluded.status,"
        " detail = excluded.detail, version = excluded.version, at = excluded.at"
        " WHERE excluded.version > order_status.version",
        (st.record_id, st.order_no, st.status, st.detail, st.version, st.at),
    )


def latest(conn: sqlite3.Connection, record_id: str) -> OrderStatus | None:
    """The latest status of the order sent as record ``record_id`` (or its order number)."""
    row = conn.execute(
        "SELECT record_id, order_no, status, detail, version, at FROM order_status"
        " WHERE record_id = ? OR order_no = ?",
        (record_id, record_id),
    ).fetchone()
    return OrderStatus(*row) if row else None
