"""``POST /api/waves/{wave_id}/release``: a batch wave released to the DC by hand
(:mod:`central.fulfil.release` releases real-time orders on its tick)."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from central.fulfil import picking
from central.web import visibility
from central.web.api import CONSUMER_KEY, DB_KEY, USER_KEY, requires
from central.web.auth import Role
from protocols.bounded import value_repr

MAX_WAVE_DIGITS = 18  # a wave id is a SQLite integer


@requires(Role.ORDER_DESK)
async def release_wave_view(request: web.Request) -> web.Response:
    """``POST /api/waves/{wave_id}/release``: a batch wave's allocations become pick tasks now
    (in storage-location order, on the DC gateways' durable downlinks)."""
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=request[USER_KEY].name))
    view.check_everything("releasing a wave (every store's orders in it)")
    raw = request.match_info["wave_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_WAVE_DIGITS):
        return web.json_response({"error": f"wave id {value_repr(raw)} is not a number"}, status=400)
    try:
        summary = await request.app[DB_KEY].write(lambda c: picking.release_wave(c, int(raw)))
    except picking.UnknownWave as e:
        return web.json_response({"error": str(e)}, status=404)
    consumer = request.app.get(CONSUMER_KEY)
    if consumer is not None:
        consumer.downlink.notify()
    return web.json_response(summary)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/waves/{wave_id}/release", release_wave_view)
