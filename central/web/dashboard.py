"""The ops dashboard: one live page plus the fleet REST endpoints behind it.

``GET /`` serves the page; it opens ``GET /api/stream`` (Server-Sent Events) and redraws on
every fleet change (a status message, an alert opened or closed; at most one event per
``MIN_INTERVAL_S``), with a heartbeat every few seconds so ages stay fresh. An event carries
:func:`central.fleet_api.overview` (summary, newest open alerts, the largest backlogs' history:
bounded at any fleet size); the page asks the gateways a page at a time from
``/api/fleet/gateways`` (ops/FLEET.md). A browser that closes its tab ends its stream at the next
write; that is the normal end of a stream, logged at DEBUG, not an error.

The overview is computed once per change (and per heartbeat) by one :class:`OverviewFeed` and
shared by every open stream; nothing is computed while no stream is open. Its order figures
(orders by status over the whole table, fill rate, orders per minute) are read at most once per
``ORDERS_EVERY_S`` and carried in between, stamped ``orders_as_of``. A user with a scope
(``central.web.visibility``: a store or supplier user) gets the same overview with the
availability monitor's stock alerts cut to its scope, as ``/api/alerts`` does, and without the
company-wide order figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client.core import Metric

from central import fleet as fleet_mod
from central.fleet import Fleet
from central.web import fleet_api, visibility
from central.web.api import USER_KEY, requires
from central.web.auth import Role
from runtime.clock import now_ms
from runtime.metrics import counter, gauge
from runtime.sqlitedb import DurableDB

T = TypeVar("T")
FLEET_KEY = web.AppKey("fleet", Fleet)
FLEET_DB_KEY = web.AppKey("fleet_db", DurableDB)
log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 3.0
MIN_INTERVAL_S = 0.5
ORDERS_EVERY_S = 5.0  # the order figures' cadence (the same as central's /metrics refresh)
WITHHELD: dict[str, Any] = {
    "orders_by_status": {},
    "fill_rate": None,
    "open_shortages": None,
    "withheld": "scope",
}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "dashboard.html")


async def fleet_snapshot(request: web.Request) -> web.Response:
    """The whole fleet; a scoped user gets its own gateways (none for a supplier), the alerts
    it sees and no company-wide order figures (as the live stream)."""
    db = request.app[FLEET_DB_KEY]
    snap = await db.read(fleet_mod.snapshot)
    view = await db.read(partial(visibility.view_of, name=request[USER_KEY].name))
    if not view.everything:
        sites = {
            site: kept
            for site, gws in snap["sites"].items()
            if (kept := [g for g in gws if fleet_api.sees_gateway(view, g["gateway"])])
        }
        snap = scoped({**snap, "sites": sites}, view)
    return web.json_response(snap, dumps=_dumps)


def _alerts(conn: sqlite3.Connection, include_closed: bool) -> list[dict[str, Any]]:
    cols = ("id", "kind", "gateway", "device_id", "severity", "message", "opened_ms", "closed_ms")
    where = "" if include_closed else "WHERE closed_ms IS NULL"
    return [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(f"SELECT {', '.join(cols)} FROM alerts {where} ORDER BY id DESC LIMIT 500")
    ]


async def alerts(request: web.Request) -> web.Response:
    """Open alerts (``all=1``: closed ones too); a store user sees its own gateways' alerts and
    the availability monitor's stock alerts of the locations and items in its scope, a supplier
    user only its items' stock alerts (``fleet_api.sees_alert``)."""
    include_closed = request.query.get("all") in ("1", "true", "yes")
    db = request.app[FLEET_DB_KEY]
    rows = await db.read(partial(_alerts, include_closed=include_closed))
    view = await db.read(partial(visibility.view_of, name=request[USER_KEY].name))
    if not view.everything:
        rows = [r for r in rows if fleet_api.sees_alert(view, r)]
    return web.json_response({"alerts": rows}, dumps=_dumps)


def _timed(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> tuple[T, float]:
    t0 = time.perf_counter()
    return fn(conn), time.perf_counter() - t0


@dataclass(slots=True)
class Published:
    """One overview as computed (``snap``), and its SSE event per scope, encoded once each."""

    seq: int
    snap: dict[str, Any]
    encoded: dict[Hashable, bytes] = field(default_factory=dict)

    def event_for(self, view: visibility.View) -> bytes:
        key: Hashable = None if view.everything else (view.readable, view.skus, view.gateways, view.supplier)
        data = self.encoded.get(key)
        if data is None:
            snap = self.snap if view.everything else scoped(self.snap, view)
            data = self.encoded[key] = f"event: fleet\ndata: {_dumps(snap)}\n\n".encode()
        return data


def scoped(snap: dict[str, Any], view: visibility.View) -> dict[str, Any]:
    """The overview as a scoped user sees it: the alerts it sees (as ``/api/alerts``), the
    backlog history of its own gateways only, no company-wide order figures."""
    out = dict(snap)
    out["alerts"] = [a for a in snap["alerts"] if fleet_api.sees_alert(view, a)]
    out["history"] = {gw: h for gw, h in snap["history"].items() if fleet_api.sees_gateway(view, gw)}
    out["orders_per_minute"] = {}
    out["fulfilment"] = WITHHELD
    return out


class OverviewFeed:
    """The live streams' overview, computed by one task while any stream is open: at once, then
    after each fleet change (at most one per ``MIN_INTERVAL_S``) or ``HEARTBEAT_S``. A stream
    gets the latest at once and then each newer one; a slow one skips to the newest."""

    def __init__(self, fleet: Fleet, db: DurableDB) -> None:
        self.fleet = fleet
        self.db = db
        self.streams = 0
        self.overviews = 0  # computed (each is shared by every open stream)
        self.order_reads = 0  # of them, how many read the order figures
        self.db_seconds = 0.0
        self.errors = 0
        self._latest: Published | None = None
        self._orders: dict[str, Any] | None = None
        self._published = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def events(self) -> AsyncGenerator[Published, None]:
        """The overviews for one stream; close it (``contextlib.aclosing``) when the stream ends."""
        self.streams += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashboard-overview")
        seen = 0
        try:
            while True:
                async with self._published:
                    await self._published.wait_for(partial(self._newer_than, seen))
                    latest = self._latest
                assert latest is not None
                seen = latest.seq
                yield latest
        finally:
            self.streams -= 1
            if self.streams == 0:
                self.stop()

    def _newer_than(self, seq: int) -> bool:
        return self._latest is not None and self._latest.seq > seq

    def stop(self) -> None:
        """No stream is open: compute nothing until the next one opens."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._latest = None

    async def _run(self) -> None:
        seq = 0
        while True:
            version = self.fleet.version
            orders = self._orders
            due = orders is None or now_ms() - orders["orders_as_of"] >= ORDERS_EVERY_S * 1000
            job = partial(fleet_api.overview, backlog_age_s=self.fleet.thresholds.backlog_age_s, orders=due)
            try:
                snap, took = await self.db.read(partial(_timed, job))
            except Exception:  # a task boundary: the streams keep the last overview
                self.errors += 1
                log.exception("dashboard overview not computed; the open streams keep the last one")
            else:
                self.overviews += 1
                self.db_seconds += took
                if due:
                    self.order_reads += 1
                    self._orders = {k: snap[k] for k in fleet_api.ORDER_FIGURES}
                elif orders is not None:
                    snap.update(orders)
                snap["version"] = version
                seq += 1
                async with self._published:
                    self._latest = Published(seq, snap)
                    self._published.notify_all()
            await asyncio.sleep(MIN_INTERVAL_S)  # a busy fleet changes many times a second
            await self.fleet.wait_change(version, HEARTBEAT_S)

    def collect(self) -> Iterable[Metric]:
        yield gauge("storegate_central_dashboard_streams", "open dashboard live streams", self.streams)
        yield counter(
            "storegate_central_dashboard_overviews",
            "overviews computed for the live streams (one per fleet change or heartbeat, shared by all)",
            self.overviews,
        )
        yield counter(
            "storegate_central_dashboard_order_reads",
            "overviews that read the order figures (every order counted; at most one per 5 s)",
            self.order_reads,
        )
        yield counter(
            "storegate_central_dashboard_db_seconds",
            "database time the live streams' overviews took",
            self.db_seconds,
        )
        yield counter(
            "storegate_central_dashboard_errors",
            "overviews that failed (logged with the traceback)",
            self.errors,
        )


FEED_KEY = web.AppKey("dashboard_feed", OverviewFeed)


async def stream(request: web.Request) -> web.StreamResponse:
    db = request.app[FLEET_DB_KEY]
    # The user's scope as the stream opens (its credentials, too, are checked only then).
    view = await db.read(partial(visibility.view_of, name=request[USER_KEY].name))
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    sent = 0
    try:
        async with contextlib.aclosing(request.app[FEED_KEY].events()) as overviews:
            async for published in overviews:
                await resp.write(published.event_for(view))
                sent += 1
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client went away
        log.debug("dashboard stream to %s closed by the client after %d events", request.remote, sent)
    return resp


def add_routes(app: web.Application, *, fleet: Fleet, db: DurableDB) -> None:
    """The page and its data need a viewer (Basic auth in a browser: it asks once and sends the
    credentials with the page's own requests, the event stream included)."""
    app[FLEET_KEY] = fleet
    app[FLEET_DB_KEY] = db
    app[FEED_KEY] = feed = OverviewFeed(fleet, db)

    async def stop_feed(_app: web.Application) -> None:
        feed.stop()

    app.on_cleanup.append(stop_feed)
    viewer = requires(Role.VIEWER)
    app.router.add_get("/", viewer(page))
    app.router.add_get("/api/fleet", viewer(fleet_snapshot))
    app.router.add_get("/api/alerts", viewer(alerts))
    app.router.add_get("/api/stream", viewer(stream))
