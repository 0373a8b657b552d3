"""The README's main command: ``storegate demo`` brings everything up, prints where to look,
lets orders flow from the stores to picking at the DC, and on stop leaves nothing running."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ops.broker import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_orders_through_and_stops_cleanly(tmp_path: Path) -> None:
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
    ):
        assert line in out.stdout, out.stdout
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", f"still running: {left.stdout}"
    conn = sqlite3.connect(work / "central" / "central.db")
    try:
        channels = {c for (c,) in conn.execute("SELECT DISTINCT channel FROM orders")}
        statuses = {s for (s,) in conn.execute("SELECT DISTINCT status FROM orders")}
        picked = conn.execute(
            "SELECT count(*) FROM pick_tasks WHERE status IN ('picked', 'short')"
        ).fetchone()[0]
    finally:
        conn.close()
    assert {"manual", "pos-auto"} <= channels, channels  # clerks and the POS-driven reorders
    assert "picked" in statuses and picked > 0, (statuses, picked)  # the DC's cart picked them
