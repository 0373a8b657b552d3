"""The regional broker commands of ops/BROKER.md ("Regional brokers") work as written.

Central's documented ``broker-init`` (TLS listener, test PKI) and then every command of the
doc's ``sh regional`` blocks run as real ``storegate`` processes, only with their paths moved
under a temporary root, their ports made free ones (the same port stays the same port within
one installation) and the example host names made ``localhost`` (which the test certificate
names). Both brokers run on the configs those commands wrote, as the doc says; the bridge
connects to the central broker over TLS, and an uplink, a retained status and a downlink
cross it. The documented ACL section and ``connection`` block are what the commands wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central.app import load_config as load_central_config
from central.regions import load_regions
from ops import bridge as bridge_mod
from ops.broker import free_port
from protocols import topics
from tests.conftest import wait_for
from tests.test_bridge import until
from tests.test_broker_init_doc import start_broker
from tests.test_broker_security import collecting, mqtt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ops" / "BROKER.md"
HOSTS = ("broker.example", "broker-eu.example")
TIMEOUT = 20.0


def fenced(doc: str, info: str | None = None) -> list[str]:
    """The text of every fenced block (whose info string is ``info``, if given)."""
    blocks: list[str] = []
    current: list[str] | None = None
    kind = ""
    for line in doc.splitlines():
        if line.startswith("```"):
            if current is None:
                current, kind = [], line[3:].strip()
            else:
                if info is None or kind == info:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def shell_lines(block: str) -> list[list[str]]:
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


class Relocator:
    """Paths under ``base``, example hosts -> localhost, each port number -> one free port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports: dict[str, str] = {}

    def port(self, p: str) -> str:
        return self.ports.setdefault(p, str(free_port()))

    def arg(self, prev: str, arg: str) -> str:
        if prev.endswith("-port"):
            return self.port(arg)
        if arg in HOSTS:
            return "localhost"
        if arg.startswith("/"):
            return str(self.base / arg.lstrip("/"))
        return arg

    def argv(self, argv: list[str]) -> list[str]:
        return [self.arg(prev, a) for prev, a in zip(["", *argv], argv, strict=False)]

    def text(self, line: str) -> str:
        """A documented config line as it must appear in the written file."""
        for h in HOSTS:
            line = re.sub(rf"{re.escape(h)}:(\d+)", lambda m: f"localhost:{self.port(m.group(1))}", line)
        return re.sub(r'(?<=[\s"])/([^\s"]+)', lambda m: str(self.base / m.group(1)), line)


def storegate(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"storegate {argv[0]}: {proc.stderr}"
    return proc.stdout


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sg-bridge-doc-"))
    os.chmod(d, 0o755)  # traversable by the user mosquitto drops to
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_documented_regional_broker_bridges_to_the_central_broker(base: Path) -> None:
    doc = DOC.read_text()
    # central's installation: the first documented broker-init, as test_broker_init_doc runs it
    central_cmd = next(
        line
        for block in fenced(doc)
        for line in shell_lines(block)
        if line[:2] == ["storegate", "broker-init"]
    )
    central = Relocator(base)
    central_argv = central.argv(central_cmd[2:])
    storegate(["broker-init", *central_argv])
    central_etc = Path(option(central_argv, "--etc"))
    central_port = int(option(central_argv, "--broker-port"))

    region = Relocator(base)
    region.ports.update({k: v for k, v in central.ports.items() if k == "8883"})  # central's TLS port
    commands = [line for block in fenced(doc, "sh regional") for line in shell_lines(block)]
    assert [c[:2] for c in commands] == [
        ["storegate", "bridge-init"],
        ["storegate", "broker-init"],
        ["storegate", "provision-gateway"],
        ["mosquitto", "-c"],
    ], commands
    for cmd in commands[:3]:
        out = storegate(region.argv(cmd[1:]))
    regional_argv = region.argv(commands[1][2:])
    regional_etc = Path(option(regional_argv, "--etc"))
    regional_port = int(option(regional_argv, "--broker-port"))
    assert "bridge         bridge.eu to localhost:" in storegate(region.argv(commands[1][1:]))  # re-run
    gw_argv = region.argv(commands[2][1:])
    gw = gw_argv[1]
    gw_cfg = tomllib.loads((regional_etc / "gateways" / f"{gw}.toml").read_text())["mqtt"]
    assert gw_cfg["port"] == regional_port and out

    # what the doc shows is what was written
    central_acl = (central_etc / "broker" / "acl").read_text().splitlines()
    acl_block = next(b for b in fenced(doc, "") if b.startswith("user bridge.eu"))
    for line in acl_block.splitlines():
        if line != "...":
            assert line in central_acl, f"documented ACL line {line!r} not in the central ACL"
    conf_file = regional_etc / "broker" / "mosquitto.conf"
    assert conf_file.stat().st_mode & 0o777 == 0o640  # it holds the bridge's password
    conf = conf_file.read_text().splitlines()
    assert "clientid_prefixes gw-" in conf
    conn_block = next(b for b in fenced(doc, "") if b.startswith("connection storegate-eu"))
    for line in conn_block.splitlines():
        if line == "..." or line.startswith("remote_password"):
            continue
        assert region.text(line) in conf, f"documented bridge line {line!r} not in {conf_file}"
    assert conf.index("connection storegate-eu") > max(
        i for i, c in enumerate(conf) if c.startswith("listener")
    )

    # central's documented regions_file reads the file bridge-init wrote
    central_cfg = next(b for b in fenced(doc, "") if "regions_file" in b)
    cfg_file = base / "central-regions.toml"
    cfg_file.write_text("\n".join(central.text(line) for line in central_cfg.splitlines()) + "\n")
    regions_file = load_central_config(cfg_file).regions_file
    assert regions_file == central_etc / "regions.toml"
    assert load_regions(regions_file) == {"eu": ("store-101", "store-102")}

    creds = tomllib.loads((central_etc / "central.toml").read_text())["broker"]
    central_creds = (creds["username"], creds["password"])
    gw_creds = (gw_cfg["username"], gw_cfg["password"])
    assert central_argv and regional_argv[-1].endswith("eu.toml")
    assert commands[3] == ["mosquitto", "-c", "/etc/storegate-eu/broker/mosquitto.conf"]
    brokers = [
        start_broker(central_etc / "broker" / "mosquitto.conf", central_port, base / "central.stderr"),
        start_broker(Path(region.argv(commands[3])[2]), regional_port, base / "regional.stderr"),
    ]
    try:
        async with (
            mqtt(central_port, central_creds, client_id="central-probe") as c,
            collecting(c) as at_central,
        ):
            await c.subscribe(topics.bridge_state("eu"), qos=1)
            await c.subscribe(topics.uplink(gw), qos=1)
            await c.subscribe(topics.status(gw), qos=1)
            await wait_for(
                lambda: (topics.bridge_state("eu"), b"1") in at_central.received,
                timeout=TIMEOUT,
                what="the bridge connected over TLS (retained state 1)",
            )
            async with (
                mqtt(regional_port, gw_creds, client_id=f"gw-{gw}") as g,
                collecting(g) as at_gw,
            ):
                await g.subscribe(topics.downlink(gw), qos=1)
                await g.publish(topics.status(gw), b'{"state": "online"}', qos=1, retain=True)
                await g.publish(topics.uplink(gw), b"up-1", qos=1)
                await until(at_central, topics.uplink(gw), b"up-1")
                assert (topics.status(gw), b'{"state": "online"}') in at_central.received
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = [("acked_below", "7")]
                await c.publish(topics.downlink(gw), b"down-1", qos=1, properties=props)
                await until(at_gw, topics.downlink(gw), b"down-1")
    finally:
        for b in brokers:
            if b.poll() is None:
                os.killpg(b.pid, signal.SIGTERM)
            b.wait(timeout=TIMEOUT)


def test_every_bridge_init_option_is_documented() -> None:
    doc = DOC.read_text()
    for opt in re.findall(r'add_argument\(\s*"(--[a-z-]+)"', Path(bridge_mod.__file__).read_text()):
        assert f"`{opt}`" in doc, f"bridge-init option {opt} not documented"
