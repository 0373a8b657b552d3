"""Broker security against a REAL mosquitto running the shipped config (ops/broker_security).

"Receives nothing" is proved with a barrier, not a sleep: a QoS 1 publish returns only after
the broker's PUBACK, and mosquitto routes a message to every matching subscriber before it
sends that PUBACK. So once the forger's publishes are acked, a later *legitimate* barrier
message to the observer is queued behind anything the observer could have been sent; when
the barrier arrives, whatever came before it is all the observer will ever get from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from central.app import load_config as load_central_config
from central.intake.consumer import BrokerSettings, Consumer
from central.schema import MIGRATIONS as CENTRAL_MIGRATIONS
from gateway.app import load_config as load_gateway_config
from gateway.app import migrations as gateway_migrations
from gateway.outbox import Outbox
from gateway.sync import Sync
from ops import broker_security, provision
from ops.broker import BrokerConfig, Mosquitto, free_port
from ops.broker_security import (
    CENTRAL_USER,
    OPS_USER,
    AclError,
    Pki,
    ReservedUserError,
    SecurityPaths,
    ServiceCredentials,
    create_test_pki,
    init_broker_security,
    read_users,
    reload_broker,
    render_acl,
    secure_broker_config,
)
from ops.provision import AlreadyProvisionedError, Provisioned, provision_gateway
from protocols import envelope, topics
from protocols.envelope import AckStatus, Record
from protocols.topics import TopicError
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for

# Started as root, mosquitto drops to the 'mosquitto' user and could not read tmp_path.
RUN_AS = "root" if os.geteuid() == 0 else None
HOST = "127.0.0.1"
TIMEOUT = 5.0
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
GATEWAYS = ("gw-a", "gw-b")
DOC = Path(__file__).resolve().parent.parent / "ops" / "BROKER.md"

ORDER = {
    "customer": "S001",
    "channel": "manual",
    "order_type": "normal",
    "requested_date": "2026-12-01",
    "lines": [{"gtin": "04012345678901", "qty": 3}],
}


@dataclass
class Secured:
    broker: Mosquitto
    etc: Path
    service: ServiceCredentials
    gws: dict[str, Provisioned]
    pki: Pki | None = None

    def creds(self, user: str) -> tuple[str, str]:
        if user == CENTRAL_USER:
            return user, self.service.central.password
        if user == OPS_USER:
            return user, self.service.ops.password
        return user, self.gws[user].password


def _start_secured(tmp_path: Path, *, tls: bool = False) -> Secured:
    etc = tmp_path / "etc"
    port = free_port()
    pki = create_test_pki(SecurityPaths(etc).tls_dir, hosts=(HOST, "localhost")) if tls else None
    listener = pki.listener(free_port()) if pki is not None else None
    client_port = listener.port if listener is not None else port
    ca = pki.ca_cert if pki is not None else None
    service = init_broker_security(etc, broker_host=HOST, broker_port=client_port, tls_ca=ca)
    gws = {
        gw: provision_gateway(
            gw,
            etc_dir=etc,
            broker_host=HOST,
            broker_port=client_port,
            customer="S001",
            data_dir=tmp_path / gw,
            tls_ca=ca,
        )
        for gw in GATEWAYS
    }
    cfg = secure_broker_config(etc, port=port, data_dir=tmp_path / "broker", tls=listener, run_as=RUN_AS)
    b = Mosquitto(cfg)
    b.start()
    return Secured(broker=b, etc=etc, service=service, gws=gws, pki=pki)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    s = _start_secured(tmp_path)
    try:
        yield s
    finally:
        s.broker.kill()


@pytest.fixture
def secured_tls(tmp_path: Path) -> Iterator[Secured]:
    s = _start_secured(tmp_path, tls=True)
    try:
        yield s
    finally:
        s.broker.kill()


def mqtt(
    port: int,
    creds: tuple[str, str] | None,
    *,
    client_id: str,
    tls_ca: Path | None = None,
    clean_start: bool = True,
    session_expiry: int | None = None,
) -> aiomqtt.Client:
    props = None
    if session_expiry is not None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
    return aiomqtt.Client(
        HOST,
        port,
        identifier=client_id,
        username=creds[0] if creds else None,
        password=creds[1] if creds else None,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(tls_ca)) if tls_ca else None,
        clean_start=clean_start,
        properties=props,
        timeout=TIMEOUT,
    )


class Collector:
    """Everything a client receives, in order; wait for a barrier message with a deadline."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()

    async def run(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self.received.append((m.topic.value, payload))
            self._changed.set()

    async def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Return what arrived before ``(topic, payload)``; fail after TIMEOUT."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while (topic, payload) not in self.received:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"barrier {topic} {payload!r} not received; got {self.received}") from None
        return self.received[: self.received.index((topic, payload))]


@contextlib.asynccontextmanager
async def collecting(client: aiomqtt.Client) -> AsyncIterator[Collector]:
    c = Collector(client)
    task = asyncio.create_task(c.run(), name="collector")
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def connect_fails(
    port: int, creds: tuple[str, str] | None, *, tls_ca: Path | None = None
) -> aiomqtt.MqttError:
    try:
        async with mqtt(port, creds, client_id="intruder", tls_ca=tls_ca):
            pass
    except aiomqtt.MqttError as e:
        return e
    raise AssertionError(f"connection with {creds and creds[0]!r} to port {port} was accepted")


async def forge(port: int, creds: tuple[str, str], topic: str) -> str:
    """Publish (QoS 1) where the ACL forbids it, on a connection of its own.

    Mosquitto 2.0 answers a denied PUBLISH with PUBACK 0x87 and then drops the connection
    (upstream issue eclipse-mosquitto#2579), so the forger is kicked off. Either outcome
    means the broker has processed - and refused to route - the message when this returns:
    "acked" (PUBACK came first) or "dropped" (connection closed under the publish)."""
    async with mqtt(port, creds, client_id=f"forger-{creds[0]}") as c:
        try:
            await c.publish(topic, b"forged by " + creds[0].encode(), qos=1, timeout=TIMEOUT)
        except aiomqtt.MqttError:
            return "dropped"
        return "acked"


def reason(e: aiomqtt.MqttError) -> int | None:
    rc = getattr(e, "rc", None)
    return rc.value if isinstance(rc, aiomqtt.client.ReasonCode) else rc


# -- authentication ---------------------------------------------------------------------
async def test_anonymous_and_bad_credentials_refused(secured: Secured) -> None:
    port = secured.broker.port
    assert reason(await connect_fails(port, None)) in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    assert reason(await connect_fails(port, ("gw-a", "wrong"))) in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    assert reason(await connect_fails(port, ("gw-zz", "whatever"))) in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    # B's password does not open A's account.
    assert reason(await connect_fails(port, ("gw-a", secured.gws["gw-b"].password))) in (
        NOT_AUTHORIZED,
        BAD_CREDENTIALS,
    )
    async with mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a"):
        pass  # positive control


# -- gateways are confined to their own subtree -----------------------------------------
async def test_gateway_cannot_publish_into_another_gateways_topics(secured: Secured) -> None:
    port = secured.broker.port
    async with (
        mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central,
        mqtt(port, secured.creds("gw-b"), client_id="gw-gw-b") as gw_b,
        mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a") as gw_a,
        collecting(central) as central_rx,
        collecting(gw_b) as b_rx,
    ):
        # Central's real subscriptions: the shared one must be allowed under the ACL.
        await central.subscribe(topics.central_uplink_subscription(shared=True), qos=1)
        await central.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
        await gw_b.subscribe(topics.downlink("gw-b"), qos=1)

        for topic in (topics.uplink("gw-b"), topics.status("gw-b"), topics.downlink("gw-b")):
            assert await forge(port, secured.creds("gw-a"), topic) in ("acked", "dropped")
        await gw_a.publish(topics.uplink("gw-a"), b"own", qos=1)  # positive control + barrier
        await central.publish(topics.downlink("gw-b"), b"barrier", qos=1)

        assert await central_rx.until(topics.uplink("gw-a"), b"own") == []
        assert await b_rx.until(topics.downlink("gw-b"), b"barrier") == []


async def test_gateway_cannot_read_another_gateways_downlink(secured: Secured) -> None:
    port = secured.broker.port
    async with (
        mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central,
        mqtt(port, secured.creds("gw-b"), client_id="gw-gw-b") as gw_b,
        mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a") as gw_a,
        collecting(gw_a) as a_rx,
        collecting(gw_b) as b_rx,
    ):
        await gw_b.subscribe(topics.downlink("gw-b"), qos=1)
        await gw_a.subscribe(topics.downlink("gw-a"), qos=1)
        granted = await gw_a.subscribe(topics.downlink("gw-b"), qos=1)
        # Mosquitto 2.0.11 grants the SUBACK and filters every delivery by the read ACL;
        # newer brokers may answer 0x87 at once. Either way nothing may arrive.
        codes = [getattr(rc, "value", rc) for rc in granted]
        assert all(c in (0, 1, NOT_AUTHORIZED) for c in codes), codes

        await central.publish(topics.downlink("gw-b"), b"for b only", qos=1)
        await central.publish(topics.downlink("gw-a"), b"barrier", qos=1)
        assert await a_rx.until(topics.downlink("gw-a"), b"barrier") == []
        assert await b_rx.until(topics.downlink("gw-b"), b"for b only") == []  # positive control


async def test_wildcard_subscriptions_by_a_gateway_get_nothing_of_others(secured: Secured) -> None:
    port = secured.broker.port
    async with (
        mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central,
        mqtt(port, secured.creds("gw-b"), client_id="gw-gw-b") as gw_b,
        mqtt(port, secured.creds(OPS_USER), client_id="ops-t") as ops,
        collecting(central) as central_rx,
        collecting(ops) as ops_rx,
    ):
        await central.subscribe(topics.central_uplink_subscription(shared=True), qos=1)
        await ops.subscribe("sg/#", qos=1)
        # A retained status exists before the wildcard subscriptions below.
        await gw_b.publish(topics.status("gw-b"), b"online", qos=1, retain=True)

        async with mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a") as gw_a, collecting(gw_a) as a_rx:
            for flt in (
                "#",
                "sg/#",
                f"{topics.ROOT}/+/up",
                f"{topics.ROOT}/+/down",
                topics.STATUS_SUBSCRIPTION,
            ):
                await gw_a.subscribe(flt, qos=1)
            await gw_a.subscribe(f"$share/evil/{topics.ROOT}/+/up", qos=1)

            await gw_b.publish(topics.uplink("gw-b"), b"b up", qos=1)
            await gw_b.publish(topics.status("gw-b"), b"b status", qos=1)
            await central.publish(topics.downlink("gw-b"), b"b down", qos=1)
            await central.publish(topics.downlink("gw-a"), b"barrier", qos=1)
            before = await a_rx.until(topics.downlink("gw-a"), b"barrier")
            assert before == [], before

        # Positive controls: central still got B's uplink despite gw-a's rival share group,
        # ops (read-only monitoring) saw B's status and nothing else.
        assert await central_rx.until(topics.uplink("gw-b"), b"b up") == []
        ops_before = await ops_rx.until(topics.status("gw-b"), b"b status")
        assert ops_before == [(topics.status("gw-b"), b"online")]


async def test_ops_user_cannot_publish(secured: Secured) -> None:
    port = secured.broker.port
    async with (
        mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central,
        mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a") as gw_a,
        collecting(central) as central_rx,
        collecting(gw_a) as a_rx,
    ):
        await central.subscribe(topics.central_uplink_subscription(shared=True), qos=1)
        await central.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
        await gw_a.subscribe(topics.downlink("gw-a"), qos=1)
        for topic in (topics.uplink("gw-a"), topics.status("gw-a"), topics.downlink("gw-a")):
            assert await forge(port, secured.creds(OPS_USER), topic) in ("acked", "dropped")
        await gw_a.publish(topics.uplink("gw-a"), b"barrier", qos=1)
        await central.publish(topics.downlink("gw-a"), b"barrier", qos=1)
        assert await central_rx.until(topics.uplink("gw-a"), b"barrier") == []
        assert await a_rx.until(topics.downlink("gw-a"), b"barrier") == []


async def test_taking_over_another_gateways_client_id_leaks_nothing(secured: Secured) -> None:
    port = secured.broker.port
    # gw-b leaves a persistent session subscribed to its downlink, then goes away.
    async with mqtt(
        port, secured.creds("gw-b"), client_id="gw-gw-b", clean_start=False, session_expiry=3600
    ) as gw_b:
        await gw_b.subscribe(topics.downlink("gw-b"), qos=1)
    async with mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central:
        await central.publish(topics.downlink("gw-b"), b"queued for b", qos=1)
        # gw-a connects with gw-b's client id, asking to resume that session.
        async with (
            mqtt(
                port, secured.creds("gw-a"), client_id="gw-gw-b", clean_start=False, session_expiry=3600
            ) as gw_a,
            collecting(gw_a) as a_rx,
        ):
            await gw_a.subscribe(topics.downlink("gw-a"), qos=1)
            await central.publish(topics.downlink("gw-a"), b"barrier", qos=1)
            assert await a_rx.until(topics.downlink("gw-a"), b"barrier") == []


# -- central checks the sender named in the record -----------------------------------------
async def test_central_rejects_record_naming_another_gateway(secured: Secured, tmp_path: Path) -> None:
    port = secured.broker.port
    db = DurableDB(tmp_path / "central.db", migrations=CENTRAL_MIGRATIONS)
    await db.open()
    try:
        user, password = secured.creds(CENTRAL_USER)
        consumer = Consumer(
            db=db, broker=BrokerSettings(port=port, username=user, password=password, client_id="central-t")
        )
        forged = Record(id="forged-0001", seq=1, type="order", ts=1_700_000_000_000, body=ORDER)
        honest = Record(id="honest-0001", seq=2, type="order", ts=1_700_000_000_000, body=ORDER)
        async with (
            mqtt(port, secured.creds("gw-a"), client_id="gw-gw-a") as gw_a,
            collecting(gw_a) as a_rx,
            asyncio.TaskGroup() as tg,
        ):
            task = tg.create_task(consumer.run(), name="central-consumer")
            async with asyncio.timeout(TIMEOUT):
                await consumer.connected.wait()
            await gw_a.subscribe(topics.downlink("gw-a"), qos=1)
            # On its own topic (the ACL allows that) gw-a sends a record claiming to be gw-b's.
            await gw_a.publish(
                topics.uplink("gw-a"), envelope.encode(gw="gw-b", sent=1, records=[forged]), qos=1
            )
            await gw_a.publish(
                topics.uplink("gw-a"), envelope.encode(gw="gw-a", sent=2, records=[honest]), qos=1
            )

            def acks() -> dict[str, envelope.Ack]:
                out = {}
                for _topic, payload in a_rx.received:
                    out.update({a.id: a for a in envelope.decode(payload).acks})
                return out

            await wait_for(lambda: len(acks()) == 2, timeout=TIMEOUT, what="both acks on gw-a's downlink")

            async def processed() -> bool:  # acks come on receipt; the order is made just after
                return bool(await db.read(lambda c: c.execute("SELECT 1 FROM orders").fetchone()))

            await wait_for(processed, timeout=TIMEOUT, what="central processed the honest record")
            task.cancel()
        got = acks()
        assert got["forged-0001"].status is AckStatus.REJECTED
        assert "envelope names gateway 'gw-b'" in (got["forged-0001"].reason or "")
        assert got["honest-0001"].status is AckStatus.ACCEPTED
        assert all(t == topics.downlink("gw-a") for t, _ in a_rx.received)

        rows = await db.read(
            lambda c: c.execute("SELECT gateway, topic, record_id, reason FROM quarantine").fetchall()
        )
        assert [r[:3] for r in rows] == [("gw-a", topics.uplink("gw-a"), "forged-0001")]
        assert "envelope names gateway 'gw-b'" in rows[0][3]
        orders = await db.read(lambda c: c.execute("SELECT record_id, gateway FROM orders").fetchall())
        assert orders == [("honest-0001", "gw-a")]
    finally:
        await db.close()


# -- TLS ---------------------------------------------------------------------------------
def raw_connect(port: int, creds: tuple[str, str], *, tls_ca: Path | None = None) -> bytes:
    """Send an MQTT 3.1.1 CONNECT over a plain (or TLS) socket; return what the broker answers
    before it closes (a CONNACK starts with 0x20; b"" means it hung up without one)."""

    def s(v: str) -> bytes:
        return len(v.encode()).to_bytes(2, "big") + v.encode()

    body = s("MQTT") + bytes([4, 0xC2, 0, 30]) + s("raw-probe") + s(creds[0]) + s(creds[1])
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        if tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            with ctx.wrap_socket(sock, server_hostname=HOST) as tls:
                tls.sendall(packet)
                return tls.recv(4)
        sock.sendall(packet)
        try:
            return sock.recv(4)
        except ConnectionResetError:
            return b""


async def test_tls_listener(secured_tls: Secured, tmp_path: Path) -> None:
    assert secured_tls.pki is not None and secured_tls.broker.config.tls is not None
    tls_port = secured_tls.broker.config.tls.port
    ca = secured_tls.pki.ca_cert
    creds = secured_tls.creds("gw-a")
    async with mqtt(tls_port, creds, client_id="gw-gw-a", tls_ca=ca) as gw_a:
        await gw_a.publish(topics.status("gw-a"), b"online over tls", qos=1)
    # The same CONNECT in plain MQTT: accepted on the plain port, never answered on the TLS port.
    assert raw_connect(secured_tls.broker.port, creds) == bytes([0x20, 2, 0, 0])
    assert raw_connect(tls_port, creds, tls_ca=ca) == bytes([0x20, 2, 0, 0])
    assert raw_connect(tls_port, creds) == b""
    # A client that trusts another CA refuses the broker's certificate.
    other = create_test_pki(tmp_path / "other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        raw_connect(tls_port, creds, tls_ca=other.ca_cert)
    # TLS does not replace authentication.
    assert reason(await connect_fails(tls_port, None, tls_ca=ca)) in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    assert raw_connect(tls_port, ("gw-a", "wrong"), tls_ca=ca) == bytes([0x20, 2, 0, 5])


async def test_provisioned_gateway_and_central_sync_an_order_over_tls(
    secured_tls: Secured, tmp_path: Path
) -> None:
    """The files provisioning wrote are the real configs: load them, run the real clients."""
    central_cfg = load_central_config(SecurityPaths(secured_tls.etc).central_config)
    gw_cfg = load_gateway_config(secured_tls.gws["gw-a"].config_file)
    assert central_cfg.broker.tls_ca is not None and gw_cfg.mqtt.tls_ca is not None
    assert secured_tls.broker.config.tls is not None
    assert gw_cfg.mqtt.port == central_cfg.broker.port == secured_tls.broker.config.tls.port
    cdb = DurableDB(tmp_path / "central.db", migrations=CENTRAL_MIGRATIONS)
    gdb = DurableDB(gw_cfg.data_dir / "gw.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    try:
        consumer = Consumer(db=cdb, broker=central_cfg.broker)
        box = Outbox(gdb)
        sync = Sync(gateway_id=gw_cfg.gateway_id, outbox=box, mqtt=gw_cfg.mqtt)
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(consumer.run(), name="central-consumer")
            # Central subscribes first: a first-ever uplink with no subscriber yet is routed to
            # nobody and would only come back after the gateway's ack timeout.
            async with asyncio.timeout(TIMEOUT):
                await consumer.connected.wait()
            t2 = tg.create_task(sync.run(), name="gateway-sync")
            rec = await box.submit("order", ORDER)

            async def drained() -> bool:
                return (await box.backlog()).count == 0

            await wait_for(drained, timeout=TIMEOUT, what="outbox drained over TLS")
            t1.cancel()
            t2.cancel()
        res = await box.result(rec.id)
        assert res is not None and res["status"] == "accepted"
    finally:
        await gdb.close()
        await cdb.close()


# -- provisioning ------------------------------------------------------------------------
async def test_provision_then_reload_lets_the_new_gateway_in(secured: Secured, tmp_path: Path) -> None:
    port = secured.broker.port
    new = provision_gateway(
        "store-new", etc_dir=secured.etc, broker_host=HOST, broker_port=port, data_dir=tmp_path / "n"
    )
    # Mosquitto does not watch its files: until reloaded, the new gateway is unknown.
    await connect_fails(port, ("store-new", new.password))
    # Rotating gw-a's password: the old one works until the reload, the new one after it.
    old_a = secured.gws["gw-a"].password
    rotated = provision_gateway("gw-a", etc_dir=secured.etc, broker_host=HOST, broker_port=port, rotate=True)
    reload_broker(secured.broker)

    async def accepted(creds: tuple[str, str]) -> bool:
        try:
            async with mqtt(port, creds, client_id=f"probe-{creds[0]}"):
                return True
        except aiomqtt.MqttError:
            return False

    await wait_for(lambda: accepted(("store-new", new.password)), timeout=TIMEOUT, what="reload")
    assert await accepted(("gw-a", rotated.password))
    assert not await accepted(("gw-a", old_a))
    # The new gateway is confined like the others, with no ACL change.
    async with (
        mqtt(port, secured.creds(CENTRAL_USER), client_id="central-t") as central,
        mqtt(port, ("store-new", new.password), client_id="gw-store-new") as gw_new,
        collecting(central) as central_rx,
    ):
        await central.subscribe(topics.central_uplink_subscription(shared=True), qos=1)
        assert await forge(port, ("store-new", new.password), topics.uplink("gw-b")) in ("acked", "dropped")
        await gw_new.publish(topics.uplink("store-new"), b"own", qos=1)
        assert await central_rx.until(topics.uplink("store-new"), b"own") == []


def test_provision_writes_hashed_credentials_and_a_valid_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    p = provision_gateway(
        "store-001",
        etc_dir=etc,
        broker_host="broker.example",
        broker_port=8883,
        customer='S"001\\x',
        tls_ca=tmp_path / "ca.crt",
        http_port=9001,
    )
    paths = SecurityPaths(etc)
    users = read_users(paths.password_file)
    assert users["store-001"].startswith("$7$")  # PBKDF2-SHA512, made by mosquitto_passwd
    assert p.password not in paths.password_file.read_text()
    assert paths.acl_file.read_text() == render_acl()
    assert (p.config_file.stat().st_mode & 0o777) == 0o600
    cfg = load_gateway_config(p.config_file)
    assert (cfg.gateway_id, cfg.customer, cfg.http.port) == ("store-001", 'S"001\\x', 9001)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("broker.example", 8883, "store-001")
    assert (cfg.mqtt.password, cfg.mqtt.tls_ca) == (p.password, str(tmp_path / "ca.crt"))
    assert cfg.data_dir == Path("var/gateway/store-001")

    with pytest.raises(AlreadyProvisionedError):
        provision_gateway("store-001", etc_dir=etc, broker_host="h", broker_port=1)
    for bad in ("central", "ops"):
        with pytest.raises(ReservedUserError):
            provision_gateway(bad, etc_dir=etc, broker_host="h", broker_port=1)
    for bad in ("Store-1", "a/b", "+", "", "x" * 65):
        with pytest.raises(TopicError):
            provision_gateway(bad, etc_dir=etc, broker_host="h", broker_port=1)
    assert set(read_users(paths.password_file)) == {"store-001"}


def test_provision_refuses_an_acl_that_does_not_confine_gateways(tmp_path: Path) -> None:
    paths = SecurityPaths(tmp_path / "etc")
    paths.broker_dir.mkdir(parents=True)
    paths.acl_file.write_text("user central\ntopic readwrite #\n")
    with pytest.raises(AclError) as e:
        provision_gateway("store-1", etc_dir=paths.etc_dir, broker_host="h", broker_port=1)
    assert e.value.missing == list(broker_security.GATEWAY_PATTERNS)
    assert not paths.password_file.exists()


def test_cli_entry_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc"
    assert (
        broker_security.main(["--etc", str(etc), "--broker-port", "1999", "--data-dir", str(tmp_path)]) == 0
    )
    assert set(read_users(SecurityPaths(etc).password_file)) == {CENTRAL_USER, OPS_USER}
    conf = (etc / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1999 127.0.0.1" in conf
    assert load_central_config(etc / "central.toml").broker.username == CENTRAL_USER

    assert provision.main(["store-9", "--etc", str(etc), "--customer", "S009", "--broker-port", "1999"]) == 0
    cfg = load_gateway_config(etc / "gateways" / "store-9.toml")
    assert (cfg.customer, cfg.mqtt.port) == ("S009", 1999)
    assert provision.main(["store-9", "--etc", str(etc)]) == 2
    assert "already provisioned" in capsys.readouterr().err


def test_broker_md_documents_acl_limits_and_options() -> None:
    doc = DOC.read_text()
    for line in render_acl().splitlines():
        if line and not line.startswith("#"):
            assert line in doc, f"ACL line {line!r} missing from {DOC.name}"
    rendered = BrokerConfig(port=1883, data_dir=Path("/var/lib/storegate/broker")).render()
    for line in rendered.splitlines():
        if line and not line.startswith("#"):
            assert f"`{line.split()[0]}" in doc, f"broker option {line.split()[0]!r} not documented"
    for option in ("password_file", "acl_file", "allow_anonymous", "cafile", "certfile", "keyfile"):
        assert f"`{option}" in doc, option
    for mod in (provision, broker_security):
        src = Path(mod.__file__ or "").read_text()
        for opt in re.findall(r'add_argument\(\s*"(--[a-z-]+)"', src):
            assert f"`{opt}" in doc, f"{mod.__name__} option {opt} not documented"
    assert "storegate provision-gateway" in doc and "storegate broker-init" in doc
