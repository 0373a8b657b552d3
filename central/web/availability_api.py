"""REST for the availability monitor and for users' scopes (``central/VISIBILITY.md``).

Availability (``central.allocate.availability``), every answer cut to the user's scope
(``central.web.visibility``):

- ``GET /api/availability?location=&sku=&at_risk=1&limit=``: velocity and days of cover per
  location and item (viewer);
- ``GET /api/availability/alerts?all=1&status=&location=&sku=&limit=``: the proposals of the
  running at-risk episodes (``all=1``: ended ones too) (viewer);
- ``GET /api/availability/proposals/{id}`` (viewer);
- ``POST /api/availability/proposals/{id}/accept`` ``{"qty": n}`` optional, and
  ``.../dismiss`` ``{"reason": "..."}``: ``inventory_controller`` (a store user for its own
  location);
- ``POST /api/availability/evaluate``: run the monitor now (``inventory_controller``).

Users (``central.web.auth``): ``GET /api/users`` and ``PUT /api/users/{name}/scope`` need a
supervisor; ``GET /api/users/{name}/scope`` a supervisor or the user itself; ``GET /api/me/scope``
any user (its role, scope and what the scope resolves to now).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from functools import partial
from typing import Any

from aiohttp import web

from central.allocate import availability
from central.allocate.availability import AvailabilitySettings, Monitor
from central.allocate.inventory import InventoryError
from central.web import auth, visibility
from central.web.allocation_api import view_of
from central.web.api import DB_KEY, USER_KEY, requires
from central.web.auth import Role, User
from runtime.clock import now_ms
from runtime.jsonbody import json_object

SETTINGS_KEY = web.AppKey("availability_settings", AvailabilitySettings)
MONITOR_KEY = web.AppKey("availability_monitor", Monitor)
MAX_LIMIT = 1000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=partial(json.dumps, default=str))


def _err(status: int, reason: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound, 409: web.HTTPConflict}[
        status
    ]
    return cls(text=json.dumps({"error": reason}), content_type="application/json")


def _query(request: web.Request, known: set[str]) -> None:
    unknown = set(request.query) - known
    if unknown:
        raise _err(400, f"unknown query parameter {sorted(unknown)[0]!r}; known: {', '.join(sorted(known))}")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    try:
        n = int(raw)
    except ValueError:
        raise _err(400, f"limit: {raw!r} is not an integer") from None
    if not 1 <= n <= MAX_LIMIT:
        raise _err(400, f"limit: {n} not in 1..{MAX_LIMIT}")
    return n


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "")
    if raw not in ("", "0", "1", "true", "false"):
        raise _err(400, f"{name}: 1/true or 0/false, got {raw!r}")
    return raw in ("1", "true")


def _settings(request: web.Request) -> AvailabilitySettings:
    return request.app.get(SETTINGS_KEY) or AvailabilitySettings()


async def _visible(request: web.Request, loc: str | None, sku: str | None) -> visibility.View:
    v = await view_of(request)
    try:
        v.check_read(loc=loc, sku=sku)
    except visibility.Refused as e:
        raise _err(403, e.reason) from None
    return v


async def list_availability(request: web.Request) -> web.Response:
    """Velocity and cover; ``at_risk=1`` only the rows below their threshold; lowest cover first."""
    _query(request, {"location", "sku", "at_risk", "limit"})
    loc, sku = request.query.get("location"), request.query.get("sku")
    only_risk, limit = _flag(request, "at_risk"), _limit(request)
    v = await _visible(request, loc, sku)
    settings = _settings(request)
    if only_risk:  # the monitor's own cheap read (fast sellers only), not every row
        found = await request.app[DB_KEY].read(partial(availability.plan, now=now_ms(), settings=settings))
        rows = [
            r
            for r, _ in found.at_risk.values()
            if (loc is None or r.location == loc) and (sku is None or r.sku == sku)
        ]
    else:
        rows = await request.app[DB_KEY].read(
            partial(availability.covers, now=now_ms(), settings=settings, location=loc, sku=sku)
        )
    rows = [r for r in rows if v.sees(r.location, r.sku)]
    rows.sort(key=lambda r: (r.cover_days is None, r.cover_days or 0.0, r.location, r.sku))
    return _json(
        {
            "method": f"simple moving averages over {settings.short_window_days} and"
            f" {settings.long_window_days} days, the larger counts",
            "threshold_days": settings.threshold_days,
            "rows": [r.to_json(settings) for r in rows[:limit]],
            "more": len(rows) > limit,
        }
    )


async def list_alerts(request: web.Request) -> web.Response:
    _query(request, {"all", "status", "location", "sku", "limit"})
    loc, sku, status = request.query.get("location"), request.query.get("sku"), request.query.get("status")
    if status is not None and status not in availability.STATUSES:
        raise _err(400, f"status: one of {', '.join(availability.STATUSES)}")
    v = await _visible(request, loc, sku)
    rows = await request.app[DB_KEY].read(
        partial(
            availability.list_proposals,
            current=not _flag(request, "all"),
            status=status,
            location=loc,
            sku=sku,
            limit=_limit(request),
        )
    )
    return _json({"proposals": [r for r in rows if v.sees(r["location"], r["sku"])]})


def _pid(request: web.Request) -> int:
    raw = request.match_info["pid"]
    try:
        return int(raw)
    except ValueError:
        raise _err(400, f"proposal id {raw!r} is not an integer") from None


async def get_proposal(request: web.Request) -> web.Response:
    pid = _pid(request)
    p = await request.app[DB_KEY].read(partial(availability.get_proposal, proposal_id=pid))
    if p is None:
        raise _err(404, f"no availability proposal {pid}")
    await _visible(request, p["location"], p["sku"])
    return _json(p)


async def _decide(request: web.Request, fn: Any) -> web.Response:
    pid = _pid(request)
    body = await json_object(request) if request.can_read_body else {}
    v = await view_of(request)
    user: User = request[USER_KEY]

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        p = availability.get_proposal(conn, pid)
        if p is not None:
            v.check_write(p["location"], action="decide stock proposals")
        return fn(conn, pid, user.name, body)  # type: ignore[no-any-return]

    try:
        return _json(await request.app[DB_KEY].write(job))
    except visibility.Refused as e:
        raise _err(403, e.reason) from None
    except availability.AvailabilityError as e:
        raise _err(e.status, e.reason) from None
    except InventoryError as e:
        raise _err(409, str(e)) from None


async def accept(request: web.Request) -> web.Response:
    """Carry the proposal out (reservation + expected receipt, or a supplier receipt)."""
    settings = _settings(request)
    now, today = now_ms(), dt.date.today()

    def fn(conn: sqlite3.Connection, pid: int, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        qty = body.get("qty")
        if qty is not None and (not isinstance(qty, int) or isinstance(qty, bool)):
            raise availability.AvailabilityError(400, f"qty: expected an integer, got {qty!r}")
        return availability.accept(conn, pid, actor=actor, now=now, today=today, settings=settings, qty=qty)

    return await _decide(request, fn)


async def dismiss(request: web.Request) -> web.Response:
    now = now_ms()

    def fn(conn: sqlite3.Connection, pid: int, actor: str, body: dict[str, Any]) -> dict[str, Any]:
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise availability.AvailabilityError(400, "reason: expected text")
        return availability.dismiss(conn, pid, actor=actor, now=now, reason=reason)

    return await _decide(request, fn)


async def evaluate(request: web.Request) -> web.Response:
    """Run the monitor now (as a scheduler tick would)."""
    monitor = request.app.get(MONITOR_KEY) or Monitor(request.app[DB_KEY], _settings(request))
    return _json(await monitor.tick())


# -- users and scopes ------------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    return _json({"users": await request.app[DB_KEY].read(auth.list_users)})


async def me(request: web.Request) -> web.Response:
    user: User = request[USER_KEY]
    out = await request.app[DB_KEY].read(partial(visibility.describe, name=user.name))
    return _json({**out, "role": user.role.value})


async def get_scope(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    user: User = request[USER_KEY]
    if name != user.name and not user.role.allows(Role.SUPERVISOR):
        raise _err(403, f"user {user.name!r} may read only its own scope; {name!r}'s needs supervisor")
    if not await request.app[DB_KEY].read(partial(auth.user_exists, name=name)):
        raise _err(404, f"no user {name!r}")
    return _json(await request.app[DB_KEY].read(partial(visibility.describe, name=name)))


async def put_scope(request: web.Request) -> web.Response:
    """``{"kind": "locations", "locations": [...]}``, ``{"kind": "supplier", "supplier": ...}``
    or ``{"kind": "all"}``."""
    name = request.match_info["name"]
    body = await json_object(request)
    try:
        scope = auth.parse_scope(body)
        await request.app[DB_KEY].write(partial(auth.set_scope, name=name, scope=scope))
    except auth.ScopeError as e:
        raise _err(404 if e.reason.startswith("no user") else 400, e.reason) from None
    return _json(await request.app[DB_KEY].read(partial(visibility.describe, name=name)))


def add_routes(
    app: web.Application, *, settings: AvailabilitySettings | None = None, monitor: Monitor | None = None
) -> None:
    if settings is not None:
        app[SETTINGS_KEY] = settings
    if monitor is not None:
        app[MONITOR_KEY] = monitor
    viewer, controller, boss = (
        requires(r) for r in (Role.VIEWER, Role.INVENTORY_CONTROLLER, Role.SUPERVISOR)
    )
    r = app.router
    r.add_get("/api/availability", viewer(list_availability))
    r.add_get("/api/availability/alerts", viewer(list_alerts))
    r.add_get("/api/availability/proposals/{pid}", viewer(get_proposal))
    r.add_post("/api/availability/proposals/{pid}/accept", controller(accept))
    r.add_post("/api/availability/proposals/{pid}/dismiss", controller(dismiss))
    r.add_post("/api/availability/evaluate", controller(evaluate))
    r.add_get("/api/users", boss(list_users))
    r.add_get("/api/me/scope", viewer(me))
    r.add_get("/api/users/{name}/scope", viewer(get_scope))
    r.add_put("/api/users/{name}/scope", boss(put_scope))
