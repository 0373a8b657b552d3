"""Regional brokers (issue 17): a store behind a Mosquitto bridge syncs exactly once.

Everything is real: two mosquitto processes (the central broker and a regional broker whose
``connection`` block is rendered by ``ops.bridge`` from the file ``storegate bridge-init``
writes), central and the gateway as ``storegate`` processes, credentials and ACLs as the
provisioning commands make them. Orders are posted to the gateway while a broker is
SIGKILLed and started again; afterwards every order is at central exactly once, every
downlink record central sent is applied once at the gateway, and the gateway's retained
status (and its Will) reaches central through the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central.regions import RegionsFileError, load_regions
from ops.bridge import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    Bridge,
    BridgeError,
    init_bridge,
    load_bridge,
    make_regional,
)
from ops.broker import Mosquitto, free_port
from ops.broker_security import (
    BrokerSecurityError,
    SecurityPaths,
    init_broker_security,
    read_users,
    secure_broker_config,
)
from ops.provision import provision_gateway
from protocols import topics
from tests.conftest import wait_for
from tests.procs import Proc, central_db, central_settled, seed_viewer
from tests.test_broker_security import NOT_AUTHORIZED, collecting, forge, mqtt, reason
from tests.test_link_recovery import order_body

RUN_AS = "root" if os.geteuid() == 0 else None
GW = "store-101"
OTHER = "store-201"  # a store of another region
DOWN_S = 10.0
# After a broker is back: the gateway's reconnect backoff is capped at 10 s, the bridge's
# (restart_timeout 1 30) grows while the central broker is away; then the gateway's ack
# timeout (2 s here, doubling while nothing comes) and central's downlink timer (15 s) resend
# whatever a SIGKILLed broker had not saved.
DRAIN_S = 90.0


@dataclass
class Region:
    tmp: Path
    central_etc: Path
    regional_etc: Path
    central_broker: Mosquitto
    regional_broker: Mosquitto
    bridge: Bridge
    central: Proc
    gw: Proc
    ops: tuple[str, str]  # the central broker's read-only monitoring user

    @property
    def gw_db(self) -> Path:
        return self.tmp / GW / f"{GW}.db"


def build_region(tmp: Path, protocol: str = DEFAULT_PROTOCOL) -> Region:
    """Central's installation (broker-init, bridge-init) and the region's (broker-init with the
    bridge file, provision-gateway), as the commands of ops/BROKER.md make them."""
    central_etc, regional_etc = tmp / "etc-central", tmp / "etc-eu"
    central_port, regional_port = free_port(), free_port()
    service = init_broker_security(central_etc, broker_host="127.0.0.1", broker_port=central_port)
    bridge = init_bridge("eu", etc_dir=central_etc, gateways=[GW], protocol=protocol)
    central_broker = Mosquitto(
        secure_broker_config(central_etc, port=central_port, data_dir=tmp / "broker-central", run_as=RUN_AS)
    )
    init_broker_security(regional_etc, broker_host="127.0.0.1", broker_port=regional_port)
    gw_cfg = provision_gateway(
        GW,
        etc_dir=regional_etc,
        broker_host="127.0.0.1",
        broker_port=regional_port,
        customer="S001",
        data_dir=tmp / GW,
        http_port=free_port(),
    ).config_file
    regional_cfg = secure_broker_config(
        regional_etc, port=regional_port, data_dir=tmp / "broker-eu", run_as=RUN_AS
    )
    make_regional(regional_cfg, load_bridge(central_etc / "bridges" / "eu.toml"))
    regional_broker = Mosquitto(regional_cfg)

    # the gateway as provisioned, with a short ack timeout so a lost ack is resent soon
    gw_text = gw_cfg.read_text() + "ack_timeout_s = 2.0\n"
    gw_http = tomllib.loads(gw_text)["http"]["port"]
    gw_file = tmp / f"{GW}.toml"
    gw_file.write_text(gw_text)
    # central with the [broker] section broker-init wrote (credentials, secret share group)
    seed_viewer(tmp / "central" / "central.db")
    http = free_port()
    c_file = tmp / "central.toml"
    c_file.write_text(
        f'data_dir = "{tmp / "central"}"\nregions_file = "{central_etc / "regions.toml"}"\n'
        + SecurityPaths(central_etc).central_config.read_text()
        + f"\n[http]\nport = {http}\n"
    )
    return Region(
        tmp=tmp,
        central_etc=central_etc,
        regional_etc=regional_etc,
        central_broker=central_broker,
        regional_broker=regional_broker,
        bridge=bridge,
        central=Proc("central", c_file, http, tmp / "central.log"),
        gw=Proc("gateway", gw_file, gw_http, tmp / f"{GW}.log"),
        ops=(service.ops.username, service.ops.password),
    )


@pytest.fixture
def region(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Region]:
    r = build_region(tmp_path, getattr(request, "param", DEFAULT_PROTOCOL))
    try:
        r.central_broker.start()
        r.regional_broker.start()
        r.central.start()
        r.gw.start()
        yield r
    finally:
        r.gw.kill()
        r.central.kill()
        r.regional_broker.kill()
        r.central_broker.kill()


class Feeder:
    """Posts orders to the gateway, one after another, until stopped; counts the 201s."""

    def __init__(self, http: aiohttp.ClientSession, gw: Proc) -> None:
        self.http, self.gw = http, gw
        self.accepted: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        while not self._stop.is_set():
            ref = f"o-{len(self.accepted)}"
            async with self.http.post(f"{self.gw.url}/api/orders", json=order_body(ref)) as r:
                assert r.status == 201, f"order {ref}: {r.status} {await r.text()}"
            self.accepted.append(ref)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feeder")

    async def more(self, n: int, *, timeout: float = 30.0) -> None:
        """Wait until ``n`` more orders were taken (the gateway keeps taking them)."""
        target = len(self.accepted) + n
        await wait_for(lambda: len(self.accepted) >= target, timeout=timeout, what=f"{n} more orders")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


@contextlib.asynccontextmanager
async def feeding(region: Region, http: aiohttp.ClientSession) -> AsyncIterator[Feeder]:
    feeder = Feeder(http, region.gw)
    feeder.start()
    try:
        yield feeder
    finally:
        await feeder.stop()


async def health(http: aiohttp.ClientSession, proc: Proc) -> dict[str, Any]:
    async with http.get(f"{proc.url}/api/health") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


def _rows(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def central_orders(region: Region) -> list[str]:
    conn = central_db(region.tmp)
    try:
        return [r for (r,) in conn.execute("SELECT source_ref FROM orders")]
    finally:
        conn.close()


def downlink_pending(region: Region) -> int:
    conn = central_db(region.tmp)
    try:
        return int(
            conn.execute("SELECT count(*) FROM downlink_outbox WHERE gateway = ?", (GW,)).fetchone()[0]
        )
    finally:
        conn.close()


async def drained(region: Region, http: aiohttp.ClientSession, accepted: list[str]) -> None:
    """Wait until the gateway's outbox is empty, central processed everything and every
    downlink record for the gateway is acked."""
    t0 = time.monotonic()

    async def settled() -> bool:
        return (
            (await health(http, region.gw))["backlog"] == 0
            and central_settled(region.tmp)
            and len(set(central_orders(region))) >= len(set(accepted))
            and downlink_pending(region) == 0
        )

    await wait_for(settled, timeout=DRAIN_S, interval=0.2, what="gateway, central and downlink drained")
    print(f"drained {time.monotonic() - t0:.1f}s after the stream stopped")


def assert_exactly_once(region: Region, accepted: list[str]) -> None:
    refs = central_orders(region)
    lost = sorted(set(accepted) - set(refs))
    duplicated = len(refs) - len(set(refs))
    unexpected = sorted(set(refs) - set(accepted))
    assert (len(lost), duplicated, len(unexpected)) == (0, 0, 0), (lost[:10], duplicated, unexpected[:10])
    # Every downlink record central sent (all acked: downlink_outbox is empty) is in the
    # gateway's inbox - applied, once (the inbox's key is the record id) - and nothing else is.
    conn = central_db(region.tmp)
    try:
        sent = {i for (i,) in conn.execute("SELECT id FROM downlink_results WHERE gateway = ?", (GW,))}
    finally:
        conn.close()
    applied = {i for (i,) in _rows(region.gw_db, "SELECT id FROM inbox")}
    assert sent and sent == applied, (len(sent), len(applied), sorted(sent ^ applied)[:5])
    # each order's status came back down and is what the store shows
    statuses = _rows(region.gw_db, "SELECT count(*), count(DISTINCT record_id) FROM order_status")[0]
    assert statuses == (len(accepted), len(accepted)), statuses
    print(f"{len(accepted)} orders, {len(sent)} downlink records: 0 lost, 0 duplicated")


async def wait_link(http: aiohttp.ClientSession, proc: Proc, want: str, *, central: bool = False) -> None:
    async def ok() -> bool:
        doc = await health(http, proc)
        return bool((doc["mqtt"] if central else doc)["link"] == want)

    what = f"{'central' if central else 'gateway'} link {want}"
    await wait_for(ok, timeout=DRAIN_S if want == "up" else DOWN_S, what=what)


@contextlib.asynccontextmanager
async def watching_central(region: Region, *subscriptions: str) -> AsyncIterator[Any]:
    """An ops client on the central broker, collecting what arrives (retained first)."""
    async with mqtt(region.central_broker.port, region.ops, client_id="ops-watch") as c, collecting(c) as rx:
        for s in subscriptions:
            await c.subscribe(s, qos=1)
        yield rx


async def until(rx: Any, topic: str, payload: bytes, timeout: float = DOWN_S) -> list[tuple[str, bytes]]:
    """What ``rx`` received before ``(topic, payload)``; the test's own deadline, longer than
    the collector's (a bridge crossing on a loaded 2-core machine)."""
    await wait_for(lambda: (topic, payload) in rx.received, timeout=timeout, what=f"{topic} {payload!r}")
    return list(rx.received[: rx.received.index((topic, payload))])


def _state(payload: bytes) -> str:
    import json

    return str(json.loads(payload)["state"])


# (a) -------------------------------------------------------------------------------------
async def test_regional_broker_killed_and_restarted_mid_stream(region: Region) -> None:
    async with aiohttp.ClientSession() as http, feeding(region, http) as feeder:
        await wait_for(lambda: len(central_orders(region)) >= 10, timeout=DRAIN_S, what="orders at central")
        region.regional_broker.kill()
        await wait_link(http, region.gw, "down")
        await feeder.more(20)  # the gateway keeps taking orders with its broker gone
        await asyncio.to_thread(region.regional_broker.start)
        await wait_link(http, region.gw, "up")
        await feeder.more(20)
        await feeder.stop()
        await drained(region, http, feeder.accepted)
    assert_exactly_once(region, feeder.accepted)


# (b) + (c) -------------------------------------------------------------------------------
@pytest.mark.parametrize("region", PROTOCOLS, indirect=True)
async def test_central_broker_killed_the_store_keeps_taking_orders_behind_its_bridge(region: Region) -> None:
    async with aiohttp.ClientSession() as http, feeding(region, http) as feeder:
        await wait_for(lambda: len(central_orders(region)) >= 10, timeout=DRAIN_S, what="orders at central")
        region.central_broker.kill()
        await wait_link(http, region.central, "down", central=True)
        # the bridge is down, the gateway's own link (to the regional broker) is not
        await feeder.more(40)
        during = await health(http, region.gw)
        assert during["link"] == "up" and during["backlog"] > 0, during  # unacked: still in its outbox
        await asyncio.to_thread(region.central_broker.start)
        await wait_link(http, region.central, "up", central=True)
        await feeder.more(20)
        await feeder.stop()
        await drained(region, http, feeder.accepted)
    assert_exactly_once(region, feeder.accepted)
    async with watching_central(region, topics.bridge_state("eu")) as rx:
        await until(rx, topics.bridge_state("eu"), b"1")  # retained: the bridge is back


# status and Will through the bridge ------------------------------------------------------
async def test_status_and_will_cross_the_bridge_and_the_bridge_state_tells_a_dead_region(
    region: Region,
) -> None:
    status, state = topics.status(GW), topics.bridge_state("eu")
    async with watching_central(region, status, state) as rx:

        async def latest(topic: str) -> bytes | None:
            got = [p for t, p in rx.received if t == topic]
            return got[-1] if got else None

        async def online() -> bool:
            p = await latest(status)
            return p is not None and _state(p) == "online"

        await wait_for(online, timeout=DOWN_S, what="the gateway's retained online status at central")
        await wait_for(lambda: central_fleet_state(region) == "online", timeout=DOWN_S, what="fleet: online")
        region.gw.kill()  # SIGKILL: the regional broker publishes its Will, the bridge forwards it

        async def offline() -> bool:
            p = await latest(status)
            return p is not None and _state(p) == "offline"

        await wait_for(offline, timeout=DOWN_S + 30, what="the gateway's Will at central")
        await wait_for(
            lambda: central_fleet_state(region) == "offline", timeout=DOWN_S, what="fleet: offline"
        )
        assert await latest(state) == b"1"

    # retained at central: a client that comes later reads the Will
    async with watching_central(region, status) as rx:
        await wait_for(lambda: bool(rx.received), timeout=DOWN_S, what="the retained status")
        assert _state(rx.received[0][1]) == "offline"

    region.gw.start()
    async with watching_central(region, status, state) as rx:
        await wait_for(lambda: central_fleet_state(region) == "online", timeout=DRAIN_S, what="online again")
        # the regional broker itself dies: its gateways cannot tell central anything, but the
        # bridge's Will on the central broker does (retained "0")
        rx.received.clear()
        t0 = time.monotonic()
        region.regional_broker.kill()
        await wait_for(
            lambda: (state, b"0") in rx.received,
            timeout=DOWN_S,
            what="the bridge's Will (state 0) at central",
        )
        print(f"bridge's Will at central {time.monotonic() - t0:.2f}s after the regional broker's SIGKILL")
        # the store's own retained status at central still says online (below); central's fleet does not
        await wait_for(
            lambda: central_fleet_state(region) == "offline",
            timeout=DOWN_S,
            what="fleet: region's store offline",
        )
        assert central_fleet_events(region)[-1] == (
            "gateway offline",
            "bridge of region eu down: status unknown",
        )
    async with watching_central(region, state, status) as rx:
        await until(rx, state, b"0")  # retained
        await wait_for(
            lambda: any(t == status for t, _ in rx.received), timeout=DOWN_S, what="retained status"
        )
        assert [_state(p) for t, p in rx.received if t == status] == ["online"]  # stale, forever

    # the regional broker is back: the bridge says 1, the store's status comes through again
    region.regional_broker.start()
    await wait_for(
        lambda: central_fleet_state(region) == "online", timeout=DRAIN_S, what="fleet: online again"
    )
    assert ("bridge up", "bridge of region eu connected") in central_fleet_events(region)


def central_fleet_events(region: Region) -> list[tuple[str, str]]:
    conn = central_db(region.tmp)
    try:
        rows = conn.execute("SELECT event, detail FROM fleet_events WHERE gateway = ? ORDER BY id", (GW,))
        return [(str(e), str(d)) for e, d in rows]
    finally:
        conn.close()


def central_fleet_state(region: Region) -> str | None:
    conn = central_db(region.tmp)
    try:
        row = conn.execute("SELECT state FROM fleet_gateways WHERE gateway = ?", (GW,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


# the bridge's rights on the central broker -----------------------------------------------
async def test_a_bridge_cannot_speak_for_another_regions_store_nor_join_a_share_group(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    port = free_port()
    service = init_broker_security(etc, broker_host="127.0.0.1", broker_port=port)
    eu = init_bridge("eu", etc_dir=etc, gateways=[GW])
    us = init_bridge("us", etc_dir=etc, gateways=[OTHER])
    with pytest.raises(BridgeError, match="already carried by region 'us'"):
        init_bridge("eu", etc_dir=etc, gateways=[GW, OTHER])
    assert {eu.username, us.username} <= set(read_users(SecurityPaths(etc).password_file))
    broker = Mosquitto(secure_broker_config(etc, port=port, data_dir=tmp_path / "broker", run_as=RUN_AS))
    broker.start()
    try:
        eu_creds = (eu.username, eu.password)
        central = (service.central.username, service.central.password)
        async with mqtt(port, central, client_id="central-probe") as c, collecting(c) as rx:
            await c.subscribe(topics.central_uplink_subscription(group=service.share_group), qos=1)
            await c.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
            # a compromised region tries another region's store's uplink and status
            for topic in (topics.uplink(OTHER), topics.status(OTHER)):
                await forge(port, eu_creds, topic)
            # its own store still works: the barrier
            async with mqtt(port, eu_creds, client_id=eu.username) as b:
                await b.publish(topics.uplink(GW), b"barrier", qos=1)
            assert await until(rx, topics.uplink(GW), b"barrier") == []
        async with mqtt(port, eu_creds, client_id="eu-snoop") as s:
            (code,) = await s.subscribe(f"$share/x/{topics.uplink(GW)}", qos=1)
            assert getattr(code, "value", code) == NOT_AUTHORIZED, code
        # the other region's downlink never reaches it
        async with mqtt(port, eu_creds, client_id="eu-snoop2") as s, collecting(s) as rx:
            await s.subscribe(topics.downlink(OTHER), qos=1)
            await s.subscribe(topics.downlink(GW), qos=1)
            async with mqtt(port, central, client_id="central-2") as c:
                await c.publish(topics.downlink(OTHER), b"secret", qos=1)
                await c.publish(topics.downlink(GW), b"barrier", qos=1)
            assert await until(rx, topics.downlink(GW), b"barrier") == []
    finally:
        broker.kill()


def test_bridge_init_refuses_what_would_give_a_store_two_ways_in(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    init_broker_security(etc, broker_host="127.0.0.1", broker_port=1883)
    provision_gateway("store-001", etc_dir=etc, broker_host="127.0.0.1", broker_port=1883)
    with pytest.raises(BridgeError, match="provisioned on the central broker itself"):
        init_bridge("eu", etc_dir=etc, gateways=["store-001"])
    with pytest.raises(BridgeError, match="invalid region"):
        init_bridge("EU!", etc_dir=etc, gateways=[GW])
    with pytest.raises(topics.TopicError):
        init_bridge("eu", etc_dir=etc, gateways=["Bad Id"])
    first = init_bridge("eu", etc_dir=etc, gateways=[GW])
    again = init_bridge("eu", etc_dir=etc, gateways=[GW, "store-102"])
    assert again.password == first.password and again.gateways == (GW, "store-102")
    assert init_bridge("eu", etc_dir=etc, gateways=[GW], rotate=True).password != first.password
    with pytest.raises(BrokerSecurityError, match="carried by the bridge of region 'eu'"):
        provision_gateway(GW, etc_dir=etc, broker_host="127.0.0.1", broker_port=1883)
    f = etc / "bridges" / "eu.toml"
    assert f.stat().st_mode & 0o777 == 0o600
    assert load_bridge(f).gateways == (GW,)


# what crosses a mosquitto 2.0.11 bridge (the table in ops/BROKER.md) ----------------------
@pytest.mark.parametrize(
    ("protocol", "user_properties_cross", "session_kept"),
    [("mqttv311", False, True), ("mqttv50", True, False)],
)
async def test_what_crosses_the_bridge(
    tmp_path: Path, protocol: str, user_properties_cross: bool, session_kept: bool
) -> None:
    """Measured, not assumed: a user property on a downlink message, and a downlink message
    published at the central broker while the bridge is down (regional broker stopped). If a
    mosquitto upgrade changes either, this fails: update the table in ops/BROKER.md."""
    central_etc, regional_etc = tmp_path / "etc-central", tmp_path / "etc-eu"
    c_port, r_port = free_port(), free_port()
    service = init_broker_security(central_etc, broker_host="127.0.0.1", broker_port=c_port)
    init_bridge("eu", etc_dir=central_etc, gateways=[GW], protocol=protocol)
    init_broker_security(regional_etc, broker_host="127.0.0.1", broker_port=r_port)
    gw = provision_gateway(GW, etc_dir=regional_etc, broker_host="127.0.0.1", broker_port=r_port)
    central_broker = Mosquitto(
        secure_broker_config(central_etc, port=c_port, data_dir=tmp_path / "bc", run_as=RUN_AS)
    )
    r_cfg = secure_broker_config(regional_etc, port=r_port, data_dir=tmp_path / "br", run_as=RUN_AS)
    make_regional(r_cfg, load_bridge(central_etc / "bridges" / "eu.toml"))
    regional = Mosquitto(r_cfg)
    central_creds = (service.central.username, service.central.password)
    down, state = topics.downlink(GW), topics.bridge_state("eu")
    got: list[tuple[bytes, dict[str, str]]] = []

    async def gateway_session(until: bytes) -> None:
        """The gateway's persistent session on the regional broker, until ``until`` arrives."""
        async with mqtt(
            r_port, (GW, gw.password), client_id=f"gw-{GW}", clean_start=False, session_expiry=3600
        ) as g:
            await g.subscribe(down, qos=1)
            async with asyncio.timeout(DOWN_S):
                async for m in g.messages:
                    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                    got.append((payload, dict(getattr(m.properties, "UserProperty", None) or [])))
                    if payload == until:
                        return

    async def start_regional_and_wait_for_the_bridge(c: Any) -> None:
        """Start the regional broker; return once the bridge announces its connection at the
        central broker: a live ``1`` (not the retained one of an earlier connection)."""
        await c.subscribe(state, qos=1)  # before the start: messages queue in the client
        regional.start()
        async with asyncio.timeout(DRAIN_S):
            async for m in c.messages:
                if m.topic.value == state and m.payload == b"1" and not m.retain:
                    break
        await c.unsubscribe(state)

    async def gateway_subscribed() -> None:
        async with mqtt(
            r_port, (GW, gw.password), client_id=f"gw-{GW}", clean_start=False, session_expiry=3600
        ) as g:
            await g.subscribe(down, qos=1)

    central_broker.start()
    try:
        async with mqtt(c_port, central_creds, client_id="central-probe") as c:
            await start_regional_and_wait_for_the_bridge(c)
            await gateway_subscribed()  # its persistent session on the regional broker
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("acked_below", "42")]
            await c.publish(down, b"first", qos=1, properties=props)
            await gateway_session(b"first")
            regional.stop()  # graceful: the regional broker saves the gateway's session
            await c.publish(down, b"while the bridge is down", qos=1)
            await start_regional_and_wait_for_the_bridge(c)
            await c.publish(down, b"barrier", qos=1)
            await gateway_session(b"barrier")
    finally:
        regional.kill()
        central_broker.kill()
    payloads = [p for p, _ in got]
    assert got[0] == (b"first", {"acked_below": "42"} if user_properties_cross else {}), got
    assert (b"while the bridge is down" in payloads) is session_kept, payloads
    assert payloads[-1] == b"barrier"


def test_regions_file_written_by_bridge_init_and_checked_by_central(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    init_broker_security(etc, broker_host="127.0.0.1", broker_port=1883)
    init_bridge("eu", etc_dir=etc, gateways=[GW, "store-102"])
    init_bridge("us", etc_dir=etc, gateways=[OTHER])
    f = etc / "regions.toml"
    assert f.stat().st_mode & 0o777 == 0o644 and "password" not in f.read_text()
    assert load_regions(f) == {"eu": (GW, "store-102"), "us": (OTHER,)}
    bad = tmp_path / "bad.toml"
    for text, why in [
        ('[regions]\nEU = ["store-1"]\n', "invalid region 'EU'"),
        ('[regions]\neu = "store-1"\n', "expected a list of gateway ids"),
        ('[regions]\neu = ["Store 1"]\n', "invalid gateway id 'Store 1'"),
        ("regions = 3\n", "is not a table"),
        ("[regions\n", "regions file"),
    ]:
        bad.write_text(text)
        with pytest.raises(RegionsFileError, match=re.escape(why)):
            load_regions(bad)


async def test_a_store_cannot_take_the_bridges_client_id_on_its_regional_broker(tmp_path: Path) -> None:
    """Without ``clientid_prefixes gw-`` a store connecting as ``local.bridge.eu`` throws the
    bridge off (and with a clean start drops the uplinks queued for it): measured."""
    r = build_region(tmp_path)
    gw = tomllib.loads((r.regional_etc / "gateways" / f"{GW}.toml").read_text())["mqtt"]
    creds = (GW, gw["password"])
    r.central_broker.start()
    r.regional_broker.start()
    try:
        state = topics.bridge_state("eu")
        async with watching_central(r, state, topics.status(GW)) as rx:
            await until(rx, state, b"1")
            for cid in (f"local.{r.bridge.username}", r.bridge.username, "anything-else"):
                with pytest.raises(aiomqtt.MqttError) as err:
                    async with mqtt(r.regional_broker.port, creds, client_id=cid):
                        pass
                assert reason(err.value) == NOT_AUTHORIZED, (cid, err.value)
            # the bridge is still up: a status sent now crosses it, and no "0" came before it
            async with mqtt(r.regional_broker.port, creds, client_id=f"gw-{GW}") as g:
                await g.publish(topics.status(GW), b"barrier", qos=1, retain=True)
            assert (state, b"0") not in await until(rx, topics.status(GW), b"barrier")
    finally:
        r.regional_broker.kill()
        r.central_broker.kill()
