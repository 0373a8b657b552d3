"""The dashboard's live stream at a million orders (figure 12): database time per second spent
on the overview (``GET /api/stream``) with 1 and with 10 streams open, the shared way
(``central.web.dashboard.OverviewFeed``: one overview per change, the order figures every
``ORDERS_EVERY_S``) against the old per-stream way (each stream computed the whole overview,
order figures included, for itself: the handler as it was, kept here as the baseline) in the
same run, on the same database.

Central's database as the service opens it (``central.migrations.central_db``, a SQLite file on
the real disk) with ``orders`` orders spread over the last 7 days, and a real aiohttp app over
TCP with both handlers; the streams are real HTTP clients reading every event. A status every
0.1 s keeps the fleet changing (so each way computes as often as ``MIN_INTERVAL_S`` allows).
Database time is the time the overview jobs ran on the read connection (the sum of their
durations; SQLite has one reader thread, so 1 s/s is all of it). The four measurements are
interleaved (per-stream 1, shared 1, per-stream 10, shared 10) ``runs`` times; medians.

``python -m ops.bench_dashboard [--orders 1000000 --window 6 --runs 3]`` prints them;
``ops.bench`` runs it as figure 12.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from central.fleet import Fleet
from central.migrations import central_db
from central.web import auth, dashboard, fleet_api
from central.web.api import create_app, requires
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB

STATUSES = ("received", "validated", "allocated", "released", "picked", "shipped", "cancelled")
SPAN_MS = 7 * 24 * 3600 * 1000
CHANGE_EVERY_S = 0.1
STREAMS = (1, 10)


def seed(conn: sqlite3.Connection, *, orders: int, now: int) -> None:
    """``orders`` order heads (no lines: the overview counts heads), evenly over ``SPAN_MS``."""
    rnd = random.Random(12)
    step = SPAN_MS // orders

    def rows() -> Any:
        for oid in range(1, orders + 1):
            at = now - (orders - oid) * step
            yield (
                oid,
                f"SO{oid:08d}",
                f"bench:{oid}",
                f"gw-{oid % 1000:04d}",
                oid,
                f"C{oid % 1000:04d}",
                "pos" if oid % 3 else "web",
                "normal",
                "2026-12-31",
                rnd.choice(STATUSES),
                at,
                at,
                at,
            )

    conn.executemany(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, created_at, received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows(),
    )


@dataclass(slots=True)
class PerStream:
    """The baseline's own bookkeeping (the shared way's is the feed's)."""

    streams: int = 0
    overviews: int = 0
    db_seconds: float = 0.0


PER_STREAM_KEY = web.AppKey("bench_per_stream", PerStream)


async def per_stream(request: web.Request) -> web.StreamResponse:
    """``central.web.dashboard.stream`` before the shared feed: every stream computes the whole
    overview for itself on every change and heartbeat."""
    fleet, db = request.app[dashboard.FLEET_KEY], request.app[dashboard.FLEET_DB_KEY]
    stats = request.app[PER_STREAM_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    stats.streams += 1
    try:
        while True:
            version = fleet.version
            job = partial(fleet_api.overview, backlog_age_s=fleet.thresholds.backlog_age_s)
            snap, took = await db.read(partial(dashboard._timed, job))
            stats.overviews += 1
            stats.db_seconds += took
            snap["version"] = version
            await resp.write(f"event: fleet\ndata: {json.dumps(snap, default=str)}\n\n".encode())
            await asyncio.sleep(dashboard.MIN_INTERVAL_S)
            await fleet.wait_change(version, dashboard.HEARTBEAT_S)
    except ConnectionResetError:
        pass
    finally:
        stats.streams -= 1
    return resp


async def _reader(resp: aiohttp.ClientResponse, got: list[int]) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        while True:
            await resp.content.readuntil(b"\n\n")
            got[0] += 1


async def _measure(
    client: aiohttp.ClientSession,
    path: str,
    *,
    token: str,
    n: int,
    window_s: float,
    meter: Callable[[], tuple[float, int]],
) -> dict[str, Any]:
    """Open ``n`` streams at ``path``, wait for each one's first event, then count database
    seconds and events over ``window_s``; close them and wait until their handlers ended."""
    streams = [await client.get(path, headers={"Authorization": f"Bearer {token}"}) for _ in range(n)]
    for s in streams:
        await s.content.readuntil(b"\n\n")
    counts = [[0] for _ in streams]
    readers = [asyncio.create_task(_reader(s, c)) for s, c in zip(streams, counts, strict=True)]
    db0, ov0 = meter()
    t0 = time.perf_counter()
    await asyncio.sleep(window_s)
    db1, ov1 = meter()
    elapsed = time.perf_counter() - t0
    events = [c[0] for c in counts]
    for r in readers:
        r.cancel()
    for s in streams:
        s.close()
    return {
        "streams": n,
        "db_s_per_s": (db1 - db0) / elapsed,
        "overviews_per_s": (ov1 - ov0) / elapsed,
        "events_per_stream_per_s": statistics.mean(events) / elapsed,
        "ms_per_overview": 1000 * (db1 - db0) / max(ov1 - ov0, 1),
    }


async def _changes(fleet: Fleet) -> None:
    n = 0
    while True:
        n += 1
        gw = f"gw-{n % 50:04d}"
        doc = {"gw": gw, "state": "online", "site": "S1", "backlog": n % 100}
        await fleet.on_status(gw, json.dumps(doc).encode())
        await asyncio.sleep(CHANGE_EVERY_S)


async def run(*, orders: int, window_s: float, runs: int, workdir: Path) -> dict[str, Any]:
    db: DurableDB = central_db(workdir / "central.db")
    await db.open()
    try:
        t = time.perf_counter()
        await db.write(partial(seed, orders=orders, now=now_ms()))
        seed_s = time.perf_counter() - t
        token = await db.write(lambda c: auth.add_user(c, "ops", auth.Role.VIEWER))
        fleet = Fleet(db)
        app = create_app(db=db)
        dashboard.add_routes(app, fleet=fleet, db=db)
        app[PER_STREAM_KEY] = stats = PerStream()
        app.router.add_get("/bench/per-stream", requires(auth.Role.VIEWER)(per_stream))
        feed = app[dashboard.FEED_KEY]
        ways: dict[str, tuple[str, Callable[[], tuple[float, int]], Callable[[], int]]] = {
            "per_stream": (
                "/bench/per-stream",
                lambda: (stats.db_seconds, stats.overviews),
                lambda: stats.streams,
            ),
            "shared": ("/api/stream", lambda: (feed.db_seconds, feed.overviews), lambda: feed.streams),
        }
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        changes = asyncio.create_task(_changes(fleet))
        results: list[dict[str, Any]] = []
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession(f"http://{host}:{port}") as client:
                for i in range(runs):
                    for n in STREAMS:
                        for way, (path, meter, open_streams) in ways.items():
                            r = await _measure(client, path, token=token, n=n, window_s=window_s, meter=meter)
                            results.append({"run": i, "way": way, **r})
                            async with asyncio.timeout(30):  # each handler ends at its next write
                                while open_streams():
                                    await fleet.wait_change(fleet.version, 1.0)
        finally:
            changes.cancel()
            await runner.cleanup()
        return {"orders": orders, "window_s": window_s, "seed_s": seed_s, "measures": results}
    finally:
        await db.close()


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Medians per way and stream count, and the per-stream / shared ratio of database time."""
    med: dict[str, dict[int, dict[str, float]]] = {}
    for way in ("per_stream", "shared"):
        for n in STREAMS:
            rows = [m for m in out["measures"] if m["way"] == way and m["streams"] == n]
            med.setdefault(way, {})[n] = {
                k: statistics.median(r[k] for r in rows)
                for k in ("db_s_per_s", "overviews_per_s", "events_per_stream_per_s", "ms_per_overview")
            }
    ratio = {
        n: med["per_stream"][n]["db_s_per_s"] / max(med["shared"][n]["db_s_per_s"], 1e-9) for n in STREAMS
    }
    return {"median": med, "ratio": ratio}


def bench(orders: int = 1_000_000, window_s: float = 6.0, runs: int = 3) -> dict[str, Any]:
    base = Path(__file__).resolve().parent.parent / "var"  # the real disk, not tmpfs
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        out = asyncio.run(run(orders=orders, window_s=window_s, runs=runs, workdir=Path(tmp)))
    out.update(summarise(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=1_000_000)
    p.add_argument("--window", type=float, default=6.0, help="seconds measured per way and stream count")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    out = bench(a.orders, a.window, a.runs)
    print(
        f"{a.orders:,} orders (seeded in {out['seed_s']:.1f} s), {a.window:g} s windows, median of {a.runs}"
    )
    for n in STREAMS:
        for way in ("per_stream", "shared"):
            m = out["median"][way][n]
            print(
                f"  {n:>2} stream(s) {way:<10}: db {1000 * m['db_s_per_s']:7.1f} ms/s,"
                f" {m['overviews_per_s']:5.2f} overviews/s of {m['ms_per_overview']:6.1f} ms,"
                f" {m['events_per_stream_per_s']:4.2f} events/s per stream"
            )
        print(f"  {n:>2} stream(s) per-stream / shared: {out['ratio'][n]:.1f} x")


if __name__ == "__main__":
    main()
