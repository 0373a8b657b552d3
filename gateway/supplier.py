"""The supplier's side of a drop-ship order, on the supplier's own gateway.

Central passes a drop-ship order to each line's supplier as a ``drop_ship`` downlink record
to the gateway of the supplier location (``central/orders/ordertypes.py``). This gateway applies it
once (the inbox) into ``supplier_orders``; the supplier's staff see it and answer:

    received -> confirmed -> shipped -> delivered        received | confirmed -> refused
    received -> shipped

``GET /api/supplier/orders`` lists them (``?state=received``), ``GET
/api/supplier/orders/{order_no}`` shows one, ``POST /api/supplier/orders/{order_no}/confirm``
(``/ship``, ``/deliver``, ``/refuse``) with ``{"ref": "DN-77", "detail": "..."}`` records the answer and
queues a ``supplier_confirmation`` record in the outbox in the same database job (201); a
step the table does not allow is 409 with the reason. The CLI is ``storegate supplier``.

Each state is entered once, so the order and the state it moves to name the answer: a repeat
(the supplier's client did not see the 201 and sends again) with the same ``ref`` and ``detail``
gets the first answer back with ``Idempotent-Replayed: true`` and queues nothing; with another
``ref`` or ``detail`` it is 422. The answer is kept in ``gateway/idempotency.py``'s rows, in the
same job as the confirmation.

Wiring: add :data:`MIGRATIONS` to the gateway's migrations, ``inbox.register(RECORD,
apply_drop_ship)`` and :func:`add_routes`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from aiohttp import web

from gateway import idempotency
from gateway.idempotency import Answer
from gateway.inbox import InboxRejected
from gateway.outbox import Outbox
from protocols.bounded import value_repr
from protocols.envelope import Record
from protocols.idempotency import IdempotencyError, fingerprint
from protocols.order_changes import parse_drop_ship, parse_supplier_confirmation
from protocols.records import MAX_TEXT, RecordSchemaError, text_field
from runtime.clock import now_ms
from runtime.jsonbody import json_object
from runtime.sqlitedb import Migration

log = logging.getLogger(__name__)

RECORD = "drop_ship"
CONFIRMATION_RECORD = "supplier_confirmation"
ACTIONS = {"confirm": "confirmed", "ship": "shipped", "deliver": "delivered", "refuse": "refused"}
# state -> the states the supplier may answer from it
NEXT: dict[str, frozenset[str]] = {
    "received": frozenset({"confirmed", "shipped", "refused"}),
    "confirmed": frozenset({"shipped", "refused"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset(),
    "refused": frozenset(),
}

MIGRATIONS = [
    Migration(
        "supplier_0001",
        """
        CREATE TABLE supplier_orders (
            order_no TEXT PRIMARY KEY,
            supplier TEXT NOT NULL,
            ship_to TEXT NOT NULL,
            requested_date TEXT NOT NULL,
            lines TEXT NOT NULL,
            state TEXT NOT NULL,
            ref TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '',
            record_id TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX supplier_orders_state ON supplier_orders(state, received_at);
        """,
    )
]

_COLS = (
    "order_no",
    "supplier",
    "ship_to",
    "requested_date",
    "lines",
    "state",
    "ref",
    "detail",
    "received_at",
    "updated_at",
)


def apply_drop_ship(conn: sqlite3.Connection, rec: Record) -> None:
    """Inbox handler: keep the order for the supplier (a repeat of an order already answered
    leaves the answer alone)."""
    try:
        ds = parse_drop_ship(rec.body)
    except RecordSchemaError as e:
        raise InboxRejected(e.reason) from None
    lines = json.dumps([{"line_no": ln.line_no, "sku": ln.sku, "qty": ln.qty} for ln in ds.lines])
    conn.execute(
        "INSERT INTO supplier_orders (order_no, supplier, ship_to, requested_date, lines, state,"
        " record_id, received_at, updated_at) VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?)"
        " ON CONFLICT(order_no) DO UPDATE SET lines = excluded.lines, record_id = excluded.record_id,"
        " updated_at = excluded.updated_at WHERE supplier_orders.state = 'received'",
        (ds.order_no, ds.supplier, ds.ship_to, ds.requested_date.isoformat(), lines, rec.id, rec.ts, rec.ts),
    )
    log.info(
        "drop-ship order %s for %s: %d lines to ship to %s",
        ds.order_no,
        ds.supplier,
        len(ds.lines),
        ds.ship_to,
    )


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(_COLS, r, strict=True))
    out["lines"] = json.loads(out["lines"])
    return out


def list_orders(
    conn: sqlite3.Connection, *, state: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(_COLS)} FROM supplier_orders"
    args: list[Any] = []
    if state:
        sql += " WHERE state = ?"
        args.append(state)
    return [_row(r) for r in conn.execute(sql + " ORDER BY received_at, order_no LIMIT ?", [*args, limit])]


def get_order(conn: sqlite3.Connection, order_no: str) -> dict[str, Any] | None:
    r = conn.execute(
        f"SELECT {', '.join(_COLS)} FROM supplier_orders WHERE order_no = ?", (order_no,)
    ).fetchone()
    return None if r is None else _row(r)


class AnswerRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def answer(
    conn: sqlite3.Connection, outbox: Outbox, order_no: str, state: str, *, ref: str = "", detail: str = ""
) -> Answer:
    """Record the supplier's answer and queue its ``supplier_confirmation`` for central (201),
    or replay the answer to the same step taken before."""
    name = json.dumps([order_no, state])
    fp = fingerprint({"ref": ref, "detail": detail})
    clash = f"order {order_no} was already {state} with another ref or detail"
    if (ans := idempotency.replay(conn, idempotency.SCOPE_TRANSITION, name, fp, clash=clash)) is not None:
        return ans
    row = conn.execute("SELECT state FROM supplier_orders WHERE order_no = ?", (order_no,)).fetchone()
    if row is None:
        raise AnswerRefused(404, f"no drop-ship order {value_repr(order_no)} at this gateway")
    if state not in NEXT[row[0]]:
        raise AnswerRefused(409, f"order {order_no} is {row[0]}: it cannot be {state} now")
    body = {"order_no": order_no, "state": state, "ref": ref, "detail": detail}
    try:
        parse_supplier_confirmation(body)  # what central will check
    except RecordSchemaError as e:
        raise AnswerRefused(422, e.reason) from None
    conn.execute(
        "UPDATE supplier_orders SET state = ?, ref = ?, detail = ?, updated_at = ? WHERE order_no = ?",
        (state, ref, detail, now_ms(), order_no),
    )
    rec = outbox.add(conn, CONFIRMATION_RECORD, body)
    ans = Answer(201, {"order_no": order_no, "state": state, "record_id": rec.id})
    idempotency.remember(conn, idempotency.SCOPE_TRANSITION, name, fp, ans, record_id=rec.id)
    return ans


# -- HTTP -----------------------------------------------------------------------------------

SUPPLIER_OUTBOX_KEY = web.AppKey("supplier_outbox", Outbox)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def get_orders(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in NEXT:
        return _error(400, f"state: {value_repr(state)} is not one of {', '.join(NEXT)}")
    rows = await request.app[SUPPLIER_OUTBOX_KEY].db.read(lambda conn: list_orders(conn, state=state))
    return web.json_response({"orders": rows})


async def get_one(request: web.Request) -> web.Response:
    order_no = request.match_info["order_no"]
    row = await request.app[SUPPLIER_OUTBOX_KEY].db.read(lambda conn: get_order(conn, order_no))
    if row is None:
        return _error(404, f"no drop-ship order {value_repr(order_no)} at this gateway")
    return web.json_response(row)


async def post_answer(request: web.Request) -> web.Response:
    order_no, action = request.match_info["order_no"], request.match_info["action"]
    state = ACTIONS.get(action)
    if state is None:
        return _error(404, f"no action {value_repr(action)}; one of {', '.join(ACTIONS)}")
    body = await json_object(request) if request.can_read_body else {}  # or a 400/413 JSON answer
    if set(body) - {"ref", "detail"}:
        return _error(422, 'body: expected {"ref": "...", "detail": "..."}')
    try:
        ref = text_field(body, "ref", required=False)
        detail = text_field(body, "detail", required=False, max_len=MAX_TEXT)
    except RecordSchemaError as e:
        return _error(422, e.reason)
    outbox = request.app[SUPPLIER_OUTBOX_KEY]
    try:
        ans = await outbox.db.write(
            lambda conn: answer(conn, outbox, order_no, state, ref=ref, detail=detail)
        )
    except (AnswerRefused, IdempotencyError) as e:
        return _error(e.status, e.reason)
    if ans.replayed:
        log.info("drop-ship order %s: %s repeated (ref %r), original answer replayed", order_no, state, ref)
        return web.json_response(ans.body, status=ans.status, headers={"Idempotent-Replayed": "true"})
    outbox.notify()
    log.info(
        "drop-ship order %s %s by the supplier (ref %r); confirmation %s queued",
        order_no,
        state,
        ref,
        ans.body["record_id"],
    )
    return web.json_response(ans.body, status=ans.status)


def add_routes(app: web.Application, *, outbox: Outbox) -> None:
    app[SUPPLIER_OUTBOX_KEY] = outbox
    app.router.add_get("/api/supplier/orders", get_orders)
    app.router.add_get("/api/supplier/orders/{order_no}", get_one)
    app.router.add_post("/api/supplier/orders/{order_no}/{action}", post_answer)
