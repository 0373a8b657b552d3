"""The fault campaign (issue 14): real central and gateway processes, a real Mosquitto, real
signals, a real network namespace, a real full filesystem. Each scenario runs ``ROUNDS``
rounds of load -> fault -> heal -> recovery -> check (tests/faults/harness.py) and asserts,
per round: 0 lost, 0 duplicated, 0 unexpected (tests/faults/checker.py), recovery without
any manual step within the scenario's stated deadline, and no process dying by itself.

``./run test`` runs them with 2 rounds each; ``./run faults`` runs only them, with more
rounds, and writes the table the README shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import msgpack
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ops.broker import BrokerConfig, Mosquitto, free_port
from ops.broker_security import SecurityPaths, init_broker_security, secure_broker_config
from ops.provision import provision_gateway
from protocols import envelope, ids, topics
from protocols.envelope import AckStatus, Record, pack_record
from tests.conftest import wait_for
from tests.faults import netns
from tests.faults.checker import History, Outcome
from tests.faults.clients import Load, order_body
from tests.faults.harness import ROUNDS, Cluster, describe, round_prefix, run_in_thread, run_round
from tests.faults.report import RoundResult
from tests.procs import Proc, central_db, seed_viewer

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# Stated recovery deadlines, counted from the heal (the restart, the link back, space freed).
KILL_DEADLINE_S = 30.0
PARTITION_DEADLINE_S = 45.0  # reconnect backoff (<= 10 s) plus TCP's SYN retries after the cut
DISK_DEADLINE_S = 30.0
POISON_DEADLINE_S = 20.0
# Shorter than the gateway's ack timeout in that scenario (HIJACK_ACK_TIMEOUT_S): every order
# must reach central on its first send, not on a resend after the hijacker swallowed it.
HIJACK_DEADLINE_S = 10.0
HIJACK_ACK_TIMEOUT_S = 30.0

DOWN_S = (0.2, 1.0)  # how long a killed process stays down before its restart
# The gateway's window that matters (committed, 201 not yet sent) is a millisecond wide: each
# round kills it this many times, under 8 clients posting without a pause, to land in it.
GATEWAY_KILLS = 5
GATEWAY_KILL_WORKERS = 8
LOAD_BETWEEN_KILLS_S = (0.1, 0.5)  # load between two kills of one round
KEEPALIVE_S = 2  # the partitioned gateway's MQTT keepalive
# Longer than the keepalive: both ends must notice the loss (paho: a PINGREQ after one
# keepalive, no PINGRESP within another; mosquitto: 1.5 keepalives of silence).
PARTITION_S = 4 * KEEPALIVE_S
HEALTH_POLL_S = 0.25
# The gateway keeps what each round takes (record results, idempotency keys, order status:
# ~1-1.5 kB an order, a few hundred orders a round) beside a WAL of up to ~4 MB, so its disk
# grows with the rounds: at a fixed 8 MB, round 9 of a 10-round soak found the disk full of
# the gateway's own data once the ballast was gone, which is no fault the heal can mend.
TMPFS_SIZE = f"{8 + ROUNDS}m"
DISK_FULL_WAIT_S = 15.0
POISON_DEPTH = 1000
POISON_GW = "poison-1"
HIJACKER = "gw-b"
# central's share group as shipped until issue 14: the name a hostile gateway tries first
HIJACK_FILTER = f"$share/{topics.CENTRAL_SHARE_GROUP}/{topics.ROOT}/+/up"

RUN_AS = "root" if os.geteuid() == 0 else None


# -- the cluster ----------------------------------------------------------------------------
def write_central(
    tmp: Path,
    broker_port: int,
    *,
    host: str = "127.0.0.1",
    shipped: Path | None = None,
) -> Proc:
    """Central's config; with ``shipped`` (the central.toml broker-init wrote), its whole
    ``[broker]`` section as shipped (credentials and whatever else broker-init puts there)."""
    seed_viewer(tmp / "central" / "central.db")
    port = free_port()
    broker: dict[str, object] = {"host": host, "port": broker_port, "client_id": "central-faults"}
    if shipped is not None:
        broker = tomllib.loads(shipped.read_text())["broker"]
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n[broker]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in broker.items())
        + f"[http]\nport = {port}\n"
    )
    return Proc("central", cfg, port, tmp / "central.log")


def write_gateway(
    tmp: Path,
    broker_port: int,
    gw: str = "store-1",
    *,
    data_dir: Path | None = None,
    mqtt_host: str = "127.0.0.1",
    http_host: str = "127.0.0.1",
    keepalive: int = 30,
    creds: tuple[str, str] | None = None,
    ack_timeout_s: float = 2.0,
    prefix: tuple[str, ...] = (),
) -> Proc:
    port = free_port()
    auth = f'username = "{creds[0]}"\npassword = "{creds[1]}"\n' if creds else ""
    cfg = tmp / f"{gw}.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{data_dir or tmp / gw}"\n'
        f'[mqtt]\nhost = "{mqtt_host}"\nport = {broker_port}\nkeepalive = {keepalive}\n{auth}'
        f'[http]\nhost = "{http_host}"\nport = {port}\n[sync]\nack_timeout_s = {ack_timeout_s}\n'
    )
    return Proc("gateway", cfg, port, tmp / f"{gw}.log", host=http_host, prefix=prefix)


@contextlib.contextmanager
def running(broker: Mosquitto, central: Proc, gateway: Proc, tmp: Path) -> Iterator[Cluster]:
    try:
        if not broker.running:
            broker.start()
        central.start()
        gateway.start()
        yield Cluster(tmp=tmp, broker=broker, central=central, gateway=gateway)
    finally:
        gateway.kill()
        central.kill()
        broker.kill()


def record(campaign: list[RoundResult], result: RoundResult) -> None:
    campaign.append(result)
    assert result.passed, describe(result)


# 1 -- kill -9 of the gateway under load, clients retrying --------------------------------------
async def test_gateway_kill9_under_load(
    broker: Mosquitto, tmp_path: Path, campaign: list[RoundResult]
) -> None:
    """Before issue 14 (39be532): 1-15 duplicates a round - a retried order after a commit whose
    201 the client never got (fixed by Idempotency-Key, branch idem)."""
    with running(
        broker, write_central(tmp_path, broker.port), write_gateway(tmp_path, broker.port), tmp_path
    ) as c:
        for r in range(ROUNDS):

            async def kills() -> None:
                for _ in range(GATEWAY_KILLS - 1):
                    c.gateway.kill()
                    await asyncio.to_thread(c.gateway.start)
                    await asyncio.sleep(c.rng.uniform(*LOAD_BETWEEN_KILLS_S))
                c.gateway.kill()
                await asyncio.sleep(c.rng.uniform(*DOWN_S))

            result = await run_round(
                c,
                "gateway-kill9",
                r,
                fault=kills,
                heal=lambda: run_in_thread(c.gateway.start),
                deadline_s=KILL_DEADLINE_S,
                workers=GATEWAY_KILL_WORKERS,
                pause_s=0.0,
            )
            record(campaign, result)


# 2 -- kill -9 of central ------------------------------------------------------------------------
async def test_central_kill9_under_load(
    broker: Mosquitto, tmp_path: Path, campaign: list[RoundResult]
) -> None:
    with running(
        broker, write_central(tmp_path, broker.port), write_gateway(tmp_path, broker.port), tmp_path
    ) as c:
        for r in range(ROUNDS):

            async def kill() -> None:
                c.central.kill()
                await asyncio.sleep(c.rng.uniform(*DOWN_S))

            result = await run_round(
                c,
                "central-kill9",
                r,
                fault=kill,
                heal=lambda: run_in_thread(c.central.start),
                deadline_s=KILL_DEADLINE_S,
            )
            record(campaign, result)


# 3 -- kill -9 of the broker under a connected gateway, restarted on the same port ---------------
async def test_broker_kill9_restart_same_port(
    broker: Mosquitto, tmp_path: Path, campaign: list[RoundResult]
) -> None:
    """Before issue 14: the gateway never reconnected after the broker's restart (branch link)."""
    with running(
        broker, write_central(tmp_path, broker.port), write_gateway(tmp_path, broker.port), tmp_path
    ) as c:
        for r in range(ROUNDS):

            async def kill() -> None:
                broker.kill()
                await asyncio.sleep(c.rng.uniform(*DOWN_S))

            result = await run_round(
                c,
                "broker-kill9",
                r,
                fault=kill,
                heal=lambda: run_in_thread(broker.start),
                deadline_s=KILL_DEADLINE_S,
            )
            record(campaign, result)


# 4 -- a network partition longer than the keepalive ---------------------------------------------
@contextlib.contextmanager
def partitionable(tmp: Path) -> Iterator[tuple[Cluster, Callable[[], None], Callable[[], None], str]]:
    """The gateway in its own network namespace when ``ip netns`` works (partition = its MQTT
    veth down), else everything on loopback (partition = SIGSTOP of the broker).
    Yields the cluster, cut, mend and how the partition is made."""
    why_not = netns.available()
    with contextlib.ExitStack() as stack:
        if why_not is None:
            ns = stack.enter_context(netns.namespace())
            broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp / "broker", host=ns.broker_ip))
            central = write_central(tmp, broker.port, host=ns.broker_ip)
            gateway = write_gateway(
                tmp,
                broker.port,
                mqtt_host=ns.broker_ip,
                http_host=ns.http_ip,
                keepalive=KEEPALIVE_S,
                prefix=ns.exec_prefix,
            )
            cut, mend = ns.partition, ns.heal
            how = f"veth down ({ns.name})"
        else:
            broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp / "broker"))
            central = write_central(tmp, broker.port)
            gateway = write_gateway(tmp, broker.port, keepalive=KEEPALIVE_S)

            def cut() -> None:
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGSTOP)

            def mend() -> None:
                if broker.proc is not None:
                    broker.proc.send_signal(signal.SIGCONT)

            stack.callback(mend)  # runs before the kill below: a stopped broker is continued first
            how = f"SIGSTOP of the broker ({why_not})"
        cluster = stack.enter_context(running(broker, central, gateway, tmp))
        yield cluster, cut, mend, how


async def test_partition_longer_than_keepalive(tmp_path: Path, campaign: list[RoundResult]) -> None:
    """Before issue 14: no reconnect after the keepalive expired, and health said connected
    throughout (branch link)."""
    with partitionable(tmp_path) as (c, cut, mend, how):
        print(f"partition by {how}")
        for r in range(ROUNDS):
            said: set[object] = set()  # what health's "connected" said while the link was cut

            async def partition(said: set[object] = said) -> None:
                cut()
                end = time.monotonic() + PARTITION_S  # the fault's length, not a wait for a condition
                while time.monotonic() < end:
                    doc = await c.gateway_health()
                    said.add(None if doc is None else doc.get("connected"))
                    await asyncio.sleep(HEALTH_POLL_S)

            async def heal() -> None:
                mend()

            async def health_told(said: set[object] = said) -> list[str]:
                if False in said:
                    return []
                return [f"health never said the link was down during the {PARTITION_S} s cut (said {said})"]

            result = await run_round(
                c,
                "partition",
                r,
                fault=partition,
                heal=heal,
                deadline_s=PARTITION_DEADLINE_S,
                extra_check=health_told,
            )
            record(campaign, result)


# 5 -- a full disk at the gateway ----------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting the gateway's small tmpfs needs root; this scenario did not run")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write a ballast file until the filesystem refuses another byte."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


async def test_full_disk_at_the_gateway(
    broker: Mosquitto, tmp_path: Path, campaign: list[RoundResult]
) -> None:
    """Before issue 14: the full disk was answered with a plain-text 500 and the gateway exited
    applying acks (branches disk, and link's sync restart)."""
    with small_disk(tmp_path / "gwdisk") as disk:
        gateway = write_gateway(tmp_path, broker.port, data_dir=disk / "store-1")
        with running(broker, write_central(tmp_path, broker.port), gateway, tmp_path) as c:
            ballast = disk / "ballast"
            for r in range(ROUNDS):
                loads: list[Load] = []

                async def full(loads: list[Load] = loads) -> None:
                    t = time.monotonic()
                    await asyncio.to_thread(fill, ballast)
                    assert c.load is not None
                    load = c.load
                    loads.append(load)
                    # The load goes on against the full disk until the gateway has refused some of it.
                    await wait_for(
                        lambda: load.errors_since(t), timeout=DISK_FULL_WAIT_S, what="the full disk to refuse"
                    )

                async def free() -> None:
                    ballast.unlink()

                async def answers(loads: list[Load] = loads) -> list[str]:
                    """A full disk is told to the device: 507 (or 503) with a JSON reason."""
                    bad = {k: n for k, n in loads[0].refusals.items() if k[0] not in (503, 507) or not k[1]}
                    return [f"refusals that are not 507/503 JSON with a reason: {bad}"] if bad else []

                result = await run_round(
                    c, "disk-full", r, fault=full, heal=free, deadline_s=DISK_DEADLINE_S, extra_check=answers
                )
                record(campaign, result)


# 6 -- a poison record among valid ones ----------------------------------------------------------
PLACEHOLDER = "POISON-PLACEHOLDER"
POISON_FIELDS = ("gtin", "sku")  # lines[0].<field> holds the poison; then the envelope's own "v"
VALID_PER_MESSAGE = 4


def deep_map(depth: int) -> bytes:
    """msgpack of {"k": {"k": ... "x"}} nested ``depth`` deep (msgpack's own packer refuses it)."""
    return b"\x81\xa1k" * depth + msgpack.packb("x")


def envelope_now() -> int:
    return time.time_ns() // 1_000_000


class PoisonGateway:
    """A second gateway identity that publishes straight to its uplink - valid records, then
    a message holding valid records around a poison record (one per poisoned field), then an
    envelope poisoned in its ``v``, then valid records again - and reads central's acks."""

    def __init__(self, port: int, history: History, prefix: str, seq: int) -> None:
        self.port = port
        self.history = history
        self.prefix = prefix
        self.seq = seq
        self.acks: dict[str, envelope.Ack] = {}
        self.valid: dict[str, str] = {}  # record id -> ref
        self.poison: dict[str, str] = {}  # record id -> the field poisoned
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> PoisonGateway:
        client = aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"gw-{POISON_GW}", protocol=aiomqtt.ProtocolVersion.V5
        )
        self.client = await self._stack.enter_async_context(client)
        await self.client.subscribe(topics.downlink(POISON_GW), qos=1)
        task = asyncio.create_task(self._read(), name="poison-gateway-acks")
        self._stack.callback(task.cancel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _read(self) -> None:
        async for m in self.client.messages:
            if isinstance(m.payload, bytes):
                with contextlib.suppress(envelope.EnvelopeError):
                    for a in envelope.decode(m.payload).acks:
                        self.acks[a.id] = a

    def _record(self, body: dict[str, object]) -> Record:
        self.seq += 1
        return Record(ids.new_record_id(), self.seq, "order", envelope_now(), body)

    def _valid(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            ref = f"{self.prefix}-p{self.seq + 1}"
            self.history.begin(ref)
            rec = self._record(order_body(ref))
            self.valid[rec.id] = ref
            out.append(pack_record(rec))
        return out

    def _poisoned(self, field: str) -> bytes:
        body = order_body(f"{self.prefix}-poison-{field}")  # never submitted: present = unexpected
        body["lines"] = [{field: PLACEHOLDER, "qty": 1}]
        rec = self._record(body)
        self.poison[rec.id] = field
        return pack_record(rec).replace(msgpack.packb(PLACEHOLDER), deep_map(POISON_DEPTH))

    def _message(self, raw: list[bytes]) -> bytes:
        return envelope.encode_raw_records(gw=POISON_GW, sent=envelope_now(), raw_records=raw)

    async def publish(self) -> None:
        messages = [self._message(self._valid(VALID_PER_MESSAGE))]
        for field in POISON_FIELDS:
            n = VALID_PER_MESSAGE // 2
            messages.append(self._message([*self._valid(n), self._poisoned(field), *self._valid(n)]))
        head = msgpack.packb("v") + deep_map(POISON_DEPTH)
        rest = b"".join(msgpack.packb(x) for x in ("gw", POISON_GW, "sent", envelope_now(), "records", []))
        messages.append(b"\x84" + head + rest)
        messages.append(self._message(self._valid(VALID_PER_MESSAGE)))
        for payload in messages:
            await self.client.publish(topics.uplink(POISON_GW), payload, qos=1)

    def settle(self) -> None:
        """Central's ack is what this client is told: accepted (or duplicate) = ok."""
        for rid, ref in self.valid.items():
            a = self.acks.get(rid)
            if a is not None and a.status in (AckStatus.ACCEPTED, AckStatus.DUPLICATE):
                self.history.submissions[ref].outcome = Outcome.OK

    async def all_answered(self) -> bool:
        self.settle()
        return all(rid in self.acks for rid in (*self.valid, *self.poison))

    def findings(self) -> list[str]:
        self.settle()
        out = []
        unanswered = [ref for rid, ref in self.valid.items() if rid not in self.acks]
        if unanswered:
            out.append(f"{len(unanswered)} valid records beside the poison were not acked")
        for ref in unanswered:
            self.history.submissions[ref].outcome = Outcome.INDETERMINATE
        refused = [(ref, self.acks[rid]) for rid, ref in self.valid.items() if rid in self.acks]
        refused = [(ref, a) for ref, a in refused if self.history.submissions[ref].outcome is not Outcome.OK]
        if refused:
            out.append(f"{len(refused)} valid records beside the poison were refused (e.g. {refused[0]})")
        for rid, field in self.poison.items():
            a = self.acks.get(rid)
            if a is None or a.status is not AckStatus.REJECTED or not a.reason:
                out.append(
                    f"the record poisoned in lines[0].{field} was not rejected with a reason (ack {a})"
                )
        return out


def quarantined(tmp: Path, gw: str) -> int:
    conn = central_db(tmp)
    try:
        n: int = conn.execute("SELECT count(*) FROM quarantine WHERE gateway = ?", (gw,)).fetchone()[0]
        return n
    finally:
        conn.close()


async def test_poison_records_among_valid_ones(
    broker: Mosquitto, tmp_path: Path, campaign: list[RoundResult]
) -> None:
    """Before issue 14: central died of RecursionError formatting the poison's reason (branch
    bounds)."""
    with running(
        broker, write_central(tmp_path, broker.port), write_gateway(tmp_path, broker.port), tmp_path
    ) as c:
        seq = 0
        for r in range(ROUNDS):
            history = History()
            async with PoisonGateway(broker.port, history, round_prefix("poison", r), seq) as pgw:
                before = quarantined(tmp_path, POISON_GW)

                async def nothing() -> None:
                    return None

                async def findings(pgw: PoisonGateway = pgw, before: int = before) -> list[str]:
                    out = pgw.findings()
                    if quarantined(tmp_path, POISON_GW) <= before:
                        out.append("the envelope poisoned in its v was not quarantined")
                    return out

                result = await run_round(
                    c,
                    "poison",
                    r,
                    fault=pgw.publish,
                    heal=nothing,
                    deadline_s=POISON_DEADLINE_S,
                    extra_ready=pgw.all_answered,
                    extra_check=findings,
                    history=history,
                )
                seq = pgw.seq
            record(campaign, result)


# 7 -- the $share hijack by a gateway's credentials ----------------------------------------------
async def test_share_hijack_by_gateway_credentials(tmp_path: Path, campaign: list[RoundResult]) -> None:
    """Before issue 14: a gateway could join central's share group, and a quarter to a third of
    the uplinks were dropped until a resend (branch broker: a secret share group)."""
    etc = tmp_path / "etc"
    port = free_port()
    init_broker_security(etc, broker_host="127.0.0.1", broker_port=port)
    gws = {
        gw: provision_gateway(gw, etc_dir=etc, broker_host="127.0.0.1", broker_port=port, customer="S001")
        for gw in ("store-1", HIJACKER)
    }
    broker = Mosquitto(secure_broker_config(etc, port=port, data_dir=tmp_path / "broker", run_as=RUN_AS))
    central = write_central(tmp_path, port, shipped=SecurityPaths(etc).central_config)
    gateway = write_gateway(
        tmp_path,
        port,
        creds=(gws["store-1"].username, gws["store-1"].password),
        ack_timeout_s=HIJACK_ACK_TIMEOUT_S,
    )
    stolen: list[str] = []
    creds = (gws[HIJACKER].username, gws[HIJACKER].password)

    async def hijack() -> None:
        """Gateway B's credentials join central's share group with a persistent session, read
        for a moment and leave (the session - and its membership - stay)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        client = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=f"{HIJACKER}-hijack",
            username=creds[0],
            password=creds[1],
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        )
        async with client:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(HIJACK_FILTER, qos=1)

            async def read() -> None:
                async for m in client.messages:
                    stolen.append(m.topic.value)

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # the fault's length: a moment of membership
                    await read()

    async def nothing() -> None:
        return None

    async def findings() -> list[str]:
        return [f"the hijacker received {len(stolen)} uplink messages ({stolen[:3]})"] if stolen else []

    with running(broker, central, gateway, tmp_path) as c:
        for r in range(ROUNDS):
            result = await run_round(
                c,
                "share-hijack",
                r,
                fault=hijack,
                heal=nothing,
                deadline_s=HIJACK_DEADLINE_S,
                extra_check=findings,
            )
            record(campaign, result)
