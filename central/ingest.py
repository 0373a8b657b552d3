"""Applying uplink records: exactly-once effect, quarantine, acks.

``apply_envelope`` runs inside ONE database transaction (a ``DurableDB.write`` job): for each
record it writes the effect AND the record id to ``processed``; a repeated id gets the answer
it got the first time, with no second effect. A record that fails validation is quarantined
with its reason and answered ``rejected``; its neighbours still go through.

Record handlers are registered per record type; each takes the connection and the record
and returns a reference (e.g. the order number) or raises :class:`Rejected`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from central import CentralError, downlink, orders, ordertypes
from central.validation import LineIn, OrderIn
from protocols.envelope import Ack, AckStatus, BadRecord, Envelope, Record
from protocols.order_changes import parse_order_change, parse_supplier_confirmation
from protocols.records import (
    OrderBody,
    RecordSchemaError,
    order_certainly_valid,
    parse_order,
)

log = logging.getLogger(__name__)


class Rejected(CentralError):
    """A record that will never be applied; ``reason`` goes back to the gateway."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Context:
    gateway: str
    now: int


Handler = Callable[[sqlite3.Connection, Context, Record], str | None]
Schema = Callable[[dict[str, Any]], object]
HANDLERS: dict[str, Handler] = {}
SCHEMAS: dict[str, Schema] = {}
INTERNAL_ERRORS = [0]
PROCESS_BATCH = 8  # small: a receive job never waits long behind a processing job
RECORD_RESULT = "record_result"  # downlink: a record accepted on receipt but refused later


def handler(record_type: str, *, schema: Schema | None = None) -> Callable[[Handler], Handler]:
    """Register the handler of a record type; ``schema`` (a parse function raising
    RecordSchemaError) is checked on receipt, so a malformed record is refused in its ack."""

    def register(fn: Handler) -> Handler:
        HANDLERS[record_type] = fn
        if schema is not None:
            SCHEMAS[record_type] = schema
        return fn

    return register


def now_ms() -> int:
    return time.time_ns() // 1_000_000


order_no = orders.order_no  # kept for callers of the spine API


def _order_in(order: OrderBody) -> OrderIn:
    return OrderIn(
        customer=order.customer,
        order_type=order.order_type.value,
        requested_date=order.requested_date,
        lines=tuple(
            LineIn(line_no=i + 1, qty=ln.qty, gtin=ln.gtin, sku=ln.sku, price=ln.price)
            for i, ln in enumerate(order.lines)
        ),
        note=order.note,
        source_ref=order.source_ref,
    )


@handler("order", schema=parse_order)
def apply_order(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A new order from a gateway. Schema errors reject the record; business problems
    (unknown customer or item, credit, price...) are kept on the order, which is held with
    the reason and the gateway is told through ``order_status``."""
    try:
        order = parse_order(rec.body)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    created = orders.create(
        conn,
        _order_in(order),
        record_id=rec.id,
        gateway=ctx.gateway,
        seq=rec.seq,
        channel=order.channel.value,
        created_at=rec.ts,
        now=ctx.now,
        origin=f"from gateway {ctx.gateway} via {order.channel.value}, record {rec.id} seq {rec.seq}",
    )
    if (
        orders.may_have_parked(conn)
        and conn.execute("SELECT 1 FROM parked_changes WHERE order_ref = ? LIMIT 1", (rec.id,)).fetchone()
    ):
        orders.drain_parked(conn, rec.id, now=ctx.now)
    return created.order_no


@handler("order_change", schema=parse_order_change)
def apply_order_change(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A change to an order from its gateway, in the order's ``change_seq`` (early: parked)."""
    try:
        return orders.gateway_change(conn, gateway=ctx.gateway, record_id=rec.id, body=rec.body, now=ctx.now)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    except orders.OrderError as e:
        raise Rejected(e.reason) from None


@handler("supplier_confirmation", schema=parse_supplier_confirmation)
def apply_supplier_confirmation(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A supplier's answer for a drop-ship order, from the supplier's own gateway."""
    try:
        conf = parse_supplier_confirmation(rec.body)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    row = conn.execute(
        "SELECT o.order_id, d.supplier FROM orders o JOIN drop_ships d ON d.order_id = o.order_id"
        " JOIN locations l ON l.code = d.supplier WHERE o.order_no = ? AND l.gateway = ?",
        (conf.order_no, ctx.gateway),
    ).fetchone()
    if row is None:
        raise Rejected(f"order {conf.order_no!r} was not passed to a supplier behind gateway {ctx.gateway!r}")
    try:
        ordertypes.supplier_confirmation(
            conn,
            row[0],
            supplier=row[1],
            state=conf.state,
            ref=conf.ref,
            detail=conf.detail,
            actor=f"gateway:{ctx.gateway}",
            now=ctx.now,
        )
    except ordertypes.OrderTypeError as e:
        raise Rejected(str(e)) from None
    return conf.order_no


def _quarantine(
    conn: sqlite3.Connection,
    *,
    gateway: str | None,
    topic: str,
    reason: str,
    now: int,
    record_id: str | None = None,
    seq: int | None = None,
    rtype: str | None = None,
    raw: bytes | None = None,
) -> None:
    conn.execute(
        "INSERT INTO quarantine (gateway, topic, record_id, seq, type, reason, raw, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (gateway, topic, record_id, seq, rtype, reason, raw, now),
    )


def quarantine_message(
    conn: sqlite3.Connection, *, topic: str, gateway: str | None, reason: str, raw: bytes
) -> None:
    """A whole MQTT message that could not be decoded: keep it with the reason."""
    _quarantine(conn, gateway=gateway, topic=topic, reason=reason, now=now_ms(), raw=raw)


def _pack(rec: Record) -> bytes:
    raw: bytes = msgpack.packb(
        {"id": rec.id, "seq": rec.seq, "type": rec.type, "ts": rec.ts, "body": rec.body}, use_bin_type=True
    )
    return raw


def receive_envelope(conn: sqlite3.Connection, *, topic_gw: str, topic: str, env: Envelope) -> list[Ack]:
    """Receive every record of one envelope: a record that passes its type's schema check is
    stored with its id (``processed``) and queued for processing (``work_queue``) in this
    transaction and acked ``accepted``; a repeat gets its earlier answer; a malformed record is
    quarantined and ``rejected``. Business processing (validation, allocation...) follows in
    :func:`process_queue`, in arrival order; its outcome goes down as ``order_status`` /
    ``record_result`` records on the durable downlink."""
    now = now_ms()
    acks: list[Ack] = []
    if env.gw != topic_gw:
        reason = f"envelope names gateway {env.gw!r} but arrived on {topic_gw!r}'s topic"
        for rec in env.records:
            _quarantine(
                conn,
                gateway=topic_gw,
                topic=topic,
                reason=reason,
                now=now,
                record_id=rec.id,
                seq=rec.seq,
                rtype=rec.type,
                raw=_pack(rec),
            )
            acks.append(Ack(rec.id, AckStatus.REJECTED, reason))
        for bad in env.bad_records:
            _quarantine(conn, gateway=topic_gw, topic=topic, reason=reason, now=now, record_id=bad.id)
            if bad.id:
                acks.append(Ack(bad.id, AckStatus.REJECTED, reason))
        return acks
    ctx = Context(gateway=topic_gw, now=now)
    for bad in env.bad_records:
        ack = _reject_bad(conn, ctx, topic, bad)
        if ack is not None:
            acks.append(ack)
    prior = _prior_answers(conn, [r.id for r in env.records])
    fresh: list[tuple[str, str, int, str, int]] = []
    queued: list[tuple[str, str, bytes]] = []
    # each record's bytes as it arrived, when the decoder kept them: stored as they are
    raws = env.raw_records if len(env.raw_records) == len(env.records) else None
    for i, rec in enumerate(env.records):
        if rec.id in prior:
            acks.append(_repeat_answer(ctx, rec, prior[rec.id]))
            continue
        ack, packed = _check_one(conn, ctx, topic, rec, packed=raws[i] if raws is not None else None)
        acks.append(ack)
        if ack.status is AckStatus.ACCEPTED:
            fresh.append((rec.id, ctx.gateway, rec.seq, rec.type, ctx.now))
            queued.append((rec.id, ctx.gateway, packed))
    conn.executemany(
        "INSERT INTO processed (record_id, gateway, seq, type, status, processed_at)"
        " VALUES (?, ?, ?, ?, 'accepted', ?)",
        fresh,
    )
    conn.executemany("INSERT INTO work_queue (record_id, gateway, raw) VALUES (?, ?, ?)", queued)
    return acks


def _prior_answers(
    conn: sqlite3.Connection, ids: list[str]
) -> dict[str, tuple[str, str, str | None, str | None]]:
    out: dict[str, tuple[str, str, str | None, str | None]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for rid, gw, status, reason, ref in conn.execute(
            f"SELECT record_id, gateway, status, reason, ref FROM processed WHERE record_id IN ({marks})",
            chunk,
        ):
            out[rid] = (gw, status, reason, ref)
    return out


def _repeat_answer(ctx: Context, rec: Record, prior: tuple[str, str, str | None, str | None]) -> Ack:
    gw, status, reason, ref = prior
    if gw != ctx.gateway:
        return Ack(rec.id, AckStatus.REJECTED, f"record id already used by gateway {gw!r}")
    if status == AckStatus.REJECTED:
        return Ack(rec.id, AckStatus.REJECTED, reason, ref)
    return Ack(rec.id, AckStatus.DUPLICATE, reason, ref)


def apply_envelope(conn: sqlite3.Connection, *, topic_gw: str, topic: str, env: Envelope) -> list[Ack]:
    """Receive an envelope and process its records in the same transaction; the acks carry
    the processing outcome (the order number, a business rejection). Used where one caller
    wants the whole answer at once; the MQTT consumer receives and lets the processor work."""
    acks = receive_envelope(conn, topic_gw=topic_gw, topic=topic, env=env)
    outcome = process_queue(conn, limit=None)
    return [outcome.get(a.id, a) if a.status is AckStatus.ACCEPTED else a for a in acks]


_CERTAINLY_VALID: dict[Schema, Callable[[dict[str, Any]], bool]] = {parse_order: order_certainly_valid}


def _check_one(
    conn: sqlite3.Connection, ctx: Context, topic: str, rec: Record, *, packed: bytes | None = None
) -> tuple[Ack, bytes]:
    """Schema-check a new record; a refusal is quarantined and remembered here. ``packed``:
    the record's msgpack bytes as they arrived, if the caller has them."""
    reason = None
    if rec.type not in HANDLERS:
        reason = f"unknown record type {rec.type!r}"
    elif (schema := SCHEMAS.get(rec.type)) is not None:
        certainly_valid = _CERTAINLY_VALID.get(schema)
        if certainly_valid is None or not certainly_valid(rec.body):
            try:
                schema(rec.body)
            except RecordSchemaError as e:
                reason = e.reason
    if packed is None:
        packed = _pack(rec)
    if reason is None:
        return Ack(rec.id, AckStatus.ACCEPTED), packed
    _quarantine(
        conn,
        gateway=ctx.gateway,
        topic=topic,
        reason=reason,
        now=ctx.now,
        record_id=rec.id,
        seq=rec.seq,
        rtype=rec.type,
        raw=packed,
    )
    log.info("gw=%s record %s (%s) rejected: %s", ctx.gateway, rec.id, rec.type, reason)
    conn.execute(
        "INSERT INTO processed (record_id, gateway, seq, type, status, reason, processed_at)"
        " VALUES (?, ?, ?, ?, 'rejected', ?, ?)",
        (rec.id, ctx.gateway, rec.seq, rec.type, reason, ctx.now),
    )
    return Ack(rec.id, AckStatus.REJECTED, reason), packed


def process_queue(conn: sqlite3.Connection, *, limit: int | None = PROCESS_BATCH) -> dict[str, Ack]:
    """Process queued records in arrival order (all of them when ``limit`` is None); return
    the outcome per record id. A handler's :class:`Rejected` is quarantined and told to the
    gateway (``record_result``); an unexpected error is quarantined as an internal error and
    counted, so one bad record never blocks the ones behind it."""
    with _gc_paused():
        return _process_queue(conn, limit=limit)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a batch is processed (as
    ``protocols.envelope.decode`` does for a payload): each order makes hundreds of short-
    lived containers, freed by reference counting, and with the collector on they set off
    collections that walk every live object again and again. Allocation counts carry on,
    so collection resumes right after."""
    if not gc.isenabled():  # someone else holds it off: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _process_queue(conn: sqlite3.Connection, *, limit: int | None) -> dict[str, Ack]:
    rows = conn.execute(
        "SELECT n, record_id, gateway, raw FROM work_queue ORDER BY n LIMIT ?",
        (-1 if limit is None else limit,),
    ).fetchall()
    out: dict[str, Ack] = {}
    done: list[tuple[str, str | None, str | None, str]] = []
    now = now_ms()
    recs = []
    for _n, _rid, _gw, raw in rows:
        obj = msgpack.unpackb(raw, raw=False)
        recs.append(Record(id=obj["id"], seq=obj["seq"], type=obj["type"], ts=obj["ts"], body=obj["body"]))
    fast = HANDLERS.get("order") is apply_order
    parsed: dict[int, orders.NewOrder | None] = {}
    i = 0
    while i < len(rows):
        if fast and recs[i].type == "order":
            made = _orders_together(conn, rows, recs, i, now=now, parsed=parsed)
            if made is None:
                fast = False  # failed: one by one from here (the batch was rolled back)
            for number in made or ():
                rid = rows[i][1]
                done.append((AckStatus.ACCEPTED.value, None, number, rid))
                out[rid] = Ack(rid, AckStatus.ACCEPTED, None, number)
                i += 1
            if made:
                continue
        _n, rid, gw, raw = rows[i]
        rec = recs[i]
        i += 1
        ctx = Context(gateway=gw, now=now)
        fn = HANDLERS[rec.type]
        conn.execute("SAVEPOINT rec")
        status, reason, ref = AckStatus.ACCEPTED, None, None
        try:
            ref = fn(conn, ctx, rec)
        except Rejected as e:
            conn.execute("ROLLBACK TO rec")
            status, reason = AckStatus.REJECTED, e.reason
        except Exception as e:
            conn.execute("ROLLBACK TO rec")
            log.exception("gw=%s record %s (%s) failed in processing; quarantined", gw, rec.id, rec.type)
            INTERNAL_ERRORS[0] += 1
            status, reason = AckStatus.REJECTED, f"internal error while processing: {type(e).__name__}: {e}"
        conn.execute("RELEASE rec")
        if status is AckStatus.REJECTED:
            _quarantine(
                conn,
                gateway=gw,
                topic=f"sg/v1/gw/{gw}/up",
                reason=reason or "",
                now=now,
                record_id=rec.id,
                seq=rec.seq,
                rtype=rec.type,
                raw=raw,
            )
            downlink.enqueue(
                conn,
                gateway=gw,
                type=RECORD_RESULT,
                body={"id": rec.id, "status": "rejected", "reason": reason},
            )
        done.append((status.value, reason, ref, rid))
        out[rid] = Ack(rid, status, reason, ref)
    # the outcomes and the queue's removal in two statements for the whole batch (same
    # transaction as the effects: exactly once either way)
    conn.executemany("UPDATE processed SET status = ?, reason = ?, ref = ? WHERE record_id = ?", done)
    if rows:
        conn.execute("DELETE FROM work_queue WHERE n BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
    return out


def _orders_together(
    conn: sqlite3.Connection,
    rows: list[Any],
    recs: list[Record],
    start: int,
    *,
    now: int,
    parsed: dict[int, orders.NewOrder | None],
) -> list[str] | None:
    """Hand the run of new orders from ``start`` to :func:`orders.create_realtime_batch`
    (the numbers of those it created, in order); None if it failed (rolled back).
    ``parsed`` keeps each record's parse across calls."""
    batch: list[orders.NewOrder] = []
    for k in range(start, len(rows)):
        if k not in parsed:
            parsed[k] = _new_order(rows[k][2], recs[k])
        new = parsed[k]
        if new is None:
            break
        batch.append(new)
    conn.execute("SAVEPOINT orders_together")
    try:
        made = orders.create_realtime_batch(conn, batch, now=now)
    except Exception:
        conn.execute("ROLLBACK TO orders_together")
        conn.execute("RELEASE orders_together")
        log.exception("orders processed together failed; processing them one by one")
        return None
    conn.execute("RELEASE orders_together")
    return made


def _new_order(gw: str, rec: Record) -> orders.NewOrder | None:
    if rec.type != "order":
        return None
    body = rec.body
    if order_certainly_valid(body):  # the common case: the OrderIn straight from the body
        channel = body["channel"]
        order_in = _plain_order_in(body)
    else:
        try:
            order = parse_order(body)
        except RecordSchemaError:
            return None
        channel = order.channel.value
        order_in = _order_in(order)
    return orders.NewOrder(
        record_id=rec.id,
        gateway=gw,
        seq=rec.seq,
        channel=channel,
        created_at=rec.ts,
        origin=f"from gateway {gw} via {channel}, record {rec.id} seq {rec.seq}",
        order=order_in,
    )


def _plain_order_in(body: dict[str, Any]) -> OrderIn:
    """What ``_order_in(parse_order(body))`` gives, for a body ``order_certainly_valid``
    accepts (exact types, every rule met), without building the parsed order first."""
    return OrderIn(
        customer=body["customer"],
        order_type=body["order_type"],
        requested_date=dt.date.fromisoformat(body["requested_date"]),
        lines=tuple(
            LineIn(line_no=i, qty=ln["qty"], gtin=ln.get("gtin"), sku=ln.get("sku"), price=ln.get("price"))
            for i, ln in enumerate(body["lines"], 1)
        ),
        note=body.get("note") or "",
        source_ref=body.get("source_ref") or "",
    )


def _reject_bad(conn: sqlite3.Connection, ctx: Context, topic: str, bad: BadRecord) -> Ack | None:
    _quarantine(conn, gateway=ctx.gateway, topic=topic, reason=bad.reason, now=ctx.now, record_id=bad.id)
    if bad.id is None:
        # No readable id: nothing to name in an ack. Kept in quarantine for a person.
        log.warning("gw=%s unreadable record %d quarantined: %s", ctx.gateway, bad.index, bad.reason)
        return None
    return Ack(bad.id, AckStatus.REJECTED, bad.reason)
