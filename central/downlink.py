"""Central's durable downlink: records for a gateway wait in ``downlink_outbox`` until the
gateway's application ack names them (the same rule as the uplink, the other way round).

Producers call :func:`enqueue` inside their own write transaction, so "order allocated" and
"tell the store" commit together. :class:`DownlinkSender` streams each gateway's pending
records out in ``seq`` order, many per message, at most ``WINDOW`` messages unacked per
gateway, and sends its window again after an ack timeout or a reconnect; the gateway applies
each record id once and acks after its own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol

import aiomqtt
import msgpack
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central import leases
from protocols import envelope, ids, topics
from protocols.bounded import bounded_reason
from protocols.envelope import Ack
from runtime import sqlitedb
from runtime.clock import now_ms
from runtime.dbapi import in_chunks, next_ids
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

# No ack progress from an online gateway for this long: its window goes again (each further time
# twice as long, up to the cap, as the gateway's own uplink does).
RESEND_AFTER_S = 15.0
RESEND_AFTER_MAX_S = 240.0
BATCH_RECORDS = 500
# Downlink messages per gateway sent and not yet wholly acked. A gateway restarting into a large
# backlog took it all at once, twice over (queued at the broker, then resent on its reconnect):
# peak RSS 110 MB for 55k records (bench figure 9).
WINDOW = 4

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
    (seq,) = next_ids(conn, "downlink_outbox", "seq")
    row = packed_row(gateway, type, body, seq=seq, record_id=record_id)
    insert_rows(conn, [row])
    return row[1]


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
    """The acked records leave ``gateway``'s outbox, each with its answer kept in
    ``downlink_results``; return how many left (an id not queued, or acked again, is skipped).
    A few statements per message of acks, not two per ack (a round trip each on PostgreSQL)."""
    first: dict[str, Ack] = {}
    for a in acks:
        first.setdefault(a.id, a)  # an id acked twice in one message: its first answer
    t = now_ms()
    results = []
    for marks, chunk in in_chunks(list(first)):
        for rid, rtype in conn.execute(
            f"DELETE FROM downlink_outbox WHERE gateway = ? AND id IN ({marks}) RETURNING id, type",
            [gateway, *chunk],
        ).fetchall():
            a = first[rid]
            reason = None if a.reason is None else bounded_reason(a.reason)
            results.append((rid, gateway, rtype, a.status.value, reason, t))
            if a.status is envelope.AckStatus.REJECTED:
                log.warning("gw=%s rejected downlink record %s: %s", gateway, a.id, a.reason)
    conn.executemany(
        "INSERT INTO downlink_results (id, gateway, type, status, reason, acked_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET gateway = excluded.gateway,"
        " type = excluded.type, status = excluded.status, reason = excluded.reason,"
        " acked_at = excluded.acked_at",
        results,
    )
    return len(results)


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
    rows: list[tuple[int, str, str, bytes]] = conn.execute(
        "SELECT seq, gateway, id, packed FROM downlink_outbox ORDER BY seq LIMIT ?", (limit,)
    ).fetchall()
    return rows


def _new_since(conn: sqlite3.Connection, *, after: int) -> list[tuple[str, int]]:
    """``(gateway, highest seq)`` of every gateway with records queued past ``after``."""
    rows: list[tuple[str, int]] = conn.execute(
        "SELECT gateway, max(seq) FROM downlink_outbox WHERE seq > ? GROUP BY gateway", (after,)
    ).fetchall()
    return rows


def _new_rows(conn: sqlite3.Connection, *, after: int, limit: int) -> list[tuple[int, str]]:
    """``(seq, gateway)`` of the next ``limit`` records queued past ``after``, in seq order."""
    rows: list[tuple[int, str]] = conn.execute(
        "SELECT seq, gateway FROM downlink_outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
    ).fetchall()
    return rows


def _rows_at(conn: sqlite3.Connection, *, seqs: list[int]) -> list[tuple[int, str]]:
    """``(seq, gateway)`` of those of ``seqs`` that are in the outbox now."""
    out: list[tuple[int, str]] = []
    for i in range(0, len(seqs), 500):
        chunk = seqs[i : i + 500]
        out += conn.execute(
            f"SELECT seq, gateway FROM downlink_outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk
        ).fetchall()
    return out


def _present(conn: sqlite3.Connection, *, ranges: list[tuple[str, int, int]]) -> dict[str, set[str]]:
    """Per ``(gateway, lo, hi)``: the ids of its records with ``lo <= seq <= hi`` still queued."""
    out: dict[str, set[str]] = {}
    for gw, lo, hi in ranges:
        out[gw] = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM downlink_outbox WHERE gateway = ? AND seq >= ? AND seq <= ?", (gw, lo, hi)
            )
        }
    return out


def _below(conn: sqlite3.Connection, *, gateways: list[tuple[str, int, int]]) -> list[tuple[str, int, str]]:
    """Per ``(gateway, cursor, limit)``: ``(gateway, seq, id)`` of up to ``limit`` of its queued
    records with ``seq <= cursor``."""
    out: list[tuple[str, int, str]] = []
    for gw, cursor, limit in gateways:
        out += [
            (gw, seq, rid)
            for seq, rid in conn.execute(
                "SELECT seq, id FROM downlink_outbox WHERE gateway = ? AND seq <= ? ORDER BY seq LIMIT ?",
                (gw, cursor, limit),
            )
        ]
    return out


def _seqs(conn: sqlite3.Connection, *, gateway: str, seqs: list[int]) -> list[tuple[int, str, str, bytes]]:
    rows: list[tuple[int, str, str, bytes]] = []
    for i in range(0, len(seqs), 500):
        chunk = seqs[i : i + 500]
        rows += conn.execute(
            "SELECT seq, gateway, id, packed FROM downlink_outbox"
            f" WHERE gateway = ? AND seq IN ({','.join('?' * len(chunk))}) ORDER BY seq",
            (gateway, *chunk),
        ).fetchall()
    return rows


def _gateway_range(
    conn: sqlite3.Connection, *, gateway: str, after: int, upto: int, limit: int = BATCH_RECORDS
) -> list[tuple[int, str, str, bytes]]:
    rows: list[tuple[int, str, str, bytes]] = conn.execute(
        "SELECT seq, gateway, id, packed FROM downlink_outbox WHERE gateway = ? AND seq > ? AND seq <= ?"
        " ORDER BY seq LIMIT ?",
        (gateway, after, upto, limit),
    ).fetchall()
    return rows


class Owner(Protocol):
    """Who sends which gateway's downlink when several central workers share one database
    (``central.workers.Worker``): one sender per gateway, by lease ``downlink/<gw>``."""

    live_workers: int

    def holds(self, name: str) -> bool: ...

    def held(self, prefix: str = "") -> list[str]: ...

    async def claim(self, names: Iterable[str]) -> set[str]: ...

    def describe(self) -> dict[str, Any]: ...


LEASE_PREFIX = "downlink/"
# With workers: how often the owner looks in the database for acks another worker received,
# and for records another worker committed late (below what it had seen: on PostgreSQL
# sequence numbers are taken before commit, so a record may appear below one already seen);
# how long a hole in the seq numbers is watched for such a record (a rolled-back
# transaction leaves a hole for ever); and how often free gateways are claimed.
POLL_S = 0.25
LATE_S = 60.0
MAX_HOLES = 100_000
CLAIM_EVERY_S = 1.0
# ... and how often it checks each gateway it owns for records at or below its cursor that it
# neither sent nor saw acked: late commits the hole watch missed (a hole older than LATE_S,
# or a sequence number a rolled-back transaction gave back and a later one used)
RECONCILE_S = 5.0
DISCOVER_ROWS = 20_000


class _Message:
    """A downlink message sent to a gateway and not yet wholly acked."""

    __slots__ = ("hi", "ids", "lo", "sent_at")

    def __init__(self, ids: set[str], sent_at: float, lo: int, hi: int) -> None:
        self.ids = ids
        self.sent_at = sent_at
        self.lo = lo
        self.hi = hi


class _Gateway:
    """What the sender knows of one gateway's downlink in this MQTT session."""

    __slots__ = (
        "ack_timeout",
        "cursor",
        "epoch",
        "id_to_msg",
        "inflight",
        "known_upto",
        "late",
        "owned",
        "sent_upto",
    )

    def __init__(self) -> None:
        self.cursor = 0  # highest seq sent since the window was last (re)started
        self.inflight: dict[int, _Message] = {}
        self.id_to_msg: dict[str, int] = {}
        self.known_upto = 0  # highest seq known to be queued for the gateway
        self.sent_upto = 0  # highest seq ever sent in this session (what goes again is a resend)
        self.ack_timeout = RESEND_AFTER_S
        self.epoch = 0  # counts restarts of the window
        self.late: set[int] = set()  # seqs at or below the cursor that appeared late (workers)
        self.owned = False  # with workers: whether this worker held the gateway's lease at the last look

    def restart_window(self) -> None:
        self.epoch += 1
        self.inflight.clear()
        self.id_to_msg.clear()
        self.late.clear()
        self.cursor = 0


class DownlinkSender:
    """Publishes each gateway's pending records in ``seq`` order, ``BATCH_RECORDS`` a message,
    with at most ``WINDOW`` messages per gateway not yet wholly acked (the gateway's uplink does
    the same with its ``window``): a gateway that is away or slow has at most that much waiting
    for it at the broker, whatever its backlog here.

    The window goes again, from the gateway's oldest unacked record, when acks stop coming for
    ``RESEND_AFTER_S`` while the gateway is online (each further time twice as long, up to
    ``RESEND_AFTER_MAX_S``), and when the gateway (re)connects: the broker may have lost what it
    held (a first connect before the subscription, a broker without persistence). So a gateway
    that comes back receives at most twice the window, never the whole backlog twice over.

    With ``owner`` (central workers sharing a database, ``central.workers``) this sender sends
    only the gateways whose lease ``downlink/<gw>`` it holds, claims gateways that have records
    and no live owner (up to its share of them), and, since a gateway's acks arrive at whichever
    worker the broker hands its uplink to, every ``POLL_S`` looks which of its in-flight records
    left the outbox (acked elsewhere) and which records were committed late below its cursor.
    A gateway whose lease it loses is forgotten; one it takes over starts from its oldest record
    (what the dead owner had in flight goes again: the gateway applies each id once)."""

    def __init__(self, db: DurableDB, *, owner: Owner | None = None) -> None:
        self.db = db
        self.owner = owner
        self.wakeup = asyncio.Event()
        self._gws: dict[str, _Gateway] = {}
        self._seen = 0  # highest seq of the outbox looked at
        self._holes: dict[int, float] = {}  # seq not seen (yet) below _seen -> when first missed
        self._offline: set[str] = set()  # gateways whose status says offline: no timeout resends
        self._msgno = 0
        self._polled = 0.0
        self._claimed = 0.0
        self._reconciled = 0.0
        self.sent = 0
        self.resent = 0
        self.late = 0  # records found committed below what had been seen (workers)
        self.acked_elsewhere = 0  # in-flight records found acked through another worker

    def gateway_online(self, gw: str) -> None:
        """A gateway (re)connected: its window goes again now, not at the next ack timeout."""
        self._offline.discard(gw)
        state = self._gws.get(gw)
        if state is not None:
            state.restart_window()
            state.ack_timeout = RESEND_AFTER_S
        self.wakeup.set()

    def gateway_offline(self, gw: str) -> None:
        """A gateway's status says it is away: what is in flight waits at the broker for its
        persistent session; nothing is resent until it is back (:meth:`gateway_online`)."""
        self._offline.add(gw)

    def is_offline(self, gw: str) -> bool:
        return gw in self._offline

    def notify(self) -> None:
        self.wakeup.set()

    def forget(self, gw: str, ids: Iterable[str]) -> None:
        """``gw`` acked these records (they left the outbox): window slots free up."""
        state = self._gws.get(gw)
        if state is None:
            return
        now = time.monotonic()
        for rid in ids:
            msgno = state.id_to_msg.pop(rid, None)
            if msgno is None or (msg := state.inflight.get(msgno)) is None:
                continue
            state.ack_timeout = RESEND_AFTER_S
            msg.ids.discard(rid)
            msg.sent_at = now  # progress: this message's ack timer starts again
            if not msg.ids:
                del state.inflight[msgno]
                self.wakeup.set()

    def owns(self, gw: str) -> bool:
        return self.owner is None or self.owner.holds(LEASE_PREFIX + gw)

    async def _discover(self) -> None:
        """Note, per gateway, the highest seq queued since the last look."""
        if self.owner is None:
            rows = await self.db.read(partial(_new_since, after=self._seen))
            for gw, upto in rows:
                self._gws.setdefault(gw, _Gateway()).known_upto = upto
                self._seen = max(self._seen, upto)
            return
        while True:
            new = await self.db.read(partial(_new_rows, after=self._seen, limit=DISCOVER_ROWS))
            first = self._seen == 0
            now = time.monotonic()
            for seq, gw in new:
                if not first:  # holes since the last look: records that may still commit
                    for hole in range(self._seen + 1, seq):
                        if len(self._holes) < MAX_HOLES:
                            self._holes[hole] = now
                self._note(gw, seq)
                self._seen = seq
            if len(new) < DISCOVER_ROWS:
                return

    def _note(self, gw: str, seq: int) -> None:
        state = self._gws.setdefault(gw, _Gateway())
        state.known_upto = max(state.known_upto, seq)
        if seq <= state.cursor and seq not in state.late:
            state.late.add(seq)
            self.late += 1

    async def _look_again(self) -> None:
        """With workers: holes filled by late commits, acks received by other workers, and the
        gateways that need an owner."""
        now = time.monotonic()
        if now - self._polled < POLL_S:
            return
        self._polled = now
        if self._holes:
            for seq in [s for s, t in self._holes.items() if now - t > LATE_S]:
                del self._holes[seq]
            for seq, gw in await self.db.read(partial(_rows_at, seqs=sorted(self._holes))):
                del self._holes[seq]
                self._note(gw, seq)
        ranges = []
        for gw, state in self._gws.items():
            if state.inflight and state.owned:
                ranges.append(
                    (
                        gw,
                        min(m.lo for m in state.inflight.values()),
                        max(m.hi for m in state.inflight.values()),
                    )
                )
        if ranges:
            present = await self.db.read(partial(_present, ranges=ranges))
            for gw, ids in present.items():
                state = self._gws[gw]
                gone = [rid for rid in state.id_to_msg if rid not in ids]
                if gone:
                    self.acked_elsewhere += len(gone)
                    self.forget(gw, gone)
        await self._claim(now)
        if now - self._reconciled >= RECONCILE_S:
            self._reconciled = now
            await self._reconcile()

    async def _reconcile(self) -> None:
        owned = [
            (gw, st.cursor, len(st.id_to_msg) + BATCH_RECORDS)
            for gw, st in self._gws.items()
            if st.owned and st.cursor > 0
        ]
        if not owned:
            return
        for gw, seq, rid in await self.db.read(partial(_below, gateways=owned)):
            st = self._gws[gw]
            if rid not in st.id_to_msg and seq <= st.cursor and seq not in st.late:
                st.late.add(seq)
                self.late += 1
                self.wakeup.set()

    async def _claim(self, now: float) -> None:
        owner = self.owner
        assert owner is not None
        for gw, state in self._gws.items():
            owned = owner.holds(LEASE_PREFIX + gw)
            if owned != state.owned:
                state.restart_window()  # taken over (from its oldest record) or lost
                state.ack_timeout = RESEND_AFTER_S
                state.owned = owned
        if now - self._claimed < CLAIM_EVERY_S:
            return
        self._claimed = now
        waiting = [gw for gw, st in self._gws.items() if not st.owned]
        if not waiting:
            return
        held = await self.db.read(partial(leases.holders, prefix=LEASE_PREFIX, now=now_ms()))
        free = [gw for gw in sorted(waiting) if LEASE_PREFIX + gw not in held]
        if not free:
            return
        mine = len(owner.held(LEASE_PREFIX))
        share = -(-len(self._gws) // max(1, owner.live_workers))  # a fair part of the gateways known
        room = max(1 if mine == 0 else 0, share - mine)
        if room:
            try:
                got = await owner.claim(LEASE_PREFIX + gw for gw in free[:room])
            except StorageFull as e:  # a full disk: claimed once there is room
                log.debug("downlink leases not claimed: %s", e)
                return
            if got:
                self.wakeup.set()
            for name in got:
                st = self._gws[name[len(LEASE_PREFIX) :]]
                st.restart_window()
                st.owned = True

    async def _fill(self, client: aiomqtt.Client) -> bool:
        """Send the next message to every gateway with room in its window; False: none had."""
        sent = False
        for gw, state in self._gws.items():
            if len(state.inflight) >= WINDOW or not self.owns(gw):
                continue
            if state.late:
                sent = await self._send(client, gw, state, late=sorted(state.late)) or sent
                continue
            if state.cursor >= state.known_upto:
                continue
            sent = await self._send(client, gw, state) or sent
        return sent

    async def _send(
        self, client: aiomqtt.Client, gw: str, state: _Gateway, *, late: list[int] | None = None
    ) -> bool:
        epoch = state.epoch  # a restart of the window while this awaits voids what it read
        if late is not None:
            state.late.difference_update(late)
            rows = await self.db.read(partial(_seqs, gateway=gw, seqs=late[:BATCH_RECORDS]))
            state.late.update(late[BATCH_RECORDS:])
        else:
            rows = await self.db.read(
                partial(_gateway_range, gateway=gw, after=state.cursor, upto=state.known_upto)
            )
        if not rows:
            if state.epoch == epoch and late is None:
                state.cursor = state.known_upto
            return False
        mark = await self.db.read(partial(acked_below, gateway=gw, floor=rows[0][0]))
        payload = envelope.encode_raw_records(gw=gw, sent=now_ms(), raw_records=[r[3] for r in rows])
        await client.publish(topics.downlink(gw), payload, qos=1, properties=mark_property(mark))
        self.sent += len(rows)
        if state.epoch != epoch:
            return True  # the window was restarted meanwhile: these records go again from its start
        self._msgno += 1
        ids = {r[2] for r in rows}
        state.inflight[self._msgno] = _Message(ids, time.monotonic(), rows[0][0], rows[-1][0])
        for rid in ids:
            state.id_to_msg[rid] = self._msgno
        self.resent += sum(1 for r in rows if r[0] <= state.sent_upto)
        if late is None:
            state.cursor = rows[-1][0]
        state.sent_upto = max(state.sent_upto, rows[-1][0])
        return True

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for gw, state in self._gws.items():
            if not state.inflight or gw in self._offline:
                continue
            oldest = min(m.sent_at for m in state.inflight.values())
            if now - oldest > state.ack_timeout:
                log.warning(
                    "gw=%s no downlink ack for %.1fs; sending its %d unacked messages again",
                    gw,
                    state.ack_timeout,
                    len(state.inflight),
                )
                state.ack_timeout = min(state.ack_timeout * 2, max(RESEND_AFTER_MAX_S, RESEND_AFTER_S))
                state.restart_window()
                self.wakeup.set()

    async def run(self, client: aiomqtt.Client) -> None:
        self._gws.clear()  # new connection: every gateway's window starts from its oldest record
        self._seen = 0
        self._holes.clear()
        while True:
            self.wakeup.clear()
            await self._discover()
            if self.owner is not None:
                await self._look_again()
            while await self._fill(client):
                pass
            self._check_timeouts()
            if self.wakeup.is_set():
                continue
            wait = RESEND_AFTER_S / 4 if self.owner is None else POLL_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wakeup.wait()
