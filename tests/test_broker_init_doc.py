"""The broker-init command line documented in ops/BROKER.md works as written (issue 14, item 6).

The command is parsed out of the doc, run as a real ``storegate`` process (only its paths moved
under a temporary root and its ports made free), and the mosquitto.conf it wrote is run as
the doc says (``mosquitto -c <etc>/broker/mosquitto.conf``): the broker must start, write its
log and persistence into ``--data-dir`` (created by broker-init), and keep a retained message
across a restart. Run as root, mosquitto drops to the ``mosquitto`` user exactly as in
production, so the directories are made where that user can reach them (not pytest's private
tmp_path).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.broker import find_mosquitto, free_port
from ops.provision import provision_gateway
from protocols import topics
from tests.conftest import wait_for
from tests.test_broker_security import collecting, mqtt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ops" / "BROKER.md"
START_TIMEOUT = 10.0


def documented_command(doc: Path, program: str) -> list[str]:
    """The first fenced shell line of ``doc`` that starts with ``program``, continuations joined."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            if line.strip().startswith(program + " "):
                return shlex.split(line)
    raise AssertionError(f"no `{program} ...` command in {doc.name}")


def relocate(argv: list[str], base: Path) -> tuple[list[str], dict[str, str]]:
    """Absolute paths go under ``base``, ports become free ones; returns argv and the options."""
    out: list[str] = []
    opts: dict[str, str] = {}
    for prev, arg in zip(["", *argv], argv, strict=False):
        value = arg
        if prev.endswith("-port"):
            value = str(free_port())
        elif arg.startswith("/"):
            value = str(base / arg.lstrip("/"))
        if prev.startswith("--"):
            opts[prev] = value
        out.append(value)
    return out, opts


def start_broker(conf: Path, port: int, stderr: Path) -> subprocess.Popen[bytes]:
    """``mosquitto -c conf`` as the doc says; returns once it listens."""
    with open(stderr, "ab") as err:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stderr=err, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mosquitto exited: {stderr.read_text()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError(f"mosquitto not listening on {port} after {START_TIMEOUT}s")


def run_documented_broker_init(base: Path) -> tuple[Path, Path, int]:
    """Run the doc's command line (relocated); return etc, data dir and plain port."""
    argv = documented_command(DOC, "storegate broker-init")
    assert argv[:2] == ["storegate", "broker-init"]
    args, opts = relocate(argv[2:], base)
    etc, data_dir = Path(opts["--etc"]), Path(opts["--data-dir"])
    assert not data_dir.parent.exists()  # broker-init must create the whole path
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "broker-init", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"mosquitto -c {etc / 'broker' / 'mosquitto.conf'}" in proc.stdout  # what the operator runs
    assert data_dir.is_dir()
    if os.geteuid() == 0:  # mosquitto drops to its user: the data dir must be that user's
        assert data_dir.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    return etc, data_dir, int(opts["--broker-port"])


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sg-broker-init-"))
    os.chmod(d, 0o755)  # traversable by the user mosquitto drops to
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_documented_broker_init_configures_a_broker_that_persists(base: Path) -> None:
    etc, data_dir, port = run_documented_broker_init(base)
    conf = etc / "broker" / "mosquitto.conf"
    gw = provision_gateway("store-001", etc_dir=etc, broker_host="127.0.0.1", broker_port=port)
    ops = tomllib.loads((etc / "ops-mqtt.toml").read_text())["mqtt"]
    stderr = base / "mosquitto.stderr"

    broker = start_broker(conf, port, stderr)
    try:
        async with mqtt(port, ("store-001", gw.password), client_id="gw-store-001") as c:
            await c.publish(topics.status("store-001"), b"online", qos=1, retain=True)
        broker.send_signal(signal.SIGTERM)  # graceful: mosquitto writes its persistence file
        assert broker.wait(timeout=START_TIMEOUT) == 0
        assert (data_dir / "mosquitto.db").stat().st_size > 0
        assert "store-001" in (data_dir / "mosquitto.log").read_text()  # connection messages logged

        broker = start_broker(conf, port, stderr)
        async with (
            mqtt(port, (ops["username"], ops["password"]), client_id="ops-probe") as o,
            collecting(o) as rx,
        ):
            await o.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
            await wait_for(lambda: bool(rx.received), timeout=START_TIMEOUT, what="the retained status")
        assert rx.received == [(topics.status("store-001"), b"online")]
    finally:
        if broker.poll() is None:
            os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(timeout=START_TIMEOUT)
