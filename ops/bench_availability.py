"""The availability monitor at scale (issue 18, item 5): one scheduler tick of
``central.allocate.availability.Monitor`` on central's database as the service opens it
(``central.migrations.central_db``), with ``items`` x ``locations`` inventory rows, a zone and a
preferred location per location, 1,000 customers over the zones and ``orders`` orders of 5
lines spread over the last 28 days. Figures: the first tick (which opens every at-risk
episode: proposals and alerts written) and a steady tick (nothing changed: the read half, and
a write job that writes nothing), each split into its read (plan) and write (apply) parts.

``python -m ops.bench_availability [--items 10000 --locations 50 --orders 20000]`` prints them;
``ops.bench`` runs it as figure 10.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from central import wiring
from central.allocate import availability
from central.allocate.availability import DAY_MS, AvailabilitySettings
from central.allocate.waves import AllocationSettings
from central.migrations import central_db
from runtime.clock import now_ms


def seed(conn: sqlite3.Connection, *, items: int, locations: int, orders: int, now: int) -> None:
    rnd = random.Random(18)
    locs = [f"L{i:03d}" for i in range(locations)]
    conn.executemany(
        "INSERT INTO locations (code, kind, name, region) VALUES (?, ?, ?, ?)",
        [(loc, "dc" if i < 5 else "store", loc, f"Z{i:03d}") for i, loc in enumerate(locs)],
    )
    conn.executemany(
        "INSERT INTO alloc_sourcing (zone, location, cost, preferred, transfer) VALUES (?, ?, 0, 1, 0)",
        [(f"Z{i:03d}", loc) for i, loc in enumerate(locs)],
    )
    skus = [f"SKU{i:06d}" for i in range(items)]
    conn.executemany(
        "INSERT INTO items (sku, description, supplier, price) VALUES (?, ?, ?, 100)",
        [(s, s, f"SUP{i % 20}") for i, s in enumerate(skus)],
    )
    conn.executemany(
        "INSERT INTO inventory (location, sku, on_hand) VALUES (?, ?, ?)",
        ((loc, s, rnd.randrange(0, 200)) for loc in locs for s in skus),
    )
    customers = [f"C{i:04d}" for i in range(1000)]
    conn.executemany(
        "INSERT INTO customers (code, name, region) VALUES (?, ?, ?)",
        [(c, c, f"Z{i % locations:03d}") for i, c in enumerate(customers)],
    )
    hot = skus[: max(1, items // 100)]  # 1% fast sellers take half the lines
    heads, lines = [], []
    for oid in range(1, orders + 1):
        at = now - rnd.randrange(0, 28 * DAY_MS)
        heads.append(
            (
                oid,
                f"SO{oid:08d}",
                f"bench:{oid}",
                "gw",
                0,
                rnd.choice(customers),
                "manual",
                "normal",
                "2026-12-31",
                "allocated",
                at,
                at,
                at,
            )
        )
        for ln in range(1, 6):
            sku = rnd.choice(hot) if rnd.random() < 0.5 else rnd.choice(skus)
            lines.append((oid, ln, sku, rnd.randrange(1, 24)))
    conn.executemany(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, created_at, received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        heads,
    )
    conn.executemany("INSERT INTO order_lines (order_id, line_no, sku, qty) VALUES (?, ?, ?, ?)", lines)


async def _tick(db: Any, settings: AvailabilitySettings) -> dict[str, Any]:
    now = now_ms()
    t0 = time.perf_counter()
    found = await db.read(partial(availability.plan, now=now, settings=settings))
    t1 = time.perf_counter()
    counts = await db.write(partial(availability.apply_plan, found=found, now=now, settings=settings))
    t2 = time.perf_counter()
    return {"read_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0, **counts}


async def run(*, items: int, locations: int, orders: int, workdir: Path) -> dict[str, Any]:
    db = central_db(workdir / "central.db", wiring.hub(AllocationSettings()))
    await db.open()
    try:
        now = now_ms()
        await db.write(partial(seed, items=items, locations=locations, orders=orders, now=now))
        settings = AvailabilitySettings()
        first = await _tick(db, settings)
        steady = await _tick(db, settings)
        return {"items": items, "locations": locations, "orders": orders, "first": first, "steady": steady}
    finally:
        await db.close()


def bench(items: int = 10_000, locations: int = 50, orders: int = 20_000) -> dict[str, Any]:
    base = Path(__file__).resolve().parent.parent / "var"  # the real disk, not tmpfs
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        return asyncio.run(run(items=items, locations=locations, orders=orders, workdir=Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench_availability", description=__doc__)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--locations", type=int, default=50)
    p.add_argument("--orders", type=int, default=20_000)
    a = p.parse_args(argv)
    r = bench(a.items, a.locations, a.orders)
    print(f"{r['items']:,} items x {r['locations']} locations, {r['orders']:,} orders x 5 lines in 28 days")
    for k in ("first", "steady"):
        t = r[k]
        print(
            f"  {k} tick: {t['total_s']:.2f} s (read {t['read_s']:.2f} s, write {t['write_s']:.3f} s);"
            f" rows {t['rows']:,}, at risk {t['at_risk']:,}, opened {t['opened']:,}, updated {t['updated']:,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
