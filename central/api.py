"""Central's REST API (aiohttp): orders, quarantine, health."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aiohttp import web

from central import repo
from central.consumer import Consumer
from ops.sqlitedb import DurableDB

DB_KEY = web.AppKey("db", DurableDB)
CONSUMER_KEY = web.AppKey("consumer", Consumer)

MAX_LIMIT = 1000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=partial(json.dumps, default=str))


def _error(status: int, reason: str) -> web.Response:
    return _json({"error": reason}, status=status)


def _int_param(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name}: {raw!r} is not an integer"}), content_type="application/json"
        ) from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name}: {value} not in {lo}..{hi}"}), content_type="application/json"
        )
    return value


async def list_orders(request: web.Request) -> web.Response:
    unknown = set(request.query) - {*repo.FILTERS, "limit", "after"}
    if unknown:
        return _error(
            400,
            f"unknown query parameter {sorted(unknown)[0]!r}; known: {', '.join(repo.FILTERS)}, limit, after",
        )
    filters = {k: v for k, v in request.query.items() if k in repo.FILTERS}
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    after = _int_param(request, "after", 0, lo=0, hi=2**62)
    db = request.app[DB_KEY]
    orders = await db.read(partial(repo.list_orders, filters=filters, limit=limit, after_id=after))
    return _json({"orders": orders, "next_after": orders[-1]["order_id"] if len(orders) == limit else None})


async def get_order(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    order = await request.app[DB_KEY].read(partial(repo.get_order, key=key))
    if order is None:
        return _error(404, f"no order with number or record id {key!r}")
    return _json(order)


async def quarantine(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    rows = await request.app[DB_KEY].read(partial(repo.list_quarantine, limit=limit))
    return _json({"quarantine": rows})


async def health(request: web.Request) -> web.Response:
    db = request.app[DB_KEY]
    counts = await db.read(repo.counts)
    consumer = request.app.get(CONSUMER_KEY)
    mqtt = None
    if consumer is not None:
        s = consumer.stats
        mqtt = {
            "connected": s.connected,
            "messages": s.messages,
            "records": s.records,
            "accepted": s.accepted,
            "duplicates": s.duplicates,
            "rejected": s.rejected,
            "quarantined_messages": s.quarantined_messages,
        }
    return _json({"status": "ok", "db": counts, "mqtt": mqtt})


def create_app(*, db: DurableDB, consumer: Consumer | None = None) -> web.Application:
    app = web.Application()
    app[DB_KEY] = db
    if consumer is not None:
        app[CONSUMER_KEY] = consumer
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/orders", list_orders)
    app.router.add_get("/api/orders/{key}", get_order)
    app.router.add_get("/api/quarantine", quarantine)
    return app
