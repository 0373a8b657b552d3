"""The fleet simulator (``firmware_sim.fleet``, ``storegate sim fleet``) against the real
central process and a real Mosquitto: 200 gateways, each with its own MQTT connection, seen
online at central within 5 s of connecting, every order taken exactly once, and gateways whose
connection drops without a DISCONNECT shown offline through their Will."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from firmware_sim.fleet import Fleet, FleetConfig, read_credentials
from ops.bench_fleet import RegistryWatcher
from ops.broker import BrokerConfig, Mosquitto, free_port
from ops.broker_security import init_broker_security, secure_broker_config
from ops.provision import provision_gateway
from protocols import topics
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.procs import ROOT, basic_auth, central_db, central_proc, central_settled

GATEWAYS = 200
FRESH_MS = 5000


def _total(fleet: Fleet, key: str) -> int:
    return sum(getattr(g.stats, key) for g in fleet.gateways.values())


async def test_fleet_of_200_online_within_5s_orders_once_killed_offline_by_will(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_proc(tmp_path, broker.port)
    await asyncio.to_thread(central.start)
    try:
        fleet = Fleet(FleetConfig(port=broker.port, gateways=GATEWAYS, orders_per_min=30, seed=7))
        async with aiohttp.ClientSession(headers=basic_auth()) as http, fleet.running():
            watcher = RegistryWatcher(central.url, fleet, every_s=0.1)
            watch = asyncio.create_task(watcher.run(http))
            try:
                assert await fleet.wait_connected(within_s=30), f"{fleet.connected} connected"
                await wait_for(
                    lambda: len(watcher.first_online_ms) == GATEWAYS,
                    timeout=15,
                    what="every gateway online in central's fleet registry",
                )
                late = {
                    gw: seen - fleet.gateways[gw].stats.first_connected_ms  # type: ignore[operator]
                    for gw, seen in watcher.first_online_ms.items()
                    if seen - (fleet.gateways[gw].stats.first_connected_ms or 0) > FRESH_MS
                }
                assert not late, f"seen online later than {FRESH_MS} ms after connecting: {late}"

                # the order stream (30 a minute each: 100/s), then every outbox drains
                await wait_for(lambda: _total(fleet, "orders") >= 300, timeout=20, what="300 orders made")
                fleet.ordering.clear()
                assert await fleet.wait_drained(within_s=30), f"{fleet.backlog} unacked"

                # a tenth of the fleet loses its connection without DISCONNECT: the Will says offline
                killed = list(fleet.gateways)[::10]
                fleet.kill(killed)
                await wait_for(
                    lambda: all(watcher.state.get(gw) == "offline" for gw in killed),
                    timeout=10,
                    what="the killed gateways offline at central",
                )
                offline = {gw for gw, state in watcher.state.items() if state == "offline"}
                assert offline == set(killed)
                assert all(not fleet.gateways[gw].connected.is_set() for gw in killed)
            finally:
                watch.cancel()
        summary = fleet.summary()
        assert summary["duplicated"] == 0 and summary["unacked"] == 0 and summary["rejected"] == 0
        assert summary["accepted"] + summary["duplicate_acks"] == summary["orders"]

        await wait_for(lambda: central_settled(tmp_path), timeout=30, what="central processed every order")
        conn = central_db(tmp_path)
        try:
            per_gw = dict(
                conn.execute("SELECT gateway, count(*) FROM processed WHERE type = 'order' GROUP BY gateway")
            )
            orders = dict(conn.execute("SELECT record_id, gateway FROM orders").fetchall())
        finally:
            conn.close()
        made = {rid: gw for gw, g in fleet.gateways.items() for rid in g.made}
        assert len(made) == summary["orders"]
        assert orders == made  # every order once, from the gateway that made it, and nothing else
        assert per_gw == {gw: len(g.made) for gw, g in fleet.gateways.items() if g.made}
    finally:
        await asyncio.to_thread(central.stop)


async def test_statuses_do_not_hold_back_processing(broker: Mosquitto, tmp_path: Path) -> None:
    """Processing steps aside while records are being received; a fleet's statuses (200 a second
    from 1,000 gateways) are telemetry and must not count, or processing waits almost always."""
    db = DurableDB(tmp_path / "c.db", migrations=all_migrations())
    await db.open()
    receiving_during_status: list[int] = []

    async def on_status(_gw: str, _payload: bytes) -> None:
        receiving_during_status.append(consumer.receiving)

    consumer = Consumer(
        db=db, broker=BrokerSettings(port=broker.port, client_id="central-st"), on_status=on_status
    )
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.connected.wait()
        fleet = Fleet(FleetConfig(port=broker.port, gateways=3, orders_per_min=0))
        async with fleet.running():
            await wait_for(lambda: len(receiving_during_status) >= 3, timeout=10, what="3 statuses")
        assert receiving_during_status and set(receiving_during_status) == {0}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_broker_started_with_a_low_fd_limit_takes_a_fleet(tmp_path: Path) -> None:
    """Mosquitto holds a descriptor per client and inherits its starter's limit (it raises none
    of its own): from a soft limit of 64 it took 56 of 100 gateways, the rest waiting for a
    CONNACK. The wrapper lifts the soft limit to the hard one before it starts the broker."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp_path / "broker"))
    try:
        broker.start()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fleet = Fleet(FleetConfig(port=broker.port, gateways=100, orders_per_min=0))
        async with fleet.running():
            assert await fleet.wait_connected(within_s=20), f"{fleet.connected} of 100 connected"
    finally:
        broker.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _low_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))


def test_sim_fleet_command_raises_its_fd_limit_and_drains(broker: Mosquitto, tmp_path: Path) -> None:
    """``storegate sim fleet`` started with a soft limit of 64 open files runs 100 gateways
    (lifting the soft limit to the hard one), and prints a summary with nothing lost or twice."""
    central = central_proc(tmp_path, broker.port)
    central.start()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "sim",
                "fleet",
                "--port",
                str(broker.port),
                "--gateways",
                "100",
                "--orders-per-min",
                "60",
                "--duration",
                "3",
                "--drain-timeout",
                "30",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            preexec_fn=_low_fd_limit,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["ever_connected"] == 100 and summary["open_files_limit"] > 64
        assert summary["drained"] is True and summary["unacked"] == 0 and summary["duplicated"] == 0
        assert summary["orders"] > 0 and summary["acked"] == summary["orders"]
    finally:
        central.stop()


@pytest.mark.parametrize("when", ["all online", "first online"])
async def test_sim_fleet_command_runs_until_sigterm_and_then_prints_its_summary(
    broker: Mosquitto, when: str
) -> None:
    """SIGTERM ends the run with the summary, whether it comes once the whole fleet is online
    or while it is still connecting (one at a time here): a gateway's "online" is visible to a
    watcher before the fleet has finished connecting, and the signal must not kill it then."""
    gateways = 5 if when == "all online" else 20
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ops.cli", "sim", "fleet", "--port", str(broker.port)),
        *("--gateways", str(gateways), "--orders-per-min", "0", "--duration", "0"),
        *("--connect-concurrency", "1"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
            online: set[str] = set()
            async with asyncio.timeout(20):
                async for m in c.messages:
                    doc = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                    if doc["state"] == "online":
                        online.add(doc["gw"])
                    if len(online) == (gateways if when == "all online" else 1):
                        break
        proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["drained"] is True and summary["orders"] == 0
    if when == "all online":
        assert summary["ever_connected"] == gateways
    else:
        assert 1 <= summary["ever_connected"] <= gateways


def test_too_few_file_descriptors_is_a_clear_error() -> None:
    """Below the hard limit nothing can help: the command says so and what to raise."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))\n"
        "from ops.cli import main\n"
        "sys.exit(main(['sim', 'fleet', '--gateways', '200', '--port', '1']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "264 file descriptors needed, the hard limit (ulimit -Hn) is 100" in proc.stderr


async def test_provisioned_fleet_connects_on_the_shipped_secured_broker(tmp_path: Path) -> None:
    """With the shipped security (no anonymous access, a password per gateway, the ACL) the sim
    reads each gateway's password from the config ``provision-gateway`` wrote (``--etc``); its
    statuses pass the ACL (ops reads them); a gateway with a wrong password never gets in."""
    etc = tmp_path / "etc"
    port = free_port()
    service = init_broker_security(etc, broker_port=port)
    cfg = FleetConfig(port=port, gateways=10, orders_per_min=0)
    ids = cfg.gateway_ids()
    for gw in ids:
        provision_gateway(gw, etc_dir=etc, broker_host="127.0.0.1", broker_port=port, customer="S001")
    creds = read_credentials(etc, ids)
    run_as = "root" if os.geteuid() == 0 else None
    broker = Mosquitto(secure_broker_config(etc, port=port, data_dir=tmp_path / "broker", run_as=run_as))
    broker.start()
    try:
        fleet = Fleet(FleetConfig(port=port, gateways=10, orders_per_min=0, credentials=creds))
        wrong = Fleet(FleetConfig(port=port, first=11, gateways=1, credentials={"sim-00011": "nope"}))
        async with fleet.running(), wrong.running():
            assert await fleet.wait_connected(within_s=20)
            ops = service.ops
            async with aiomqtt.Client("127.0.0.1", port, username=ops.username, password=ops.password) as c:
                await c.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
                online: set[str] = set()
                async with asyncio.timeout(10):
                    async for m in c.messages:
                        doc = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        if doc["state"] == "online":
                            online.add(doc["gw"])
                        if online == set(ids):
                            break
            assert not wrong.gateways["sim-00011"].connected.is_set()
            assert wrong.gateways["sim-00011"].stats.first_connected_ms is None
    finally:
        broker.kill()
