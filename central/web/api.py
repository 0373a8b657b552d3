"""Central's REST API (aiohttp): orders, holds, masters, order-type desks, quarantine, health.

Every route but ``/api/health`` needs a user (``central.web.auth``); each names the least role
it needs. Domain errors become HTTP answers in one middleware, always as
``{"error": "<reason>"}``: 400 bad input, 401 no/bad credentials, 403 wrong role,
404 unknown, 409 the order's state forbids it, 422 an order that fails its checks, 507 central's
disk is full (``{"error", "code": "storage_full", "reason", "retry_after_s"}`` and ``Retry-After``).
Writes run in one ``DurableDB.write`` job each, so a refused request writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from central import schedule
from central.intake.consumer import Consumer
from central.orders import lifecycle, masters, orders, ordertypes, repo
from central.orders.validation import LineIn, OrderIn
from central.promising import ScheduleError, promise, services
from central.web import auth, idempotency, visibility
from central.web.auth import Role, User
from protocols.bounded import value_repr
from protocols.idempotency import HEADER, REPLAYED_HEADER, IdempotencyError, fingerprint, parse_key
from protocols.order_changes import parse_order_change
from protocols.records import Channel, RecordSchemaError, parse_date, parse_order
from runtime.clock import now_ms
from runtime.http_errors import storage_full_response
from runtime.jsonbody import json_object
from runtime.sqlitedb import DurableDB, StorageFull

log = logging.getLogger(__name__)
DB_KEY = web.AppKey("db", DurableDB)
CONSUMER_KEY = web.AppKey("consumer", Consumer)
USER_KEY = web.RequestKey("user", User)

MAX_LIMIT = 1000
MAX_BODY = 1024 * 1024  # a master import or a big order; aiohttp's own limit
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=partial(json.dumps, default=str))


def _error(status: int, reason: str) -> web.Response:
    return _json({"error": reason}, status=status)


_ORDER_ERROR_STATUS = {"invalid": 422, "not_found": 404, "conflict": 409}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as e:
        return _error(e.status, e.reason)
    except visibility.Refused as e:  # outside the user's scope
        return _error(403, e.reason)
    except auth.AuthError as e:
        # The challenge lets a browser ask for a user name and password (the dashboard).
        resp = _error(401, e.reason)
        resp.headers["WWW-Authenticate"] = 'Basic realm="Storegate", charset="UTF-8"'
        return resp
    except orders.OrderError as e:
        return _error(_ORDER_ERROR_STATUS[e.kind], e.reason)
    except lifecycle.IllegalTransition as e:
        return _error(409, str(e))
    except (masters.MasterError, ordertypes.OrderTypeError) as e:
        return _error(400, str(e))
    except RecordSchemaError as e:
        return _error(400, e.reason)
    except ScheduleError as e:  # promises, slots and service bookings (central/PROMISE.md)
        return _error(e.status, e.reason)
    except IdempotencyError as e:  # 400 a malformed Idempotency-Key, 422 one used for another order
        return _error(e.status, e.reason)
    except StorageFull as e:
        log.debug("%s %s refused: %s", request.method, request.path, e)
        return storage_full_response(e)


def requires(role: Role) -> Callable[[Handler], Handler]:
    """Only users whose role includes ``role`` get through; others get 401/403 with why."""

    def wrap(fn: Handler) -> Handler:
        async def view(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization")
            user = await request.app[DB_KEY].read(partial(auth.authenticate, header=header))
            if not user.role.allows(role):
                raise HttpError(
                    403,
                    f"user {user.name!r} has role {user.role.value}; {request.method} {request.path}"
                    f" needs {role.value}",
                )
            request[USER_KEY] = user
            return await fn(request)

        view.__doc__ = fn.__doc__
        return view

    return wrap


def _user(request: web.Request) -> User:
    user: User = request[USER_KEY]
    return user


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request, max_bytes=MAX_BODY)  # or a 400/413 JSON answer


def _str_field(body: dict[str, Any], key: str, *, required: bool = True) -> str:
    v = body.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v):
        raise HttpError(400, f"{key}: expected non-empty text")
    return v


def _int_field(body: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise HttpError(400, f"{key}: expected an integer in {lo}..{hi}, got {value_repr(v)}")
    return v


async def _write(request: web.Request, fn: Callable[[sqlite3.Connection], T]) -> T:
    result = await request.app[DB_KEY].write(fn)
    consumer = request.app.get(CONSUMER_KEY)
    if consumer is not None:
        consumer.downlink.notify()  # the job may have queued downlink records
    return result


def _int_param(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name}: {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise HttpError(400, f"{name}: {value} not in {lo}..{hi}")
    return value


# -- orders ---------------------------------------------------------------------------------


@requires(Role.VIEWER)
async def list_orders(request: web.Request) -> web.Response:
    """Orders by number, customer, status, channel, source ref, gateway or type."""
    unknown = set(request.query) - {*repo.FILTERS, "limit", "after"}
    if unknown:
        raise HttpError(
            400,
            f"unknown query parameter {sorted(unknown)[0]!r}; known: {', '.join(repo.FILTERS)}, limit, after",
        )
    filters = {k: v for k, v in request.query.items() if k in repo.FILTERS}
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    after = _int_param(request, "after", 0, lo=0, hi=2**62)
    db = request.app[DB_KEY]
    view = await db.read(partial(visibility.view_of, name=_user(request).name))
    rows = await db.read(
        partial(
            repo.list_orders,
            filters=filters,
            limit=limit,
            after_id=after,
            customers=view.customers,  # a store user: its own customers' orders
            supplier=view.supplier,  # a supplier user: orders with its items
        )
    )
    return _json({"orders": rows, "next_after": rows[-1]["order_id"] if len(rows) == limit else None})


@requires(Role.VIEWER)
async def get_order(request: web.Request) -> web.Response:
    key = request.match_info["key"]

    def q(conn: sqlite3.Connection) -> dict[str, Any] | None:
        found = repo.get_order(conn, key)
        return None if found is None else _with_services(conn, found)

    order = await request.app[DB_KEY].read(q)
    if order is None:
        raise HttpError(404, f"no order with number or record id {key!r}")
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=_user(request).name))
    view.check_order(order["customer"], [ln["sku"] for ln in order["lines"]], order["order_no"])
    return _json(order)


def _order_from_json(body: dict[str, Any]) -> tuple[OrderIn, str, dict[str, Any], list[services.ServiceAsk]]:
    """The order to create, its channel, the parsed order as a dict (what "the same order"
    means for an ``Idempotency-Key``) and its lines' services."""
    body = {"channel": Channel.MANUAL.value, **body}
    parsed = parse_order(body)
    order = OrderIn(
        customer=parsed.customer,
        order_type=parsed.order_type.value,
        requested_date=parsed.requested_date,
        lines=tuple(
            LineIn(line_no=i + 1, qty=ln.qty, gtin=ln.gtin, sku=ln.sku, price=ln.price)
            for i, ln in enumerate(parsed.lines)
        ),
        note=parsed.note,
        source_ref=parsed.source_ref,
    )
    return (
        order,
        parsed.channel.value,
        parsed.to_wire(),
        services.asks_of([ln.service for ln in parsed.lines]),
    )


@requires(Role.ORDER_DESK)
async def create_order(request: web.Request) -> web.Response:
    """Manual entry: the same order record as any channel. An order failing completeness
    (unknown customer or item, bad date or quantity) is refused with 422 and not stored;
    credit or price problems store it held. ``Idempotency-Key`` makes a retry safe: the same
    order again gets the first answer, another order under the key 422 (``central.web.idempotency``).
    ``"promise": REF`` claims a kept promise; a line's ``"service": {"code", "date", "slot"}``
    books a field service into a delivery slot in the same transaction (``central/PROMISE.md``)."""
    key = parse_key(request.headers.getall(HEADER, []))  # 400 for a malformed one
    body, promise_ref = services.split_promise(await _body(request))
    order, channel, wire, asks = _order_from_json(body)
    user = _user(request)
    record_id = idempotency.record_id(key) if key is not None else f"rest:{uuid.uuid4().hex}"
    fp = fingerprint({**wire, "promise": promise_ref} if promise_ref else wire)

    def job(conn: sqlite3.Connection) -> idempotency.Answer:
        if key is not None and (replayed := idempotency.replay(conn, key, fp)) is not None:
            return replayed
        cust = masters.cache(conn).customers.get(order.customer)
        now = now_ms()
        if asks:
            services.validate_asks(
                conn, order.customer, asks, n_lines=len(order.lines), today=orders.today_of(now)
            )
        if promise_ref:
            promise.claim(conn, promise_ref, customer=order.customer, record_id=record_id, now=now)
        created = orders.create(
            conn,
            order,
            record_id=record_id,
            gateway=(cust.gateway or "") if cust else "",
            seq=0,
            channel=channel,
            created_at=now,
            now=now,
            actor=user.name,
            origin=f"entered by {user.name} over REST ({channel})",
            refuse_failures=True,
        )
        if promise_ref:
            promise.claimed_by(conn, created.order_id, record_id, now=now)
        if asks:
            services.book_order(conn, created.order_id, asks, actor=user.name, now=now)
        answer = idempotency.Answer(201, _with_services(conn, repo.get_order(conn, record_id) or {}))
        if key is not None:
            idempotency.remember(conn, key, fp, answer, order_no=created.order_no, now=now)
        return answer

    answer = await _write(request, job)
    resp = _json(answer.body, status=answer.status)
    if answer.replayed:
        log.info("order %s: sent again under key %r, first answer replayed", answer.body.get("order_no"), key)
        resp.headers[REPLAYED_HEADER] = "true"
    return resp


def _with_services(conn: sqlite3.Connection, order: dict[str, Any]) -> dict[str, Any]:
    """The order's answer with its service bookings (``central/PROMISE.md``), when it has any."""
    if "order_id" in order:
        booked = services.bookings(conn, order["order_id"])
        if booked:
            order = {**order, "services": booked}
    return order


async def _order_action(
    request: web.Request, fn: Callable[[sqlite3.Connection, int, User, int], object]
) -> web.Response:
    key = request.match_info["key"]
    user = _user(request)
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=user.name))

    def job(conn: sqlite3.Connection) -> None:
        oid = orders.find(conn, key)
        visibility.check_order_id(conn, view, oid)  # a store's desk changes its own customers' orders
        fn(conn, oid, user, now_ms())

    await _write(request, job)
    return _json(await request.app[DB_KEY].read(partial(repo.get_order, key=key)))


@requires(Role.ORDER_DESK)
async def change_order(request: web.Request) -> web.Response:
    """``{"action": "set_qty"|"add_line"|"cancel_line"|"cancel_order", "line_no", "qty", ...}``"""
    body = await _body(request)
    if "change_seq" in body or "order" in body:
        raise HttpError(400, "change_seq and order are set by the URL, not the body")
    change = parse_order_change({**body, "order": request.match_info["key"], "change_seq": 1})
    return await _order_action(
        request, lambda c, oid, u, now: orders.apply_change(c, oid, change, actor=u.name, now=now)
    )


@requires(Role.ORDER_DESK)
async def cancel_order(request: web.Request) -> web.Response:
    body = await _body(request) if request.can_read_body else {}
    reason = _str_field(body, "reason", required=False)
    change = parse_order_change(
        {"order": request.match_info["key"], "change_seq": 1, "action": "cancel_order", "reason": reason}
    )
    return await _order_action(
        request, lambda c, oid, u, now: orders.apply_change(c, oid, change, actor=u.name, now=now)
    )


@requires(Role.ORDER_DESK)
async def revalidate(request: web.Request) -> web.Response:
    """Run the checks again (e.g. after a master was fixed)."""
    return await _order_action(
        request, lambda c, oid, u, now: orders.revalidate(c, oid, actor=u.name, now=now)
    )


@requires(Role.SUPERVISOR)
async def approve(request: web.Request) -> web.Response:
    """Approve a held order past its credit/price holds (completeness failures cannot be)."""
    body = await _body(request) if request.can_read_body else {}
    reason = _str_field(body, "reason", required=False)
    return await _order_action(
        request,
        lambda c, oid, u, now: orders.approve(
            c, request.match_info["key"], actor=u.name, reason=reason, now=now
        ),
    )


@requires(Role.SUPERVISOR)
async def reject(request: web.Request) -> web.Response:
    body = await _body(request) if request.can_read_body else {}
    reason = _str_field(body, "reason", required=False)
    return await _order_action(
        request,
        lambda c, oid, u, now: orders.reject(
            c, request.match_info["key"], actor=u.name, reason=reason, now=now
        ),
    )


@requires(Role.SUPERVISOR)
async def set_status(request: web.Request) -> web.Response:
    """Move an order by hand along the lifecycle table: ``{"status": ..., "detail": ...}``."""
    body = await _body(request)
    status = _str_field(body, "status")
    if status not in lifecycle.Status.__members__.values():
        raise HttpError(400, f"status: {status!r} is not one of {', '.join(lifecycle.Status)}")
    detail = _str_field(body, "detail", required=False) or "by hand"

    def fn(conn: sqlite3.Connection, oid: int, u: User, now: int) -> None:
        with lifecycle.coalesce_status(conn):
            lifecycle.transition(conn, oid, status, actor=u.name, detail=detail, now=now)

    return await _order_action(request, fn)


@requires(Role.ORDER_DESK)
async def supplier_confirmation(request: web.Request) -> web.Response:
    """A drop-ship supplier's answer taken by the desk: ``{"supplier", "state", "ref"}``."""
    body = await _body(request)
    supplier, state = _str_field(body, "supplier"), _str_field(body, "state")
    ref, detail = _str_field(body, "ref", required=False), _str_field(body, "detail", required=False)
    return await _order_action(
        request,
        lambda c, oid, u, now: ordertypes.supplier_confirmation(
            c, oid, supplier=supplier, state=state, ref=ref, detail=detail, actor=u.name, now=now
        ),
    )


# -- masters ----------------------------------------------------------------------------------


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in masters.KINDS:
        raise HttpError(404, f"unknown master kind {kind!r}; known: {', '.join(masters.KINDS)}")
    return kind


@requires(Role.VIEWER)
async def list_masters(request: web.Request) -> web.Response:
    kind = _kind(request)
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    after = request.query.get("after", "")
    rows = await request.app[DB_KEY].read(partial(masters.list_keys, kind=kind, limit=limit, after=after))
    return _json({kind: rows})


@requires(Role.VIEWER)
async def get_master(request: web.Request) -> web.Response:
    kind, key = _kind(request), request.match_info["key"]
    row = await request.app[DB_KEY].read(partial(masters.get, kind=kind, key=key))
    if row is None:
        raise HttpError(404, f"no {kind} {key!r}")
    return _json(row)


@requires(Role.SUPERVISOR)
async def put_master(request: web.Request) -> web.Response:
    kind, key = _kind(request), request.match_info["key"]
    body = await _body(request)
    await _write(request, partial(masters.upsert, kind=kind, raw=body, key=key))
    return _json(await request.app[DB_KEY].read(partial(masters.get, kind=kind, key=key)))


@requires(Role.SUPERVISOR)
async def delete_master(request: web.Request) -> web.Response:
    kind, key = _kind(request), request.match_info["key"]
    if not await _write(request, partial(masters.delete, kind=kind, key=key)):
        raise HttpError(404, f"no {kind} {key!r}")
    return _json({"deleted": key, "kind": kind})


@requires(Role.SUPERVISOR)
async def import_masters(request: web.Request) -> web.Response:
    """CSV body, header row = field names; all rows or none."""
    kind = _kind(request)
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise HttpError(400, "CSV body is not UTF-8") from None
    n = await _write(request, partial(masters.import_csv, kind=kind, text=text))
    return _json({"kind": kind, "imported": n})


@requires(Role.VIEWER)
async def credit(request: web.Request) -> web.Response:
    """The customer's credit position - the warning the desk sees at entry; a store user its
    own customers' only, a supplier user none."""
    code = request.match_info["code"]
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=_user(request).name))
    if view.supplier is not None:
        raise visibility.Refused(f"{view.describe_scope()}; customers' credit is not visible to it")
    view.check_customer(code, "its credit")

    def q(conn: sqlite3.Connection) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT credit_limit, receivables, open_value FROM customers WHERE code = ?", (code,)
        ).fetchone()
        if row is None:
            return None
        limit, recv, open_value = row
        over = limit is not None and recv + open_value > limit
        return {
            "customer": code,
            "credit_limit": limit,
            "receivables": recv,
            "open_orders": open_value,
            "available": None if limit is None else limit - recv - open_value,
            "warning": f"receivables + open orders {recv + open_value} exceed limit {limit}"
            if over
            else None,
        }

    out = await request.app[DB_KEY].read(q)
    if out is None:
        raise HttpError(404, f"no customer {code!r}")
    return _json(out)


# -- order-type desks -----------------------------------------------------------------------


@requires(Role.SUPERVISOR)
async def add_contract(request: web.Request) -> web.Response:
    """``{"code", "customer", "lines": [{"sku", "qty"}], "dates": ["YYYY-MM-DD", ...]}``"""
    body = await _body(request)
    code, customer = _str_field(body, "code"), _str_field(body, "customer")
    raw_lines, raw_dates = body.get("lines"), body.get("dates", [])
    if not isinstance(raw_lines, list) or not all(isinstance(x, dict) for x in raw_lines):
        raise HttpError(400, "lines: expected [{sku, qty}]")
    lines = {_str_field(x, "sku"): _int_field(x, "qty", lo=1, hi=10**6) for x in raw_lines}
    if not isinstance(raw_dates, list):
        raise HttpError(400, "dates: expected an array of YYYY-MM-DD")
    dates = [parse_date(d, f"dates[{i}]").isoformat() for i, d in enumerate(raw_dates)]
    note = _str_field(body, "note", required=False)
    await _write(
        request,
        partial(ordertypes.add_contract, code=code, customer=customer, lines=lines, dates=dates, note=note),
    )
    return _json({"contract": code, "lines": lines, "dates": dates}, status=201)


@requires(Role.SUPERVISOR)
async def run_contracts(request: web.Request) -> web.Response:
    """Generate the orders of contract deliveries due by ``today`` (default: today, UTC)."""
    body = await _body(request) if request.can_read_body else {}
    today = parse_date(body["today"], "today") if "today" in body else dt.datetime.now(dt.UTC).date()
    now = now_ms()
    ran = await _write(request, lambda c: schedule.run_contracts(c, today=today, now=now))
    return _json({"orders": [r.result for r in ran]})


@requires(Role.VIEWER)
async def schedule_runs(request: web.Request) -> web.Response:
    """What central's clock has run (contract deliveries, delay expiries), latest first."""
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    return _json({"runs": await request.app[DB_KEY].read(partial(schedule.list_runs, limit=limit))})


@requires(Role.ORDER_DESK)
async def add_voucher(request: web.Request) -> web.Response:
    body = await _body(request)
    code, sku = _str_field(body, "code"), _str_field(body, "sku")
    customer = _str_field(body, "customer", required=False) or None
    qty = _int_field(body, "qty", lo=1, hi=10**6)
    await _write(request, partial(ordertypes.add_voucher, code=code, customer=customer, sku=sku, qty=qty))
    return _json({"voucher": code, "status": "issued"}, status=201)


@requires(Role.ORDER_DESK)
async def deposit(request: web.Request) -> web.Response:
    """Customer stock put on consignment: ``{"customer", "sku", "qty", "price", "ref"}``."""
    body = await _body(request)
    lot = await _write(
        request,
        partial(
            ordertypes.deposit,
            customer=_str_field(body, "customer"),
            sku=_str_field(body, "sku"),
            qty=_int_field(body, "qty", lo=1, hi=10**9),
            price=_int_field(body, "price", lo=0, hi=10**12),
            ref=_str_field(body, "ref", required=False),
        ),
    )
    return _json({"lot": lot}, status=201)


@requires(Role.VIEWER)
async def consignment(request: web.Request) -> web.Response:
    """A customer's consignment stock: a store user its own customers' only, a supplier user
    the lots of its items."""
    code = request.match_info["customer"]
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=_user(request).name))
    view.check_customer(code, "its consignment stock")
    lots = await request.app[DB_KEY].read(partial(ordertypes.consignment_stock, customer=code))
    lots = [lot for lot in lots if view.sees_sku(lot["sku"])]
    return _json({"customer": code, "lots": lots})


# -- quarantine and health -------------------------------------------------------------------


@requires(Role.VIEWER)
async def quarantine(request: web.Request) -> web.Response:
    """Records central could not take, as they came, newest first: a store user only those of
    its own locations' gateways, a supplier user none (403) - central/VISIBILITY.md says why."""
    limit = _int_param(request, "limit", 100, lo=1, hi=MAX_LIMIT)
    view = await request.app[DB_KEY].read(partial(visibility.view_of, name=_user(request).name))
    view.check_gateway(None, "quarantined records")
    rows = await request.app[DB_KEY].read(partial(repo.list_quarantine, limit=limit, gateways=view.gateways))
    return _json({"quarantine": rows})


async def health(request: web.Request) -> web.Response:
    """200 whenever the process answers (the REST API works without the broker); the broker
    link is ``mqtt.link``, "up" only while the consumer's MQTT session is up."""
    db = request.app[DB_KEY]
    counts = await db.read(repo.counts)
    consumer = request.app.get(CONSUMER_KEY)
    mqtt = None
    if consumer is not None:
        s = consumer.stats
        up = consumer.link_up
        mqtt = {
            "link": "up" if up else "down",
            "connected": up,
            "link_age_s": round(time.monotonic() - s.link_since, 3),
            "reconnects": s.reconnects,
            "restarts": s.restarts,
            "messages": s.messages,
            "records": s.records,
            "accepted": s.accepted,
            "duplicates": s.duplicates,
            "rejected": s.rejected,
            "quarantined_messages": s.quarantined_messages,
            "storage_refused": s.storage_refused,
        }
    storage = db.storage_state()
    owner = consumer.downlink.owner if consumer is not None else None
    return _json(
        {
            "status": "ok" if storage["state"] == "ok" else "storage_full",
            "db": counts,
            "mqtt": mqtt,
            "storage": storage,
            # this central worker (central.workers): the gateways whose downlink it sends, its jobs
            "worker": owner.describe() if owner is not None else None,
        }
    )


def create_app(*, db: DurableDB, consumer: Consumer | None = None) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[DB_KEY] = db
    if consumer is not None:
        app[CONSUMER_KEY] = consumer
    r = app.router
    r.add_get("/api/health", health)
    r.add_get("/api/orders", list_orders)
    r.add_post("/api/orders", create_order)
    r.add_get("/api/orders/{key}", get_order)
    r.add_post("/api/orders/{key}/changes", change_order)
    r.add_post("/api/orders/{key}/cancel", cancel_order)
    r.add_post("/api/orders/{key}/revalidate", revalidate)
    r.add_post("/api/orders/{key}/approve", approve)
    r.add_post("/api/orders/{key}/reject", reject)
    r.add_post("/api/orders/{key}/status", set_status)
    r.add_post("/api/orders/{key}/supplier-confirmation", supplier_confirmation)
    r.add_get("/api/masters/{kind}", list_masters)
    r.add_post("/api/masters/{kind}/import", import_masters)
    r.add_get("/api/masters/{kind}/{key}", get_master)
    r.add_put("/api/masters/{kind}/{key}", put_master)
    r.add_delete("/api/masters/{kind}/{key}", delete_master)
    r.add_get("/api/customers/{code}/credit", credit)
    r.add_post("/api/contracts", add_contract)
    r.add_post("/api/contracts/run", run_contracts)
    r.add_get("/api/schedule/runs", schedule_runs)
    r.add_post("/api/vouchers", add_voucher)
    r.add_post("/api/consignment/deposits", deposit)
    r.add_get("/api/consignment/{customer}", consignment)
    r.add_get("/api/quarantine", quarantine)
    return app
