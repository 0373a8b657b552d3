"""Allocation benchmarks (issue 8, figures 4 and 5). Functions return dicts; nothing printed.

- :func:`bench_batch`: the engine allocating 10,000 orders x 5 lines in one run against
  2,000 skus at 3 DCs (target <= 2 s). Median of ``runs``.
- :func:`bench_realtime`: real-time validate + allocate through the real database: each
  order is one ``DurableDB.write`` job (check customer, lines and stock rows exist, then
  :func:`central.waves.allocate_now`: load demand, read stock, run the engine, store the run,
  allocations, shortages and status) - group commit with ``synchronous=FULL``. Orders/s,
  target >= 5,000. Median of ``runs``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from central import demand, inventory, waves
from central.allocation import CustomerPref, DemandLine, Network, OrderDemand, SourcingRule, allocate
from central.schema import MIGRATIONS
from ops.sqlitedb import DurableDB

LOCS = ("DC-N", "DC-S", "DC-E")
ZONES = ("N", "S", "E")


def _network() -> Network:
    return Network(
        tuple(SourcingRule(z, loc, c, preferred=loc.endswith(z)) for z in ZONES for c, loc in enumerate(LOCS))
    )


def bench_batch(
    *, orders: int = 10_000, lines: int = 5, skus: int = 2_000, runs: int = 5, seed: int = 1
) -> dict[str, Any]:
    rng = random.Random(seed)
    names = [f"S{i:05d}" for i in range(skus)]
    stock = {(loc, s): rng.randint(0, 120) for loc in LOCS for s in names}
    demands = [
        OrderDemand(
            order_id=i,
            customer=f"C{i % 500}",
            lines=tuple(DemandLine(j + 1, rng.choice(names), rng.randint(1, 12)) for j in range(lines)),
            grade=rng.choice("ABC"),
            zone=rng.choice(ZONES),
            value=rng.randint(100, 100_000),
            credit=rng.randint(0, 100),
            allow_split=rng.random() < 0.5,
            pref=rng.choice(list(CustomerPref)),
            received_at=i,
        )
        for i in range(orders)
    ]
    net = _network()
    times = []
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        result = allocate(demands, stock, network=net)
        times.append(time.perf_counter() - t)
    assert result is not None
    return {
        "figure": f"batch allocation {orders} orders x {lines} lines",
        "value_s": round(statistics.median(times), 3),
        "target": "<= 2 s",
        "pass": statistics.median(times) <= 2.0,
        "runs_s": [round(x, 3) for x in times],
        "allocated_units": sum(a.qty for a in result.allocations),
        "short_lines": len(result.shortfalls),
        "trace_lines": len(result.trace),
    }


def _seed(conn: sqlite3.Connection, *, orders: int, lines: int, skus: int, rng: random.Random) -> None:
    inventory.set_sourcing(conn, _network().rules)
    names = [f"S{i:05d}" for i in range(skus)]
    conn.executemany(
        "INSERT INTO inventory (location, sku, on_hand) VALUES (?, ?, ?)",
        [(loc, s, 1_000_000) for loc in LOCS for s in names],
    )
    for c in range(200):
        demand.set_profile(conn, f"C{c}", demand.CustomerProfile(grade="ABC"[c % 3], zone=ZONES[c % 3]))
    conn.executemany(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, created_at, received_at, updated_at)"
        " VALUES (?, ?, ?, 'gw', ?, ?, 'rest', 'normal', '2099-01-01', 'received', 0, ?, 0)",
        [(i, f"B{i:08d}", f"b{i}", i, f"C{i % 200}", i) for i in range(1, orders + 1)],
    )
    conn.executemany(
        "INSERT INTO order_lines (order_id, line_no, sku, qty, price) VALUES (?, ?, ?, ?, 100)",
        [
            (i, j + 1, rng.choice(names), rng.randint(1, 12))
            for i in range(1, orders + 1)
            for j in range(lines)
        ],
    )


def _validate_and_allocate(conn: sqlite3.Connection, order_id: int, now: int, today: dt.date) -> int:
    bad = conn.execute(
        "SELECT count(*) FROM order_lines l WHERE l.order_id = ? AND (l.qty <= 0 OR NOT EXISTS"
        " (SELECT 1 FROM inventory i WHERE i.sku = l.sku))",
        (order_id,),
    ).fetchone()[0]
    if bad:
        raise ValueError(f"order {order_id}: {bad} bad lines")
    return waves.allocate_now(conn, order_id, now=now, today=today, settings=_RT)


_RT = waves.AllocationSettings()


async def _realtime_once(path: Path, *, orders: int, lines: int, skus: int, seed: int) -> float:
    db = DurableDB(path, migrations=[*MIGRATIONS, *inventory.MIGRATIONS])
    await db.open()
    try:
        rng = random.Random(seed)
        await db.write(lambda c: _seed(c, orders=orders, lines=lines, skus=skus, rng=rng))
        today = dt.date(2026, 1, 1)
        t = time.perf_counter()
        futs = [db.write(lambda c, i=i: _validate_and_allocate(c, i, i, today)) for i in range(1, orders + 1)]
        await asyncio.gather(*futs)
        return time.perf_counter() - t
    finally:
        await db.close()


def bench_realtime(
    *, orders: int = 5_000, lines: int = 5, skus: int = 2_000, runs: int = 3, seed: int = 2
) -> dict[str, Any]:
    rates = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-alloc-") as tmp:
        for r in range(runs):
            took = asyncio.run(
                _realtime_once(Path(tmp) / f"rt{r}.db", orders=orders, lines=lines, skus=skus, seed=seed)
            )
            rates.append(orders / took)
    rate = statistics.median(rates)
    return {
        "figure": f"real-time validate + allocate, {lines} lines, one worker",
        "value_orders_s": round(rate),
        "target": ">= 5000 orders/s",
        "pass": rate >= 5000,
        "runs_orders_s": [round(x) for x in rates],
    }


def main(argv: list[str] | None = None) -> int:
    """``storegate bench-allocation [--quick]``: run both figures, print them as JSON."""
    import argparse  # noqa: PLC0415
    import json  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="bench-allocation", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one run each, 2,000 real-time orders")
    a = ap.parse_args(argv)
    runs = 1 if a.quick else None
    out = [
        bench_batch(**({"runs": runs} if runs else {})),
        bench_realtime(**({"runs": runs, "orders": 2_000} if runs else {})),
    ]
    print(json.dumps(out, indent=2))
    return 0
