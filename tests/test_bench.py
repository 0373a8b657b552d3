"""``storegate bench`` runs and reports; no timing is asserted here (targets live in the
benchmark's own table, not in unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops import bench

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_only_ingest_prints_a_row_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "--quick", "--only", "ingest", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a figure missed its target
    assert "ingest: durable records/s" in proc.stdout
    assert "rec/s" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert doc["machine"]["nproc"] >= 1
    assert list(doc["figures"]) == ["ingest"]
    rows = doc["figures"]["ingest"]["rows"]
    assert {r["name"] for r in rows} >= {"ingest: durable records/s", "ingest: ack latency p99"}
    assert all(r["value"] is not None and r["value"] > 0 for r in rows)
    assert len(doc["figures"]["ingest"]["runs"]) == bench.QUICK.runs


def test_bench_quick_only_fleet_prints_its_rows(tmp_path: Path) -> None:
    """Figure 10 at its quick size (200 simulated gateways against a real central): every row
    measured, nothing lost or taken twice by the fleet; no timing asserted."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "--quick", "--only", "fleet", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["figures"]["fleet"]["rows"]}
    assert set(rows) == {
        "fleet: gateways connected (of 200)",
        "fleet: status freshness p99 (ordering)",
        "fleet: status freshness p99 (drain)",
        "fleet: orders/s drained",
        "fleet: central RSS at 200 gateways",
        "fleet: dashboard list p99 (page of 50)",
    }
    assert all(r["value"] is not None and r["value"] > 0 for r in rows.values())
    assert "fleet: status freshness p99 (ordering)" in proc.stdout
    (run,) = doc["figures"]["fleet"]["runs"]
    assert run["connected"] == 200 and run["central_orders"] == run["orders"]
    assert run["sim"]["unacked"] == 0 and run["sim"]["duplicated"] == 0


def test_unknown_figure_is_refused() -> None:
    assert bench.main(["--only", "nonsense"]) == 2


def test_table_marks_pass_fail_and_missing_figures() -> None:
    rows = [
        bench.Row("1", "a", 60_000.0, "rec/s", ">= 50000", True),
        bench.Row("3", "b", 70.0, "ms", "<= 50", False),
        bench.Row("4", "c", None, "", ">= 5000", None, "not available: module missing"),
    ]
    table = bench.format_table(rows)
    assert "60,000 rec/s" in table and "PASS" in table
    assert "FAIL" in table
    assert "not available: module missing" in table


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile([3.0], 99) == 3.0
