"""``storegate demo``: a whole retailer on one machine.

Starts, as child processes: the broker (shipped config), central, three store gateways and
one distribution-centre gateway, plus simulated store activity; prints where to look; and on
Ctrl-C (or after ``--duration``) stops everything it started, so nothing is left running.

Every store runs its devices on their real protocols: a handheld terminal uploading over a
PTY (BHT block protocol), a serial scanner on a PTY in ACK/NAK host mode, a USB-HID scanner's
``input_event`` records through a FIFO (there is no /dev/uinput) and two POS tills over HTTP.
The demo itself holds both ends of each PTY for its whole run (the store simulator gets the
master end as an inherited fd, the gateway opens the slave by name), so stopping the
simulator before the gateway is no cable pull.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from central.allocate import inventory
from central.allocate.allocation import SourcingRule
from central.migrations import all_migrations
from central.orders import masters
from central.web import auth
from firmware_sim.handheld import Pty
from ops.broker import Mosquitto, free_port
from ops.broker_security import init_broker_security, reload_broker, secure_broker_config, toml_str
from ops.provision import provision_gateway
from runtime.sqlitedb import apply_migrations, connect

log = logging.getLogger(__name__)

STORES = ("store-001", "store-002", "store-003")
DC = "dc-001"
CATALOGUE = [  # demo item master: GTIN-13 (valid check digits), SKU, text, pack, DC stock, bin
    ("4006381333931", "SKU-PEN-01", "Ballpoint pen, blue", 10, 5000, "A-01-01"),
    ("5901234123457", "SKU-TEA-25", "Green tea, 25 bags", 6, 3000, "A-01-02"),
    ("4012345678901", "SKU-MLK-1L", "Milk 1 l", 6, 4000, "B-02-01"),
    ("8712345678906", "SKU-SOAP-4", "Hand soap, 4 pack", 4, 2000, "B-02-03"),
    ("0012345678905", "SKU-RICE-5", "Rice 5 kg", 1, 60, "C-05-01"),  # scarce: shortages show
]
TILLS = 2
STOP_TIMEOUT_S = 10.0  # per child, after SIGTERM, before SIGKILL
DEMO_USER = "demo-supervisor"
DASHBOARD_USER = "ops"


def _csv(header: list[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def seed_central(db_path: Path, *, viewer_password: str) -> str:
    """Masters (locations, items, prices, customers mapped to their gateways) and DC stock,
    into central's database before it starts; returns a supervisor API token."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(db_path, synchronous="FULL")
    try:
        apply_migrations(conn, all_migrations())
        conn.execute("BEGIN")
        masters.import_csv(
            conn,
            "locations",
            _csv(
                ["code", "kind", "name", "gateway"],
                [["DC1", "dc", "Main DC", DC]]
                + [[f"STORE{i + 1}", "store", f"Store {i + 1}", gw] for i, gw in enumerate(STORES)],
            ),
        )
        masters.import_csv(
            conn,
            "items",
            _csv(
                [
                    "sku",
                    "gtins",
                    "description",
                    "pack_size",
                    "supplier",
                    "price",
                    "safety_stock",
                    "order_up_to",
                    "max_order_qty",
                    "storage",
                ],
                [
                    [sku, gtin, desc, pack, "SUP1", 100 + 37 * i, 2 * pack, 8 * pack, 0, f"DC1={bin_}"]
                    for i, (gtin, sku, desc, pack, _stock, bin_) in enumerate(CATALOGUE)
                ],
            ),
        )
        masters.import_csv(
            conn,
            "customers",
            _csv(
                ["code", "name", "grade", "credit_limit", "receivables", "gateway"],
                # the third store has a tight credit limit: some of its orders are held for approval
                [
                    [f"S{i + 1:03d}", f"Store {i + 1}", "ABC"[i], [10**9, 10**9, 200_000][i], 0, gw]
                    for i, gw in enumerate(STORES)
                ],
            ),
        )
        for _gtin, sku, _desc, _pack, stock, bin_ in CATALOGUE:
            inventory.set_stock(conn, "DC1", sku, stock, bin=bin_)
        inventory.set_sourcing(conn, [SourcingRule(zone="*", location="DC1", cost=0, preferred=True)])
        # the supervisor logs in to the order console (/console) with the same password
        token = auth.add_user(conn, DEMO_USER, auth.Role.SUPERVISOR, password=viewer_password)
        auth.add_user(conn, DASHBOARD_USER, auth.Role.VIEWER, password=viewer_password)
        conn.execute("COMMIT")
        return token
    finally:
        conn.close()


@dataclass
class StoreDevices:
    """One store's device links: the PTYs (the demo keeps both ends open) and the HID FIFO."""

    handheld: Pty
    scanner: Pty
    hid_fifo: Path
    handheld_id: str = "ht-01"  # device ids on the gateway's fleet status
    scanner_id: str = "scanner-01"
    hid_id: str = "hid-01"

    def gateway_config(self) -> str:
        """The gateway TOML sections for these devices (``gateway.devices``)."""
        return "\n".join(
            [
                "",
                "[[handhelds]]",
                f"device_id = {toml_str(self.handheld_id)}",
                f"port = {toml_str(self.handheld.name)}",
                "[[serial_scanners]]",
                f"device_id = {toml_str(self.scanner_id)}",
                f"port = {toml_str(self.scanner.name)}",
                "ack_mode = true",
                "[[hid_scanners]]",
                f"device_id = {toml_str(self.hid_id)}",
                f"path = {toml_str(str(self.hid_fifo))}",
                "grab = false",
                "",
            ]
        )

    def close(self) -> None:
        self.handheld.close()
        self.scanner.close()


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


def _wait_items(url: str, gw: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{url}/api/stock", timeout=2) as r,
        ):
            if json.loads(r.read()).get("items"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"{gw} did not receive the item master from central within {timeout}s")


class Demo:
    def __init__(self, workdir: Path, http_port: int) -> None:
        self.dir = workdir.resolve()
        self.http_port = http_port
        self.children: list[Child] = []
        self.broker: Mosquitto | None = None
        self.token = ""
        self.viewer_password = ""
        self.devices: dict[str, StoreDevices] = {}

    def _spawn(self, name: str, argv: list[str], pass_fds: Sequence[int] = ()) -> Child:
        logf = (self.dir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "-v", *argv],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()
        child = Child(name, proc)
        self.children.append(child)
        return child

    def start(self) -> dict[str, str]:
        """Broker with the shipped security (no anonymous access, a password per gateway,
        the ACL), central seeded with masters and DC stock, the DC's pick-to-light cart and
        AS/RS simulators, each gateway provisioned like a real site (a store's with its
        handheld, serial scanner and HID scanner), and store activity."""
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        for old in ("etc", "broker", "central", "devices", *STORES, DC):
            if (self.dir / old).exists():
                shutil.rmtree(self.dir / old)  # every demo starts from the same seeded state
        etc = self.dir / "etc"
        broker_port = free_port()
        creds = init_broker_security(etc, broker_port=broker_port)
        self.broker = Mosquitto(secure_broker_config(etc, port=broker_port, data_dir=self.dir / "broker"))
        self.broker.start()
        self.viewer_password = secrets.token_urlsafe(9)
        self.token = seed_central(self.dir / "central" / "central.db", viewer_password=self.viewer_password)
        central_cfg = self.dir / "central.toml"
        central_cfg.write_text(
            "\n".join(
                [
                    f'data_dir = "{self.dir / "central"}"',
                    "[broker]",
                    f"port = {broker_port}",
                    'client_id = "central-demo"',
                    f"share_group = {toml_str(creds.share_group)}",
                    f"username = {toml_str(creds.central.username)}",
                    f"password = {toml_str(creds.central.password)}",
                    "[http]",
                    'host = "127.0.0.1"',
                    f"port = {self.http_port}",
                    "[release]",
                    "every_s = 10",
                ]
            )
            + "\n"
        )
        central = self._spawn("central", ["central", "--config", str(central_cfg)])
        central.url = f"http://127.0.0.1:{self.http_port}"
        _wait_http(f"{central.url}/api/health", central)
        urls = {"central": central.url}
        (self.dir / "devices").mkdir()
        for gw in STORES:
            fifo = self.dir / "devices" / f"{gw}-hid.fifo"
            os.mkfifo(fifo)
            self.devices[gw] = StoreDevices(handheld=Pty(), scanner=Pty(), hid_fifo=fifo)
        ptl_port, asrs_port = free_port(), free_port()
        self._spawn(
            "sim-ptl",
            [
                "sim",
                "ptl",
                "--port",
                str(ptl_port),
                "--nodes",
                "12",
                "--delay-min",
                "0.5",
                "--delay-max",
                "2",
                "--p-short",
                "0.05",
            ],
        )
        self._spawn("sim-asrs", ["sim", "asrs", "--port", str(asrs_port)])
        for i, gw in enumerate((*STORES, DC)):
            port = free_port()
            prov = provision_gateway(
                gw,
                etc_dir=etc,
                broker_host="127.0.0.1",
                broker_port=broker_port,
                customer="DC1" if gw == DC else f"S{i + 1:03d}",
                data_dir=self.dir / gw,
                http_port=port,
            )
            if gw == DC:  # the DC gateway drives a pick-to-light cart and the AS/RS
                with prov.config_file.open("a") as f:
                    f.write(
                        "\n".join(
                            [
                                "",
                                "[[picking.carts]]",
                                'cart_id = "cart-1"',
                                'host = "127.0.0.1"',
                                f"port = {ptl_port}",
                                "nodes = 12",
                                "[picking.asrs]",
                                'host = "127.0.0.1"',
                                f"port = {asrs_port}",
                                'station = "PS01"',
                                "",
                            ]
                        )
                    )
            else:  # a store: its handheld terminal, serial scanner and HID scanner
                with prov.config_file.open("a") as f:
                    f.write(self.devices[gw].gateway_config())
            child = self._spawn(gw, ["gateway", "--config", str(prov.config_file)])
            child.url = f"http://127.0.0.1:{port}"
            urls[gw] = child.url
        reload_broker(self.broker)  # let the new gateway users in
        for child in self.children:
            if child.url is not None and child.name != "central":
                _wait_http(f"{child.url}/api/health", child)
        for gw in STORES:  # the item master comes down from central before the tills can sell
            _wait_items(urls[gw], gw)
        for i, gw in enumerate(STORES):  # devices ordering and tills selling, at a human pace
            dev = self.devices[gw]
            self._spawn(
                f"sim-{gw}",
                [
                    "sim",
                    "store",
                    "--url",
                    urls[gw],
                    "--store",
                    f"STORE{i + 1}",
                    "--customer",
                    f"S{i + 1:03d}",
                    "--clerks",
                    "0",
                    "--handheld-fd",
                    str(dev.handheld.master),
                    "--terminal",
                    f"HT{i + 1:02d}",
                    "--scanner-fd",
                    str(dev.scanner.master),
                    "--hid-path",
                    str(dev.hid_fifo),
                    "--device-rate",
                    "0.1",
                    "--tills",
                    str(TILLS),
                    "--sale-rate",
                    "1",
                    "--stock",
                    "--duration",
                    "0",
                    "--delivery-delay",
                    "20",
                    "--seed",
                    str(i + 1),
                ],
                pass_fds=(dev.handheld.master, dev.scanner.master),
            )
        return urls

    def stop(self) -> None:
        """Each child in the reverse order of its start, each gone before the next is told:
        the store simulators before their gateways, the DC gateway before the cart and AS/RS
        it drives, central last - so nobody logs a peer's going away as a fault."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs; killed", child.name, STOP_TIMEOUT_S)
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(STOP_TIMEOUT_S)
        self.children.clear()
        for dev in self.devices.values():  # nobody has them open any more
            dev.close()
        self.devices.clear()
        if self.broker is not None:
            self.broker.stop()

    def orders_by_channel(self) -> dict[str, int]:
        """Orders central holds, per channel (read after central stopped)."""
        path = self.dir / "central" / "central.db"
        if not path.exists():
            return {}
        conn = connect(path)
        try:
            rows = conn.execute("SELECT channel, count(*) FROM orders GROUP BY channel ORDER BY channel")
            return {str(ch): int(n) for ch, n in rows}
        finally:
            conn.close()


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
        dev = demo.devices.get(gw)
        if dev is not None:
            print(
                f"    handheld {dev.handheld_id} on {dev.handheld.name}, serial scanner {dev.scanner_id}"
                f" on {dev.scanner.name}, HID scanner {dev.hid_id} on {dev.hid_fifo},"
                f" {TILLS} POS tills"
            )
        else:
            print("    pick-to-light cart cart-1 (12 nodes), AS/RS station PS01")
    print(f"  dashboard login: {DASHBOARD_USER} / {demo.viewer_password}")
    print(f"  order console: {urls['central']}/console   login: {DEMO_USER} / {demo.viewer_password}")
    print(f"  REST token ({DEMO_USER}): {demo.token}")
    print(f"    e.g. curl -H 'Authorization: Bearer {demo.token}' {urls['central']}/api/orders")
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
        await stop.wait()

    try:
        asyncio.run(run())
    finally:
        print("stopping ...", flush=True)
        demo.stop()
        counts = demo.orders_by_channel()
        if counts:
            print("orders at central by channel: " + ", ".join(f"{ch} {n}" for ch, n in counts.items()))
        print("stopped; nothing left running.")
    return 0


__all__ = ["Demo", "main"]
