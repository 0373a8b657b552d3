"""The gateway's local HTTP endpoint: order entry (until/besides device adapters), record
status and health. Devices on the store LAN (and the ``storegate gateway order`` CLI) use it.

``POST /api/orders`` answers 201 only after the order is durably in the outbox; a repeat (same
``Idempotency-Key``, or same customer and ``source_ref``) gets the first answer again
(``gateway/idempotency.py``, ``protocols/GATEWAY-HTTP.md``); an order the edge checks refuse
(``gateway/edge_checks.py``) is 422 with the reason for each refused line.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http_errors import domain_errors
from gateway.idempotency import OrderEntry
from gateway.outbox import Outbox
from gateway.sync import Sync
from protocols.idempotency import HEADER, IdempotencyError, parse_key
from protocols.records import RecordSchemaError, parse_order
from runtime.jsonbody import json_object

OUTBOX_KEY = web.AppKey("outbox", Outbox)
SYNC_KEY = web.AppKey("sync", Sync)
GATEWAY_ID_KEY = web.AppKey("gateway_id", str)
ORDER_ENTRY_KEY = web.AppKey("order_entry", OrderEntry)

MAX_BODY = 256 * 1024


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def post_order(request: web.Request) -> web.Response:
    body = await json_object(request, max_bytes=MAX_BODY)  # or a 400/413 JSON answer
    body.setdefault("channel", "manual")
    body.setdefault("order_type", "normal")
    try:
        order = parse_order(body)
    except RecordSchemaError as e:
        return _error(422, e.reason)
    try:
        key = parse_key(request.headers.getall(HEADER, []))
        answer = await request.app[ORDER_ENTRY_KEY].submit(order, key=key)
    except IdempotencyError as e:
        return _error(e.status, e.reason)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return web.json_response(answer.body, status=answer.status, headers=headers)


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
            "acks_repeated": outbox.acks_repeated,
            "rejected": outbox.rejected,
            "storage": outbox.db.storage_state(),
        }
    )


def create_app(
    *, gateway_id: str, outbox: Outbox, sync: Sync | None = None, customer: str = ""
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[domain_errors])
    app[GATEWAY_ID_KEY] = gateway_id
    app[OUTBOX_KEY] = outbox
    app[ORDER_ENTRY_KEY] = OrderEntry(outbox=outbox, gateway_id=gateway_id, customer=customer)
    if sync is not None:
        app[SYNC_KEY] = sync
    app.router.add_post("/api/orders", post_order)
    app.router.add_get("/api/records/{id}", get_record)
    app.router.add_get("/api/health", health)
    return app
