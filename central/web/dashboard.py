"""The ops dashboard: one live page plus the fleet REST endpoints behind it.

``GET /`` serves the page; it opens ``GET /api/stream`` (Server-Sent Events) and redraws on
every fleet change (a status message, an alert opened or closed; at most one event per
``MIN_INTERVAL_S``), with a heartbeat every few seconds so ages stay fresh. An event carries
:func:`central.fleet_api.overview` (summary, newest open alerts, the largest backlogs' history:
bounded at any fleet size); the page asks the gateways a page at a time from
``/api/fleet/gateways`` (ops/FLEET.md). A browser that closes its tab ends its stream at the next
write; that is the normal end of a stream, logged at DEBUG, not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from central import fleet as fleet_mod
from central.allocate.availability import ALERT_KIND
from central.fleet import Fleet
from central.web import fleet_api, visibility
from central.web.api import USER_KEY, requires
from central.web.auth import Role
from runtime.sqlitedb import DurableDB

FLEET_KEY = web.AppKey("fleet", Fleet)
FLEET_DB_KEY = web.AppKey("fleet_db", DurableDB)
log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 3.0
MIN_INTERVAL_S = 0.5


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "dashboard.html")


async def fleet_snapshot(request: web.Request) -> web.Response:
    snap = await request.app[FLEET_DB_KEY].read(fleet_mod.snapshot)
    return web.json_response(snap, dumps=_dumps)


def _alerts(conn: sqlite3.Connection, include_closed: bool) -> list[dict[str, Any]]:
    cols = ("id", "kind", "gateway", "device_id", "severity", "message", "opened_ms", "closed_ms")
    where = "" if include_closed else "WHERE closed_ms IS NULL"
    return [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(f"SELECT {', '.join(cols)} FROM alerts {where} ORDER BY id DESC LIMIT 500")
    ]


async def alerts(request: web.Request) -> web.Response:
    """Open alerts (``all=1``: closed ones too); a store or supplier user sees the availability
    monitor's stock alerts only for the locations and items in its scope."""
    include_closed = request.query.get("all") in ("1", "true", "yes")
    db = request.app[FLEET_DB_KEY]
    rows = await db.read(partial(_alerts, include_closed=include_closed))
    view = await db.read(partial(visibility.view_of, name=request[USER_KEY].name))
    if not view.everything:
        rows = [r for r in rows if r["kind"] != ALERT_KIND or view.sees(r["gateway"], r["device_id"] or "")]
    return web.json_response({"alerts": rows}, dumps=_dumps)


async def stream(request: web.Request) -> web.StreamResponse:
    fleet = request.app[FLEET_KEY]
    db = request.app[FLEET_DB_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    sent = 0
    try:
        while True:
            version = fleet.version
            snap = await db.read(partial(fleet_api.overview, backlog_age_s=fleet.thresholds.backlog_age_s))
            snap["version"] = version
            await resp.write(f"event: fleet\ndata: {_dumps(snap)}\n\n".encode())
            sent += 1
            await asyncio.sleep(MIN_INTERVAL_S)  # a busy fleet changes many times a second
            await fleet.wait_change(version, HEARTBEAT_S)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client went away
        log.debug("dashboard stream to %s closed by the client after %d events", request.remote, sent)
    return resp


def add_routes(app: web.Application, *, fleet: Fleet, db: DurableDB) -> None:
    """The page and its data need a viewer (Basic auth in a browser: it asks once and sends the
    credentials with the page's own requests, the event stream included)."""
    app[FLEET_KEY] = fleet
    app[FLEET_DB_KEY] = db
    viewer = requires(Role.VIEWER)
    app.router.add_get("/", viewer(page))
    app.router.add_get("/api/fleet", viewer(fleet_snapshot))
    app.router.add_get("/api/alerts", viewer(alerts))
    app.router.add_get("/api/stream", viewer(stream))
