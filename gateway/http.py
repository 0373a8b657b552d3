"""The gateway's local HTTP endpoint: order entry (until/besides device adapters), record
status and health. Devices on the store LAN (and the ``storegate gateway order`` CLI) use it.

``POST /api/orders`` answers 201 only after the order is durably in the outbox, and 422 with
the reason for each refused line when the edge checks (``gateway/edge_checks.py``) refuse it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway import edge_checks
from gateway.outbox import Outbox
from gateway.sync import Sync
from protocols.records import RecordSchemaError, parse_order

OUTBOX_KEY = web.AppKey("outbox", Outbox)
SYNC_KEY = web.AppKey("sync", Sync)
GATEWAY_ID_KEY = web.AppKey("gateway_id", str)
CUSTOMER_KEY = web.AppKey("customer", str)  # this store's customer code at central

MAX_BODY = 256 * 1024


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def post_order(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"body is not JSON: {e}")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    body.setdefault("channel", "manual")
    body.setdefault("order_type", "normal")
    try:
        order = parse_order(body)
    except RecordSchemaError as e:
        return _error(422, e.reason)
    # the cached-master checks every edge entry applies (gateway/edge_checks.py)
    rec, verdict = await edge_checks.submit_order(
        request.app[OUTBOX_KEY], order, store_customer=request.app[CUSTOMER_KEY]
    )
    if rec is None:
        refused = [r.to_json() for r in verdict.refusals]
        return web.json_response({"error": refused[0]["reason"], "refused": refused}, status=422)
    status = "held" if verdict.credit is edge_checks.Credit.HOLD else "pending"
    return web.json_response(
        {"id": rec.id, "seq": rec.seq, "status": status, **verdict.to_json()}, status=201
    )


async def get_record(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    result = await request.app[OUTBOX_KEY].result(rid)
    if result is None:
        return _error(404, f"no record {rid!r} at this gateway")
    return web.json_response(result)


async def health(request: web.Request) -> web.Response:
    """200 whenever the process answers: orders are taken with the link up or down (they wait
    in the outbox), so a down link is reported in the body (``"link": "down"``), not by the
    status code. ``link``/``connected`` come from the MQTT client's own state, ``oldest_age_s``
    is the age of the oldest record central has not acked (0 when none)."""
    outbox = request.app[OUTBOX_KEY]
    backlog = await outbox.backlog()
    sync = request.app.get(SYNC_KEY)
    link: dict[str, object] = {"link": "down", "connected": False} if sync is None else sync.link_report()
    return web.json_response(
        {
            "gateway": request.app[GATEWAY_ID_KEY],
            **link,
            "backlog": backlog.count,
            "oldest_age_s": round(backlog.oldest_age_s(), 3),
            "last_sync_ms": sync.stats.last_sync_ms if sync else None,
            "submitted": outbox.submitted,
            "acked": outbox.acked,
            "rejected": outbox.rejected,
        }
    )


def create_app(
    *, gateway_id: str, outbox: Outbox, sync: Sync | None = None, customer: str = ""
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[GATEWAY_ID_KEY] = gateway_id
    app[CUSTOMER_KEY] = customer
    app[OUTBOX_KEY] = outbox
    if sync is not None:
        app[SYNC_KEY] = sync
    app.router.add_post("/api/orders", post_order)
    app.router.add_get("/api/records/{id}", get_record)
    app.router.add_get("/api/health", health)
    return app
