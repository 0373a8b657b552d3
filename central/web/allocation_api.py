"""REST routes for inventory, allocation, waves, shortages, documents and returns.

``add_routes(app)`` adds them to central's app (the DB comes from ``central.web.api.DB_KEY``).
Domain errors map to HTTP here and nowhere else: 400 for bad input, 404 for unknown ids,
409 for stock operations that would break an invariant and for a return on an order not
shipped or delivered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web

from central.allocate import inventory, shortage, waves
from central.fulfil import documents, picktime, returns
from central.hub import hub_of
from central.web.api import DB_KEY, requires
from central.web.auth import Role
from protocols.bounded import MAX_INT, MIN_INT, value_repr
from runtime.clock import now_ms
from runtime.jsonbody import json_object

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=partial(json.dumps, default=str))


def _bad(reason: str, status: int = 400) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=json.dumps({"error": reason}), content_type="application/json")


def _date(raw: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise _bad(f"{name}: {value_repr(raw)} is not a date (YYYY-MM-DD)") from None


def _int(raw: Any, name: str) -> int:
    try:
        v = int(raw)
    except (TypeError, ValueError, OverflowError):  # ValueError: bad text, or too many digits
        raise _bad(f"{name}: {value_repr(raw)} is not an integer") from None
    if not MIN_INT <= v <= MAX_INT:  # what SQLite can store
        raise _bad(f"{name}: {value_repr(raw)} is out of range")
    return v


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request)  # or a 400/413 JSON answer


def _mapped(fn: Handler) -> Handler:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except inventory.InventoryError as e:
            raise _bad(str(e), 409) from None
        except picktime.PickTimeError as e:
            raise _bad(str(e), 400) from None
        except returns.NotReturnable as e:
            raise _bad(str(e), 409) from None
        except returns.ReturnError as e:
            raise _bad(str(e), 400) from None

    return wrapper


async def item_view(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    return _json(await request.app[DB_KEY].read(partial(inventory.item_view, sku=sku)))


async def location_view(request: web.Request) -> web.Response:
    loc = request.match_info["location"]
    return _json(await request.app[DB_KEY].read(partial(inventory.location_view, location=loc)))


async def atp(request: web.Request) -> web.Response:
    sku = request.query.get("sku")
    if not sku:
        raise _bad("sku is required")
    raw = request.query.get("dates", dt.date.today().isoformat())
    dates = [_date(d, "dates") for d in raw.split(",") if d]
    rows = await request.app[DB_KEY].read(
        partial(inventory.atp, sku=sku, dates=dates, location=request.query.get("location"))
    )
    return _json({"sku": sku, "location": request.query.get("location"), "atp": rows})


async def post_stock(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        loc, sku, qty = str(b["location"]), str(b["sku"]), _int(b["on_hand"], "on_hand")
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    await request.app[DB_KEY].write(
        partial(
            inventory.set_stock,
            location=loc,
            sku=sku,
            on_hand=qty,
            bin=str(b.get("bin", "")),
            supplier=str(b.get("supplier", "")),
        )
    )
    return _json(await request.app[DB_KEY].read(partial(inventory.item_view, sku=sku)))


async def post_receipt(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        args = (
            str(b["location"]),
            str(b["sku"]),
            _int(b["qty"], "qty"),
            _date(str(b["expected"]), "expected"),
        )
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    rid = await request.app[DB_KEY].write(
        lambda c: inventory.expect_receipt(
            c, *args, supplier=str(b.get("supplier", "")), ref=str(b.get("ref", ""))
        )
    )
    return _json({"receipt_id": rid}, status=201)


async def receive(request: web.Request) -> web.Response:
    rid = _int(request.match_info["receipt_id"], "receipt_id")
    now, today = now_ms(), dt.date.today()
    out = await request.app[DB_KEY].write(lambda c: shortage.receive(c, now=now, today=today, receipt_id=rid))
    return _json(out)


async def post_reservation(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        loc, sku, qty, ref = str(b["location"]), str(b["sku"]), _int(b["qty"], "qty"), str(b["ref"])
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    now = now_ms()
    rid = await request.app[DB_KEY].write(lambda c: inventory.reserve(c, loc, sku, qty, ref=ref, now=now))
    return _json({"reservation_id": rid}, status=201)


async def delete_reservation(request: web.Request) -> web.Response:
    rid = _int(request.match_info["rid"], "reservation id")
    await request.app[DB_KEY].write(lambda c: inventory.release_reservation(c, rid))
    return _json({"released": rid})


async def order_allocation(request: web.Request) -> web.Response:
    oid = _int(request.match_info["order_id"], "order_id")
    rows = await request.app[DB_KEY].read(partial(inventory.order_allocations, order_id=oid))
    short = await request.app[DB_KEY].read(partial(shortage.list_shortages, filters={"order_id": str(oid)}))
    return _json({"order_id": oid, "allocations": rows, "shortages": short})


async def post_wave(request: web.Request) -> web.Response:
    b = await _body(request) if request.can_read_body else {}
    now = now_ms()
    cutoff = _int(b.get("cutoff", now), "cutoff")
    batch = None
    if "batch_by" in b:
        try:
            batch = waves.BatchRules(tuple(b["batch_by"]), _int(b.get("window_s", 3600), "window_s"))
        except (ValueError, TypeError) as e:
            raise _bad(str(e)) from None
    departure = None if b.get("departure") is None else _int(b["departure"], "departure")

    def run(c: sqlite3.Connection) -> list[dict[str, Any]]:
        settings = hub_of(c).allocation  # the central's; the request may name its own batch rules
        if batch is not None:
            settings = dataclasses.replace(settings, batch=batch)
        return waves.run_wave(c, cutoff=cutoff, now=now, settings=settings, departure=departure)

    out = await request.app[DB_KEY].write(run)
    return _json({"waves": out}, status=201)


async def wave_schedule(request: web.Request) -> web.Response:
    """``GET /api/waves/schedule?teams=2&start=MS&load_s=600&waves=3,4``: the open waves (or
    those named) on picking teams, earliest departure first, with start, finish and slack."""
    q = request.query
    unknown = set(q) - {"teams", "start", "load_s", "waves"}
    if unknown:
        raise _bad(f"unknown query parameter {sorted(unknown)[0]!r}; known: teams, start, load_s, waves")
    teams = _int(q.get("teams", "1"), "teams")
    start = _int(q.get("start", now_ms()), "start")
    try:
        load_s = float(q.get("load_s", "0"))
    except ValueError:
        raise _bad(f"load_s: {q['load_s']!r} is not a number") from None
    ids = [_int(w, "waves") for w in q["waves"].split(",") if w] if "waves" in q else None
    out = await request.app[DB_KEY].read(
        partial(waves.plan, start_ms=start, teams=teams, load_s=load_s, wave_ids=ids)
    )
    return _json(out)


async def list_waves(request: web.Request) -> web.Response:
    return _json({"waves": await request.app[DB_KEY].read(waves.list_waves)})


async def get_wave(request: web.Request) -> web.Response:
    wid = _int(request.match_info["wave_id"], "wave_id")
    w = await request.app[DB_KEY].read(partial(waves.get_wave, wave_id=wid))
    if w is None:
        raise _bad(f"no wave {wid}", 404)
    return _json(w)


async def run_view(request: web.Request) -> web.Response:
    rid = _int(request.match_info["run_id"], "run_id")
    trace = await request.app[DB_KEY].read(partial(inventory.run_trace, run_id=rid))
    if trace is None:
        raise _bad(f"no allocation run {rid}", 404)
    if request.query.get("replay"):
        return _json(await request.app[DB_KEY].read(partial(inventory.replay_run, run_id=rid)))
    return web.Response(text=trace, content_type="text/plain")


async def list_shortages(request: web.Request) -> web.Response:
    unknown = set(request.query) - set(shortage.FILTERS)
    if unknown:
        raise _bad(f"unknown query parameter {sorted(unknown)[0]!r}; known: {', '.join(shortage.FILTERS)}")
    rows = await request.app[DB_KEY].read(partial(shortage.list_shortages, filters=dict(request.query)))
    return _json({"shortages": rows})


def _fmt(request: web.Request) -> str:
    fmt = request.match_info.get("fmt", "html")
    if fmt not in ("csv", "html"):
        raise _bad(f"format {fmt!r}: csv or html")
    return fmt


def _doc(text: str, fmt: str) -> web.Response:
    ctype = "text/csv" if fmt == "csv" else "text/html"
    return web.Response(text=text, content_type=ctype, charset="utf-8")


async def pick_list(request: web.Request) -> web.Response:
    fmt = _fmt(request)
    wid = _int(request.match_info["wave_id"], "wave_id")
    cart = _int(request.query.get("cart_orders", "0"), "cart_orders")
    return _doc(
        await request.app[DB_KEY].read(partial(documents.pick_list, wave_id=wid, fmt=fmt, cart_orders=cart)),
        fmt,
    )


async def delivery_note(request: web.Request) -> web.Response:
    fmt = _fmt(request)
    oid = _int(request.match_info["order_id"], "order_id")
    return _doc(await request.app[DB_KEY].read(partial(documents.delivery_note, order_id=oid, fmt=fmt)), fmt)


async def shortage_report(request: web.Request) -> web.Response:
    fmt = _fmt(request)
    by = request.query.get("by", "item")
    if by not in shortage.REPORT_BY:
        raise _bad(f"by {by!r}: one of {', '.join(shortage.REPORT_BY)}")
    status = request.query.get("status", "open") or None
    return _doc(
        await request.app[DB_KEY].read(partial(documents.shortage_report, by=by, fmt=fmt, status=status)), fmt
    )


async def post_return(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        oid, ln, qty, reason = (
            _int(b["order_id"], "order_id"),
            _int(b["line_no"], "line_no"),
            _int(b["qty"], "qty"),
            str(b["reason"]),
        )
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    now = now_ms()
    rma = await request.app[DB_KEY].write(
        lambda c: returns.create_rma(c, order_id=oid, line_no=ln, qty=qty, reason=reason, now=now)
    )
    return _json(
        {
            "rma_id": rma.rma_id,
            "disposition": rma.disposition,
            "location": rma.location,
            "rule": rma.rule,
            "credit": rma.credit,
        },
        status=201,
    )


async def get_return(request: web.Request) -> web.Response:
    rid = _int(request.match_info["rma_id"], "rma_id")
    r = await request.app[DB_KEY].read(partial(returns.get_rma, rma_id=rid))
    if r is None:
        raise _bad(f"no RMA {rid}", 404)
    return _json(r)


def add_routes(app: web.Application) -> None:
    r = app.router
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/api/inventory/items/{sku}", item_view),
        ("GET", "/api/inventory/locations/{location}", location_view),
        ("GET", "/api/inventory/atp", atp),
        ("POST", "/api/inventory/stock", post_stock),
        ("POST", "/api/inventory/receipts", post_receipt),
        ("POST", "/api/inventory/receipts/{receipt_id}/receive", receive),
        ("POST", "/api/inventory/reservations", post_reservation),
        ("DELETE", "/api/inventory/reservations/{rid}", delete_reservation),
        ("GET", "/api/allocation/orders/{order_id}", order_allocation),
        ("GET", "/api/allocation/runs/{run_id}", run_view),
        ("POST", "/api/waves", post_wave),
        ("GET", "/api/waves", list_waves),
        ("GET", "/api/waves/schedule", wave_schedule),
        ("GET", "/api/waves/{wave_id}", get_wave),
        ("GET", "/api/shortages", list_shortages),
        ("GET", "/api/documents/picklist/{wave_id:\\d+}.{fmt}", pick_list),
        ("GET", "/api/documents/delivery-note/{order_id:\\d+}.{fmt}", delivery_note),
        ("GET", "/api/documents/shortages.{fmt}", shortage_report),
        ("POST", "/api/returns", post_return),
        ("GET", "/api/returns/{rma_id}", get_return),
    ]
    for method, path, fn in routes:
        # Reading stock, waves and documents needs a viewer; changing them the order desk.
        role = Role.VIEWER if method == "GET" else Role.ORDER_DESK
        r.add_route(method, path, requires(role)(_mapped(fn)))
