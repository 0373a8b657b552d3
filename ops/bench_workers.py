"""Central on PostgreSQL and in several workers (issue 17): figure 4 on both backends, and N
worker processes against one, in the same run. Functions return dicts; nothing printed.

- :func:`bench_backends`: figure 4 (``ops.bench_allocation``'s real-time validate + allocate,
  the same function, the same orders) on SQLite and on PostgreSQL, one worker each.
- :func:`bench_workers`: real-time validate + allocate in 1 and in N worker *processes* on one
  PostgreSQL database. Each process is a central worker's receiving and processing path
  (``ingest.receive_uplink`` per message, ``central.intake.processor.Processor``, real-time
  allocation on the hub's ``on_validated``); the messages are dealt round robin over the
  workers, as the broker's shared subscription deals them. Orders/s from the go to the last
  order allocated (the parent polls the database every 10 ms).

PostgreSQL is the server at ``SG_BENCH_PG_URL`` (default ``SG_PG_URL``, else
``postgresql://postgres@127.0.0.1:5432/postgres``); each run makes its own database and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ops import bench_allocation as ba

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("SG_BENCH_PG_URL") or os.environ.get("SG_PG_URL") or DEFAULT_SERVER


def _url_for(name: str) -> str:
    base, _, last = server_url().rpartition("/")
    query = last.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A new database (C collation, as central wants it) on the server; dropped after."""
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    name = f"sgbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                " AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def pg_available() -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(server_url(), connect_timeout=3):
            return None
    except Exception as e:  # any failure to reach it is the reason the figure is not measured
        return f"PostgreSQL at {server_url()}: {type(e).__name__}: {e}"


def bench_backends(
    *, orders: int = 5_000, runs: int = 3, lines: int = 5, skus: int = 2_000
) -> dict[str, Any]:
    """Figure 4 on SQLite and on PostgreSQL, runs interleaved (the machine's speed drifts)."""
    sqlite_rates: list[float] = []
    pg_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-pg-") as tmp:
        for r in range(runs):
            doc = asyncio.run(
                ba._realtime_once(Path(tmp) / f"rt{r}.db", orders=orders, lines=lines, skus=skus, seed=2)
            )
            sqlite_rates.append(doc["orders_s"])
            with pg_database() as url:
                doc = asyncio.run(ba._realtime_once(url, orders=orders, lines=lines, skus=skus, seed=2))  # type: ignore[arg-type]
            pg_rates.append(doc["orders_s"])
    s, p = statistics.median(sqlite_rates), statistics.median(pg_rates)
    return {
        "figure": f"real-time validate + allocate, {lines} lines, one worker: SQLite and PostgreSQL",
        "sqlite_orders_s": round(s),
        "postgresql_orders_s": round(p),
        "ratio_pg_to_sqlite": round(p / s, 3),
        "runs_sqlite": [round(x) for x in sqlite_rates],
        "runs_postgresql": [round(x) for x in pg_rates],
    }


# -- N worker processes on one database -----------------------------------------------------------


_Spec = tuple[str, int, int, int, int, int]  # url, this worker, workers, orders, lines, skus


def _worker(spec: _Spec, ready: Any, go: Any) -> None:
    asyncio.run(_worker_main(spec, ready, go))


async def _worker_main(spec: _Spec, ready: Any, go: Any) -> None:
    url, k, n, orders, lines, skus = spec
    from central import wiring  # noqa: PLC0415
    from central.allocate import waves  # noqa: PLC0415
    from central.intake.consumer import RECEIVE_JOBS  # noqa: PLC0415
    from central.intake.ingest import quick_checks, receive_uplink  # noqa: PLC0415
    from central.intake.processor import Processor  # noqa: PLC0415
    from central.migrations import central_db  # noqa: PLC0415
    from protocols import envelope, topics  # noqa: PLC0415
    from protocols.envelope import Uplink  # noqa: PLC0415

    hub = wiring.hub(waves.AllocationSettings(realtime=True))
    db = central_db(url, hub)
    await db.open()
    try:
        names = [f"S{i:05d}" for i in range(skus)]
        quick = quick_checks(hub)
        envs = ba._envelopes(orders=orders, lines=lines, names=names, rng=random.Random(2))
        ups = [
            envelope.decode_uplink(envelope.encode(gw=e.gw, sent=0, records=e.records), quick=quick)
            for i, e in enumerate(envs)
            if i % n == k  # dealt round robin, as a shared subscription deals messages
        ]
        slots = asyncio.Semaphore(RECEIVE_JOBS)
        receiving = 0
        processor = Processor(db, receiving=lambda: receiving > 0)

        async def one(up: Uplink) -> None:
            nonlocal receiving
            receiving += 1
            try:
                async with slots:
                    await db.write(partial(receive_uplink, topic_gw=up.gw, topic=topics.uplink(up.gw), up=up))
                processor.notify()
            finally:
                receiving -= 1

        ready.set()
        await asyncio.to_thread(go.wait)
        work = asyncio.create_task(processor.run())
        await asyncio.gather(*(one(up) for up in ups))
        await work  # runs until the parent ends the process
    finally:
        await db.close()


def _allocated(url: str) -> int:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM orders WHERE status = 'allocated'").fetchone()
        return int(row[0]) if row else 0


def _workers_once(n: int, *, orders: int, lines: int, skus: int) -> dict[str, float]:
    from central import wiring  # noqa: PLC0415
    from central.allocate import waves  # noqa: PLC0415
    from central.migrations import central_db  # noqa: PLC0415

    with pg_database() as url:

        async def seed() -> None:
            db = central_db(url, wiring.hub(waves.AllocationSettings(realtime=True)))
            await db.open()
            try:
                await db.write(lambda c: ba._seed_masters(c, skus=skus))
            finally:
                await db.close()

        asyncio.run(seed())
        ctx = mp.get_context("spawn")
        go = ctx.Event()
        readies = [ctx.Event() for _ in range(n)]
        procs = [
            ctx.Process(target=_worker, args=((url, k, n, orders, lines, skus), readies[k], go), daemon=True)
            for k in range(n)
        ]
        for p in procs:
            p.start()
        try:
            for e in readies:
                if not e.wait(120):
                    raise RuntimeError("a worker did not get ready")
            t = time.perf_counter()
            go.set()
            deadline = t + 600
            while (done := _allocated(url)) < orders:
                if time.perf_counter() > deadline or any(not p.is_alive() for p in procs):
                    raise RuntimeError(
                        f"{done} of {orders} orders allocated; workers alive: {[p.is_alive() for p in procs]}"
                    )
                time.sleep(0.01)
            took = time.perf_counter() - t
        finally:
            for p in procs:
                p.kill()
                p.join(10)
    return {"seconds": took, "orders_s": orders / took}


def bench_workers(
    *, workers: int = 2, orders: int = 5_000, runs: int = 3, lines: int = 5, skus: int = 2_000
) -> dict[str, Any]:
    """1 worker and ``workers`` workers on PostgreSQL, runs interleaved."""
    one: list[float] = []
    many: list[float] = []
    for _ in range(runs):
        one.append(_workers_once(1, orders=orders, lines=lines, skus=skus)["orders_s"])
        many.append(_workers_once(workers, orders=orders, lines=lines, skus=skus)["orders_s"])
    a, b = statistics.median(one), statistics.median(many)
    return {
        "figure": f"real-time validate + allocate on PostgreSQL, {workers} worker processes vs 1",
        "one_orders_s": round(a),
        "many_orders_s": round(b),
        "workers": workers,
        "ratio": round(b / a, 3),
        "runs_one": [round(x) for x in one],
        "runs_many": [round(x) for x in many],
        "cpus": os.cpu_count(),
    }
