"""``storegate demo``: a whole retailer on one machine.

Starts, as child processes: the broker (shipped config), central, three store gateways and
one distribution-centre gateway, plus simulated store activity; prints where to look; and on
Ctrl-C (or after ``--duration``) stops everything it started, so nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ops.broker import Mosquitto, free_port
from ops.broker_security import init_broker_security, reload_broker, secure_broker_config, toml_str
from ops.provision import provision_gateway

log = logging.getLogger(__name__)

STORES = ("store-001", "store-002", "store-003")
DC = "dc-001"
CATALOGUE = [  # demo item master: GTIN-13 with valid check digits
    ("4006381333931", "SKU-PEN-01", "Ballpoint pen, blue"),
    ("5901234123457", "SKU-TEA-25", "Green tea, 25 bags"),
    ("4012345678901", "SKU-MLK-1L", "Milk 1 l"),
    ("8712345678906", "SKU-SOAP-4", "Hand soap, 4 pack"),
    ("0012345678905", "SKU-RICE-5", "Rice 5 kg"),
]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    url: str | None = None


def _wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer on {url} within {timeout}s")


class Demo:
    def __init__(self, workdir: Path, http_port: int) -> None:
        self.dir = workdir.resolve()
        self.http_port = http_port
        self.children: list[Child] = []
        self.broker: Mosquitto | None = None

    def _spawn(self, name: str, argv: list[str]) -> Child:
        logf = (self.dir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "-v", *argv],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()
        child = Child(name, proc)
        self.children.append(child)
        return child

    def start(self) -> dict[str, str]:
        """Broker with the shipped security (no anonymous access, a password per gateway,
        the ACL), central, then each gateway provisioned like a real site."""
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        if etc.exists():
            shutil.rmtree(etc)  # fresh credentials every run
        broker_port = free_port()
        creds = init_broker_security(etc, broker_port=broker_port)
        self.broker = Mosquitto(secure_broker_config(etc, port=broker_port, data_dir=self.dir / "broker"))
        self.broker.start()
        central_cfg = self.dir / "central.toml"
        central_cfg.write_text(
            f'data_dir = "{self.dir / "central"}"\n'
            f'[broker]\nport = {broker_port}\nclient_id = "central-demo"\n'
            f"username = {toml_str(creds.central.username)}\npassword = {toml_str(creds.central.password)}\n"
            f'[http]\nhost = "127.0.0.1"\nport = {self.http_port}\n'
        )
        central = self._spawn("central", ["central", "--config", str(central_cfg)])
        central.url = f"http://127.0.0.1:{self.http_port}"
        _wait_http(f"{central.url}/api/health", central)
        urls = {"central": central.url}
        for i, gw in enumerate((*STORES, DC)):
            port = free_port()
            prov = provision_gateway(
                gw,
                etc_dir=etc,
                broker_host="127.0.0.1",
                broker_port=broker_port,
                customer=f"S{i + 1:03d}",
                data_dir=self.dir / gw,
                http_port=port,
            )
            child = self._spawn(gw, ["gateway", "--config", str(prov.config_file)])
            child.url = f"http://127.0.0.1:{port}"
            urls[gw] = child.url
        reload_broker(self.broker)  # let the new gateway users in
        for child in self.children[1:]:
            assert child.url is not None
            _wait_http(f"{child.url}/api/health", child)
        return urls

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(10)
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()


async def store_activity(urls: dict[str, str], stop: asyncio.Event, rate_per_s: float = 2.0) -> None:
    """Clerks ordering at the stores until ``stop`` is set (replaced by device simulators
    where they exist: see firmware_sim)."""
    rng = random.Random(7)
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            gw = rng.choice(STORES)
            lines = [
                {"gtin": g.zfill(14), "qty": rng.randint(1, 12)}
                for g, _sku, _d in rng.sample(CATALOGUE, rng.randint(1, 3))
            ]
            body = {
                "customer": f"S{STORES.index(gw) + 1:03d}",
                "channel": "manual",
                "order_type": "normal",
                "requested_date": (dt.date.today() + dt.timedelta(days=2)).isoformat(),
                "lines": lines,
                "source_ref": f"demo-{n}",
            }
            n += 1
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"{urls[gw]}/api/orders", json=body) as r:
                    await r.read()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.expovariate(rate_per_s)):
                    await stop.wait()


def main(args: argparse.Namespace) -> int:
    demo = Demo(args.dir, args.http_port)
    try:
        urls = demo.start()
    except Exception as e:
        print(f"demo failed to start: {e}", file=sys.stderr)
        demo.stop()
        return 1
    print("Storegate demo is running.")
    print(f"  dashboard and REST: {urls['central']}/   (orders: {urls['central']}/api/orders)")
    for gw in (*STORES, DC):
        print(f"  gateway {gw}: {urls[gw]}/api/health")
    print(f"  logs: {demo.dir / 'logs'}")
    print("Press Ctrl-C to stop." if not args.duration else f"Stopping after {args.duration:g}s.")
    sys.stdout.flush()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await store_activity(urls, stop)

    try:
        asyncio.run(run())
    finally:
        print("stopping ...", flush=True)
        demo.stop()
        print("stopped; nothing left running.")
    return 0


__all__ = ["Demo", "main"]
