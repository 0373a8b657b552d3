"""Central's MQTT side: consume every gateway's uplink, apply, ack on its downlink.

Each message is decoded on the event loop and its records applied in a ``DurableDB.write``
job; jobs from messages that arrive together share one commit (group commit). The acks go
out on the sender's downlink only after that commit. Messages are taken in arrival order and
their jobs queued in that order, so per-gateway sequence is kept.

Fault injection for crash tests: if ``STOREGATE_FAULT_KILL_AFTER_COMMIT`` names a file that
does not exist yet, central creates it and SIGKILLs itself right after its first commit of
records, before the ack is published (a real crash at the worst moment, once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central import wiring
from central.downlink import DownlinkSender, Owner, apply_gateway_acks
from central.hub import Hub
from central.intake.ingest import quarantine_message, quick_checks, receive_uplink
from central.intake.processor import Processor
from protocols import envelope, topics
from protocols.bounded import JsonError, json_loads
from protocols.envelope import Ack, AckStatus, EnvelopeError
from runtime.clock import now_ms
from runtime.dbapi import IntegrityError
from runtime.mqtt import Client, no_delay, stay_linked
from runtime.retry import TaskGroup, supervise
from runtime.sqlitedb import DatabaseError, DurableDB, StorageFull

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
MAX_OUTSTANDING = 256
# Receive jobs queued at the database at once. Jobs queued together share one transaction
# (group commit), and none of their acks can go out before that commit: with many big
# messages queued, the gateway would get every ack at the end of one long transaction and its
# window would sit empty meanwhile. Two keeps the writer busy (the next message is decoded and
# queued while one is written) and lets each message's acks go out as soon as it is committed.
RECEIVE_JOBS = 2
SESSION_EXPIRY_S = 24 * 3600
# A central worker among several (``central.app.for_worker``): the broker goes on handing a
# dead member of the share group its part of the uplinks, queued in its session, until that
# session expires (Mosquitto, like other brokers, counts a disconnected session as a member).
# Nothing is lost (the gateways resend what central did not ack), but a worker that does not
# come back would hold a third of the traffic for a day: a worker's session lasts this long.
WORKER_SESSION_EXPIRY_S = 10


@dataclass(slots=True)
class ConsumerStats:
    messages: int = 0
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    quarantined_messages: int = 0
    storage_refused: int = 0  # messages not taken (nor acked) because the disk was full
    connected: bool = False
    reconnects: int = 0
    restarts: int = 0  # the MQTT loop ended by something else than a lost link (a bug)
    link_since: float = field(default_factory=time.monotonic)  # when the link last went up or down
    per_gateway_last_ms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    client_id: str = "central-1"
    shared_subscription: bool = True
    keepalive: int = 30
    # how long the broker keeps central's session (its subscriptions and queued messages)
    # after the connection is gone
    session_expiry_s: int = SESSION_EXPIRY_S
    # The MQTT 5 share group of central's uplink subscription. broker-init writes a secret one:
    # whoever joins central's group takes uplinks away from it (ops/BROKER.md, "Shared subscriptions").
    share_group: str = topics.CENTRAL_SHARE_GROUP

    def __post_init__(self) -> None:
        try:
            topics.check_share_group(self.share_group)
        except topics.TopicError as e:
            raise ValueError(f"share_group: {e}") from None


class Consumer:
    def __init__(
        self,
        *,
        db: DurableDB,
        broker: BrokerSettings,
        on_status: Callable[[str, bytes], Awaitable[None]] | None = None,
        hub: Hub | None = None,
        on_bridge_state: Callable[[str, bytes], Awaitable[None]] | None = None,
        owner: Owner | None = None,
    ) -> None:
        """``hub``: the central's wiring, as its database was opened with (``central.wiring``);
        by default the standard one. ``owner``: this worker's leases when several central
        workers share the database (``central.workers``): it sends only the gateways it owns."""
        self.db = db
        self.hub = hub or wiring.hub()
        self.on_status = on_status
        self.on_bridge_state = on_bridge_state  # regional brokers' bridges (central.regions)
        self.broker = broker
        self.stats = ConsumerStats()
        self.connected = asyncio.Event()
        self._sem = asyncio.Semaphore(MAX_OUTSTANDING)
        self._receive_slots = asyncio.Semaphore(RECEIVE_JOBS)  # FIFO: arrival order is kept
        self._fault_marker = os.environ.get("STOREGATE_FAULT_KILL_AFTER_COMMIT")
        self.client: Client | None = None
        self.downlink = DownlinkSender(db, owner=owner)
        self.receiving = 0  # messages being received right now
        self._quick = quick_checks(self.hub)
        self._sessions: dict[str, object] = {}  # gateway -> its MQTT session's connected_at
        self.processor = Processor(db, on_progress=self.downlink.notify, receiving=lambda: self.receiving > 0)

    def _client(self) -> Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.broker.session_expiry_s
        tls = aiomqtt.TLSParameters(ca_certs=self.broker.tls_ca) if self.broker.tls_ca else None
        return Client(
            self.broker.host,
            self.broker.port,
            identifier=self.broker.client_id,
            username=self.broker.username,
            password=self.broker.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            tls_params=tls,
            keepalive=self.broker.keepalive,
            max_inflight_messages=100,
            timeout=30,
        )

    async def run(self) -> None:
        """Process what was received (even while the broker is away) and keep the MQTT
        session up; returns only when cancelled."""
        async with TaskGroup() as tg:
            tg.create_task(self.processor.run(), name="central-processor")
            tg.create_task(
                supervise("central mqtt", self._mqtt, on_restart=self._on_restart), name="central-mqtt"
            )

    @property
    def link_up(self) -> bool:
        """True while a session is up: subscribed, and the client has not lost the connection."""
        client = self.client
        return self.stats.connected and client is not None and client.link_up

    def _on_restart(self) -> None:
        self.stats.restarts += 1

    def _link_down(self) -> None:
        if self.stats.connected:
            self.stats.link_since = time.monotonic()
        self.stats.connected = False
        self.connected.clear()
        self.client = None

    async def _mqtt(self) -> None:
        await stay_linked(
            self._client,
            self._session,
            on_down=self._link_down,
            on_retry=self._on_retry,
            backoff=lambda: (BACKOFF_MIN_S, BACKOFF_MAX_S),
            who="central",
        )

    def _on_retry(self) -> None:
        self.stats.reconnects += 1

    async def _session(self, client: Client) -> None:
        self.client = client
        no_delay(client)
        await client.subscribe(
            topics.central_uplink_subscription(
                shared=self.broker.shared_subscription, group=self.broker.share_group
            ),
            qos=1,
        )
        if self.on_status is not None:
            await client.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
        if self.on_bridge_state is not None:
            await client.subscribe(topics.BRIDGE_STATE_SUBSCRIPTION, qos=1)
        self.stats.connected = True
        self.stats.link_since = time.monotonic()
        self.connected.set()
        log.info("central connected to %s:%d", self.broker.host, self.broker.port)
        async with TaskGroup() as tg:
            tg.create_task(self.downlink.run(client), name="central-downlink")
            async for message in client.messages:
                await self._sem.acquire()
                tg.create_task(self._handle(client, message))

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        # Processing steps aside while records are being received (``Processor``), and only an
        # uplink carries records. A status is telemetry: counted, it kept processing waiting
        # almost always once a fleet's statuses arrived every few milliseconds (1,000 gateways:
        # 200 a second): bench figure 10's 23.6k orders were all processed 101 s after their
        # burst, 70 s without.
        records = message.topic.value.endswith("/up")
        self.receiving += records
        try:
            await self._handle_inner(client, message)
        except StorageFull as e:
            # Nothing of the message was committed, so nothing is acked: the gateway sends its
            # records again (ack timeout) and they are taken once the disk has room.
            self.stats.storage_refused += 1
            log.warning("message on %s not taken and not acked: %s", message.topic.value, e)
        except IntegrityError as e:
            # central workers on one PostgreSQL database: another worker took one of these
            # records in the same moment (redelivered to it) and committed first. Nothing of
            # this message was kept and it is not acked; the gateway's resend gets the answer
            # the first one stored.
            log.warning(
                "message on %s not taken (a record of it taken meanwhile): %s", message.topic.value, e
            )
        except DatabaseError as e:
            # The database's connection lost under the job (runtime.pgdb.ConnectionLost): not
            # committed (or not known to be), not acked; the gateway sends it again and the
            # record ids tell a repeat from a first time
            log.warning("message on %s not taken and not acked: %s", message.topic.value, e)
        except Exception:
            # A bug met by one message (a poison no bound foresaw): that message is neither
            # taken nor acked - nothing of it is lost, its gateway sends it again after its ack
            # timeout, backing off - and every other message goes on. Raised out of this task it
            # would end the MQTT session: all gateways' traffic stopped while central reconnects,
            # and again at each resend.
            self.hub.internal_errors += 1
            log.exception("message on %s failed; not taken and not acked", message.topic.value)
        finally:
            self.receiving -= records
            self._sem.release()

    async def _handle_inner(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        payload = bytes(payload)
        self.stats.messages += 1
        if topic.startswith(topics.BRIDGE_ROOT + "/"):
            try:
                region = topics.parse_bridge_state(topic)
            except topics.TopicError as e:
                log.error("message on unexpected topic %r ignored: %s", topic, e)
                return
            if self.on_bridge_state is not None:
                await self.on_bridge_state(region, payload)
            return
        try:
            topic_gw, leaf = topics.parse(topic)
        except topics.TopicError as e:
            log.error("message on unexpected topic %r ignored: %s", topic, e)
            return
        if leaf == "status":
            self._note_session(topic_gw, payload)
            if self.on_status is not None:
                await self.on_status(topic_gw, payload)
            return
        if leaf != "up":
            return
        try:
            up = envelope.decode_uplink(payload, quick=self._quick)
        except EnvelopeError as e:
            self.stats.quarantined_messages += 1
            log.warning("gw=%s undecodable message quarantined: %s", topic_gw, e.reason)
            await self.db.write(
                partial(quarantine_message, topic=topic, gateway=topic_gw, reason=e.reason, raw=payload)
            )
            return
        self.stats.per_gateway_last_ms[topic_gw] = now_ms()
        if up.acks:
            await self.on_gateway_acks(topic_gw, up.acks)
        if not up.records and not up.bad_records:
            return
        async with self._receive_slots:
            acks = await self.db.write(partial(receive_uplink, topic_gw=topic_gw, topic=topic, up=up))
        self._maybe_crash()
        self.processor.notify()
        self.stats.records += len(up.records)
        counts = Counter(a.status for a in acks)
        self.stats.accepted += counts[AckStatus.ACCEPTED]
        self.stats.duplicates += counts[AckStatus.DUPLICATE]
        self.stats.rejected += counts[AckStatus.REJECTED]
        await self.send_acks(client, topic_gw, acks)

    def _note_session(self, gw: str, payload: bytes) -> None:
        """Telemetry repeats the status every few seconds; a new ``connected_at`` means the
        gateway (re)connected (as does ``online`` after ``offline``), and its downlink window
        is sent to it again at once."""
        try:
            doc = json_loads(payload, max_bytes=envelope.MAX_PAYLOAD_BYTES)
        except JsonError:
            return  # the fleet registry reports bad status payloads
        if not isinstance(doc, dict) or doc.get("state") != "online":
            self._sessions.pop(gw, None)
            if isinstance(doc, dict) and doc.get("state") == "offline":
                self.downlink.gateway_offline(gw)
            return
        session = doc.get("connected_at")
        if self._sessions.get(gw, ...) != session or self.downlink.is_offline(gw):
            self._sessions[gw] = session
            self.downlink.gateway_online(gw)

    async def send_acks(self, client: aiomqtt.Client, gw: str, acks: list[Ack]) -> None:
        for i in range(0, len(acks), envelope.MAX_ACKS):
            chunk = acks[i : i + envelope.MAX_ACKS]
            payload = envelope.encode(gw=gw, sent=now_ms(), acks=chunk)
            await client.publish(topics.downlink(gw), payload, qos=1)

    async def on_gateway_acks(self, gw: str, acks: tuple[Ack, ...]) -> None:
        """Acks from a gateway for downlink records: they leave the downlink outbox."""
        await self.db.write(partial(apply_gateway_acks, gateway=gw, acks=acks))
        self.downlink.forget(gw, (a.id for a in acks))
        log.debug("gw=%s acked %d downlink records", gw, len(acks))

    def _maybe_crash(self) -> None:
        marker = self._fault_marker
        if marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            log.warning("fault injection: SIGKILL after commit, before ack")
            os.kill(os.getpid(), signal.SIGKILL)
