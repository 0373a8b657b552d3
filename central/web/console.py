"""The order console: one static page (``GET /console``) and its script, over the REST API.

The page is plain HTML + vanilla JS (``central/static/console.html``, ``console.js``, no
build step). It logs in the way the dashboard does (HTTP Basic: the browser asks once and
sends the credentials with every request the page makes) and asks ``GET /api/me`` which
role it has, to hide what the role may not do; the server refuses those routes anyway.

Besides the page this module adds the two small reads the console needs and the API lacked:
``GET /api/me`` (the user's name, role and the roles it includes) and
``GET /api/returns?order_id=N`` (an order's RMAs).
"""

from __future__ import annotations

import re
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from central.fulfil import returns
from central.web import visibility
from central.web.api import DB_KEY, USER_KEY, HttpError, requires
from central.web.auth import Role, User

STATIC = Path(__file__).parent / "static"
_ORDER_ID = re.compile(r"[0-9]{1,18}")
ASSETS = {"console.js": "application/javascript", "console.css": "text/css"}


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise HttpError(404, f"no console asset {name!r}")
    return web.FileResponse(
        STATIC / name, headers={"Content-Type": ASSETS[name], "Cache-Control": "no-cache"}
    )


async def me(request: web.Request) -> web.Response:
    """Who is logged in: ``{"name", "role", "roles": [the roles it includes]}``."""
    user: User = request[USER_KEY]
    roles = [r.value for r in Role if user.role.allows(r)]
    return web.json_response({"name": user.name, "role": user.role.value, "roles": roles})


def _order_returns(conn: sqlite3.Connection, order_id: int) -> list[dict[str, Any]]:
    cols = returns.RMA_COLS
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM rmas WHERE order_id = ? ORDER BY rma_id", (order_id,)
    ).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


async def list_returns(request: web.Request) -> web.Response:
    """``GET /api/returns?order_id=N``: the order's RMAs, oldest first (403 for an order the
    user does not read; a supplier user its items' RMAs)."""
    raw = request.query.get("order_id")
    unknown = set(request.query) - {"order_id"}
    if unknown:
        raise HttpError(400, f"unknown query parameter {sorted(unknown)[0]!r}; known: order_id")
    if raw is None or not _ORDER_ID.fullmatch(raw):
        raise HttpError(400, f"order_id: expected an order id (integer), got {raw!r}")
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=request[USER_KEY].name))

    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        visibility.check_order_id(conn, view, int(raw))  # 403 for an order the user does not read
        return [r for r in _order_returns(conn, int(raw)) if view.sees_sku(r["sku"])]

    return web.json_response({"returns": await request.app[DB_KEY].read(read)})


def add_routes(app: web.Application) -> None:
    """The console page and its assets need a viewer, like the dashboard."""
    viewer = requires(Role.VIEWER)
    app.router.add_get("/console", viewer(page))
    app.router.add_get("/console/{name}", viewer(asset))
    app.router.add_get("/api/me", viewer(me))
    app.router.add_get("/api/returns", viewer(list_returns))
