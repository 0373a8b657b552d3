"""The README's main command: ``storegate demo`` brings everything up, prints where to look,
lets orders flow from every store device to picking at the DC, shows every device on central's
fleet board with its state, and on stop leaves nothing running and no traceback in any log."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ops.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
STORES = ("store-001", "store-002", "store-003")
STORE_DEVICES = {"handheld", "serial-scanner", "hid-scanner", "pos"}  # device kinds at every store
DC_DEVICES = {"ptl", "asrs"}
# the channels a store's orders come in by: handheld (BHT over a PTY), serial scanner (PTY),
# HID scanner (input_event records through a FIFO) and the POS sales' safety-stock reorders
STORE_CHANNELS = {"handheld", "scanner", "hid-scanner", "pos-auto"}


@pytest.mark.slow
def test_demo_runs_every_device_orders_through_and_stops_cleanly(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    port = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "demo",
            "--dir",
            str(work),
            "--http-port",
            str(port),
            "--duration",
            "40",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for line in (
        "Storegate demo is running.",
        f"http://127.0.0.1:{port}/",
        "dashboard login: ops /",
        "/console   login: demo-supervisor /",
        "REST token (demo-supervisor):",
        "stopped; nothing left running.",
        "orders at central by channel:",
    ):
        assert line in out.stdout, out.stdout
    for gw in STORES:
        assert f"gateway {gw}:" in out.stdout, out.stdout
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", f"still running: {left.stdout}"
    logs = sorted((work / "logs").glob("*.log"))
    assert len(logs) >= 10, logs  # central, 4 gateways, 3 stores, cart, AS/RS
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[text.index('Traceback') - 400 :][:3000]}"
    conn = sqlite3.connect(work / "central" / "central.db")
    try:
        by_gw: dict[str, set[str]] = {}
        for gw, ch in conn.execute("SELECT DISTINCT gateway, channel FROM orders"):
            by_gw.setdefault(gw, set()).add(ch)
        statuses = {s for (s,) in conn.execute("SELECT DISTINCT status FROM orders")}
        picked = conn.execute(
            "SELECT count(*) FROM pick_tasks WHERE status IN ('picked', 'short')"
        ).fetchone()[0]
        devices: dict[str, dict[str, tuple[str, str, int]]] = {}
        for gw, dev, kind, state, reads in conn.execute(
            "SELECT gateway, device_id, kind, state, reads FROM fleet_devices"
        ):
            devices.setdefault(gw, {})[dev] = (kind, state, reads)
    finally:
        conn.close()
    for gw in STORES:  # every store's devices ordered, and each order reached central
        assert by_gw.get(gw, set()) >= STORE_CHANNELS, (gw, by_gw)
    assert "picked" in statuses and picked > 0, (statuses, picked)  # the DC's cart picked them
    # every device on central's fleet board, with its state: online, and heard from
    for gw, kinds in [*((gw, STORE_DEVICES) for gw in STORES), ("dc-001", DC_DEVICES)]:
        devs = devices.get(gw, {})
        assert {k for k, _, _ in devs.values()} == kinds, (gw, devs)
        assert all(state == "online" for _, state, _ in devs.values()), (gw, devs)
        assert all(reads > 0 for k, _, reads in devs.values() if k != "asrs"), (gw, devs)
    for gw in STORES:  # both tills of each store
        assert sum(k == "pos" for k, _, _ in devices[gw].values()) == 2, devices[gw]
