"""REST routes of promising and scheduling (``central/PROMISE.md``): promise dates and kept
promises, delivery slots, an order's service bookings. ``add_routes(app)`` adds them to
central's app; errors (``central.promising.ScheduleError``) map to HTTP in the app's one
middleware (``central.web.api.errors``)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from aiohttp import web

from central.orders import orders
from central.promising import ScheduleError, promise, services
from central.web import visibility
from central.web.api import DB_KEY, _body, _json, _user, _write, requires
from central.web.auth import Role
from protocols.bounded import value_repr
from protocols.records import MAX_QTY
from runtime.clock import now_ms

_PROMISE_KEYS = frozenset({"customer", "zone", "lines", "reserve", "hold_until", "today", "order"})


def _day(raw: object, where: str) -> dt.date:
    if not isinstance(raw, str):
        raise ScheduleError(f"{where}: expected YYYY-MM-DD text")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ScheduleError(f"{where}: {value_repr(raw)} is not a YYYY-MM-DD date") from None


def parse_lines(raw: object) -> list[promise.LineAsk]:
    if not isinstance(raw, list) or not raw:
        raise ScheduleError("lines: expected a non-empty array")
    if len(raw) > promise.MAX_LINES:
        raise ScheduleError(f"lines: {len(raw)} lines > {promise.MAX_LINES}")
    out = []
    for i, ln in enumerate(raw):
        where = f"lines[{i}]"
        if not isinstance(ln, dict):
            raise ScheduleError(f"{where}: expected an object {{sku, qty, service}}")
        unknown = set(ln) - {"sku", "qty", "service"}
        if unknown:
            raise ScheduleError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        sku, qty, service = ln.get("sku"), ln.get("qty"), ln.get("service", "")
        if not isinstance(sku, str) or not 0 < len(sku) <= 64:
            raise ScheduleError(f"{where}.sku: expected a code of 1..64 characters")
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QTY:
            raise ScheduleError(f"{where}.qty: expected an integer in 1..{MAX_QTY}, got {value_repr(qty)}")
        if not isinstance(service, str) or len(service) > 64:
            raise ScheduleError(f"{where}.service: expected a service code")
        out.append(promise.LineAsk(i + 1, sku, qty, service))
    return out


def promise_job(body: dict[str, Any], *, actor: str) -> Any:
    """The write (or read) job answering ``POST /api/promise``'s ``body``."""
    unknown = set(body) - _PROMISE_KEYS
    if unknown:
        raise ScheduleError(
            f"unknown field {sorted(unknown)[0]!r}; known: {', '.join(sorted(_PROMISE_KEYS))}"
        )
    order_key = body.get("order")
    if order_key is not None:
        if not isinstance(order_key, str) or not order_key:
            raise ScheduleError("order: expected an order number or record id")
        given = sorted(set(body) & {"customer", "zone", "lines", "reserve", "hold_until"})
        if given:
            raise ScheduleError(
                f"{given[0]}: an order is promised with its own customer and lines, and its stock is its"
                " allocation (a kept promise is for a quote)"
            )
        lines: list[promise.LineAsk] = []
    else:
        lines = parse_lines(body.get("lines"))
    reserve = body.get("reserve", False) or "hold_until" in body
    if not isinstance(reserve, bool):
        raise ScheduleError("reserve: expected true or false")
    customer, zone = body.get("customer"), body.get("zone")
    if reserve and not isinstance(customer, str):
        raise ScheduleError("customer: a kept promise is made for a customer")
    if customer is not None and not isinstance(customer, str):
        raise ScheduleError("customer: expected a customer code")
    if customer is None and order_key is None and not isinstance(zone, str):
        raise ScheduleError("customer or zone: one is needed (a quote for a zone needs no customer)")
    now = now_ms()
    hold_until = promise.hold_until_of(body.get("hold_until"), now=now) if reserve else None
    today = _day(body["today"], "today") if "today" in body else orders.today_of(now)

    def job(conn: sqlite3.Connection) -> dict[str, Any]:
        who, asks, own, number = customer, lines, None, None
        if order_key is not None:
            number, who, asks, own = promise.order_request(conn, order_key)
        z = promise.zone_of(conn, who) if who is not None else str(zone)
        ref = None
        if reserve:
            assert isinstance(customer, str) and hold_until is not None
            answers, ref = promise.plan_and_keep(
                conn, zone=z, lines=asks, today=today, customer=customer, hold_until=hold_until,
                now=now, actor=actor,
            )  # fmt: skip
        else:
            answers = promise.plan(conn, zone=z, lines=asks, today=today, own=own)
        out: dict[str, Any] = {
            "order_no": number,
            "customer": who,
            "zone": z,
            "today": today.isoformat(),
            "lines": [a.to_json() for a in answers],
            "date": None
            if any(a.date is None for a in answers)
            else max(a.date for a in answers if a.date).isoformat(),
        }
        if ref is not None:
            out["ref"] = ref
            out["hold_until"] = hold_until
            out["status"] = "held"
        return out

    return job, reserve


@requires(Role.ORDER_DESK)
async def post_promise(request: web.Request) -> web.Response:
    """Promise dates per line; ``"reserve": true`` (or a ``hold_until``) keeps them."""
    body = await _body(request)
    job, reserve = promise_job(body, actor=_user(request).name)
    if reserve:
        return _json(await _write(request, job), status=201)
    return _json(await request.app[DB_KEY].read(job))


@requires(Role.VIEWER)
async def get_promise(request: web.Request) -> web.Response:
    """A kept promise: a store user its own customers' only, a supplier user those with a line
    of its items (and only those lines)."""
    ref = request.match_info["ref"]
    view = await request.app[DB_KEY].read(lambda c: visibility.view_of(c, _user(request).name))
    got = await request.app[DB_KEY].read(lambda c: promise.get(c, ref))
    if got is None:
        raise ScheduleError(f"no promise {ref!r}", status=404)
    view.check_customer(got["customer"], f"its promise {ref!r}")
    if view.skus is not None:
        got["lines"] = [ln for ln in got["lines"] if view.sees_sku(ln["sku"])]
        if not got["lines"]:
            raise visibility.Refused(f"{view.describe_scope()}; promise {ref!r} has none of its items")
    return _json(got)


@requires(Role.ORDER_DESK)
async def release_promise(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    user = _user(request)
    out = await _write(
        request,
        lambda c: promise.close(c, ref, status="released", reason=f"released by {user.name}", now=now_ms()),
    )
    return _json(out)


@requires(Role.VIEWER)
async def get_slots(request: web.Request) -> web.Response:
    """``?route=R`` or ``?customer=C``, ``from`` (default today), ``days`` (default 7)."""
    q = request.query
    start = _day(q["from"], "from") if "from" in q else orders.today_of(now_ms())
    try:
        days = int(q.get("days", "7"))
    except ValueError:
        raise ScheduleError(f"days: {value_repr(q.get('days'))} is not an integer") from None
    if not 1 <= days <= services.MAX_DAYS:
        raise ScheduleError(f"days: {days} not in 1..{services.MAX_DAYS}")
    if "route" not in q and "customer" not in q:
        raise ScheduleError("route or customer is required")

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        route = q["route"] if "route" in q else services.route_of(conn, q["customer"])
        return {"route": route, "slots": services.slots(conn, route, start, days)}

    return _json(await request.app[DB_KEY].read(read))


@requires(Role.VIEWER)
async def order_services(request: web.Request) -> web.Response:
    key = request.match_info["key"]

    view = await request.app[DB_KEY].read(lambda c: visibility.view_of(c, _user(request).name))

    def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        try:
            oid = orders.find(conn, key)
        except orders.OrderError:
            raise ScheduleError(f"no order {key!r}", status=404) from None
        visibility.check_order_id(conn, view, oid)  # as GET /api/orders/{no}
        return services.bookings(conn, oid)

    return _json({"order": key, "services": await request.app[DB_KEY].read(read)})


def _booking_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ScheduleError(f"no service booking {raw!r}", status=404)
    return int(raw)


@requires(Role.ORDER_DESK)
async def reschedule(request: web.Request) -> web.Response:
    """``{"date": "YYYY-MM-DD", "slot": "08-12"}``."""
    key, bid, user = request.match_info["key"], _booking_id(request), _user(request)
    body = await _body(request)
    day = _day(body.get("date"), "date")
    slot = body.get("slot")
    if not isinstance(slot, str) or not slot:
        raise ScheduleError("slot: expected a slot name")
    out = await _write(
        request,
        lambda c: services.reschedule(c, key, bid, date=day, slot=slot, actor=user.name, now=now_ms()),
    )
    return _json(out)


@requires(Role.ORDER_DESK)
async def cancel_booking(request: web.Request) -> web.Response:
    key, bid, user = request.match_info["key"], _booking_id(request), _user(request)
    return _json(await _write(request, lambda c: services.cancel(c, key, bid, actor=user.name, now=now_ms())))


@requires(Role.ORDER_DESK)
async def complete(request: web.Request) -> web.Response:
    """``{"note": "..."}`` optional."""
    key, bid, user = request.match_info["key"], _booking_id(request), _user(request)
    body = await _body(request) if request.can_read_body else {}
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 500:
        raise ScheduleError("note: expected text of at most 500 characters")
    out = await _write(
        request, lambda c: services.complete(c, key, bid, actor=user.name, note=note, now=now_ms())
    )
    return _json(out)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/promise", post_promise)
    r.add_get("/api/promise/{ref}", get_promise)
    r.add_post("/api/promise/{ref}/release", release_promise)
    r.add_get("/api/slots", get_slots)
    r.add_get("/api/orders/{key}/services", order_services)
    r.add_post("/api/orders/{key}/services/{id}/reschedule", reschedule)
    r.add_post("/api/orders/{key}/services/{id}/cancel", cancel_booking)
    r.add_post("/api/orders/{key}/services/{id}/complete", complete)
