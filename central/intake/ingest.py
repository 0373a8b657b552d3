"""Applying uplink records: exactly-once effect, quarantine, acks.

``apply_envelope`` runs inside ONE database transaction (a ``DurableDB.write`` job): for each
record it writes the effect AND the record id to ``processed``; a repeated id gets the answer
it got the first time, with no second effect. A record that fails validation is quarantined
with its reason and answered ``rejected``; its neighbours still go through.

Record handlers are per record type, on the central's hub (``central.wiring`` puts this
module's and ``central.fulfil.picking``'s there); each takes the connection and the record
and returns a reference (e.g. the order number) or raises :class:`Rejected`.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from central import CentralError, downlink
from central.hub import Hub, hub_of
from central.orders import orders, ordertypes
from central.orders.validation import LineIn, OrderIn
from central.process import partners, tracker
from central.promising import services
from protocols import envelope
from protocols.bounded import bounded_reason
from protocols.envelope import Ack, AckStatus, BadRecord, Envelope, Received, Record, Uplink, gc_paused
from protocols.order_changes import parse_supplier_confirmation
from protocols.records import (
    OrderBody,
    RecordSchemaError,
    order_certainly_valid,
    packed_order_certainly_valid,
    parse_order,
)
from runtime.clock import now_ms
from runtime.dbapi import dialect, in_chunks, is_transient
from runtime.sqlitedb import insert_rows, savepoint

log = logging.getLogger(__name__)


class Rejected(CentralError):
    """A record that will never be applied; ``reason`` goes back to the gateway (cut to
    :data:`protocols.bounded.MAX_REASON` characters)."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Context:
    gateway: str
    now: int


Handler = Callable[[sqlite3.Connection, Context, Record], str | None]
Schema = Callable[[dict[str, Any]], object]
PROCESS_BATCH = 8  # small: a receive job never waits long behind a processing job
# Records a work_queue row holds: one insert per row instead of per record on receipt, and a
# processing job that takes a few records reads one small row, not a whole big message.
QUEUE_ROW_RECORDS = 64
RECORD_RESULT = "record_result"  # downlink: a record accepted on receipt but refused later


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


def apply_order(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A new order from a gateway. Schema errors reject the record; business problems
    (unknown customer or item, credit, price...) are kept on the order, which is held with
    the reason and the gateway is told through ``order_status``."""
    try:
        order = parse_order(rec.body)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    new = _gateway_order(ctx.gateway, rec, order.channel.value, _order_in(order))
    (created,) = orders.create_batch(conn, [new], now=ctx.now)
    asks = services.asks_of([ln.service for ln in order.lines])
    if asks:  # field services sold with a line: booked with the order (central/PROMISE.md)
        services.book_order(conn, created.order_id, asks, actor=f"gateway:{ctx.gateway}", now=ctx.now)
    return created.order_no


def apply_order_change(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A change to an order from its gateway, in the order's ``change_seq`` (early: parked)."""
    try:
        return orders.gateway_change(conn, gateway=ctx.gateway, record_id=rec.id, body=rec.body, now=ctx.now)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    except orders.OrderError as e:
        raise Rejected(e.reason) from None


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
        if conf.state == "delivered":  # the lines' deliver step (central/PARTNERS.md)
            text = f"supplier {row[1]} delivered" + (f" ref {conf.ref}" if conf.ref else "")
            text += f": {conf.detail}" if conf.detail else ""
            partners.supplier_delivered(
                conn, row[0], supplier=row[1], text=text, actor=f"gateway:{ctx.gateway}", now=ctx.now
            )
            return conf.order_no
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
    except (ordertypes.OrderTypeError, tracker.StepError) as e:
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
        (gateway, topic, record_id, seq, rtype, bounded_reason(reason), raw, now),
    )


def quarantine_message(
    conn: sqlite3.Connection, *, topic: str, gateway: str | None, reason: str, raw: bytes
) -> None:
    """A whole MQTT message that could not be decoded: keep it with the reason."""
    _quarantine(conn, gateway=gateway, topic=topic, reason=reason, now=now_ms(), raw=raw)


def receive_envelope(conn: sqlite3.Connection, *, topic_gw: str, topic: str, env: Envelope) -> list[Ack]:
    """:func:`receive_uplink` for an :class:`Envelope` (callers that decoded with ``decode``)."""
    return receive_uplink(conn, topic_gw=topic_gw, topic=topic, up=envelope.as_uplink(env))


def receive_uplink(conn: sqlite3.Connection, *, topic_gw: str, topic: str, up: Uplink) -> list[Ack]:
    """Receive every record of one message: a record that passes its type's schema check is
    stored with its id (``processed``) and queued for processing (``work_queue``: a row per
    :data:`QUEUE_ROW_RECORDS` records, their bytes as they arrived) in this transaction and acked
    ``accepted``; a repeat gets its earlier answer; a malformed record is quarantined and
    ``rejected``. A record whose body the decoder's quick check vouched for (``body`` None,
    see :func:`quick_checks`) needs no further check. Business processing (validation,
    allocation...) follows in :func:`process_queue`, in arrival order; its outcome goes down
    as ``order_status`` / ``record_result`` records on the durable downlink."""
    now = now_ms()
    acks: list[Ack] = []
    if up.gw != topic_gw:
        reason = f"envelope names gateway {up.gw!r} but arrived on {topic_gw!r}'s topic"
        for rec in up.records:
            _quarantine(
                conn,
                gateway=topic_gw,
                topic=topic,
                reason=reason,
                now=now,
                record_id=rec.id,
                seq=rec.seq,
                rtype=rec.type,
                raw=rec.raw,
            )
            acks.append(Ack(rec.id, AckStatus.REJECTED, reason))
        for bad in up.bad_records:
            _quarantine(conn, gateway=topic_gw, topic=topic, reason=reason, now=now, record_id=bad.id)
            if bad.id:
                acks.append(Ack(bad.id, AckStatus.REJECTED, reason))
        return acks
    ctx = Context(gateway=topic_gw, now=now)
    for bad in up.bad_records:
        ack = _reject_bad(conn, ctx, topic, bad)
        if ack is not None:
            acks.append(ack)
    prior = _prior_answers(conn, [r.id for r in up.records])
    fresh: list[tuple[str, str, int, str, int]] = []
    queued: list[bytes] = []
    for rec in up.records:
        rid = rec.id
        if prior and rid in prior:
            acks.append(_repeat_answer(ctx, rid, prior[rid]))
            continue
        body = rec.body
        ack = Ack(rid, AckStatus.ACCEPTED) if body is None else _check_one(conn, ctx, topic, rec, body)
        acks.append(ack)
        if ack.status is AckStatus.ACCEPTED:
            fresh.append((rid, topic_gw, rec.seq, rec.type, now))
            queued.append(rec.raw)
    insert_rows(
        conn,
        "INSERT INTO processed (record_id, gateway, seq, type, status, processed_at)",
        fresh,
        row="(?, ?, ?, ?, 'accepted', ?)",
    )
    # the message's accepted records, up to QUEUE_ROW_RECORDS a row (central_0004)
    parts = [queued[i : i + QUEUE_ROW_RECORDS] for i in range(0, len(queued), QUEUE_ROW_RECORDS)]
    rows = [(topic_gw, b"".join(p), len(p)) for p in parts]
    insert_rows(conn, "INSERT INTO work_queue (gateway, raws, count)", rows)
    return acks


def _prior_answers(
    conn: sqlite3.Connection, ids: list[str]
) -> dict[str, tuple[str, str, str | None, str | None]]:
    # A few statements whatever the count: chunks of a power-of-two size (few texts, so they
    # stay prepared), portable SQL (was one JSON array through json_each)
    out: dict[str, tuple[str, str, str | None, str | None]] = {}
    for marks, params in in_chunks(ids):
        for rid, gw, status, reason, ref in conn.execute(
            f"SELECT record_id, gateway, status, reason, ref FROM processed WHERE record_id IN ({marks})",
            params,
        ):
            out[rid] = (gw, status, reason, ref)
    return out


def _repeat_answer(ctx: Context, rid: str, prior: tuple[str, str, str | None, str | None]) -> Ack:
    gw, status, reason, ref = prior
    if gw != ctx.gateway:
        return Ack(rid, AckStatus.REJECTED, f"record id already used by gateway {gw!r}")
    if status == AckStatus.REJECTED:
        return Ack(rid, AckStatus.REJECTED, reason, ref)
    return Ack(rid, AckStatus.DUPLICATE, reason, ref)


def apply_envelope(conn: sqlite3.Connection, *, topic_gw: str, topic: str, env: Envelope) -> list[Ack]:
    """Receive an envelope and process its records in the same transaction; the acks carry
    the processing outcome (the order number, a business rejection). Used where one caller
    wants the whole answer at once; the MQTT consumer receives and lets the processor work."""
    acks = receive_envelope(conn, topic_gw=topic_gw, topic=topic, env=env)
    outcome = process_queue(conn, limit=None)
    return [outcome.get(a.id, a) if a.status is AckStatus.ACCEPTED else a for a in acks]


_CERTAINLY_VALID: dict[Schema, Callable[[dict[str, Any]], bool]] = {parse_order: order_certainly_valid}
# record type -> the decoder's quick check on the body's bytes (``envelope.decode_uplink``),
# used only while that type's registered schema is the one the check stands for
_PACKED_CERTAINLY_VALID: dict[Schema, envelope.QuickCheck] = {parse_order: packed_order_certainly_valid}


def quick_checks(hub: Hub) -> dict[str, envelope.QuickCheck]:
    """The quick body checks for :func:`envelope.decode_uplink`, per record type of ``hub``."""
    return {
        rtype: _PACKED_CERTAINLY_VALID[schema]
        for rtype, schema in hub.schemas.items()
        if hub.handlers.get(rtype) is not None and schema in _PACKED_CERTAINLY_VALID
    }


def _check_one(
    conn: sqlite3.Connection, ctx: Context, topic: str, rec: Received, body: dict[str, Any]
) -> Ack:
    """Schema-check a new record's ``body``; a refusal is quarantined and remembered here."""
    reason = None
    hub = hub_of(conn)
    if rec.type not in hub.handlers:
        reason = f"unknown record type {rec.type!r}"
    elif (schema := hub.schemas.get(rec.type)) is not None:
        certainly_valid = _CERTAINLY_VALID.get(schema)
        if certainly_valid is None or not certainly_valid(body):
            try:
                schema(body)
            except RecordSchemaError as e:
                reason = e.reason
    if reason is None:
        return Ack(rec.id, AckStatus.ACCEPTED)
    _quarantine(
        conn,
        gateway=ctx.gateway,
        topic=topic,
        reason=reason,
        now=ctx.now,
        record_id=rec.id,
        seq=rec.seq,
        rtype=rec.type,
        raw=rec.raw,
    )
    log.info("gw=%s record %s (%s) rejected: %s", ctx.gateway, rec.id, rec.type, reason)
    conn.execute(
        "INSERT INTO processed (record_id, gateway, seq, type, status, reason, processed_at)"
        " VALUES (?, ?, ?, ?, 'rejected', ?, ?)",
        (rec.id, ctx.gateway, rec.seq, rec.type, reason, ctx.now),
    )
    return Ack(rec.id, AckStatus.REJECTED, reason)


def process_queue(
    conn: sqlite3.Connection, *, limit: int | None = PROCESS_BATCH, stop: Callable[[], bool] | None = None
) -> dict[str, Ack]:
    """Process queued records in arrival order (all of them when ``limit`` is None); return
    the outcome per record id. A handler's :class:`Rejected` is quarantined and told to the
    gateway (``record_result``); an unexpected error is quarantined as an internal error and
    counted, so one bad record never blocks the ones behind it.

    ``stop`` is asked between records, once one is done: when it says so, the records not
    reached stay queued, in their place, for the next call."""
    with gc_paused():
        return _process_queue(conn, limit=limit, stop=stop)


def _process_queue(
    conn: sqlite3.Connection, *, limit: int | None, stop: Callable[[], bool] | None = None
) -> dict[str, Ack]:
    rows, recs, progress = _queued(conn, limit)
    out: dict[str, Ack] = {}
    done: list[tuple[str, str | None, str | None, str]] = []
    now = now_ms()
    hub = hub_of(conn)
    fast = hub.handlers.get("order") is apply_order
    parsed: dict[int, orders.NewOrder | None] = {}
    i = 0
    while i < len(rows):
        if i and stop is not None and stop():
            progress = _left_queued(progress, rows[i:])
            break
        if fast and recs[i].type == "order":
            made = _orders_together(conn, rows, recs, i, now=now, parsed=parsed, stop=stop)
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
        fn = hub.handlers[rec.type]
        status, reason, ref = AckStatus.ACCEPTED, None, None
        try:
            with savepoint(conn, "rec"):
                ref = fn(conn, ctx, rec)
        except Rejected as e:
            status, reason = AckStatus.REJECTED, e.reason
        except Exception as e:
            if is_transient(e):  # a deadlock, a lost connection: the group runs again, or fails
                raise
            log.exception("gw=%s record %s (%s) failed in processing; quarantined", gw, rec.id, rec.type)
            hub.internal_errors += 1
            status = AckStatus.REJECTED
            reason = bounded_reason(f"internal error while processing: {type(e).__name__}: {e}")
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
    _dequeue(conn, progress)
    return out


_Queued = tuple[int, str, str, bytes]  # (queue row n, record id, gateway, the record's bytes)


def _queued(
    conn: sqlite3.Connection, limit: int | None
) -> tuple[list[_Queued], list[Record], list[tuple[int, int, int]]]:
    """The next ``limit`` queued records (all when None) in arrival order, as rows and
    records, and per queue row touched ``(n, done after this batch, count)``."""
    rows: list[_Queued] = []
    recs: list[Record] = []
    progress: list[tuple[int, int, int]] = []
    cur = _claim_queue(conn)
    for n, gw, raws, count, done in cur:  # row by row, only as many as the limit needs
        take = count - done if limit is None else min(count - done, limit - len(rows))
        u = msgpack.Unpacker(raw=False, max_buffer_size=max(1, len(raws)))
        u.feed(raws)
        for _ in range(done):
            u.skip()
        start = u.tell()
        for _ in range(take):
            obj = u.unpack()
            end = u.tell()
            rows.append((n, obj["id"], gw, raws[start:end]))
            recs.append(Record(obj["id"], obj["seq"], obj["type"], obj["ts"], obj["body"]))
            start = end
        progress.append((n, done + take, count))
        if limit is not None and len(rows) >= limit:
            break
    cur.close()
    return rows, recs, progress


# PostgreSQL, several workers: gateways whose queued records one processing job may take
CLAIM_GATEWAYS = 32


def _claim_queue(conn: sqlite3.Connection) -> Any:
    """The queue rows this processing job may work on, in arrival order (a cursor).

    SQLite: all of them (the single writer serialises the workers: nobody else processes
    meanwhile). PostgreSQL, with several central workers processing at once: the rows of at
    most :data:`CLAIM_GATEWAYS` gateways, the first ones in the queue whose transaction-level
    advisory lock (one per gateway) this job gets, skipping those another worker holds; they
    stay this job's until it commits. So one gateway's records are processed by one worker at
    a time, in their order: an order change never races the order it changes (parked or
    drained, ``orders.gateway_change``), nor two changes of one order each other."""
    if dialect(conn) == "sqlite":
        return conn.execute("SELECT n, gateway, raws, count, done FROM work_queue ORDER BY n")
    first = conn.execute(
        "SELECT gateway, min(n) FROM work_queue GROUP BY gateway ORDER BY min(n), gateway LIMIT ?",
        (CLAIM_GATEWAYS * 4,),
    ).fetchall()
    mine: list[str] = []
    for gw, _ in first:
        if conn.execute("SELECT pg_try_advisory_xact_lock(?, hashtext(?))", (WORK_LOCK_SPACE, gw)).fetchone()[
            0
        ]:
            mine.append(gw)
            if len(mine) >= CLAIM_GATEWAYS:
                break
    if not mine:
        return conn.execute("SELECT n, gateway, raws, count, done FROM work_queue WHERE 1 = 0")
    marks = ",".join("?" * len(mine))
    return conn.execute(
        f"SELECT n, gateway, raws, count, done FROM work_queue WHERE gateway IN ({marks}) ORDER BY n", mine
    )


WORK_LOCK_SPACE = 0x5347  # the first key of central's per-gateway processing locks ("SG")


def _left_queued(progress: list[tuple[int, int, int]], left: list[_Queued]) -> list[tuple[int, int, int]]:
    """``progress`` (per queue row: n, done after the batch, count) when the records ``left``
    (the batch's tail) are not processed after all."""
    back: dict[int, int] = {}
    for n, *_ in left:
        back[n] = back.get(n, 0) + 1
    return [(n, done - back.get(n, 0), count) for n, done, count in progress]


def _dequeue(conn: sqlite3.Connection, progress: list[tuple[int, int, int]]) -> None:
    """Queue rows whose records are all processed go; a row processed in part keeps its place."""
    finished = [(n,) for n, done, count in progress if done == count]
    conn.executemany("DELETE FROM work_queue WHERE n = ?", finished)
    for n, done, count in progress:
        if done < count:
            conn.execute("UPDATE work_queue SET done = ? WHERE n = ?", (done, n))


def _orders_together(
    conn: sqlite3.Connection,
    rows: list[Any],
    recs: list[Record],
    start: int,
    *,
    now: int,
    parsed: dict[int, orders.NewOrder | None],
    stop: Callable[[], bool] | None = None,
) -> list[str] | None:
    """Hand the run of new orders from ``start`` to :func:`orders.create_batch` (the numbers
    of those it created, in order: all of them unless ``stop`` said so); None if it failed
    (rolled back: they go one by one).
    ``parsed`` keeps each record's parse across calls."""
    batch: list[orders.NewOrder] = []
    for k in range(start, len(rows)):
        if k not in parsed:
            parsed[k] = _new_order(rows[k][2], recs[k])
        new = parsed[k]
        if new is None:
            break
        batch.append(new)
    try:
        with savepoint(conn, "orders_together"):
            made = orders.create_batch(conn, batch, now=now, stop=stop)
    except Exception as e:
        if is_transient(e):
            raise
        log.exception("orders processed together failed; processing them one by one")
        return None
    return [c.order_no for c in made]


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
        if any(ln.service is not None for ln in order.lines):
            return None  # its services are booked with it: apply_order, on its own
        channel = order.channel.value
        order_in = _order_in(order)
    return _gateway_order(gw, rec, channel, order_in)


def _gateway_order(gw: str, rec: Record, channel: str, order_in: OrderIn) -> orders.NewOrder:
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
