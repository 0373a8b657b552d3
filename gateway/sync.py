"""MQTT sync between a gateway and central (aiomqtt on paho-mqtt 2.x, MQTT 5).

Uplink: records stream out of the SQLite outbox in ``seq`` order, many per MQTT message
(QoS 1). An application-level window caps the messages whose records central has not yet
acked; a record leaves the outbox only when central's ack names it - a broker PUBACK is not
delivery. When acks stop coming (ack timeout) or the connection is lost, everything still in
the outbox is sent again from the start; central answers repeats with ``duplicate``.

Batching never adds latency: the sender publishes whatever is pending as soon as the window
allows, so under load records pile up into big messages and at idle a single record goes
out at once.

Downlink: acks for our records, and records from central (handed to ``on_records``, which
returns the acks we send back once those records are durable here).

Connection: persistent session (clean_start=False, session expiry), Last Will + retained
``status`` (``online`` / ``offline``), jittered exponential reconnect backoff. A lost link
(broker gone, or silent past the keepalive) ends the session and the loop connects again by
itself; anything else that ends the loop is logged, counted (``SyncStats.restarts``) and the
loop started again (``runtime.retry.supervise``). :attr:`Sync.link_up` is true only while a
session is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.outbox import Outbox
from protocols import envelope, topics
from protocols.envelope import Ack, BadRecord, EnvelopeError, Record
from runtime.clock import now_ms
from runtime.mqtt import Client, no_delay, stay_linked
from runtime.retry import TaskGroup, supervise
from runtime.sqlitedb import StorageFull

log = logging.getLogger(__name__)

# Timing constants: module level so tests can shrink them.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
ACK_TIMEOUT_S = 15.0
# While central stays silent, each further resend waits twice as long (up to this cap), so
# an absent central does not fill the broker's queue for it with copies of the same batch.
ACK_TIMEOUT_MAX_S = 240.0
# A clean stop publishes the retained ``offline`` status, waiting at most this long for the broker.
OFFLINE_PUBLISH_S = 1.0
SESSION_EXPIRY_S = 7 * 24 * 3600
BATCH_BYTES = 256 * 1024
# Downlink ack messages being applied at once (each is one database job; they share commits).
MAX_ACK_JOBS = 64
# Central keeps at most central.downlink.WINDOW messages in flight to a gateway (bench figure 9:
# 75 MB peak RSS for 55k order_status records waiting at central). Two bounds here keep a large
# downlink burst from being held decoded in memory (213 -> 110 MB before that window): at most this
# many decoded downlink messages wait for the inbox (the reader then waits; acks for our own
# records behind them wait too), and a message is PUBACKed only once handled, with this MQTT 5
# Receive Maximum, so the broker should keep the rest (Mosquitto 2.0.11 was seen sending past
# it after a reconnect: those wait undecoded in aiomqtt's queue). Delivery depends on neither:
# central resends what we never acked.
MAX_DOWNLINK_QUEUED = 4
RECEIVE_MAXIMUM = 16
DOWNLINK_ACKED_BELOW = "acked_below"  # = central.downlink.ACKED_BELOW (a gateway imports no central)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    keepalive: int = 30


@dataclass(slots=True)
class _InFlight:
    ids: set[str]
    sent_at: float


@dataclass(slots=True)
class SyncStats:
    connected: bool = False
    messages_sent: int = 0
    records_sent: int = 0
    acks_received: int = 0
    resends: int = 0
    reconnects: int = 0
    restarts: int = 0  # the sync loop ended by something else than a lost link (a bug)
    acks_unapplied: int = 0  # acks from central the full disk kept from being applied
    last_sync_ms: int | None = None
    last_ack_at: float | None = None  # time.monotonic() of the last ack from central
    link_since: float = field(default_factory=time.monotonic)  # when the link last went up or down
    clock_offset_ms: int | None = None
    rejects: dict[str, int] = field(default_factory=dict)


RecordsHandler = Callable[[tuple[Record, ...]], Awaitable[list[Ack]]]


class Sync:
    def __init__(
        self,
        *,
        gateway_id: str,
        outbox: Outbox,
        mqtt: MqttSettings,
        window: int = 8,
        batch_records: int = 1000,
        on_records: RecordsHandler | None = None,
        status_extra: Callable[[], dict[str, object]] | None = None,
        ack_timeout: float | None = None,
    ) -> None:
        self.gw = topics.check_gateway_id(gateway_id)
        self.outbox = outbox
        self.mqtt = mqtt
        self.window = window
        self.batch_records = min(batch_records, envelope.MAX_RECORDS)
        self.on_records = on_records
        self.status_extra = status_extra
        self.stats = SyncStats()
        self.connected = asyncio.Event()
        self._inflight: dict[int, _InFlight] = {}
        self._id_to_msg: dict[str, int] = {}
        self._msgno = 0
        self._cursor = 0
        self._progress = asyncio.Event()
        self._ack_slots = asyncio.Semaphore(MAX_ACK_JOBS)
        self._client: Client | None = None
        self.ack_timeout = ACK_TIMEOUT_S if ack_timeout is None else ack_timeout
        self._ack_timeout = self.ack_timeout
        self._connected_at = 0
        self.downlink_acked_below: tuple[int, int] | None = None  # (central's mark, when received)

    # -- connection -------------------------------------------------------------------
    def _client_for_session(self) -> Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        will = aiomqtt.Will(topics.status(self.gw), self._status_payload("offline"), qos=1, retain=True)
        tls = None
        if self.mqtt.tls_ca:
            tls = aiomqtt.TLSParameters(ca_certs=self.mqtt.tls_ca)
        client = Client(
            self.mqtt.host,
            self.mqtt.port,
            identifier=f"gw-{self.gw}",
            username=self.mqtt.username,
            password=self.mqtt.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            will=will,
            keepalive=self.mqtt.keepalive,
            tls_params=tls,
            max_inflight_messages=max(20, self.window * 2),
            timeout=30,
        )
        client.manual_puback()  # before connecting: the broker sends queued downlink at once
        return client

    def _status_payload(self, state: str) -> bytes:
        doc: dict[str, object] = {"gw": self.gw, "state": state, "ts": now_ms()}
        if state == "online":
            doc["connected_at"] = self._connected_at
            if self.status_extra is not None:
                doc.update(self.status_extra())
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def link_up(self) -> bool:
        """True while a session is up: subscribed, status published, and the client has not
        lost the connection (checked at each call, not only when the session ends)."""
        client = self._client
        return self.stats.connected and client is not None and client.link_up

    def link_report(self) -> dict[str, object]:
        """The link as health reports it: ``link`` "up" only while :attr:`link_up`, how long
        it has been so, seconds since central's last ack (None: none since start), reconnects
        and restarts of the sync loop."""
        now = time.monotonic()
        s = self.stats
        up = self.link_up
        return {
            "link": "up" if up else "down",
            "connected": up,
            "link_age_s": round(now - s.link_since, 3),
            "last_ack_age_s": None if s.last_ack_at is None else round(now - s.last_ack_at, 3),
            "reconnects": s.reconnects,
            "sync_restarts": s.restarts,
        }

    async def run(self) -> None:
        """Keep a session up forever; returns only when cancelled."""
        await supervise(f"gw={self.gw} sync", self._link_loop, on_restart=self._on_restart)

    def _on_restart(self) -> None:
        self.stats.restarts += 1

    async def _link_loop(self) -> None:
        await stay_linked(
            self._client_for_session,
            self._session_until_stopped,
            on_down=self._link_down,
            on_retry=self._on_retry,
            backoff=lambda: (BACKOFF_MIN_S, BACKOFF_MAX_S),
            who=f"gw={self.gw}",
        )

    def _on_retry(self) -> None:
        self.stats.reconnects += 1

    async def _session_until_stopped(self, client: Client) -> None:
        try:
            await self._session(client)
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise

    async def _say_offline(self, client: Client) -> None:
        """A clean stop says so: the retained status becomes ``offline`` at once. The broker
        sends the Last Will only when a connection is lost, not on a clean DISCONNECT, so
        without this a stopped gateway's status stayed ``online`` (its ``ts`` frozen) and
        central raised no offline alert. Best effort, bounded by ``OFFLINE_PUBLISH_S``. It calls
        aiomqtt's own publish: the task is being cancelled, and ``Client.publish`` would raise
        that cancel here; the caller raises it once this is done."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(OFFLINE_PUBLISH_S):
                await aiomqtt.Client.publish(
                    client, topics.status(self.gw), self._status_payload("offline"), qos=1, retain=True
                )

    def _link_down(self) -> None:
        if self.stats.connected:
            self.stats.link_since = time.monotonic()
        self.stats.connected = False
        self.connected.clear()
        self._client = None

    async def _session(self, client: Client) -> None:
        self._client = client
        no_delay(client)
        self._connected_at = now_ms()
        self._reset_inflight()
        await client.subscribe(topics.downlink(self.gw), qos=1)
        await client.publish(topics.status(self.gw), self._status_payload("online"), qos=1, retain=True)
        self.stats.connected = True
        self.stats.link_since = time.monotonic()
        self.connected.set()
        log.info("gw=%s connected to %s:%d", self.gw, self.mqtt.host, self.mqtt.port)
        async with TaskGroup() as tg:
            tg.create_task(self._sender(client), name=f"sync-send:{self.gw}")
            records: asyncio.Queue[tuple[aiomqtt.Message, tuple[Record, ...]]] = asyncio.Queue(
                MAX_DOWNLINK_QUEUED
            )
            tg.create_task(self._receiver(client, tg, records), name=f"sync-recv:{self.gw}")
            tg.create_task(self._records_worker(client, records), name=f"sync-records:{self.gw}")
            tg.create_task(self._ack_watchdog(), name=f"sync-watchdog:{self.gw}")

    async def publish_status(self) -> None:
        """Refresh the retained online status (with telemetry from ``status_extra``)."""
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.publish(
                    topics.status(self.gw), self._status_payload("online"), qos=1, retain=True
                )

    # -- uplink -----------------------------------------------------------------------
    def _reset_inflight(self) -> None:
        if self._inflight:
            self.stats.resends += 1
        self._inflight.clear()
        self._id_to_msg.clear()
        self._cursor = 0
        self._progress.set()

    async def _sender(self, client: aiomqtt.Client) -> None:
        up = topics.uplink(self.gw)
        while True:
            while len(self._inflight) >= self.window:
                self._progress.clear()
                await self._progress.wait()
            self.outbox.new_records.clear()
            rows = await self.outbox.pending(after_seq=self._cursor, limit=self.batch_records)
            if not rows:
                await self.outbox.new_records.wait()
                continue
            batch: list[bytes] = []
            size = 0
            for _seq, _rid, packed in rows:
                if batch and size + len(packed) > BATCH_BYTES:
                    break
                batch.append(packed)
                size += len(packed)
            rows = rows[: len(batch)]
            payload = envelope.encode_raw_records(gw=self.gw, sent=now_ms(), raw_records=batch)
            self._msgno += 1
            ids = {rid for _s, rid, _p in rows}
            self._inflight[self._msgno] = _InFlight(ids=ids, sent_at=time.monotonic())
            for rid in ids:
                self._id_to_msg[rid] = self._msgno
            self._cursor = rows[-1][0]
            await client.publish(up, payload, qos=1)
            self.stats.messages_sent += 1
            self.stats.records_sent += len(rows)

    async def _ack_watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.ack_timeout / 4)
            if not self._inflight:
                continue
            oldest = min(m.sent_at for m in self._inflight.values())
            if time.monotonic() - oldest > self._ack_timeout:
                log.warning(
                    "gw=%s no ack from central for %.1fs; resending %d unacked messages from the outbox",
                    self.gw,
                    self._ack_timeout,
                    len(self._inflight),
                )
                self._ack_timeout = min(self._ack_timeout * 2, max(ACK_TIMEOUT_MAX_S, self.ack_timeout))
                self._reset_inflight()
                self.outbox.new_records.set()

    def storage_writable(self) -> None:
        """The disk has room again: acks that could not be applied meanwhile left their records
        in the outbox; send everything unacked again now rather than at the next ack timeout."""
        self._ack_timeout = self.ack_timeout
        if self._inflight:
            log.info(
                "gw=%s storage writable again; resending %d unacked messages", self.gw, len(self._inflight)
            )
            self._reset_inflight()
            self.outbox.new_records.set()

    def _on_acked(self, ids: list[str]) -> None:
        self._ack_timeout = self.ack_timeout
        for rid in ids:
            msgno = self._id_to_msg.pop(rid, None)
            if msgno is None:
                continue
            msg = self._inflight.get(msgno)
            if msg is None:
                continue
            msg.ids.discard(rid)
            msg.sent_at = time.monotonic()  # progress: restart this message's ack timer
            if not msg.ids:
                del self._inflight[msgno]
                self._progress.set()

    # -- downlink ---------------------------------------------------------------------
    async def _receiver(
        self,
        client: Client,
        tg: asyncio.TaskGroup,
        records: asyncio.Queue[tuple[aiomqtt.Message, tuple[Record, ...]]],
    ) -> None:
        """Read the downlink without waiting on the database: each message's acks are applied
        by their own task (concurrent jobs share one group commit), and downlink records go, in
        arrival order, to the one task that hands them to ``on_records`` (at most
        ``MAX_DOWNLINK_QUEUED`` waiting: the reader waits too). A message with records is
        PUBACKed once they are handled, any other at once."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                log.warning("gw=%s downlink payload of type %s ignored", self.gw, type(payload).__name__)
                client.puback(message)
                continue
            try:
                env = envelope.decode(bytes(payload))
            except EnvelopeError as e:
                log.error("gw=%s undecodable downlink message dropped: %s", self.gw, e.reason)
                client.puback(message)
                continue
            if env.gw != self.gw:
                log.error("gw=%s downlink envelope names gateway %r; ignored", self.gw, env.gw)
                client.puback(message)
                continue
            self.stats.clock_offset_ms = env.sent - now_ms()
            self._note_downlink_mark(message)
            if env.acks:
                await self._ack_slots.acquire()
                tg.create_task(self._apply_acks(env.acks), name=f"sync-acks:{self.gw}")
            if env.records:
                await records.put((message, env.records))  # waits while the inbox is behind
            else:
                client.puback(message)
            if env.bad_records:
                tg.create_task(self._reject_bad(client, env.bad_records), name=f"sync-reject:{self.gw}")

    def _note_downlink_mark(self, message: aiomqtt.Message) -> None:
        """Central's ``acked_below`` user property (WIRE.md rule 7): kept, with when it came,
        for the inbox's retention (``gateway.retention``)."""
        for key, value in getattr(message.properties, "UserProperty", None) or ():
            if key == DOWNLINK_ACKED_BELOW and value.isascii() and value.isdigit() and len(value) < 19:
                self.downlink_acked_below = (int(value), now_ms())

    async def _reject_bad(self, client: aiomqtt.Client, bad: tuple[BadRecord, ...]) -> None:
        """Downlink records that do not decode can never be applied: each one with a readable
        id is answered ``rejected`` with its reason, so central stops resending it."""
        for b in bad:
            log.error("gw=%s undecodable downlink record %s rejected: %s", self.gw, b.id, b.reason)
        acks = [Ack(b.id, envelope.AckStatus.REJECTED, b.reason) for b in bad if b.id is not None]
        if acks:
            payload = envelope.encode(gw=self.gw, sent=now_ms(), acks=acks)
            await client.publish(topics.uplink(self.gw), payload, qos=1)

    async def _apply_acks(self, acks: tuple[Ack, ...]) -> None:
        try:
            await self.outbox.apply_acks(acks)
        except StorageFull as e:
            # Not applied: the records stay in the outbox and go again (after the ack timeout,
            # or at once when the disk is writable again); central answers them `duplicate`.
            self.stats.acks_unapplied += len(acks)
            log.warning(
                "gw=%s %d acks from central not applied (%s); records stay queued", self.gw, len(acks), e
            )
            return
        finally:
            self._ack_slots.release()
        self.stats.acks_received += len(acks)
        self.stats.last_sync_ms = now_ms()
        self.stats.last_ack_at = time.monotonic()
        for a in acks:
            if a.status is envelope.AckStatus.REJECTED:
                log.warning("gw=%s record %s rejected by central: %s", self.gw, a.id, a.reason)
        self._on_acked([a.id for a in acks])

    async def _records_worker(
        self, client: Client, records: asyncio.Queue[tuple[aiomqtt.Message, tuple[Record, ...]]]
    ) -> None:
        while True:
            message, recs = await records.get()
            await self._handle_records(client, recs)
            client.puback(message)

    async def _handle_records(self, client: aiomqtt.Client, records: tuple[Record, ...]) -> None:
        if self.on_records is None:
            log.warning("gw=%s %d downlink records but no handler; not acked", self.gw, len(records))
            return
        try:
            acks = await self.on_records(records)
        except StorageFull as e:  # not applied, not acked: central sends them again
            log.warning("gw=%s %d downlink records not applied (%s); left unacked", self.gw, len(records), e)
            return
        if acks:
            payload = envelope.encode(gw=self.gw, sent=now_ms(), acks=acks)
            await client.publish(topics.uplink(self.gw), payload, qos=1)
