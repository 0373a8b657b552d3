"""Changes to an order from the store, and the order's status for the clerk.

``POST /api/orders/{id}/changes`` (``storegate order --change``) turns a clerk's change to an
order entered at this gateway - ``set_qty``, ``add_line``, ``cancel_line``, ``cancel_order`` -
into an ``order_change`` record in the outbox, numbered 1, 2, 3 ... per order
(``change_seq``) in the same database job, so central applies them in the order the clerk
made them (it parks one that arrives early). An added line or a new quantity passes the edge
checks first (``gateway/edge_checks.py``). Central's answer comes back as ``order_status``.
Sending a change again is safe with an ``Idempotency-Key`` (``gateway/idempotency.py``): the
same key and the same change get the first answer back, in the same job as the change record.

``GET /api/orders/{id}/status`` (``storegate order --status``) shows what the store knows of
the order: central's latest ``order_status`` (``gateway/order_status.py``), the edge's credit
answer and the outbox/ack state of the order record.

Wiring: add :data:`MIGRATIONS` to the gateway's migrations and call :func:`add_routes`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
from typing import Any

from aiohttp import web

from gateway import edge_checks, idempotency, order_status
from gateway.idempotency import Answer
from gateway.outbox import Outbox
from ops.jsonbody import json_object
from ops.sqlitedb import Migration
from protocols.bounded import names, value_repr
from protocols.envelope import Record
from protocols.idempotency import HEADER, IdempotencyError, fingerprint, parse_key
from protocols.order_changes import ChangeAction, parse_order_change
from protocols.records import Channel, OrderBody, OrderLine, OrderType, RecordSchemaError

log = logging.getLogger(__name__)

RECORD = "order_change"
_BODY_KEYS = frozenset({"action", "line_no", "qty", "gtin", "sku", "price", "reason"})

MIGRATIONS = [
    Migration(
        "order_changes_0001",
        """
        CREATE TABLE order_changes (
            order_ref TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )
]

CHANGES_OUTBOX_KEY = web.AppKey("changes_outbox", Outbox)
CHANGES_CUSTOMER_KEY = web.AppKey("changes_customer", str)


class ChangeRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _ours(conn: sqlite3.Connection, order_ref: str) -> bool:
    """Whether ``order_ref`` is the record id of an order entered at this gateway."""
    return (
        conn.execute(
            "SELECT 1 FROM edge_orders WHERE record_id = ?1"
            " UNION ALL SELECT 1 FROM order_status WHERE record_id = ?1"
            " UNION ALL SELECT 1 FROM outbox WHERE id = ?1 AND type = 'order'"
            " UNION ALL SELECT 1 FROM record_results WHERE id = ?1 AND type = 'order' LIMIT 1",
            (order_ref,),
        ).fetchone()
        is not None
    )


def enter_change(
    conn: sqlite3.Connection, outbox: Outbox, order_ref: str, body: dict[str, Any], *, store_customer: str
) -> Record:
    """Check a clerk's change and put it in the outbox as the order's next ``change_seq``."""
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise ChangeRefused(422, f"unknown field {names(unknown)}")
    if not _ours(conn, order_ref):
        raise ChangeRefused(404, f"no order {value_repr(order_ref)} was entered at this gateway")
    row = conn.execute("SELECT last_seq FROM order_changes WHERE order_ref = ?", (order_ref,)).fetchone()
    seq = (row[0] if row else 0) + 1
    wire = {**body, "order": order_ref, "change_seq": seq}
    try:
        change = parse_order_change(wire)
    except RecordSchemaError as e:
        raise ChangeRefused(422, e.reason) from None
    if change.action is ChangeAction.ADD_LINE:
        assert change.qty is not None
        # the same edge checks as a new order's line
        line = OrderLine(qty=change.qty, gtin=change.gtin, sku=change.sku)
        probe = OrderBody(store_customer or "-", Channel.MANUAL, OrderType.NORMAL, dt.date.today(), (line,))
        refused = edge_checks.check_order(conn, probe, store_customer=store_customer, credit=False).refusals
        line_refused = [r for r in refused if r.line is not None]
        if line_refused:
            raise ChangeRefused(422, line_refused[0].reason)
    elif change.action is ChangeAction.SET_QTY:
        assert change.qty is not None
        if change.qty > edge_checks.EDGE_MAX_QTY:  # the line's item is central's to check
            raise ChangeRefused(422, f"quantity {change.qty} > {edge_checks.EDGE_MAX_QTY} allowed on a line")
    conn.execute(
        "INSERT INTO order_changes (order_ref, last_seq) VALUES (?, ?)"
        " ON CONFLICT(order_ref) DO UPDATE SET last_seq = excluded.last_seq",
        (order_ref, seq),
    )
    return outbox.add(conn, RECORD, wire)


def change_request(order_ref: str, body: dict[str, Any]) -> dict[str, Any]:
    """What "the same change" means for an ``Idempotency-Key``: the order and the body's
    fields, an empty or null field the same as an absent one."""
    return {"order": order_ref, **{k: v for k, v in body.items() if v not in (None, "")}}


async def post_change(request: web.Request) -> web.Response:
    order_ref = request.match_info["id"]
    body = await json_object(request)  # or a 400/413 JSON answer
    try:
        key = parse_key(request.headers.getall(HEADER, []))
    except IdempotencyError as e:
        return web.json_response({"error": e.reason}, status=e.status)
    outbox = request.app[CHANGES_OUTBOX_KEY]
    customer = request.app[CHANGES_CUSTOMER_KEY]
    fp = fingerprint(change_request(order_ref, body))
    clash = f"{HEADER} {key!r} was already used for another change"

    def job(conn: sqlite3.Connection) -> Answer:
        if (
            key is not None
            and (ans := idempotency.replay(conn, idempotency.SCOPE_CHANGE, key, fp, clash=clash)) is not None
        ):
            return ans
        rec = enter_change(conn, outbox, order_ref, body, store_customer=customer)
        seq = rec.body["change_seq"]
        ans = Answer(201, {"id": rec.id, "order": order_ref, "change_seq": seq, "status": "pending"})
        if key is not None:  # in this job: the change and its key commit together
            idempotency.remember(conn, idempotency.SCOPE_CHANGE, key, fp, ans, record_id=rec.id)
        return ans

    try:
        ans = await outbox.db.write(job)
    except (ChangeRefused, IdempotencyError) as e:
        return web.json_response({"error": e.reason}, status=e.status)
    if ans.replayed:
        log.info(
            "order %s: change %d repeated (key %r), original answer replayed",
            order_ref,
            ans.body["change_seq"],
            key,
        )
        return web.json_response(ans.body, status=ans.status, headers={"Idempotent-Replayed": "true"})
    outbox.notify()
    log.info(
        "order %s: change %d (%s) queued as %s",
        order_ref,
        ans.body["change_seq"],
        body.get("action"),
        ans.body["id"],
    )
    return web.json_response(ans.body, status=ans.status)


def order_view(conn: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    """What this gateway knows of an order (by record id or order number), or None."""
    st = order_status.latest(conn, key)
    record_id = st.record_id if st is not None else key
    edge = edge_checks.entry(conn, record_id)
    row = conn.execute(
        "SELECT status, reason, ref FROM record_results WHERE id = ? AND type = 'order'", (record_id,)
    ).fetchone()
    queued = conn.execute("SELECT 1 FROM outbox WHERE id = ?", (record_id,)).fetchone() is not None
    if st is None and edge is None and row is None and not queued:
        return None
    changes = conn.execute("SELECT last_seq FROM order_changes WHERE order_ref = ?", (record_id,)).fetchone()
    out: dict[str, Any] = {
        "record_id": record_id,
        "sent": "pending" if queued else (row[0] if row else "unknown"),
        "changes": changes[0] if changes else 0,
    }
    if row is not None and row[1]:
        out["reason"] = row[1]
    if st is not None:
        out.update({k: v for k, v in dataclasses.asdict(st).items() if k != "record_id"})
    else:  # central has not answered yet: the edge's own answer
        out["status"] = "held" if edge is not None and edge["credit"] == "hold" else "pending"
    if edge is not None:
        out["edge"] = edge
    return out


async def get_status(request: web.Request) -> web.Response:
    key = request.match_info["id"]
    view = await request.app[CHANGES_OUTBOX_KEY].db.read(lambda conn: order_view(conn, key))
    if view is None:
        return web.json_response({"error": f"no order {value_repr(key)} at this gateway"}, status=404)
    return web.json_response(view)


def add_routes(app: web.Application, *, outbox: Outbox, customer: str) -> None:
    app[CHANGES_OUTBOX_KEY] = outbox
    app[CHANGES_CUSTOMER_KEY] = customer
    app.router.add_post("/api/orders/{id}/changes", post_change)
    app.router.add_get("/api/orders/{id}/status", get_status)
