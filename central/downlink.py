"""Central's durable downlink: records for a gateway wait in ``downlink_outbox`` until the
gateway's application ack names them (the same rule as the uplink, the other way round).

Producers call :func:`enqueue` inside their own write transaction, so "order allocated" and
"tell the store" commit together. :class:`DownlinkSender` streams each gateway's pending
records out in ``seq`` order, many per message, and resends what is unacked after a timeout
or a reconnect; the gateway applies each record id once and acks after its own commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import aiomqtt
import msgpack
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import envelope, ids, topics
from protocols.bounded import bounded_reason
from protocols.envelope import Ack
from runtime import sqlitedb
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, Migration

log = logging.getLogger(__name__)

RESEND_AFTER_S = 15.0
BATCH_RECORDS = 500
POLL_IDLE_S = 1.0

MIGRATIONS = [
    Migration(
        "downlink_0001",
        """
        CREATE TABLE downlink_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            type TEXT NOT NULL,
            ts INTEGER NOT NULL,
            packed BLOB NOT NULL
        );
        CREATE INDEX downlink_gw ON downlink_outbox(gateway, seq);
        CREATE TABLE downlink_results (
            id TEXT PRIMARY KEY,
            gateway TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            acked_at INTEGER NOT NULL
        );
        """,
    )
]


def enqueue(
    conn: sqlite3.Connection, *, gateway: str, type: str, body: dict[str, Any], record_id: str | None = None
) -> str:
    """Queue a record for ``gateway``; call inside a write transaction. Returns the record id."""
    seq = conn.execute(_NEXT_SEQ).fetchone()[0]
    row = packed_row(gateway, type, body, seq=seq, record_id=record_id)
    insert_rows(conn, [row])
    return row[1]


# AUTOINCREMENT hands out sqlite_sequence's seq + 1 (never less than max(seq) + 1): taken
# first, so a record is packed with its seq and inserted whole in one statement
_NEXT_SEQ = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'downlink_outbox'), 0),"
    " coalesce((SELECT max(seq) FROM downlink_outbox), 0)) + 1"
)


def packed_row(
    gateway: str, type: str, body: dict[str, Any], *, seq: int, record_id: str | None = None
) -> tuple[int, str, str, str, int, bytes]:
    """One ``downlink_outbox`` row ``(seq, id, gateway, type, ts, packed)`` for :func:`insert_rows`;
    ``seq`` must be the next free one (rows are inserted in seq order)."""
    ts = now_ms()
    rid = record_id or ids.new_record_id(ts)  # time-ordered: the id index grows at its end
    gw = topics.check_gateway_id(gateway)
    packed = msgpack.packb({"id": rid, "seq": seq, "type": type, "ts": ts, "body": body}, use_bin_type=True)
    return (seq, rid, gw, type, ts, packed)


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, int, bytes]]) -> None:
    sqlitedb.insert_rows(conn, "INSERT INTO downlink_outbox (seq, id, gateway, type, ts, packed)", rows)


def apply_gateway_acks(conn: sqlite3.Connection, gateway: str, acks: Iterable[Ack]) -> int:
    removed = 0
    t = now_ms()
    for a in acks:
        row = conn.execute(
            "DELETE FROM downlink_outbox WHERE id = ? AND gateway = ? RETURNING type", (a.id, gateway)
        ).fetchone()
        if row is None:
            continue
        removed += 1
        conn.execute(
            "INSERT OR REPLACE INTO downlink_results (id, gateway, type, status, reason, acked_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                a.id,
                gateway,
                row[0],
                a.status.value,
                None if a.reason is None else bounded_reason(a.reason),
                t,
            ),
        )
        if a.status is envelope.AckStatus.REJECTED:
            log.warning("gw=%s rejected downlink record %s: %s", gateway, a.id, a.reason)
    return removed


ACKED_BELOW = "acked_below"  # MQTT 5 user property on downlink messages (WIRE.md, rule 7)


def acked_below(conn: sqlite3.Connection, *, gateway: str, floor: int) -> int:
    """The lowest ``seq`` still in ``gateway``'s downlink outbox (``floor``, the first seq about
    to be sent, when none is left): every downlink record for it with a lower ``seq`` was acked
    and deleted here, and is never sent again."""
    row = conn.execute("SELECT min(seq) FROM downlink_outbox WHERE gateway = ?", (gateway,)).fetchone()
    return min(floor, row[0]) if row[0] is not None else floor


def mark_property(mark: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [(ACKED_BELOW, str(mark))]
    return props


def pending(conn: sqlite3.Connection, *, limit: int) -> list[tuple[int, str, str, bytes]]:
    return _sent_range(conn, after=0, upto=None, limit=limit)


def _sent_range(
    conn: sqlite3.Connection, *, after: int, upto: int | None, limit: int = BATCH_RECORDS * 20
) -> list[tuple[int, str, str, bytes]]:
    rows: list[tuple[int, str, str, bytes]] = conn.execute(
        "SELECT seq, gateway, id, packed FROM downlink_outbox WHERE seq > ? AND seq <= ?"
        " ORDER BY seq LIMIT ?",
        (after, 2**63 - 1 if upto is None else upto, limit),
    ).fetchall()
    return rows


def _gateway_range(
    conn: sqlite3.Connection, *, gateway: str, after: int, upto: int, limit: int = BATCH_RECORDS * 20
) -> list[tuple[int, str, str, bytes]]:
    rows: list[tuple[int, str, str, bytes]] = conn.execute(
        "SELECT seq, gateway, id, packed FROM downlink_outbox WHERE gateway = ? AND seq > ? AND seq <= ?"
        " ORDER BY seq LIMIT ?",
        (gateway, after, upto, limit),
    ).fetchall()
    return rows


class DownlinkSender:
    """Publishes pending downlink records in ``seq`` order (a cursor, so each wake reads only
    what is new), and every ``RESEND_AFTER_S / 2`` rescans for records sent more than
    ``RESEND_AFTER_S`` ago and still unacked, which go again."""

    def __init__(self, db: DurableDB) -> None:
        self.db = db
        self.wakeup = asyncio.Event()
        self._sent_at: dict[str, float] = {}  # record id -> monotonic time last sent
        self._cursor = 0
        self._came_online: set[str] = set()
        self.sent = 0
        self.resent = 0

    def gateway_online(self, gw: str) -> None:
        """A gateway (re)connected: what it has not acked goes to it now, not at the next rescan
        (a new gateway was not subscribed yet when its first records went out)."""
        self._came_online.add(gw)
        self.wakeup.set()

    def notify(self) -> None:
        self.wakeup.set()

    def forget(self, ids: Iterable[str]) -> None:
        for rid in ids:
            self._sent_at.pop(rid, None)

    async def _publish(self, client: aiomqtt.Client, rows: list[tuple[int, str, str, bytes]]) -> None:
        by_gw: dict[str, list[tuple[str, bytes]]] = {}
        first: dict[str, int] = {}
        for seq, gw, rid, packed in rows:
            by_gw.setdefault(gw, []).append((rid, packed))
            first.setdefault(gw, seq)
        for gw, items in by_gw.items():
            mark = await self.db.read(partial(acked_below, gateway=gw, floor=first[gw]))
            for i in range(0, len(items), BATCH_RECORDS):
                chunk = items[i : i + BATCH_RECORDS]
                payload = envelope.encode_raw_records(
                    gw=gw, sent=now_ms(), raw_records=[p for _r, p in chunk]
                )
                await client.publish(topics.downlink(gw), payload, qos=1, properties=mark_property(mark))
                t = time.monotonic()
                for rid, _p in chunk:
                    self._sent_at[rid] = t
                self.sent += len(chunk)

    async def _resend_gateway(self, client: aiomqtt.Client, gw: str) -> None:
        after = 0
        while True:
            rows = await self.db.read(partial(_gateway_range, gateway=gw, after=after, upto=self._cursor))
            if not rows:
                return
            self.resent += len(rows)
            await self._publish(client, rows)
            after = rows[-1][0]

    async def _resend_due(self, client: aiomqtt.Client) -> None:
        after = 0
        while True:
            rows = await self.db.read(partial(_sent_range, after=after, upto=self._cursor))
            if not rows:
                return
            now = time.monotonic()
            due = [r for r in rows if now - self._sent_at.get(r[2], 0.0) > RESEND_AFTER_S]
            if due:
                self.resent += len(due)
                await self._publish(client, due)
            after = rows[-1][0]

    async def run(self, client: aiomqtt.Client) -> None:
        self._sent_at.clear()  # new connection: everything unacked goes again
        self._cursor = 0
        last_scan = time.monotonic()
        while True:
            self.wakeup.clear()
            rows = await self.db.read(partial(_sent_range, after=self._cursor, upto=None))
            if rows:
                await self._publish(client, rows)
                self._cursor = rows[-1][0]
                continue  # there may be more
            if self._came_online:
                gws, self._came_online = self._came_online, set()
                for gw in sorted(gws):
                    await self._resend_gateway(client, gw)
            if time.monotonic() - last_scan >= RESEND_AFTER_S / 2:
                await self._resend_due(client)
                last_scan = time.monotonic()
            try:
                async with asyncio.timeout(RESEND_AFTER_S / 2):
                    await self.wakeup.wait()
            except TimeoutError:
                pass
