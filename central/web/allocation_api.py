"""REST routes for inventory, allocation, waves, shortages, documents and returns.

``add_routes(app)`` adds them to central's app (the DB comes from ``central.web.api.DB_KEY``).
Domain errors map to HTTP here and nowhere else: 400 for bad input, 404 for unknown ids,
409 for stock operations that would break an invariant and for a return on an order not
shipped or delivered, 403 for stock outside the user's scope (``central.web.visibility``:
a store user sees its own locations and those serving them, a supplier user its items).

Stock reads filter by the user's scope; stock writes need their role: setting counted on hand
and booking a receipt in need ``inventory_controller`` (or ``supervisor``) and, for a store
user, its own location; each is kept in ``stock_audit`` with who did it
(``GET /api/inventory/audit``). Reservations and expected receipts need ``order_desk``.
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

from central.allocate import availability, inventory, shortage, waves
from central.fulfil import documents, picktime, returns
from central.hub import hub_of
from central.web import visibility
from central.web.api import DB_KEY, USER_KEY, requires
from central.web.auth import Role, User
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


def _forbidden(reason: str) -> web.HTTPException:
    return web.HTTPForbidden(text=json.dumps({"error": reason}), content_type="application/json")


async def view_of(request: web.Request) -> visibility.View:
    """The requesting user's view of the stock (its scope, read now)."""
    user: User = request[USER_KEY]
    return await request.app[DB_KEY].read(partial(visibility.view_of, name=user.name))


def _mapped(fn: Handler) -> Handler:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except visibility.Refused as e:
            raise _forbidden(e.reason) from None
        except inventory.InventoryError as e:
            raise _bad(str(e), 409) from None
        except picktime.PickTimeError as e:
            raise _bad(str(e), 400) from None
        except returns.NotReturnable as e:
            raise _bad(str(e), 409) from None
        except returns.ReturnError as e:
            raise _bad(str(e), 400) from None

    return wrapper


def _scoped_item(doc: dict[str, Any], v: visibility.View) -> dict[str, Any]:
    """:func:`inventory.item_view` cut to what ``v`` sees (totals over the visible rows)."""
    if v.readable is None:
        return doc
    locs = [r for r in doc["locations"] if v.sees_location(r["location"])]
    return {
        **doc,
        "locations": locs,
        "on_hand": sum(r["on_hand"] for r in locs),
        "allocated": sum(r["allocated"] for r in locs),
        "available": sum(r["available"] for r in locs),
        "expected": [r for r in doc["expected"] if v.sees_location(r["location"])],
    }


async def item_view(request: web.Request) -> web.Response:
    """One item at every location the user sees; a supplier user only its own items."""
    sku = request.match_info["sku"]
    v = await view_of(request)
    v.check_read(sku=sku)
    return _json(_scoped_item(await request.app[DB_KEY].read(partial(inventory.item_view, sku=sku)), v))


async def location_view(request: web.Request) -> web.Response:
    """One location's items: 403 for a location outside a store user's view; a supplier user
    gets its own items there."""
    loc = request.match_info["location"]
    v = await view_of(request)
    v.check_read(loc=loc)
    doc = await request.app[DB_KEY].read(partial(inventory.location_view, location=loc))
    if v.skus is not None:
        doc["items"] = [i for i in doc["items"] if v.sees_sku(i["sku"])]
    return _json(doc)


async def atp(request: web.Request) -> web.Response:
    sku = request.query.get("sku")
    if not sku:
        raise _bad("sku is required")
    raw = request.query.get("dates", dt.date.today().isoformat())
    dates = [_date(d, "dates") for d in raw.split(",") if d]
    loc = request.query.get("location")
    v = await view_of(request)
    v.check_read(loc=loc, sku=sku)
    rows = await request.app[DB_KEY].read(
        partial(inventory.atp, sku=sku, dates=dates, location=loc, within=v.readable)
    )
    return _json({"sku": sku, "location": loc, "atp": rows})


async def post_stock(request: web.Request) -> web.Response:
    """Counted on hand (a stock take): ``inventory_controller``; a store user at its own
    location only; audited."""
    b = await _body(request)
    try:
        loc, sku, qty = str(b["location"]), str(b["sku"]), _int(b["on_hand"], "on_hand")
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    v = await view_of(request)
    v.check_write(loc, action="set on hand")
    user: User = request[USER_KEY]
    now = now_ms()

    def job(c: sqlite3.Connection) -> None:
        before = inventory.on_hand(c, loc, sku)
        inventory.set_stock(c, loc, sku, qty, bin=str(b.get("bin", "")), supplier=str(b.get("supplier", "")))
        detail = str(b.get("reason", ""))[:200]
        inventory.audit_stock(
            c,
            actor=user.name,
            action="set",
            location=loc,
            sku=sku,
            before=before,
            after=qty,
            now=now,
            detail=detail,
        )

    await request.app[DB_KEY].write(job)
    return _json(_scoped_item(await request.app[DB_KEY].read(partial(inventory.item_view, sku=sku)), v))


async def audit(request: web.Request) -> web.Response:
    """``GET /api/inventory/audit?location=&sku=&limit=&before=``: who changed on hand, newest
    first; a store user only at the locations it sees, a supplier user only its items."""
    q = request.query
    unknown = set(q) - {"location", "sku", "limit", "before"}
    if unknown:
        raise _bad(f"unknown query parameter {sorted(unknown)[0]!r}; known: location, sku, limit, before")
    loc, sku = q.get("location"), q.get("sku")
    limit = _int(q.get("limit", "100"), "limit")
    if not 1 <= limit <= 1000:
        raise _bad(f"limit: {limit} not in 1..1000")
    before = _int(q["before"], "before") if "before" in q else None
    v = await view_of(request)
    v.check_read(loc=loc, sku=sku)
    rows = await request.app[DB_KEY].read(
        partial(inventory.stock_audit, location=loc, sku=sku, limit=limit, before_id=before)
    )
    return _json({"audit": [r for r in rows if v.sees(r["location"], r["sku"])]})


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
    (await view_of(request)).check_write(args[0], action="expect a receipt")
    rid = await request.app[DB_KEY].write(
        lambda c: inventory.expect_receipt(
            c, *args, supplier=str(b.get("supplier", "")), ref=str(b.get("ref", ""))
        )
    )
    return _json({"receipt_id": rid}, status=201)


async def receive(request: web.Request) -> web.Response:
    """Book an expected receipt into on hand: ``inventory_controller``; a store user at its
    own location only; audited."""
    rid = _int(request.match_info["receipt_id"], "receipt_id")
    now, today = now_ms(), dt.date.today()
    v = await view_of(request)
    user: User = request[USER_KEY]

    def job(c: sqlite3.Connection) -> dict[str, Any]:
        row = c.execute("SELECT location, sku FROM receipts WHERE receipt_id = ?", (rid,)).fetchone()
        if row is not None:
            v.check_write(row[0], action="book a receipt in")
        before = inventory.on_hand(c, row[0], row[1]) if row is not None else None
        out = shortage.receive(c, now=now, today=today, receipt_id=rid)
        inventory.audit_stock(
            c,
            actor=user.name,
            action="receive",
            location=out["location"],
            sku=out["sku"],
            before=before,
            after=inventory.on_hand(c, out["location"], out["sku"]) or 0,
            now=now,
            detail=f"receipt {rid}: +{out['qty']}",
        )
        moved = availability.complete_transfer(c, rid)  # an accepted transfer: off the source
        if moved is not None:
            src, units = moved
            after = inventory.on_hand(c, src, out["sku"]) or 0
            inventory.audit_stock(
                c,
                actor=user.name,
                action="transfer out",
                location=src,
                sku=out["sku"],
                before=after + units,
                after=after,
                now=now,
                detail=f"receipt {rid} at {out['location']}: -{units}",
            )
            out["transferred_from"] = src
        return out

    return _json(await request.app[DB_KEY].write(job))


async def post_reservation(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        loc, sku, qty, ref = str(b["location"]), str(b["sku"]), _int(b["qty"], "qty"), str(b["ref"])
    except KeyError as e:
        raise _bad(f"missing {e.args[0]!r}") from None
    v = await view_of(request)
    v.check_read(loc=loc, sku=sku)
    if v.skus is not None:
        raise visibility.Refused(f"user {v.user!r} is bound to a supplier; it cannot reserve stock")
    now = now_ms()
    rid = await request.app[DB_KEY].write(lambda c: inventory.reserve(c, loc, sku, qty, ref=ref, now=now))
    return _json({"reservation_id": rid}, status=201)


async def delete_reservation(request: web.Request) -> web.Response:
    rid = _int(request.match_info["rid"], "reservation id")
    v = await view_of(request)

    def job(c: sqlite3.Connection) -> None:
        row = c.execute("SELECT location, sku FROM allocations WHERE alloc_id = ?", (rid,)).fetchone()
        if row is not None:
            v.check_read(loc=row[0], sku=row[1])
            if v.skus is not None:
                raise visibility.Refused(f"user {v.user!r} is bound to a supplier; it cannot release stock")
        inventory.release_reservation(c, rid)

    await request.app[DB_KEY].write(job)
    return _json({"released": rid})


async def order_allocation(request: web.Request) -> web.Response:
    oid = _int(request.match_info["order_id"], "order_id")
    v = await view_of(request)
    rows = await request.app[DB_KEY].read(partial(inventory.order_allocations, order_id=oid))
    rows = [r for r in rows if v.sees(r["location"], r["sku"])]
    short = await request.app[DB_KEY].read(partial(shortage.list_shortages, filters={"order_id": str(oid)}))
    short = [s for s in short if v.sees_sku(s["sku"])]
    return _json({"order_id": oid, "allocations": rows, "shortages": short})


async def post_wave(request: web.Request) -> web.Response:
    """Make waves of the validated orders: the DC's work for every store, so an all-scope
    user's (the answer lists every wave made)."""
    (await view_of(request)).check_everything("making waves (of every store's orders)")
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
    v = await view_of(request)

    def read(c: sqlite3.Connection) -> dict[str, Any]:
        out = waves.plan(c, start_ms=start, teams=teams, load_s=load_s, wave_ids=ids)
        if v.everything:
            return out
        # the DC's whole plan (the times are real), shown only for the waves the user sees
        seen = waves.visible_waves(
            c, [w["wave_id"] for w in (*out["waves"], *out["unscheduled"])], **_orders(v)
        )
        for wid in ids or ():
            if wid not in seen:
                raise _wave_refused(v, wid)
        return {
            **out,
            "waves": [w for w in out["waves"] if w["wave_id"] in seen],
            "unscheduled": [w for w in out["unscheduled"] if w["wave_id"] in seen],
        }

    return _json(await request.app[DB_KEY].read(read))


def _orders(v: visibility.View) -> dict[str, Any]:
    """The orders ``v`` reads, as :mod:`central.allocate.waves` takes them."""
    return {"customers": v.customers, "supplier": v.supplier}


def _wave_refused(v: visibility.View, wave_id: int) -> visibility.Refused:
    return visibility.Refused(f"{v.describe_scope()}; wave {wave_id} holds none of its orders")


async def list_waves(request: web.Request) -> web.Response:
    """The newest waves; a store or supplier user only those holding one of its orders."""
    v = await view_of(request)
    return _json({"waves": await request.app[DB_KEY].read(partial(waves.list_waves, **_orders(v)))})


async def get_wave(request: web.Request) -> web.Response:
    """A wave and its orders; a store or supplier user only its own orders, and 403 for a
    wave holding none of them."""
    wid = _int(request.match_info["wave_id"], "wave_id")
    v = await view_of(request)
    w = await request.app[DB_KEY].read(partial(waves.get_wave, wave_id=wid, **_orders(v)))
    if w is None:
        raise _bad(f"no wave {wid}", 404)
    if not v.everything and not w["orders"]:
        raise _wave_refused(v, wid)
    return _json(w)


async def run_view(request: web.Request) -> web.Response:
    """An allocation run's trace (or replay): every order and location of the run, so only
    for all-scope users."""
    rid = _int(request.match_info["run_id"], "run_id")
    (await view_of(request)).check_everything(f"allocation run {rid} (every order and location it touched)")
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
    v = await view_of(request)
    rows = await request.app[DB_KEY].read(partial(shortage.list_shortages, filters=dict(request.query)))
    # a store user: its own customers' shortages; a supplier user: its items'
    rows = [r for r in rows if v.sees_sku(r["sku"]) and v.sees_customer(r["customer"])]
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
    """A wave's pick list; a store or supplier user: 403 for a wave holding none of its orders,
    else only the lines of its orders at locations and of items it sees."""
    fmt = _fmt(request)
    wid = _int(request.match_info["wave_id"], "wave_id")
    cart = _int(request.query.get("cart_orders", "0"), "cart_orders")
    v = await view_of(request)

    def read(c: sqlite3.Connection) -> str:
        if v.everything:
            return documents.pick_list(c, wid, fmt=fmt, cart_orders=cart)
        w = waves.get_wave(c, wid, **_orders(v))
        if w is not None and not w["orders"]:
            raise _wave_refused(v, wid)
        mine = set(w["orders"]) if w is not None else set()

        def keep(r: dict[str, Any]) -> bool:
            return r["order_id"] in mine and v.sees(r["location"], r["sku"])

        return documents.pick_list(c, wid, fmt=fmt, cart_orders=cart, keep=keep)

    return _doc(await request.app[DB_KEY].read(read), fmt)


async def delivery_note(request: web.Request) -> web.Response:
    """An order's delivery note: 403 for an order the user does not read (as
    ``GET /api/orders/{no}``); a supplier user gets the lines of its items."""
    fmt = _fmt(request)
    oid = _int(request.match_info["order_id"], "order_id")
    v = await view_of(request)

    def read(c: sqlite3.Connection) -> str:
        visibility.check_order_id(c, v, oid)
        keep = None if v.skus is None else (lambda r: v.sees_sku(r["sku"]))
        return documents.delivery_note(c, oid, fmt=fmt, keep=keep)

    return _doc(await request.app[DB_KEY].read(read), fmt)


async def shortage_report(request: web.Request) -> web.Response:
    fmt = _fmt(request)
    by = request.query.get("by", "item")
    if by not in shortage.REPORT_BY:
        raise _bad(f"by {by!r}: one of {', '.join(shortage.REPORT_BY)}")
    status = request.query.get("status", "open") or None
    v = await view_of(request)  # a store user: its own customers' shortages; a supplier: its items'
    return _doc(
        await request.app[DB_KEY].read(
            partial(
                documents.shortage_report, by=by, fmt=fmt, status=status, customers=v.customers, skus=v.skus
            )
        ),
        fmt,
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
    v = await view_of(request)
    user: User = request[USER_KEY]

    def job(c: sqlite3.Connection) -> returns.Rma:
        visibility.check_order_id(c, v, oid)  # a store's desk: its own customers' orders
        return returns.create_rma(
            c, order_id=oid, line_no=ln, qty=qty, reason=reason, now=now, actor=user.name
        )

    rma = await request.app[DB_KEY].write(job)
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
    """An RMA: a store user's own customers' only, a supplier user's its items' only."""
    rid = _int(request.match_info["rma_id"], "rma_id")
    v = await view_of(request)

    def read(c: sqlite3.Connection) -> dict[str, Any] | None:
        r = returns.get_rma(c, rid)
        if r is not None:
            visibility.check_order_id(c, v, r["order_id"])
            v.check_read(sku=r["sku"])
        return r

    r = await request.app[DB_KEY].read(read)
    if r is None:
        raise _bad(f"no RMA {rid}", 404)
    return _json(r)


def add_routes(app: web.Application) -> None:
    r = app.router
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/api/inventory/items/{sku}", item_view),
        ("GET", "/api/inventory/locations/{location}", location_view),
        ("GET", "/api/inventory/atp", atp),
        ("GET", "/api/inventory/audit", audit),
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
        # Reading stock, waves and documents needs a viewer; changing them the order desk,
        # but on hand (a count, a receipt booked in) the inventory controller.
        role = Role.VIEWER if method == "GET" else STOCK_WRITES.get(path, Role.ORDER_DESK)
        r.add_route(method, path, requires(role)(_mapped(fn)))


# The writes that change on hand, and the role they need (besides the user's scope).
STOCK_WRITES = {
    "/api/inventory/stock": Role.INVENTORY_CONTROLLER,
    "/api/inventory/receipts/{receipt_id}/receive": Role.INVENTORY_CONTROLLER,
}
