"""Allocation benchmarks (issue 8, figures 4 and 5). Functions return dicts; nothing printed.

- :func:`bench_batch`: the engine allocating 10,000 orders x 5 lines in one run against
  2,000 skus at 3 DCs (target <= 2 s). Median of ``runs``.
- :func:`bench_realtime`: real-time validate + allocate the way the central service runs it:
  order records (5 lines, known customers and items, masters loaded, stock at the DCs) from
  several gateways, each message received as the MQTT consumer receives it
  (``ingest.receive_uplink`` on ``envelope.decode_uplink``'s result, the consumer's limits on
  receive jobs and messages in flight) while ``central.intake.processor.Processor`` works the queue,
  on the database as the central service opens it (``central.migrations.central_db``: WAL +
  ``synchronous=FULL``, temp store in memory, group commit), with
  the hub of ``central.wiring.hub(AllocationSettings(realtime=True))`` (as central runs) - so each
  order is received, parsed, numbered, validated, stored, allocated, its run and trace kept
  and its status queued for the gateway. Orders/s from the first message to the last order
  processed; target >= 5,000. Median of ``runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from central import wiring
from central.allocate import inventory, waves
from central.allocate.allocation import CustomerPref, DemandLine, Network, OrderDemand, SourcingRule, allocate
from central.intake.consumer import MAX_OUTSTANDING, RECEIVE_JOBS
from central.intake.ingest import quick_checks, receive_uplink
from central.intake.processor import Processor
from central.migrations import central_db
from central.orders import masters
from protocols import envelope, topics
from protocols.envelope import Ack, AckStatus, Envelope, Record, Uplink

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


GATEWAYS = 8  # stores sending orders
PER_ENVELOPE = 10  # orders per MQTT message (a gateway's batch under steady load)
CUSTOMERS = 200


def _seed_masters(conn: sqlite3.Connection, *, skus: int) -> list[str]:
    """Masters as production has them: locations, items with prices, customers (zone =
    region), sourcing rules, and plenty of stock at every DC so allocation succeeds."""
    names = [f"S{i:05d}" for i in range(skus)]
    for loc in LOCS:
        masters.upsert(conn, "locations", {"code": loc, "kind": "dc", "name": loc})
    masters.import_csv(
        conn,
        "items",
        "sku,description,pack_size,supplier,price\n"
        + "".join(f"{s},item {s},1,SUP{i % 7},{100 + i % 50}\n" for i, s in enumerate(names)),
    )
    masters.import_csv(
        conn,
        "customers",
        "code,name,grade,region,credit_limit,backorder_policy,gateway\n"
        + "".join(
            f"C{c},store {c},{'ABC'[c % 3]},{ZONES[c % 3]},{10**12},backorder,gw-{c % GATEWAYS}\n"
            for c in range(CUSTOMERS)
        ),
    )
    inventory.set_sourcing(conn, _network().rules)
    conn.executemany(
        "INSERT INTO inventory (location, sku, on_hand) VALUES (?, ?, ?)",
        [(loc, s, 1_000_000) for loc in LOCS for s in names],
    )
    return names


def _envelopes(*, orders: int, lines: int, names: list[str], rng: random.Random) -> list[Envelope]:
    """``orders`` order records from ``GATEWAYS`` stores, ``PER_ENVELOPE`` per message,
    decoded from the wire as the consumer would."""
    soon = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    per_gw: dict[int, list[Record]] = {}
    for i in range(orders):
        c = rng.randrange(CUSTOMERS)
        gw = c % GATEWAYS
        recs = per_gw.setdefault(gw, [])
        body = {
            "customer": f"C{c}",
            "channel": "handheld",
            "order_type": "normal",
            "requested_date": soon,
            "lines": [{"sku": s, "qty": rng.randint(1, 12)} for s in rng.sample(names, lines)],
        }
        recs.append(Record(f"o-{gw}-{len(recs)}", len(recs) + 1, "order", 1_700_000_000_000 + i, body))
    out = []
    for gw, recs in sorted(per_gw.items()):
        for k in range(0, len(recs), PER_ENVELOPE):
            raw = envelope.encode(gw=f"gw-{gw}", sent=0, records=recs[k : k + PER_ENVELOPE])
            out.append(envelope.decode(raw))
    rng.shuffle(out)  # gateways interleave; each gateway's own messages stay in order below
    out.sort(key=lambda e: e.records[0].seq)
    return out


async def _realtime_once(
    path: Path,
    *,
    orders: int,
    lines: int,
    skus: int,
    seed: int,
    setup: Callable[[sqlite3.Connection], object] | None = None,
) -> dict[str, float]:
    """One run, the way the central service works: each message received
    (``ingest.receive_uplink`` on what ``envelope.decode_uplink`` gives, at most
    ``consumer.RECEIVE_JOBS`` receive jobs at the database and ``MAX_OUTSTANDING`` messages
    in flight) while ``central.intake.processor.Processor`` works the queue (stepping aside while
    messages are being received), with real-time allocation on the hub's ``on_validated``; WAL +
    synchronous=FULL, group commit; ``setup`` runs on the database after the masters. Time
    from the first message to the last order processed, with where it went: the processing
    jobs' share, their number and the commits."""
    hub = wiring.hub(waves.AllocationSettings(realtime=True))
    db = central_db(path, hub)  # as the central service opens it
    await db.open()
    try:
        rng = random.Random(seed)
        names = await db.write(lambda c: _seed_masters(c, skus=skus))
        if setup is not None:  # e.g. a process master (ops/bench_process.py)
            await db.write(setup)
        quick = quick_checks(hub)
        ups = [  # decoded from the wire beforehand, as the consumer's event loop does
            envelope.decode_uplink(envelope.encode(gw=env.gw, sent=0, records=env.records), quick=quick)
            for env in _envelopes(orders=orders, lines=lines, names=names, rng=rng)
        ]
        messages = asyncio.Semaphore(MAX_OUTSTANDING)
        receive_slots = asyncio.Semaphore(RECEIVE_JOBS)
        receiving = 0
        processor = Processor(db, receiving=lambda: receiving > 0)

        async def one(up: Uplink) -> list[Ack]:
            nonlocal receiving
            receiving += 1
            try:
                async with receive_slots:
                    acks = await db.write(
                        partial(receive_uplink, topic_gw=up.gw, topic=topics.uplink(up.gw), up=up)
                    )
                processor.notify()
                return acks
            finally:
                receiving -= 1
                messages.release()

        t = time.perf_counter()
        commits = db.commits
        work = asyncio.create_task(processor.run(), name="bench-processor")
        try:
            tasks = []
            for up in ups:
                await messages.acquire()
                tasks.append(asyncio.create_task(one(up)))
            acks = [a for batch in await asyncio.gather(*tasks) for a in batch]
            while processor.processed < orders:
                processor.idle.clear()
                await processor.idle.wait()
            took = time.perf_counter() - t
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        bad = [a for a in acks if a.status is not AckStatus.ACCEPTED]
        if len(acks) != orders or bad:
            raise RuntimeError(f"{len(acks)} acks for {orders} orders; not accepted: {bad[:3]}")
        n_alloc = await db.read(
            lambda c: c.execute("SELECT count(*) FROM orders WHERE status = 'allocated'").fetchone()[0]
        )
        if n_alloc != orders:
            raise RuntimeError(f"only {n_alloc} of {orders} orders allocated")
        return {
            "seconds": took,
            "orders_s": orders / took,
            "processing_us_per_order": processor.busy_s / orders * 1e6,
            "processing_share": processor.busy_s / took,
            "processing_jobs": processor.jobs,
            "commits": db.commits - commits,
        }
    finally:
        await db.close()


def bench_realtime(
    *, orders: int = 5_000, lines: int = 5, skus: int = 2_000, runs: int = 3, seed: int = 2
) -> dict[str, Any]:
    each = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-alloc-") as tmp:
        for r in range(runs):
            each.append(
                asyncio.run(
                    _realtime_once(Path(tmp) / f"rt{r}.db", orders=orders, lines=lines, skus=skus, seed=seed)
                )
            )
    rates = [e["orders_s"] for e in each]
    rate = statistics.median(rates)
    return {
        "figure": f"real-time validate + allocate, {lines} lines, one worker",
        "value_orders_s": round(rate),
        "target": ">= 5000 orders/s",
        "pass": rate >= 5000,
        "runs_orders_s": [round(x) for x in rates],
        "runs": [{k: round(v, 3) for k, v in e.items()} for e in each],
        "path": f"receive_uplink per message of {PER_ENVELOPE} orders from {GATEWAYS} gateways, Processor,"
        " central's DurableDB (WAL + synchronous=FULL), real-time allocation hook",
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
