"""A fleet of simulated gateways in one process: ``storegate sim fleet --gateways 1000``.

Each simulated gateway speaks the wire contract of ``protocols/WIRE.md`` exactly as a real one
does, with nothing shared with ``gateway/`` but ``protocols/``:

- its own MQTT 5 client (client id ``gw-<id>``, username = the gateway id, ``clean_start``
  false with a session expiry, Receive Maximum 16), a Last Will ``offline`` status (QoS 1,
  retained) and a retained ``online`` status at each connect and every
  ``STATUS_INTERVAL_S`` with the telemetry fields of ``ops/TELEMETRY.md`` (no devices);
- a small order stream (``--orders-per-min`` per gateway, exponential gaps) into an outbox
  kept in memory: a record leaves it only when central's ack names it; messages go out in
  ``seq`` order, at most ``WINDOW`` unacked, and everything still in the outbox goes again
  after ``ACK_TIMEOUT_S`` without an ack (doubling up to ``ACK_TIMEOUT_MAX_S``) or a reconnect;
- downlink records (``order_status``, ...) applied once (a repeat is answered ``duplicate``)
  and acked in an uplink envelope.

It counts what a person checking "nothing lost, nothing twice" needs: orders made, acked,
still unacked (lost if the run ends so), accepted twice by central (duplicated), resends,
downlink records and their repeats, and for each gateway when it connected and when it
published each status, so a watcher of central's fleet registry can time status freshness
(``ops/bench_fleet.py``, ``tests/test_fleet_sim.py``).

One process holds one socket per gateway: :func:`raise_open_files_limit` lifts the soft
``RLIMIT_NOFILE`` to the hard one at start, and connects run at most ``connect_concurrency``
at a time. Credentials: none (an open broker), or ``--etc DIR`` to read each gateway's
password from the ``DIR/gateways/<gw>.toml`` that ``storegate provision-gateway`` wrote.
Prints one JSON summary line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import resource
import signal
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols import envelope, topics
from protocols.envelope import Ack, AckStatus, EnvelopeError, Record
from protocols.ids import new_record_id

log = logging.getLogger(__name__)
T = TypeVar("T")

# Timing constants: module level so tests can shrink them.
STATUS_INTERVAL_S = 5.0
ACK_TIMEOUT_S = 15.0
ACK_TIMEOUT_MAX_S = 240.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
OFFLINE_PUBLISH_S = 1.0
CONNECT_TIMEOUT_S = 30.0
STOP_ROUND_S = 5.0
STOP_ROUNDS = 6
SESSION_EXPIRY_S = 7 * 24 * 3600
RECEIVE_MAXIMUM = 16
WINDOW = 8
BATCH_RECORDS = 500
VERSION = "fleet-sim"
# file descriptors the process needs besides one socket per gateway (stdio, logs, the loop)
SPARE_FILES = 64


class FleetError(Exception):
    """The fleet cannot run as asked (too few file descriptors, no credentials)."""


async def _kept(call: Awaitable[T]) -> T:
    """Await an aiomqtt call without losing a cancel: its ``asyncio.wait_for`` returns the
    result instead of raising when the task is cancelled in the step the broker's answer
    arrives (CPython gh-86296, fixed in 3.12); a gateway's loop then ran on and a stop of the
    fleet waited for it forever (seen). The task still counts the cancel, so it is raised here."""
    result = await call
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result


class _Client(aiomqtt.Client):
    """aiomqtt's client whose ``publish`` and ``subscribe`` go through :func:`_kept`, so no
    call of a simulated gateway can lose a cancel (the services' ``runtime.mqtt.Client`` does
    the same; a simulator imports nothing of the services)."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await _kept(super().publish(*args, **kwargs))

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return await _kept(super().subscribe(*args, **kwargs))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raise_open_files_limit(needed: int) -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.
    Raises :class:`FleetError` when even the hard limit is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise FleetError(
            f"{needed} file descriptors needed, the hard limit (ulimit -Hn) is {soft}: raise it"
            " (e.g. LimitNOFILE= in a systemd unit, or /etc/security/limits.conf) or run fewer gateways"
        )
    return soft


def read_credentials(etc: Path, gateway_ids: Iterable[str]) -> dict[str, str]:
    """Each gateway's MQTT password from ``<etc>/gateways/<gw>.toml`` (written by
    ``storegate provision-gateway``); a missing file or password is an error naming it."""
    out: dict[str, str] = {}
    for gw in gateway_ids:
        path = etc / "gateways" / f"{gw}.toml"
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise FleetError(f"gw={gw}: cannot read its provisioned config {path}: {e}") from None
        mqtt = doc.get("mqtt")
        password = mqtt.get("password") if isinstance(mqtt, dict) else None
        if not isinstance(password, str) or not password:
            raise FleetError(f"gw={gw}: {path} has no [mqtt] password (provision it first)")
        out[gw] = password
    return out


@dataclass(frozen=True, slots=True)
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    gateways: int = 100
    prefix: str = "sim"
    first: int = 1  # the first gateway's number: ids are <prefix>-<number, 5 digits>
    orders_per_min: float = 6.0  # per gateway
    lines: int = 3
    customer: str = "S001"
    connect_concurrency: int = 50
    keepalive: int = 30
    credentials: Mapping[str, str] = field(default_factory=dict)  # gateway id -> password
    seed: int | None = None

    def gateway_ids(self) -> list[str]:
        return [
            topics.check_gateway_id(f"{self.prefix}-{i:05d}")
            for i in range(self.first, self.first + self.gateways)
        ]


@dataclass(slots=True)
class _Pending:
    seq: int
    packed: bytes
    created: float  # time.monotonic()
    sent: bool = False


@dataclass(slots=True)
class GatewayStats:
    connects: int = 0
    connect_failures: int = 0
    link_losses: int = 0
    first_connected_ms: int | None = None  # wall clock of the first CONNACK
    connected_ms: int | None = None  # of the current session
    status_ms: list[int] = field(default_factory=list)  # wall clock before each online status publish
    orders: int = 0  # orders made
    messages: int = 0
    records_sent: int = 0  # resends counted again
    resends: int = 0  # times everything unacked went again (ack timeout or reconnect)
    acked: int = 0  # records that left the outbox on central's ack
    accepted: int = 0
    duplicate_acks: int = 0  # acked "duplicate": a copy sent again whose first ack was lost
    rejected: int = 0
    duplicated: int = 0  # acked "accepted" a second time: central took it twice
    stray_acks: int = 0  # acks naming no record in the outbox (already acked)
    ack_ms: list[float] = field(default_factory=list)  # made -> acked
    downlink_records: int = 0
    downlink_repeats: int = 0
    bad_downlink: int = 0


class SimGateway:
    """One simulated gateway; :meth:`run` keeps its session up until cancelled or killed."""

    def __init__(self, gw: str, cfg: FleetConfig, *, password: str | None, rng: random.Random) -> None:
        self.gw = topics.check_gateway_id(gw)
        self.cfg = cfg
        self.password = password
        self.rng = rng
        self.stats = GatewayStats()
        self.outbox: dict[str, _Pending] = {}  # insertion order = seq order
        self.made: list[str] = []  # every order's record id
        self.next_seq = 1
        self.applied: set[str] = set()  # downlink record ids applied
        self.accepted_ids: set[str] = set()
        self.connected = asyncio.Event()
        self.killed = False
        self.stopping = False  # the fleet stops: no reconnect
        self.started = time.monotonic()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._inflight: dict[int, tuple[set[str], float]] = {}
        self._id_to_msg: dict[str, int] = {}
        self._msgno = 0
        self._ack_timeout = ACK_TIMEOUT_S
        self._client: aiomqtt.Client | None = None
        self._last_sync_ms: int | None = None
        self._clock_offset_ms: int | None = None

    # -- the order stream ------------------------------------------------------------------
    def add_order(self) -> str:
        ts = now_ms()
        rid = new_record_id(ts)
        lines = [
            {"sku": f"SKU-{self.rng.randint(1, 50)}", "qty": self.rng.randint(1, 12)}
            for _ in range(self.cfg.lines)
        ]
        body = {
            "customer": self.cfg.customer,
            "channel": "manual",
            "order_type": "normal",
            "requested_date": time.strftime("%Y-%m-%d", time.gmtime(ts / 1000 + 2 * 86400)),
            "lines": lines,
            "source_ref": f"{self.gw}-{self.next_seq}",
        }
        rec = Record(id=rid, seq=self.next_seq, type="order", ts=ts, body=body)
        self.outbox[rid] = _Pending(self.next_seq, envelope.pack_record(rec), time.monotonic())
        self.made.append(rid)
        self.next_seq += 1
        self.stats.orders += 1
        self._wake.set()
        return rid

    @property
    def backlog(self) -> int:
        return len(self.outbox)

    # -- status ----------------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        doc: dict[str, object] = {"gw": self.gw, "state": state, "ts": now_ms()}
        if state == "online":
            oldest = min((p.created for p in self.outbox.values()), default=None)
            doc.update(
                connected_at=self.stats.connected_ms,
                site=self.cfg.customer,
                version=VERSION,
                uptime_s=round(time.monotonic() - self.started),
                backlog=len(self.outbox),
                oldest_age_s=0.0 if oldest is None else round(time.monotonic() - oldest, 3),
                last_sync_ms=self._last_sync_ms,
                clock_offset_ms=self._clock_offset_ms,
                records_sent=self.stats.records_sent,
                rejected=self.stats.rejected,
                storage={"state": "ok", "since_ms": None, "free_bytes": None, "reason": None},
                devices=[],
                acked_below=next((p.seq for p in self.outbox.values()), self.next_seq),
            )
        return json.dumps(doc, separators=(",", ":")).encode()

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        payload = self._status("online")
        self.stats.status_ms.append(now_ms())
        await client.publish(topics.status(self.gw), payload, qos=1, retain=True)

    # -- connection ------------------------------------------------------------------------
    def _new_client(self) -> _Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        return _Client(
            self.cfg.host,
            self.cfg.port,
            identifier=f"gw-{self.gw}",
            username=self.gw,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            will=aiomqtt.Will(topics.status(self.gw), self._status("offline"), qos=1, retain=True),
            keepalive=self.cfg.keepalive,
            max_inflight_messages=2 * WINDOW,
            timeout=CONNECT_TIMEOUT_S,
        )

    async def run(self, connect_slots: asyncio.Semaphore) -> None:
        """Connect (holding one of ``connect_slots`` until subscribed and online), serve the
        session, and connect again with a jittered backoff when the link is lost; returns when
        the gateway is killed, raises CancelledError when stopped (after saying offline)."""
        attempt = 0
        while not (self.killed or self.stopping):
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = self._new_client()
                    async with connect_slots:
                        await stack.enter_async_context(client)
                        await self._online(client)
                    attempt = 0
                    await self._serve(client)
            except (aiomqtt.MqttError, BaseExceptionGroup) as e:
                if isinstance(e, BaseExceptionGroup) and e.split(aiomqtt.MqttError)[1] is not None:
                    raise
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from e
                if self.killed or self.stopping:
                    return
                if self.connected.is_set():
                    self.stats.link_losses += 1
                else:
                    self.stats.connect_failures += 1
                log.info("gw=%s link down (%s)", self.gw, e)
            finally:
                self.connected.clear()
                self._client = None
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt) * (0.5 + self.rng.random() / 2)
            attempt += 1
            await asyncio.sleep(delay)

    async def _online(self, client: aiomqtt.Client) -> None:
        self._client = client
        sock = client._client.socket()  # paho's socket: small acks must not wait for Nagle
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        now = now_ms()
        self.stats.connects += 1
        self.stats.connected_ms = now
        if self.stats.first_connected_ms is None:
            self.stats.first_connected_ms = now
        self._reset_inflight()
        await client.subscribe(topics.downlink(self.gw), qos=1)
        await self._publish_status(client)
        self.connected.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sender(client), name=f"fleet-send:{self.gw}")
                tg.create_task(self._receiver(client), name=f"fleet-recv:{self.gw}")
                tg.create_task(self._status_loop(client), name=f"fleet-status:{self.gw}")
                tg.create_task(self._watchdog(), name=f"fleet-watchdog:{self.gw}")
        except asyncio.CancelledError:
            if not self.killed:  # a clean stop says so (the broker sends the Will only on a lost link)
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(OFFLINE_PUBLISH_S):
                        await aiomqtt.Client.publish(  # not _kept: the task is being cancelled
                            client, topics.status(self.gw), self._status("offline"), qos=1, retain=True
                        )
            raise

    def kill(self) -> None:
        """Drop the connection as a crash or a pulled cable would: the socket is shut, no
        DISCONNECT is sent, so the broker publishes the Will. The gateway stays down."""
        self.killed = True
        client = self._client
        sock = client._client.socket() if client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- uplink ----------------------------------------------------------------------------
    def _reset_inflight(self) -> None:
        if self._inflight:
            self.stats.resends += 1
        self._inflight.clear()
        self._id_to_msg.clear()
        for p in self.outbox.values():
            p.sent = False
        self._wake.set()
        self._progress.set()

    async def _sender(self, client: aiomqtt.Client) -> None:
        up = topics.uplink(self.gw)
        while True:
            while len(self._inflight) >= WINDOW:
                self._progress.clear()
                await self._progress.wait()
            self._wake.clear()
            batch = [(rid, p) for rid, p in self.outbox.items() if not p.sent][:BATCH_RECORDS]
            if not batch:
                await self._wake.wait()
                continue
            payload = envelope.encode_raw_records(
                gw=self.gw, sent=now_ms(), raw_records=[p.packed for _, p in batch]
            )
            self._msgno += 1
            ids = {rid for rid, _ in batch}
            self._inflight[self._msgno] = (ids, time.monotonic())
            for rid, p in batch:
                p.sent = True
                self._id_to_msg[rid] = self._msgno
            await client.publish(up, payload, qos=1)
            self.stats.messages += 1
            self.stats.records_sent += len(batch)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(ACK_TIMEOUT_S / 4)
            if not self._inflight:
                continue
            oldest = min(sent for _, sent in self._inflight.values())
            if time.monotonic() - oldest > self._ack_timeout:
                log.warning(
                    "gw=%s no ack for %.1fs; resending %d records",
                    self.gw,
                    self._ack_timeout,
                    len(self.outbox),
                )
                self._ack_timeout = min(self._ack_timeout * 2, max(ACK_TIMEOUT_MAX_S, ACK_TIMEOUT_S))
                self._reset_inflight()

    def _on_acks(self, acks: tuple[Ack, ...]) -> None:
        self._ack_timeout = ACK_TIMEOUT_S
        self._last_sync_ms = now_ms()
        t = time.monotonic()
        for a in acks:
            if a.status is AckStatus.ACCEPTED:
                if a.id in self.accepted_ids:
                    self.stats.duplicated += 1
                self.accepted_ids.add(a.id)
            p = self.outbox.pop(a.id, None)
            if p is None:
                self.stats.stray_acks += 1
                continue
            self.stats.acked += 1
            self.stats.ack_ms.append((t - p.created) * 1000)
            if a.status is AckStatus.ACCEPTED:
                self.stats.accepted += 1
            elif a.status is AckStatus.DUPLICATE:
                self.stats.duplicate_acks += 1
            else:
                self.stats.rejected += 1
                log.warning("gw=%s record %s rejected: %s", self.gw, a.id, a.reason)
            msgno = self._id_to_msg.pop(a.id, None)
            msg = None if msgno is None else self._inflight.get(msgno)
            if msgno is None or msg is None:
                continue
            msg[0].discard(a.id)
            if msg[0]:
                self._inflight[msgno] = (msg[0], t)  # progress: restart this message's timer
            else:
                del self._inflight[msgno]
                self._progress.set()

    # -- downlink --------------------------------------------------------------------------
    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            try:
                if not isinstance(payload, bytes | bytearray):
                    raise EnvelopeError(f"payload of type {type(payload).__name__}")
                env = envelope.decode(bytes(payload))
            except EnvelopeError as e:
                self.stats.bad_downlink += 1
                log.error("gw=%s undecodable downlink message dropped: %s", self.gw, e.reason)
                continue
            if env.gw != self.gw:
                self.stats.bad_downlink += 1
                log.error("gw=%s downlink envelope names gateway %r; ignored", self.gw, env.gw)
                continue
            self._clock_offset_ms = env.sent - now_ms()
            if env.acks:
                self._on_acks(env.acks)
            answers: list[Ack] = []
            for r in env.records:
                self.stats.downlink_records += 1
                if r.id in self.applied:
                    self.stats.downlink_repeats += 1
                    answers.append(Ack(r.id, AckStatus.DUPLICATE))
                else:
                    self.applied.add(r.id)
                    answers.append(Ack(r.id, AckStatus.ACCEPTED))
            answers += [Ack(b.id, AckStatus.REJECTED, b.reason) for b in env.bad_records if b.id is not None]
            if answers:
                payload = envelope.encode(gw=self.gw, sent=now_ms(), acks=answers)
                await client.publish(topics.uplink(self.gw), payload, qos=1)

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            await self._publish_status(client)


class Fleet:
    """``cfg.gateways`` simulated gateways. ``async with fleet.running():`` connects them (at
    most ``cfg.connect_concurrency`` at a time) and stops them cleanly at the end; orders flow
    while :attr:`ordering` is set."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        rng = random.Random(cfg.seed)
        self.gateways = {
            gw: SimGateway(gw, cfg, password=cfg.credentials.get(gw), rng=random.Random(rng.random()))
            for gw in cfg.gateway_ids()
        }
        missing = [gw for gw in self.gateways if cfg.credentials and gw not in cfg.credentials]
        if missing:
            raise FleetError(f"no credentials for {len(missing)} gateways, e.g. {missing[0]}")
        self.ordering = asyncio.Event()
        self.open_files = 0
        # (wall ms, how late a 0.1 s timer fired in ms): this process's own event-loop lag, which
        # delays its publishes - what a measured delay owes to the load generator, not central
        self.loop_lag: list[tuple[int, float]] = []
        self._tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def running(self, *, ordering: bool = True) -> AsyncIterator[Fleet]:
        self.open_files = raise_open_files_limit(len(self.gateways) + SPARE_FILES)
        slots = asyncio.Semaphore(self.cfg.connect_concurrency)
        if ordering:
            self.ordering.set()
        self._tasks.append(asyncio.create_task(self._watch_lag(), name="fleet-loop-lag"))
        for g in self.gateways.values():
            self._tasks.append(asyncio.create_task(g.run(slots), name=f"fleet-gw:{g.gw}"))
            if self.cfg.orders_per_min > 0:
                self._tasks.append(asyncio.create_task(self._orders(g), name=f"fleet-orders:{g.gw}"))
        try:
            yield self
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Every gateway says offline and disconnects; cancels are repeated for a task that
        is still running after ``STOP_ROUND_S`` (a cancel can still be lost inside paho's
        or aiomqtt's own awaits)."""
        self.ordering.clear()
        for g in self.gateways.values():
            g.stopping = True
        pending = set(self._tasks)
        for _ in range(STOP_ROUNDS):
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=STOP_ROUND_S)
            if not pending:
                break
        if pending:
            log.error(
                "%d simulated gateway tasks did not stop: %s",
                len(pending),
                sorted(t.get_name() for t in pending),
            )
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("%s ended with %r", t.get_name(), t.exception())
        self._tasks.clear()

    async def _watch_lag(self, every_s: float = 0.1) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(every_s)
            self.loop_lag.append((now_ms(), (time.monotonic() - t - every_s) * 1000))

    async def _orders(self, g: SimGateway) -> None:
        rate_s = self.cfg.orders_per_min / 60
        while not g.killed:
            await self.ordering.wait()
            await asyncio.sleep(g.rng.expovariate(rate_s))
            if self.ordering.is_set() and not g.killed:
                g.add_order()

    def queue_orders(self, per_gateway: int) -> int:
        """A burst: ``per_gateway`` orders queued at once in every live gateway's outbox (a
        store's backlog after an outage); returns how many."""
        n = 0
        for g in self.gateways.values():
            if not g.killed:
                for _ in range(per_gateway):
                    g.add_order()
                    n += 1
        return n

    def kill(self, gateway_ids: Iterable[str]) -> None:
        for gw in gateway_ids:
            self.gateways[gw].kill()

    @property
    def connected(self) -> int:
        return sum(g.connected.is_set() for g in self.gateways.values())

    @property
    def backlog(self) -> int:
        return sum(g.backlog for g in self.gateways.values() if not g.killed)

    async def wait_connected(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                for g in self.gateways.values():
                    await g.connected.wait()
        except TimeoutError:
            return False
        return True

    async def wait_drained(self, within_s: float, *, poll_s: float = 0.05) -> bool:
        """True once every live gateway's outbox is empty (every order acked by central)."""
        deadline = time.monotonic() + within_s
        while self.backlog:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    def summary(self) -> dict[str, Any]:
        gs = list(self.gateways.values())
        acks = sorted(x for g in gs for x in g.stats.ack_ms)
        lags = sorted(lag for _, lag in self.loop_lag)
        total = {k: sum(getattr(g.stats, k) for g in gs) for k in _COUNTERS}
        return {
            "gateways": len(gs),
            "connected": self.connected,
            "ever_connected": sum(g.stats.first_connected_ms is not None for g in gs),
            "killed": sum(g.killed for g in gs),
            "open_files_limit": self.open_files,
            **total,
            "unacked": sum(g.backlog for g in gs),
            "loop_lag_ms_p99": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1) if lags else None,
            "loop_lag_ms_max": round(lags[-1], 1) if lags else None,
            "ack_ms_p50": round(acks[len(acks) // 2], 1) if acks else None,
            "ack_ms_p99": round(acks[min(len(acks) - 1, int(0.99 * len(acks)))], 1) if acks else None,
        }


_COUNTERS = (
    "connects",
    "connect_failures",
    "link_losses",
    "orders",
    "messages",
    "records_sent",
    "resends",
    "acked",
    "accepted",
    "duplicate_acks",
    "rejected",
    "duplicated",
    "stray_acks",
    "downlink_records",
    "downlink_repeats",
    "bad_downlink",
)


async def run_fleet(
    cfg: FleetConfig, *, duration: float, drain_timeout: float, backlog: int = 0
) -> dict[str, Any]:
    """Connect the fleet, let it order for ``duration`` seconds (0: until SIGINT or SIGTERM,
    either of which also ends a duration early), then stop ordering and wait up to
    ``drain_timeout`` for every outbox to empty; the summary."""
    fleet = Fleet(cfg)
    t0 = time.monotonic()
    # the handlers go in before the first connect: a gateway's retained "online" can reach a
    # watcher (and its SIGTERM come back) while the rest of the fleet is still connecting
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with fleet.running():
            if backlog:
                fleet.queue_orders(backlog)
            connecting = asyncio.ensure_future(fleet.wait_connected(within_s=max(60.0, cfg.gateways / 10)))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            all_in = connecting.done() and connecting.result()
            connecting.cancel()
            connect_s = time.monotonic() - t0
            if not all_in:
                log.warning("only %d of %d gateways connected", fleet.connected, cfg.gateways)
            # order for the duration, or until SIGINT / SIGTERM; then the drain and the summary
            left = max(0.0, duration - (time.monotonic() - t0)) if duration > 0 else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await stop.wait()
            fleet.ordering.clear()
            drained = await fleet.wait_drained(drain_timeout)
            out = fleet.summary()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    out.update(connect_s=round(connect_s, 2), drained=drained, elapsed_s=round(time.monotonic() - t0, 2))
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="storegate sim fleet",
        description="Many simulated gateways in one process, each with its own MQTT client, retained"
        " status and Will, and a small order stream to central (protocols/WIRE.md).",
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host")
    p.add_argument("--port", type=int, default=1883, help="broker port")
    p.add_argument("--gateways", type=int, default=100, help="how many gateways")
    p.add_argument("--prefix", default="sim", help="gateway ids are PREFIX-00001, PREFIX-00002, ...")
    p.add_argument("--first", type=int, default=1, help="number of the first gateway")
    p.add_argument("--orders-per-min", type=float, default=6.0, help="orders per minute per gateway")
    p.add_argument("--lines", type=int, default=3, help="lines per order")
    p.add_argument("--customer", default="S001", help="customer code on the orders (and the status' site)")
    p.add_argument("--backlog", type=int, default=0, help="orders queued in each gateway before it connects")
    p.add_argument("--connect-concurrency", type=int, default=50, help="connects under way at once")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of ordering (0: until Ctrl-C)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="then seconds to wait for every ack")
    p.add_argument(
        "--etc", type=Path, default=None, help="read each gateway's password from ETC/gateways/<gw>.toml"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        if a.gateways < 1 or a.orders_per_min < 0 or a.lines < 1 or a.connect_concurrency < 1:
            raise FleetError("--gateways, --lines, --connect-concurrency >= 1 and --orders-per-min >= 0")
        ids = FleetConfig(prefix=a.prefix, first=a.first, gateways=a.gateways).gateway_ids()
        cfg = FleetConfig(
            host=a.host,
            port=a.port,
            gateways=a.gateways,
            prefix=a.prefix,
            first=a.first,
            orders_per_min=a.orders_per_min,
            lines=a.lines,
            customer=a.customer,
            connect_concurrency=a.connect_concurrency,
            credentials=read_credentials(a.etc, ids) if a.etc is not None else {},
            seed=a.seed,
        )
        summary = asyncio.run(
            run_fleet(cfg, duration=a.duration, drain_timeout=a.drain_timeout, backlog=a.backlog)
        )
    except (FleetError, topics.TopicError) as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary), flush=True)
    return 0 if summary["drained"] and not summary["duplicated"] else 1
