"""``storegate bench``: measure the system against its targets and its own baseline.

Every figure is the median of several runs on this (shared, noisy) machine; the drain figure
is also a ratio to a plain paho-mqtt publisher measured in the same run on the same broker.
The table has one row per figure (value, target, pass/fail); ``--json`` writes the same rows
plus every run's raw numbers and the machine, for comparison between commits.

Figures (``--only NAME``):

* ``ingest``  (1) durable device ingest at the gateway: hundreds of asyncio tasks call
  ``Outbox.submit`` in a loop like devices; a submit returns only after the COMMIT (WAL,
  synchronous=FULL) that holds it. Records/s and ack latency p50/p99.
* ``drain``   (2) 100,000 orders (3 lines each) buffered in the gateway outbox while the
  broker is down; broker and central (a separate process) are started, then the gateway's
  sync task; time until central's ack for every record is applied at the gateway (central
  acks only after its own commit). Baseline: paho QoS 1, one single-order message at a time
  with an application window, PUBACKs counted in ``on_publish``.
* ``latency`` (3) submit at the gateway -> central's ack applied at the gateway, at a steady
  2,000 orders/s.
* ``allocation`` (4), ``batch`` (5): from ``ops.bench_allocation`` when present.
* ``rss``     (6) peak RSS (VmHWM) of a real gateway process draining a 100,000-record backlog.
* ``ptl``     (7) pick-to-light confirm -> next position lit, from ``ops.bench_ptl``.
* ``disk``    (8) disk per 100k orders, central and gateway, before and after the retention
  rule prunes; ``restart`` (9) peak RSS of a gateway restarted into a 55k downlink backlog:
  from ``ops.bench_retention``.
* ``fleet``   (10) 1,000 simulated gateways (``firmware_sim.fleet``) on one broker against one
  central: connected, status freshness p99, orders/s drained, central's RSS, the dashboard's
  list latency and stream size; from ``ops.bench_fleet``.
* ``availability`` (11) one availability monitor tick; from ``ops.bench_availability``.
* ``dashboard`` (12) database time per second of the dashboard's live stream at 1M orders
  (``--quick`` 100k), 1 and 10 streams open, shared overview against the old per-stream one
  measured in the same run; from ``ops.bench_dashboard``.

Central and the RSS gateway run as ``python -m ops.cli`` child processes, mosquitto as
configured by :mod:`ops.broker`; the benchmarked gateway of figures 1-3 runs in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway import items
from gateway.app import migrations as gateway_migrations
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import BrokerConfig, Mosquitto, free_port
from protocols import envelope
from protocols.envelope import Record
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "ingest",
    "drain",
    "latency",
    "allocation",
    "postgresql",
    "workers",
    "batch",
    "rss",
    "ptl",
    "disk",
    "restart",
    "fleet",
    "availability",
    "dashboard",
)
SERVICE_START_TIMEOUT_S = 30.0
FIGURE_TIMEOUT_S = 300.0


class BenchError(Exception):
    """A benchmark could not run (a process did not start, a drain did not finish)."""


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    ingest_s: float
    ingest_submitters: int
    drain_orders: int
    baseline_msgs: int
    latency_s: float
    latency_rate: int
    rss_records: int
    ptl_n: int


QUICK = Sizes(
    runs=3,
    ingest_s=1.0,
    ingest_submitters=256,
    drain_orders=10_000,
    baseline_msgs=10_000,
    latency_s=1.5,
    latency_rate=2000,
    rss_records=20_000,
    ptl_n=300,
)
FULL = Sizes(
    runs=3,
    ingest_s=3.0,
    ingest_submitters=256,
    drain_orders=100_000,
    baseline_msgs=100_000,
    latency_s=8.0,
    latency_rate=2000,
    rss_records=100_000,
    ptl_n=2000,
)


@dataclass(slots=True)
class Row:
    figure: str
    name: str
    value: float | None
    unit: str
    target: str
    passed: bool | None  # None: no target, or not measured
    detail: str = ""


@dataclass(slots=True)
class Result:
    rows: list[Row] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


# -- helpers ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``values`` need not be sorted)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def order_body(ref: str = "") -> dict[str, Any]:
    """A 3-line store order, the record the figures move."""
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [
            {"sku": "SKU-1", "qty": 1},
            {"sku": "SKU-2", "qty": 4},
            {"gtin": "04012345678901", "qty": 2},
        ],
        "source_ref": ref,
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(git, check=False, cwd=ROOT, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_mb": mem_mb,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "commit": commit,
    }


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    # On the real disk next to /tmp (not a tmpfs): fsync must cost what it costs.
    path = Path(tempfile.mkdtemp(prefix=f"storegate-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def broker_running(tmp: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp / "broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


class Service:
    """A ``storegate`` child process (central or gateway) with its HTTP health endpoint."""

    def __init__(self, kind: str, config: Path, http_port: int, log_path: Path) -> None:
        self.kind = kind
        self.config = config
        self.http_port = http_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", self.kind, "--config", str(self.config)],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/api/health", timeout=2) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except OSError:
            return None

    def wait(self, cond: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited before {what}; see {self.log_path}")
            doc = self.health()
            if doc is not None and cond(doc):
                return doc
            time.sleep(0.02)
        raise BenchError(f"{self.kind}: timed out after {timeout}s waiting for {what}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def central_service(tmp: Path, broker_port: int) -> Service:
    port = free_port()
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n[broker]\nport = {broker_port}\n'
        f'client_id = "central-bench"\n[http]\nport = {port}\n'
    )
    return Service("central", cfg, port, tmp / "central.log")


@contextlib.contextmanager
def central_running(tmp: Path, broker_port: int) -> Iterator[Service]:
    central = central_service(tmp, broker_port)
    central.start()
    try:
        central.wait(lambda d: bool((d.get("mqtt") or {}).get("connected")), "central connected", 30)
        yield central
    finally:
        central.stop()


def central_counts(tmp: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{tmp / 'central' / 'central.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT status, count(*) FROM processed GROUP BY status").fetchall()
    finally:
        conn.close()
    return {str(s): int(n) for s, n in rows}


class TimedOutbox(Outbox):
    """The real outbox, noting when central's ack for each record was applied here."""

    def __init__(self, db: DurableDB) -> None:
        super().__init__(db)
        self.acked_at: dict[str, float] = {}
        self.target = 0
        self.all_acked = asyncio.Event()

    async def apply_acks(self, acks: Any) -> int:
        acks = list(acks)
        removed = await super().apply_acks(acks)
        t = time.perf_counter()
        for a in acks:
            self.acked_at.setdefault(a.id, t)
        if self.target and len(self.acked_at) >= self.target:
            self.all_acked.set()
        return removed


async def fill_outbox(box: Outbox, n: int, *, chunk: int = 5000) -> None:
    """Put ``n`` orders in the outbox, many per commit (setup, not measured)."""
    body = order_body()
    done = 0
    while done < n:
        k = min(chunk, n - done)

        def add(conn: sqlite3.Connection, k: int = k) -> None:
            for _ in range(k):
                box.add(conn, "order", body)

        await box.db.write(add)
        done += k
    box.notify(n)


@contextlib.asynccontextmanager
async def gateway_sync(box: Outbox, port: int, gw: str) -> Any:
    # Wired as gateway.app wires it: the inbox takes central's downlink records and acks them.
    inb = Inbox(box.db)
    inb.register(items.MASTER_RECORD, items.apply_master_items)
    sync = Sync(gateway_id=gw, outbox=box, mqtt=MqttSettings(port=port), on_records=inb.handle)
    task = asyncio.create_task(sync.run(), name=f"bench-sync:{gw}")
    try:
        yield sync
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- 1: durable ingest ----------------------------------------------------------------------


async def _ingest_once(tmp: Path, *, submitters: int, duration: float) -> dict[str, Any]:
    db = DurableDB(tmp / "ingest.db", migrations=gateway_migrations())
    await db.open()
    try:
        box = Outbox(db)
        body = order_body()
        lat: list[float] = []
        stop = asyncio.Event()

        async def device() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await box.submit("order", body)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(device()) for _ in range(submitters)]
        await asyncio.sleep(duration)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        return {
            "records": len(lat),
            "seconds": elapsed,
            "rec_per_s": len(lat) / elapsed,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "commits": db.commits,
            "records_per_commit": len(lat) / max(1, db.commits),
        }
    finally:
        await db.close()


def bench_ingest(sizes: Sizes) -> Result:
    res = Result()
    for i in range(sizes.runs):
        with workdir("ingest") as tmp:
            r = asyncio.run(_ingest_once(tmp, submitters=sizes.ingest_submitters, duration=sizes.ingest_s))
        r["run"] = i
        res.runs.append(r)
    rate, p50, p99 = (median_of(res.runs, k) for k in ("rec_per_s", "p50_ms", "p99_ms"))
    per_commit = median_of(res.runs, "records_per_commit")
    detail = f"{sizes.ingest_submitters} submitters, {per_commit:.0f} records/commit, synchronous=FULL"
    res.rows += [
        Row("1", "ingest: durable records/s", rate, "rec/s", ">= 50000", rate >= 50_000, detail),
        Row("1", "ingest: ack latency p50", p50, "ms", "", None),
        Row("1", "ingest: ack latency p99", p99, "ms", "<= 20", p99 <= 20),
    ]
    return res


# -- 2: backlog drain vs a paho baseline ---------------------------------------------------------


def paho_baseline(port: int, n: int, *, window: int = 20) -> dict[str, Any]:
    """Plain paho QoS 1: ``n`` single-order messages, at most ``window`` unacked, network
    loop in paho's own thread, PUBACKs counted in ``on_publish``. Returns msg/s."""
    payload = envelope.encode(
        gw="bench-base",
        sent=1,
        records=[Record(id=uuid.uuid4().hex, seq=1, type="order", ts=1, body=order_body())],
    )
    topic = f"bench/baseline/{uuid.uuid4().hex[:8]}"  # nobody subscribes: the broker only acks
    slots = threading.BoundedSemaphore(window)
    done = threading.Event()
    connected = threading.Event()
    acked = 0

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == n:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-base-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError("paho baseline did not connect")
        t0 = time.perf_counter()
        for _ in range(n):
            slots.acquire()
            client.publish(topic, payload, qos=1)
        if not done.wait(FIGURE_TIMEOUT_S):
            raise BenchError(f"paho baseline: only {acked}/{n} PUBACKs")
        elapsed = time.perf_counter() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    return {"msgs": n, "seconds": elapsed, "msg_per_s": n / elapsed, "window": window}


async def _drain_once(tmp: Path, n: int, baseline_msgs: int) -> dict[str, Any]:
    db = DurableDB(tmp / "store-bench.db", migrations=gateway_migrations())
    await db.open()
    try:
        box = TimedOutbox(db)
        await fill_outbox(box, n)  # the broker is not even running yet
        with broker_running(tmp) as broker:
            base = await asyncio.to_thread(paho_baseline, broker.port, baseline_msgs)
            with central_running(tmp, broker.port):
                box.target = n
                t0 = time.perf_counter()
                async with gateway_sync(box, broker.port, "store-bench") as sync:
                    try:
                        async with asyncio.timeout(FIGURE_TIMEOUT_S):
                            await box.all_acked.wait()
                    except TimeoutError:
                        raise BenchError(f"drain: {len(box.acked_at)}/{n} acked after timeout") from None
                    elapsed = time.perf_counter() - t0
                    stats = sync.stats
                counts = central_counts(tmp)
        backlog = (await box.backlog()).count
    finally:
        await db.close()
    if backlog:
        raise BenchError(f"drain: {backlog} records still in the outbox")
    return {
        "orders": n,
        "seconds": elapsed,
        "orders_per_s": n / elapsed,
        "baseline_msg_per_s": base["msg_per_s"],
        "ratio": (n / elapsed) / base["msg_per_s"],
        "messages": stats.messages_sent,
        "resends": stats.resends,
        "central": counts,
    }


def bench_drain(sizes: Sizes) -> Result:
    res = Result()
    for i in range(sizes.runs):
        with workdir("drain") as tmp:
            r = asyncio.run(_drain_once(tmp, sizes.drain_orders, sizes.baseline_msgs))
        r["run"] = i
        res.runs.append(r)
    rate, base, ratio = (median_of(res.runs, k) for k in ("orders_per_s", "baseline_msg_per_s", "ratio"))
    last = res.runs[-1]
    detail = (
        f"{sizes.drain_orders} orders x 3 lines in {last['messages']} messages; central {last['central']}"
    )
    res.rows += [
        Row("2", "drain: orders/s (central commit + ack)", rate, "orders/s", "", None, detail),
        Row("2", "drain: paho QoS1 baseline", base, "msg/s", "", None, f"{sizes.baseline_msgs} msgs"),
        Row("2", "drain: ratio to baseline", ratio, "x", ">= 3.0", ratio >= 3.0),
    ]
    return res


# -- 3: end-to-end latency at a steady rate ---------------------------------------------------


async def _latency_once(tmp: Path, *, rate: int, duration: float) -> dict[str, Any]:
    db = DurableDB(tmp / "store-lat.db", migrations=gateway_migrations())
    await db.open()
    try:
        box = TimedOutbox(db)
        with broker_running(tmp) as broker, central_running(tmp, broker.port):
            async with gateway_sync(box, broker.port, "store-lat") as sync:
                async with asyncio.timeout(30):
                    await sync.connected.wait()
                body = order_body()
                sent_at: dict[str, float] = {}
                tasks: set[asyncio.Task[Record]] = set()
                n = int(rate * duration)
                box.target = n
                t0 = time.perf_counter()
                for i in range(n):
                    due = t0 + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                    rid = uuid.uuid4().hex
                    sent_at[rid] = time.perf_counter()
                    task = asyncio.create_task(box.submit("order", body, record_id=rid))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                achieved = n / (time.perf_counter() - t0)
                try:
                    async with asyncio.timeout(60):
                        await box.all_acked.wait()
                except TimeoutError:
                    raise BenchError(f"latency: {len(box.acked_at)}/{n} acked after timeout") from None
    finally:
        await db.close()
    lat = [box.acked_at[rid] - t for rid, t in sent_at.items()]
    return {
        "orders": n,
        "rate": rate,
        "achieved_rate": achieved,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat) * 1000,
    }


def bench_latency(sizes: Sizes) -> Result:
    res = Result()
    for i in range(sizes.runs):
        with workdir("latency") as tmp:
            r = asyncio.run(_latency_once(tmp, rate=sizes.latency_rate, duration=sizes.latency_s))
        r["run"] = i
        res.runs.append(r)
    p50, p99, achieved = (median_of(res.runs, k) for k in ("p50_ms", "p99_ms", "achieved_rate"))
    detail = f"{sizes.latency_rate}/s offered ({achieved:.0f}/s achieved) for {sizes.latency_s}s"
    res.rows += [
        Row("3", "e2e latency p50 (submit -> central ack)", p50, "ms", "", None, detail),
        Row("3", "e2e latency p99 (submit -> central ack)", p99, "ms", "<= 50", p99 <= 50),
    ]
    return res


# -- 6: gateway peak RSS with a backlog ---------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(rest.split()[0])  # kB
    return out


async def _prefill(path: Path, n: int) -> None:
    db = DurableDB(path, migrations=gateway_migrations())
    await db.open()
    try:
        await fill_outbox(Outbox(db), n)
    finally:
        await db.close()


def _rss_once(tmp: Path, n: int) -> dict[str, Any]:
    gw = "store-rss"
    data = tmp / gw
    asyncio.run(_prefill(data / f"{gw}.db", n))
    broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp / "broker"))
    http_port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{data}"\n'
        f"[mqtt]\nport = {broker.port}\n[http]\nport = {http_port}\n"
    )
    gateway = Service("gateway", cfg, http_port, tmp / "gateway.log")
    gateway.start()  # broker down: the gateway holds the backlog and retries
    try:
        doc = gateway.wait(lambda d: d["backlog"] == n, f"backlog of {n}", SERVICE_START_TIMEOUT_S)
        at_start = _proc_status(gateway.pid)
        broker.start()
        try:
            with central_running(tmp, broker.port):
                t0 = time.perf_counter()
                doc = gateway.wait(lambda d: d["backlog"] == 0, "backlog drained", FIGURE_TIMEOUT_S)
                elapsed = time.perf_counter() - t0
                status = _proc_status(gateway.pid)
        finally:
            broker.kill()
    finally:
        gateway.stop()
    return {
        "records": n,
        "rss_start_mb": at_start["VmRSS"] / 1024,
        "hwm_mb": status["VmHWM"] / 1024,
        "drain_s": elapsed,
        "acked": doc.get("acked"),
    }


def bench_rss(sizes: Sizes) -> Result:
    res = Result()
    with workdir("rss") as tmp:
        r = _rss_once(tmp, sizes.rss_records)
    res.runs.append(r)
    hwm = r["hwm_mb"]
    detail = (
        f"gateway process, {sizes.rss_records} records drained in {r['drain_s']:.1f}s;"
        f" RSS at start with backlog {r['rss_start_mb']:.1f} MB"
    )
    res.rows.append(Row("6", "gateway peak RSS (VmHWM)", hwm, "MB", "<= 80", hwm <= 80, detail))
    return res


# -- 4, 5, 7: other helpers' benchmarks --------------------------------------------------------


def _not_available(figure: str, name: str, target: str, why: str) -> Row:
    return Row(figure, name, None, "", target, None, f"not available: {why}")


def _allocation_fn(name: str) -> Callable[..., dict[str, Any]] | None:
    try:
        mod = importlib.import_module("ops.bench_allocation")
    except ModuleNotFoundError as e:
        if e.name != "ops.bench_allocation":
            raise
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def bench_allocation(sizes: Sizes) -> Result:
    """Figure 4 from ``ops.bench_allocation.bench_realtime`` (which takes its own median)."""
    res = Result()
    name, target = "validate + allocate, 1 worker (5 lines)", ">= 5000"
    fn = _allocation_fn("bench_realtime")
    if fn is None:
        res.rows.append(_not_available("4", name, target, "ops.bench_allocation.bench_realtime missing"))
        return res
    orders = 2_000 if sizes is QUICK else 5_000
    doc = fn(orders=orders, runs=sizes.runs)
    res.runs.append(doc)
    v = float(doc["value_orders_s"])
    runs = doc.get("runs") or [{}]
    busy = statistics.median(r.get("processing_us_per_order", 0.0) for r in runs)
    share = statistics.median(r.get("processing_share", 0.0) for r in runs)
    detail = (
        f"{orders} orders, median of {sizes.runs}; processing {busy:.0f} us/order of the writer,"
        f" {share:.0%} of the time"
    )
    res.rows.append(Row("4", name, v, "orders/s", target, v >= 5000, detail))
    return res


def bench_postgresql(sizes: Sizes) -> Result:
    """Figure 4 on SQLite and on PostgreSQL (one worker each), runs interleaved, with the ratio
    (``ops.bench_workers.bench_backends``)."""
    from ops import bench_workers  # noqa: PLC0415 - psycopg only where this figure runs

    res = Result()
    name = "validate + allocate, 1 worker (5 lines)"
    why = bench_workers.pg_available()
    if why is not None:
        res.rows.append(_not_available("4p", f"{name}, PostgreSQL", "", why))
        return res
    orders = 1_000 if sizes is QUICK else 5_000
    doc = bench_workers.bench_backends(orders=orders, runs=sizes.runs)
    res.runs.append(doc)
    detail = f"{orders} orders, median of {sizes.runs} interleaved runs; fresh database per run"
    res.rows += [
        Row("4p", f"{name}, SQLite", float(doc["sqlite_orders_s"]), "orders/s", "", None, detail),
        Row("4p", f"{name}, PostgreSQL", float(doc["postgresql_orders_s"]), "orders/s", "", None),
        Row("4p", "PostgreSQL / SQLite", float(doc["ratio_pg_to_sqlite"]), "x", "", None),
    ]
    return res


def bench_workers(sizes: Sizes) -> Result:
    """2 central worker processes vs 1 on one PostgreSQL database, runs interleaved, with the
    ratio (``ops.bench_workers.bench_workers``)."""
    from ops import bench_workers  # noqa: PLC0415 - psycopg only where this figure runs

    res = Result()
    name = "validate + allocate on PostgreSQL"
    why = bench_workers.pg_available()
    if why is not None:
        res.rows.append(_not_available("4w", f"{name}, 2 workers vs 1", "", why))
        return res
    orders = 1_000 if sizes is QUICK else 5_000
    doc = bench_workers.bench_workers(workers=2, orders=orders, runs=sizes.runs)
    res.runs.append(doc)
    detail = (
        f"{orders} orders, median of {sizes.runs} interleaved runs; each worker a process; "
        f"messages dealt round robin; {doc['cpus']} CPUs shared with PostgreSQL"
    )
    res.rows += [
        Row("4w", f"{name}, 1 worker", float(doc["one_orders_s"]), "orders/s", "", None, detail),
        Row("4w", f"{name}, 2 workers", float(doc["many_orders_s"]), "orders/s", "", None),
        Row("4w", "2 workers / 1", float(doc["ratio"]), "x", "", None),
    ]
    return res


def bench_batch(sizes: Sizes) -> Result:
    """Figure 5 from ``ops.bench_allocation.bench_batch`` (which takes its own median)."""
    res = Result()
    name, target = "batch allocation 10k orders x 5 lines", "<= 2"
    fn = _allocation_fn("bench_batch")
    if fn is None:
        res.rows.append(_not_available("5", name, target, "ops.bench_allocation.bench_batch missing"))
        return res
    runs = 1 if sizes is QUICK else 5
    doc = fn(orders=10_000, runs=runs)
    res.runs.append(doc)
    v = float(doc["value_s"])
    res.rows.append(Row("5", name, v, "s", target, v <= 2, f"engine only, median of {runs}"))
    return res


def bench_ptl(sizes: Sizes) -> Result:
    res = Result()
    name = "pick-to-light confirm -> next lit p99"
    try:
        mod = importlib.import_module("ops.bench_ptl")
    except ModuleNotFoundError as e:
        if e.name != "ops.bench_ptl":
            raise
        res.rows.append(_not_available("7", name, "<= 20", "ops.bench_ptl missing"))
        return res
    for i in range(sizes.runs):
        r = dict(asyncio.run(mod.bench_confirm_to_next_lit(sizes.ptl_n)))
        r["run"] = i
        res.runs.append(r)
    p50, p99 = median_of(res.runs, "p50_ms"), median_of(res.runs, "p99_ms")
    res.rows += [
        Row("7", "pick-to-light confirm -> next lit p50", p50, "ms", "", None, f"{sizes.ptl_n} confirms"),
        Row("7", name, p99, "ms", "<= 20", p99 <= 20),
    ]
    return res


def _retention(name: str) -> Callable[[Sizes], Result]:
    fn: Callable[[Sizes], Result] = getattr(importlib.import_module("ops.bench_retention"), name)
    return fn


def bench_disk(sizes: Sizes) -> Result:
    """Figure 8 from ``ops.bench_retention``."""
    return _retention("bench_disk")(sizes)


def bench_restart(sizes: Sizes) -> Result:
    """Figure 9 from ``ops.bench_retention``."""
    return _retention("bench_restart")(sizes)


def bench_fleet(sizes: Sizes) -> Result:
    """Figure 10 from ``ops.bench_fleet``."""
    fn: Callable[[Sizes], Result] = importlib.import_module("ops.bench_fleet").bench_fleet
    return fn(sizes)


def bench_availability(sizes: Sizes) -> Result:
    """Figure 11 from ``ops.bench_availability``: one monitor tick at 10k items x 50 locations
    (``--quick``: 2k x 20), the first (opening every episode) and a steady one."""
    mod = importlib.import_module("ops.bench_availability")
    items, locations, orders = (2_000, 20, 5_000) if sizes is QUICK else (10_000, 50, 20_000)
    res = Result()
    for i in range(sizes.runs):
        r = mod.bench(items, locations, orders)
        r["run"] = i
        res.runs.append(r)
    first = statistics.median(r["first"]["total_s"] for r in res.runs)
    steady = statistics.median(r["steady"]["total_s"] for r in res.runs)
    last = res.runs[-1]
    size = f"{items:,} items x {locations} locations"
    detail = (
        f"{orders:,} orders x 5 lines over 28 days; rows read {last['steady']['rows']:,},"
        f" at risk {last['steady']['at_risk']:,}; median of {sizes.runs}"
    )
    res.rows += [
        Row("11", f"availability tick, first ({size})", first, "s", "", None, detail),
        Row("11", f"availability tick, steady ({size})", steady, "s", "<= 5", steady <= 5),
    ]
    return res


def bench_dashboard(sizes: Sizes) -> Result:
    """Figure 12 from ``ops.bench_dashboard``: the overview's database time per second with 1
    and 10 live streams, shared (now) against per stream (the baseline, same run)."""
    mod = importlib.import_module("ops.bench_dashboard")
    orders, runs = (100_000, 1) if sizes is QUICK else (1_000_000, sizes.runs)
    out = mod.bench(orders=orders, window_s=6.0, runs=runs)
    res = Result(runs=[out])
    med, ratio = out["median"], out["ratio"]
    for n in mod.STREAMS:
        before, after = med["per_stream"][n], med["shared"][n]
        detail = (
            f"per stream (the old way, same run) {1000 * before['db_s_per_s']:.0f} ms/s"
            f" ({before['overviews_per_s']:.1f} overviews/s of {before['ms_per_overview']:.0f} ms);"
            f" shared {after['overviews_per_s']:.1f} overviews/s, {after['events_per_stream_per_s']:.1f}"
            f" events/s per stream; {orders:,} orders, median of {runs}"
        )
        res.rows.append(
            Row(
                "12",
                f"dashboard stream db time, {n} stream{'s' * (n > 1)}",
                1000 * after["db_s_per_s"],
                "ms/s",
                "<= 50",
                1000 * after["db_s_per_s"] <= 50,
                detail,
            )
        )
    res.rows.append(
        Row("12", "dashboard stream db time, per stream / shared (10 streams)", ratio[10], "x", "", None)
    )
    return res


BENCHES: dict[str, Callable[[Sizes], Result]] = {
    "ingest": bench_ingest,
    "drain": bench_drain,
    "latency": bench_latency,
    "allocation": bench_allocation,
    "postgresql": bench_postgresql,
    "workers": bench_workers,
    "batch": bench_batch,
    "rss": bench_rss,
    "ptl": bench_ptl,
    "disk": bench_disk,
    "restart": bench_restart,
    "fleet": bench_fleet,
    "availability": bench_availability,
    "dashboard": bench_dashboard,
}


# -- output ------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def format_table(rows: list[Row]) -> str:
    head = ("#", "figure", "value", "target", "result")
    body = [
        (
            r.figure,
            r.name,
            f"{_fmt(r.value)} {r.unit}".strip(),
            f"{r.target} {r.unit}".strip() if r.target else "",
            {True: "PASS", False: "FAIL", None: ""}[r.passed],
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |" for b in body]
    notes = [f"  {r.figure} {r.name}: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines + (["", *notes] if notes else []))


def run(names: list[str], *, quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "started": time.time(), "figures": {}}
    rows: list[Row] = []
    for name in names:
        t = time.perf_counter()
        try:
            result = BENCHES[name](sizes)
        except BenchError as e:
            log.error("bench %s failed: %s", name, e)
            result = Result(rows=[Row("?", name, None, "", "", False, f"failed: {e}")])
        rows += result.rows
        report["figures"][name] = {
            "rows": [asdict(r) for r in result.rows],
            "runs": result.runs,
            "wall_s": time.perf_counter() - t,
        }
        for r in result.rows:
            print(f"  [{name}] {r.name}: {_fmt(r.value)} {r.unit}", file=sys.stderr, flush=True)
    report["rows"] = [asdict(r) for r in rows]
    report["table"] = format_table(rows)
    return report


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(prog="storegate bench", description=__doc__.split("\n\n")[0])
        p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
        p.add_argument("--only", action="append", default=[], help=f"one of {', '.join(FIGURES)}")
        p.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
        args = p.parse_args(args)
    only = list(args.only or [])
    unknown = [n for n in only if n not in BENCHES]
    if unknown:
        print(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    names = [n for n in FIGURES if n in only] if only else list(FIGURES)
    report = run(names, quick=bool(args.quick))
    m = report["machine"]
    print(f"storegate bench{' --quick' if args.quick else ''} on {m['nproc']} x {m['cpu']}, {m['mem_mb']} MB")
    print(report["table"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if any(r["passed"] is False for r in report["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
