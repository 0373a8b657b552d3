"""Figure 10 of ``storegate bench``: a fleet of gateways against one real central.

A real broker (the shipped limits, open: no per-gateway credentials, see ``ops/BENCH.md``) and
a real central process (``storegate central``, SQLite); ``firmware_sim.fleet`` runs N simulated
gateways in this process, each with its own MQTT connection, retained status and Will, ordering
at ``ORDERS_PER_MIN`` each. Measured against central's REST API only (nothing here reads its
database, so the figure means the same on any backend):

* **connected**: gateways with a session up, and how long the fleet took to connect;
* **status freshness p99**: for every status a gateway published, the time until central's
  fleet registry showed it (``GET /api/fleet/gateways``, every page, polled back to back: the
  first answer whose ``last_status_ms`` is at or after the publish; the answer's ``now_ms`` is
  the time it was seen, so a sample is an upper bound by at most one page read);
* **orders/s drained**: every live gateway queues ``burst`` orders at once (a store's backlog
  after an outage); orders acked by central / seconds until every outbox is empty;
* **central RSS** (VmRSS, and VmHWM in the detail) with the fleet connected and ordering;
* the dashboard with the fleet running: latency of the overview's list request (first page of
  50, problems first; and a search) and the live stream's bytes per event and events per second.

:class:`RegistryWatcher` is also what ``tests/test_fleet_sim.py`` uses to see gateways online
and offline at central.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from central.migrations import all_migrations
from central.web import auth
from firmware_sim import fleet as fleet_sim
from firmware_sim.fleet import Fleet, FleetConfig, GatewayStats, now_ms
from ops.bench import (
    QUICK,
    BenchError,
    Result,
    Row,
    Service,
    Sizes,
    _proc_status,
    broker_running,
    central_service,
    percentile,
    workdir,
)
from runtime.sqlitedb import apply_migrations, connect

ORDERS_PER_MIN = 6.0  # per gateway: 100 orders/s from 1,000 gateways
FRESHNESS_TARGET_S = 5.0
PAGE = 500  # the list endpoint's largest page
VIEWER = ("bench-viewer", "bench-viewer-pass")


@dataclass(frozen=True, slots=True)
class FleetSizes:
    gateways: int
    steady_s: float
    burst: int  # orders queued per gateway for the drain


FULL_FLEET = FleetSizes(gateways=1000, steady_s=30.0, burst=20)
QUICK_FLEET = FleetSizes(gateways=200, steady_s=6.0, burst=5)


def seed_viewer(db_path: Path, user: tuple[str, str] = VIEWER) -> None:
    """Central's database with a viewer user, made before the process starts."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(db_path, synchronous="NORMAL")
    try:
        apply_migrations(conn, all_migrations())
        iterations, auth.PBKDF2_ITERATIONS = auth.PBKDF2_ITERATIONS, 1_000  # the hash names its count
        try:
            auth.add_user(conn, user[0], auth.Role.VIEWER, password=user[1])
        finally:
            auth.PBKDF2_ITERATIONS = iterations
    finally:
        conn.close()


def basic_auth(user: tuple[str, str] = VIEWER) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}


@dataclass(slots=True)
class RegistryWatcher:
    """Polls central's fleet list (every page, then ``every_s`` later again) and notes, per simulated gateway,
    when the registry first showed it online after its first status, when it showed it
    offline, and for every status published how long until the registry showed it."""

    url: str
    fleet: Fleet
    first_online_ms: dict[str, int] = field(default_factory=dict)
    offline_ms: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    # (published at, ms until the registry showed it), per status published
    freshness: list[tuple[int, int]] = field(default_factory=list)
    # (published at, central's receipt stamp - publish), for the newest status of each answer
    receipt: list[tuple[int, int]] = field(default_factory=list)
    every_s: float = 0.5  # between two polls of every page (each costs central ~25 ms at 1,000)
    polls: int = 0
    last_poll_ms: int = 0
    _next: dict[str, int] = field(default_factory=dict)  # gateway -> its next unseen status

    def see(self, gw: str, state: str, last_status_ms: int, seen_ms: int) -> None:
        g = self.fleet.gateways.get(gw)
        if g is None:
            return
        self.state[gw] = state
        sent = g.stats.status_ms
        i = self._next.get(gw, 0)
        first = i
        while i < len(sent) and sent[i] <= last_status_ms:
            self.freshness.append((sent[i], seen_ms - sent[i]))
            i += 1
        if i > first:
            self.receipt.append((sent[i - 1], last_status_ms - sent[i - 1]))
        self._next[gw] = i
        if state == "online" and i > 0:
            self.first_online_ms.setdefault(gw, seen_ms)
        elif state == "offline":
            self.offline_ms.setdefault(gw, seen_ms)
        else:
            self.offline_ms.pop(gw, None)

    async def poll(self, http: aiohttp.ClientSession) -> None:
        offset = 0
        while True:
            async with http.get(
                f"{self.url}/api/fleet/gateways", params={"limit": PAGE, "offset": offset}
            ) as r:
                if r.status != 200:
                    raise BenchError(f"GET /api/fleet/gateways: {r.status} {await r.text()}")
                page = await r.json()
            for item in page["items"]:
                self.see(item["gateway"], item["state"], item["last_status_ms"], page["now_ms"])
            self.last_poll_ms = page["now_ms"]
            offset += PAGE
            if offset >= page["total"]:
                break
        self.polls += 1

    async def run(self, http: aiohttp.ClientSession) -> None:
        while True:
            await self.poll(http)
            await asyncio.sleep(self.every_s)

    def unseen(self, older_than_ms: int) -> int:
        """Statuses published before ``last_poll_ms - older_than_ms`` the registry never showed."""
        cut = self.last_poll_ms - older_than_ms
        return sum(
            sum(1 for t in g.stats.status_ms[self._next.get(gw, 0) :] if t < cut)
            for gw, g in self.fleet.gateways.items()
            if not g.killed
        )


async def _timed_get(http: aiohttp.ClientSession, url: str, params: dict[str, Any]) -> float:
    t = time.perf_counter()
    async with http.get(url, params=params) as r:
        await r.read()
        if r.status != 200:
            raise BenchError(f"GET {url}: {r.status}")
    return (time.perf_counter() - t) * 1000


@dataclass(slots=True)
class Dashboard:
    """What an ops person's browser asks while the fleet runs: the overview's list page
    (every ``every_s``) and a search, and the live stream (bytes and events)."""

    list_ms: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)
    stream_bytes: int = 0
    stream_events: int = 0
    stream_max_event: int = 0

    async def pages(self, http: aiohttp.ClientSession, url: str, every_s: float = 0.5) -> None:
        while True:
            self.list_ms.append(await _timed_get(http, f"{url}/api/fleet/gateways", {"limit": 50}))
            self.search_ms.append(await _timed_get(http, f"{url}/api/fleet/gateways", {"q": "-0042"}))
            await asyncio.sleep(every_s)

    async def stream(self, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(f"{url}/api/stream", timeout=aiohttp.ClientTimeout(total=None)) as r:
            buf = b""
            async for chunk in r.content.iter_any():
                self.stream_bytes += len(chunk)
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    self.stream_events += 1
                    self.stream_max_event = max(self.stream_max_event, len(event) + 2)


def _total(fleet: Fleet, key: str) -> int:
    return sum(getattr(g.stats, key) for g in fleet.gateways.values())


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/health") as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def _fleet_once(central: Service, broker_port: int, fs: FleetSizes) -> dict[str, Any]:
    url = f"http://127.0.0.1:{central.http_port}"
    fleet = Fleet(FleetConfig(port=broker_port, gateways=fs.gateways, orders_per_min=ORDERS_PER_MIN, seed=1))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=basic_auth(), timeout=timeout) as http:
        watcher = RegistryWatcher(url, fleet)
        dash = Dashboard()
        tasks: list[asyncio.Task[None]] = []
        async with fleet.running():
            try:
                r = await _measure(
                    central=central,
                    fleet=fleet,
                    fs=fs,
                    http=http,
                    url=url,
                    watcher=watcher,
                    dash=dash,
                    tasks=tasks,
                )
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return r


async def _measure(
    *,
    central: Service,
    fleet: Fleet,
    fs: FleetSizes,
    http: aiohttp.ClientSession,
    url: str,
    watcher: RegistryWatcher,
    dash: Dashboard,
    tasks: list[asyncio.Task[None]],
) -> dict[str, Any]:
    t0 = time.monotonic()
    tasks.append(asyncio.create_task(watcher.run(http), name="registry-watcher"))
    if not await fleet.wait_connected(within_s=120):
        raise BenchError(f"fleet: {fleet.connected}/{fs.gateways} connected after 120 s")
    connect_s = time.monotonic() - t0
    # steady state: the order stream, statuses every 5 s, an ops person on the dashboard
    dashboard = [
        asyncio.create_task(dash.pages(http, url), name="dashboard-pages"),
        asyncio.create_task(dash.stream(http, url), name="dashboard-stream"),
    ]
    tasks += dashboard
    t_steady, steady_from = time.monotonic(), now_ms()
    rss: list[int] = []
    while time.monotonic() - t_steady < fs.steady_s:
        await asyncio.sleep(1.0)
        rss.append(_proc_status(central.pid)["VmRSS"])
    steady_s = time.monotonic() - t_steady
    for t in dashboard:
        t.cancel()
    connected = fleet.connected
    online = sum(1 for s in watcher.state.values() if s == "online")
    # the drain: every gateway's backlog at once
    fleet.ordering.clear()
    acked0 = _total(fleet, "acked")
    t_burst, burst_from = time.monotonic(), now_ms()
    queued = fleet.queue_orders(fs.burst)
    if not await fleet.wait_drained(within_s=300):
        raise BenchError(f"fleet: {fleet.backlog} orders unacked 300 s after the burst")
    drain_s = time.monotonic() - t_burst
    drained = _total(fleet, "acked") - acked0
    hwm = _proc_status(central.pid)["VmHWM"]
    # "drain them all": every order processed at central (numbered, validated)
    orders = _total(fleet, "orders")
    deadline = time.monotonic() + 300
    while (h := await _health(http, url))["db"]["orders"] < orders:
        if time.monotonic() > deadline:
            raise BenchError(f"fleet: central processed {h['db']['orders']} of {orders} orders")
        await asyncio.sleep(0.2)
    processed_s = time.monotonic() - t_burst
    # the drain's freshness window: at least two status intervals, and every status in it given
    # the target's time to show before it is counted (one never shown then fails the row)
    await asyncio.sleep(max(0.0, 2 * fleet_sim.STATUS_INTERVAL_S - (time.monotonic() - t_burst)))
    end = now_ms()
    await asyncio.sleep(FRESHNESS_TARGET_S + 2 * watcher.every_s)
    summary = fleet.summary()
    unseen = watcher.unseen(older_than_ms=int(FRESHNESS_TARGET_S * 1000))
    late = [
        gw
        for gw, g in fleet.gateways.items()
        if _first_online_late(watcher, gw, g.stats, FRESHNESS_TARGET_S * 1000)
    ]
    return {
        "gateways": fs.gateways,
        "connected": connected,
        "online_at_central": online,
        "connect_s": connect_s,
        "late_online": len(late),
        **_freshness(watcher, "steady", steady_from, burst_from),
        **_freshness(watcher, "drain", burst_from, end),
        "unseen_statuses": unseen,
        "registry_polls": watcher.polls,
        "steady_s": steady_s,
        "burst_orders": queued,
        "drained": drained,
        "drain_s": drain_s,
        "orders_per_s": drained / drain_s,
        "processed_all_s": processed_s,
        "orders": orders,
        "central_orders": h["db"]["orders"],
        "central_processed": h["db"]["processed"],
        "central_rss_mb": max(rss) / 1024,
        "central_hwm_mb": hwm / 1024,
        "list_p50_ms": percentile(dash.list_ms, 50),
        "list_p99_ms": percentile(dash.list_ms, 99),
        "search_p99_ms": percentile(dash.search_ms, 99),
        "list_requests": len(dash.list_ms),
        "stream_events_per_s": dash.stream_events / steady_s,
        "stream_kb_per_event": dash.stream_bytes / max(1, dash.stream_events) / 1024,
        "stream_max_event_kb": dash.stream_max_event / 1024,
        "sim": summary,
    }


def _freshness(watcher: RegistryWatcher, phase: str, start: int, end: int) -> dict[str, Any]:
    """Freshness (published -> shown by the registry) and central's receipt (published ->
    ``last_status_ms``) of the statuses published in ``[start, end)``: p50, p99, max, count."""
    out: dict[str, Any] = {}
    for name, samples in (("freshness", watcher.freshness), ("receipt", watcher.receipt)):
        xs = [float(ms) for at, ms in samples if start <= at < end]
        out[f"{phase}_{name}_n"] = len(xs)
        out[f"{phase}_{name}_p50_ms"] = percentile(xs, 50)
        out[f"{phase}_{name}_p99_ms"] = percentile(xs, 99)
        out[f"{phase}_{name}_max_ms"] = max(xs) if xs else math.nan
    lags = [lag for at, lag in watcher.fleet.loop_lag if start <= at < end]
    out[f"{phase}_sim_lag_p99_ms"] = percentile(lags, 99)
    return out


def _first_online_late(watcher: RegistryWatcher, gw: str, stats: GatewayStats, within_ms: float) -> bool:
    seen = watcher.first_online_ms.get(gw)
    return stats.first_connected_ms is None or seen is None or seen - stats.first_connected_ms > within_ms


def run_fleet_figure(tmp: Path, fs: FleetSizes) -> dict[str, Any]:
    with broker_running(tmp) as broker:
        central = central_service(tmp, broker.port)
        seed_viewer(tmp / "central" / "central.db")
        central.start()
        try:
            central.wait(lambda d: bool((d.get("mqtt") or {}).get("connected")), "central connected", 30)
            return asyncio.run(_fleet_once(central, broker.port, fs))
        finally:
            central.stop()


def _freshness_row(r: dict[str, Any], phase: str, what: str) -> Row:
    p99 = r[f"{phase}_freshness_p99_ms"]
    ok = p99 <= FRESHNESS_TARGET_S * 1000 and r["unseen_statuses"] == 0
    return Row(
        "10",
        f"fleet: status freshness p99 ({what})",
        p99 / 1000,
        "s",
        f"<= {FRESHNESS_TARGET_S:g}",
        ok,
        f"{r[f'{phase}_freshness_n']} statuses, p50 {r[f'{phase}_freshness_p50_ms']:.0f} ms, max"
        f" {r[f'{phase}_freshness_max_ms']:.0f} ms; central's receipt stamp p50"
        f" {r[f'{phase}_receipt_p50_ms']:.0f} / p99 {r[f'{phase}_receipt_p99_ms']:.0f} ms;"
        f" the simulator's own loop lag p99 {r[f'{phase}_sim_lag_p99_ms']:.0f} ms"
        + (
            f"; {r['unseen_statuses']} never shown, {r['registry_polls']} polls of every page"
            if phase == "steady"
            else ""
        ),
    )


def bench_fleet(sizes: Sizes) -> Result:
    fs = QUICK_FLEET if sizes is QUICK else FULL_FLEET
    res = Result()
    with workdir("fleet") as tmp:
        r = run_fleet_figure(tmp, fs)
    res.runs.append(r)
    sim = r["sim"]
    n = fs.gateways
    lost, dup = sim["unacked"], sim["duplicated"]
    res.rows += [
        Row(
            "10",
            f"fleet: gateways connected (of {n})",
            float(r["connected"]),
            "",
            f">= {n}",
            r["connected"] >= n and r["late_online"] == 0,
            f"connected in {r['connect_s']:.1f} s, {r['online_at_central']} online at central,"
            f" {r['late_online']} seen online later than {FRESHNESS_TARGET_S:g} s after connecting",
        ),
        *(_freshness_row(r, phase, what) for phase, what in (("steady", "ordering"), ("drain", "drain"))),
        Row(
            "10",
            "fleet: orders/s drained",
            r["orders_per_s"],
            "orders/s",
            "",
            None if not (lost or dup) else False,
            f"{r['drained']} orders ({fs.burst} queued at each of {n} gateways) acked in"
            f" {r['drain_s']:.1f} s; all {r['orders']} processed {r['processed_all_s']:.1f} s after"
            f" the burst; lost {lost}, duplicated {dup}, resends {sim['resends']}",
        ),
        Row(
            "10",
            f"fleet: central RSS at {n} gateways",
            r["central_rss_mb"],
            "MB",
            "",
            None,
            f"VmRSS peak of 1 s samples while ordering; VmHWM {r['central_hwm_mb']:.1f} MB after the drain",
        ),
        Row(
            "10",
            "fleet: dashboard list p99 (page of 50)",
            r["list_p99_ms"],
            "ms",
            "",
            None,
            f"{r['list_requests']} requests while the fleet ran, p50 {r['list_p50_ms']:.1f} ms, search p99"
            f" {r['search_p99_ms']:.1f} ms; stream {r['stream_kb_per_event']:.1f} kB/event (max"
            f" {r['stream_max_event_kb']:.1f}), {r['stream_events_per_s']:.2f} events/s",
        ),
    ]
    return res
