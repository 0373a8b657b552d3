"""A gateway's credentials must not take uplinks away from central (issue 14, item 5).

Against a REAL mosquitto running the shipped config (broker-init's ACL, password file and
central.toml, gateways provisioned by provision-gateway), with the real central consumer
loaded from the central.toml broker-init wrote. Gateway A holds a persistent session and
tries every subscription that could reach another gateway's traffic, and publishes on
gateway B's topics. Central must still get - and ack - every one of B's uplinks, while A is
connected, while its session waits offline, after it reconnects, and after a broker restart
restored that session from persistence.

Why this matters on mosquitto 2.0.11: its ACL file never checks a SUBSCRIBE (only each
delivered message is read-checked, on the concrete topic), so A may join any share group.
Had A joined central's group, the group's round robin would pick A for every n-th uplink and
the read check would drop that message for the whole group: 20 of 40 uplinks never reach
central. broker-init therefore gives central a secret share group (ops/BROKER.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from central.app import load_config as load_central_config
from central.intake.consumer import Consumer
from central.schema import MIGRATIONS as CENTRAL_MIGRATIONS
from ops.broker import BrokerAuth
from ops.broker_security import (
    CENTRAL_USER,
    OPS_USER,
    SecurityPaths,
    init_broker_security,
)
from ops.provision import provision_gateway
from protocols import envelope, topics
from protocols.envelope import AckStatus, Record
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.test_broker_security import ORDER, Secured, _start_secured, collecting, forge, mqtt

ROUND = 40  # uplinks per phase, one record each
ACK_TIMEOUT = 30.0  # generous: the box is shared; a hijacked group never gets there at all
NOT_AUTHORIZED = (0x80, 0x87)

# Everything gateway A could subscribe to in order to see or divert another gateway's traffic.
HIJACK_FILTERS = (
    f"$share/{topics.CENTRAL_SHARE_GROUP}/{topics.ROOT}/+/up",  # the group central used to share
    f"$share/x/{topics.ROOT}/gw-b/up",
    f"$share/+/{topics.ROOT}/+/up",
    "$share/#",
    f"{topics.ROOT}/+/up",
    f"{topics.ROOT}/gw-b/up",
    f"{topics.ROOT}/gw-b/down",
    f"{topics.ROOT}/gw-b/status",
    "#",
    "$SYS/#",
)


def dynsec_file(secured: Secured) -> Path:
    return secured.etc / "broker" / "dynamic-security.json"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    s = _start_secured(tmp_path)
    try:
        yield s
    finally:
        s.broker.kill()


class GatewayB:
    """Gateway B as raw MQTT: sends one-record envelopes, counts central's acks."""

    def __init__(self, secured: Secured) -> None:
        self.secured = secured
        self.acks: dict[str, envelope.Ack] = {}
        self.sent = 0

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[aiomqtt.Client]:
        async with (
            mqtt(self.secured.broker.port, self.secured.creds("gw-b"), client_id="gw-gw-b") as c,
            collecting(c) as rx,
        ):
            await c.subscribe(topics.downlink("gw-b"), qos=1)
            task = asyncio.create_task(self._read(rx.received))
            try:
                yield c
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, received: list[tuple[str, bytes]]) -> None:
        seen = 0
        while True:
            for _topic, payload in received[seen:]:
                self.acks.update({a.id: a for a in envelope.decode(payload).acks})
            seen = len(received)
            await asyncio.sleep(0.02)

    async def send_round(self, phase: str) -> list[str]:
        ids = []
        async with self.connected() as c:
            for i in range(ROUND):
                self.sent += 1
                rid = f"{phase}-{i:04d}"
                rec = Record(id=rid, seq=self.sent, type="order", ts=1_700_000_000_000, body=ORDER)
                body = envelope.encode(gw="gw-b", sent=self.sent, records=[rec])
                await c.publish(topics.uplink("gw-b"), body, qos=1)
                ids.append(rid)
            await wait_for(
                lambda: all(r in self.acks for r in ids),
                timeout=ACK_TIMEOUT,
                what=f"{phase}: central's acks for all {ROUND} of gw-b's uplinks "
                f"(got {sum(r in self.acks for r in ids)})",
            )
        return ids


async def nothing_reached_a(secured: Secured, a: aiomqtt.Client, rx: list[tuple[str, bytes]]) -> None:
    """Barrier on A's own downlink: whatever A got before it is all A will get."""
    marker = f"barrier-{len(rx)}".encode()
    async with mqtt(secured.broker.port, secured.creds(CENTRAL_USER), client_id="central-barrier") as c:
        await c.publish(topics.downlink("gw-a"), marker, qos=1)
    await wait_for(lambda: (topics.downlink("gw-a"), marker) in rx, timeout=10, what="A's barrier")
    foreign = [(t, p[:40]) for t, p in rx if t != topics.downlink("gw-a")]
    assert foreign == [], f"gateway A received other gateways' traffic: {foreign}"


@contextlib.asynccontextmanager
async def gateway_a(secured: Secured) -> AsyncIterator[tuple[aiomqtt.Client, list[tuple[str, bytes]]]]:
    async with (
        mqtt(
            secured.broker.port,
            secured.creds("gw-a"),
            client_id="gw-gw-a",
            clean_start=False,
            session_expiry=3600,
        ) as a,
        collecting(a) as rx,
    ):
        yield a, rx.received


@contextlib.asynccontextmanager
async def central(secured: Secured, tmp_path: Path) -> AsyncIterator[Consumer]:
    """The real consumer, configured by the central.toml broker-init wrote."""
    cfg = load_central_config(SecurityPaths(secured.etc).central_config)
    db = DurableDB(tmp_path / "central.db", migrations=CENTRAL_MIGRATIONS)
    await db.open()
    try:
        consumer = Consumer(db=db, broker=cfg.broker)
        task = asyncio.create_task(consumer.run(), name="central-consumer")
        try:
            async with asyncio.timeout(10):
                await consumer.connected.wait()
            yield consumer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await db.close()


async def test_gateway_cannot_divert_or_read_uplinks(secured: Secured, tmp_path: Path) -> None:
    b = GatewayB(secured)
    async with central(secured, tmp_path):
        # 1. A connected with a persistent session, subscribed to everything it could try.
        async with gateway_a(secured) as (a, rx):
            await a.subscribe(topics.downlink("gw-a"), qos=1)
            codes = {}
            for flt in HIJACK_FILTERS:
                (code,) = await a.subscribe(flt, qos=1)
                codes[flt] = getattr(code, "value", code)
            for topic in (topics.uplink("gw-b"), topics.status("gw-b"), topics.downlink("gw-b")):
                assert await forge(secured.broker.port, secured.creds("gw-a"), topic) in ("acked", "dropped")
            ids = await b.send_round("connected")
            await nothing_reached_a(secured, a, rx)

        # 2. A gone, its session (and every subscription above) kept by the broker.
        ids += await b.send_round("offline")

        # 3. A back on the same session.
        async with gateway_a(secured) as (a, rx):
            ids += await b.send_round("reconnected")
            await nothing_reached_a(secured, a, rx)

    assert all(b.acks[r].status is AckStatus.ACCEPTED for r in ids), {
        r: b.acks[r].status for r in ids if b.acks[r].status is not AckStatus.ACCEPTED
    }
    assert not any(r.startswith("forged") for r in b.acks)
    for flt, code in codes.items():
        if flt.startswith("$share/"):  # refused by the dynamic-security role
            assert code in NOT_AUTHORIZED, (flt, code)
        else:  # the ACL file grants every SUBSCRIBE; each delivery is read-checked
            assert code in (0, 1, *NOT_AUTHORIZED), (flt, code)


async def test_ops_cannot_share_but_central_can(secured: Secured) -> None:
    port = secured.broker.port
    dynsec = dynsec_file(secured)
    written = dynsec.read_text()
    for user in (OPS_USER, "gw-b"):
        async with mqtt(port, secured.creds(user), client_id=f"probe-{user}") as c:
            for group in (topics.CENTRAL_SHARE_GROUP, secured.service.share_group, "x"):
                (code,) = await c.subscribe(topics.central_uplink_subscription(group=group), qos=1)
                assert getattr(code, "value", code) in NOT_AUTHORIZED, (user, group, code)
    async with mqtt(port, secured.creds(CENTRAL_USER), client_id="central-probe") as c:
        (code,) = await c.subscribe(
            topics.central_uplink_subscription(group=secured.service.share_group), qos=1
        )
        assert getattr(code, "value", code) == 1
    secured.broker.stop()
    assert dynsec.read_text() == written  # the broker never rewrites it: our files stay the source


async def test_membership_persisted_before_the_fix_takes_nothing(secured: Secured, tmp_path: Path) -> None:
    """Before the fix, A joined central's group (``$share/central/...``, then central's
    subscription) and the broker granted it. The installation is upgraded: broker-init again,
    the shipped config, a broker restart from persistence - which restores A's subscription
    with no ACL check at all. Central moves to its secret group; A's stale membership must not
    cost central one uplink."""
    shipped = secured.broker.config
    secured.broker.stop()
    paths = SecurityPaths(secured.etc)
    # What main shipped: no dynamic-security plugin, central.toml without a share group.
    secured.broker.config = dataclasses.replace(
        shipped, auth=BrokerAuth(password_file=paths.password_file, acl_file=paths.acl_file)
    )
    text = paths.central_config.read_text()
    paths.central_config.write_text(
        "".join(line for line in text.splitlines(True) if "share_group" not in line)
    )
    secured.broker.start()
    async with central(secured, tmp_path) as old_central:  # central's session joins group `central`
        assert old_central.broker.share_group == topics.CENTRAL_SHARE_GROUP
    async with gateway_a(secured) as (a, _rx):
        (code,) = await a.subscribe(topics.central_uplink_subscription(), qos=1)
        assert getattr(code, "value", code) == 1  # granted: this is the hijack as it was
    secured.broker.stop()  # graceful: both sessions are written to the persistence file

    # The upgrade: re-run broker-init on the same etc (rotates central/ops passwords).
    secured.service = init_broker_security(secured.etc, broker_host="127.0.0.1", broker_port=shipped.port)
    secured.broker.config = shipped
    secured.broker.start()
    b = GatewayB(secured)
    async with central(secured, tmp_path) as consumer:
        ids = await b.send_round("after-upgrade")
        async with gateway_a(secured) as (a, rx):
            await a.subscribe(topics.downlink("gw-a"), qos=1)
            ids += await b.send_round("a-back")
            await nothing_reached_a(secured, a, rx)
    assert all(b.acks[r].status is AckStatus.ACCEPTED for r in ids)
    # Central's session still holds the old group too; mosquitto sends a message once per
    # client however many of its subscriptions match, and A's stale turn in the old group
    # costs nothing: every uplink came exactly once.
    assert (consumer.stats.messages, consumer.stats.duplicates) == (len(ids), 0)
    assert secured.service.share_group != topics.CENTRAL_SHARE_GROUP


def test_share_group_is_secret_stable_and_only_in_centrals_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    first = init_broker_security(etc)
    paths = SecurityPaths(etc)
    cfg = load_central_config(paths.central_config)
    assert cfg.broker.share_group == first.share_group != topics.CENTRAL_SHARE_GROUP
    assert len(first.share_group) >= 32
    # Re-running broker-init rotates passwords but keeps the group (central's persistent
    # session keeps its subscription; a leaked group is changed by editing central.toml).
    again = init_broker_security(etc)
    assert again.share_group == first.share_group and again.central.password != first.central.password
    # Another installation gets another group.
    assert init_broker_security(tmp_path / "etc2").share_group != first.share_group
    # Nothing a gateway or ops can read holds it.
    assert (paths.central_config.stat().st_mode & 0o777) == 0o600
    for f in (paths.acl_file, paths.password_file, paths.ops_config):
        assert first.share_group not in f.read_text()


async def test_gateway_provisioned_on_a_running_broker_is_refused_after_restart(
    secured: Secured, tmp_path: Path
) -> None:
    """The dynamic-security plugin reads its file at start only: a gateway provisioned while the
    broker runs is refused ``$share`` from the next restart (until then only the secret group
    keeps it out of central's group - the test above shows that is enough)."""
    port = secured.broker.port
    new = provision_gateway(
        "store-new", etc_dir=secured.etc, broker_host="127.0.0.1", broker_port=port, data_dir=tmp_path / "n"
    )
    listed = json.loads(dynsec_file(secured).read_text())["clients"]
    assert {"username": "store-new", "roles": [{"rolename": "storegate-no-shared-subscriptions"}]} in listed
    secured.broker.stop()
    secured.broker.start()
    async with mqtt(port, ("store-new", new.password), client_id="gw-store-new") as c:
        (code,) = await c.subscribe(topics.central_uplink_subscription(group="x"), qos=1)
        assert getattr(code, "value", code) in NOT_AUTHORIZED
        (code,) = await c.subscribe(topics.downlink("store-new"), qos=1)
        assert getattr(code, "value", code) == 1  # its own downlink: the ACL file still decides
