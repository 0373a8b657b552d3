"""What process definitions cost the real-time path (issue 18, item 3): the figure of
``ops/bench_allocation.bench_realtime`` (gateway order records received as the MQTT consumer
receives them, validated, numbered, allocated, on central's DurableDB with WAL +
synchronous=FULL) run three times - without a process master; with a master whose one
definition selects no line of these orders (items of another class: every order keeps the
set-based batch path); and with one that selects every line (grade-A customers... here every
customer: each order is created on its own through the lifecycle's hooks, its lines' rows and
work-unit events written). Prints JSON.

``python -m ops.bench_process [--orders N] [--runs N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from central.process import definitions
from ops.bench_allocation import _realtime_once

MASTER = """
[[definitions]]
name = "walked"
order_types = ["normal"]
when = { customer_grade = %s }
steps = ["allocate", "release_to_dc", "pick", "ship", "deliver"]
"""
NONE = MASTER % '"X"'  # no customer has grade X: no line selected
EVERY = MASTER % '["A", "B", "C"]'


def _importer(text: str) -> Callable[[sqlite3.Connection], object]:
    return lambda conn: definitions.import_master(conn, text, fmt="toml", actor="bench", now=0)


def bench_process(*, orders: int = 5_000, lines: int = 5, runs: int = 3) -> dict[str, Any]:
    cases = {
        "no master": None,
        "master selecting no line": _importer(NONE),
        "master selecting every line": _importer(EVERY),
    }
    out: dict[str, list[float]] = {k: [] for k in cases}
    with tempfile.TemporaryDirectory(prefix="sg-bench-process-") as tmp:
        for r in range(runs):
            for name, setup in cases.items():
                res = asyncio.run(
                    _realtime_once(
                        Path(tmp) / f"{len(out[name])}-{name.replace(' ', '-')}-{r}.db",
                        orders=orders,
                        lines=lines,
                        skus=2_000,
                        seed=2,
                        setup=setup,
                    )
                )
                out[name].append(res["orders_s"])
    med = {k: statistics.median(v) for k, v in out.items()}
    return {
        "figure": f"real-time validate + allocate, {orders} orders x {lines} lines, process masters",
        "orders_s": {k: round(v) for k, v in med.items()},
        "share_of_no_master": {k: round(v / med["no master"], 3) for k, v in med.items()},
        "runs_orders_s": {k: [round(x) for x in v] for k, v in out.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.bench_process", description=__doc__)
    ap.add_argument("--orders", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    print(json.dumps(bench_process(orders=a.orders, runs=a.runs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
