"""The order record: one record whatever the channel, numbered, validated, changed.

Every function runs inside the caller's write transaction (a ``DurableDB.write`` job):

- :func:`create` - a new order from a gateway record, manual entry over REST or a contract
  schedule: stored, numbered, validated (``central.orders.validation`` + the type's own check),
  then validated (hooks: allocation) or held, and routed by its type.
- :func:`apply_change` - modify/add/cancel a line or cancel the order while its state allows.
- :func:`gateway_change` - the same from a gateway's ``order_change`` record, applied in the
  order's change sequence; an early one is parked until its predecessor arrives.
- :func:`approve` / :func:`reject` - a supervisor's decision on a held order.
- :func:`make_contract_delivery` - a scheduled contract delivery becomes an order
  (``central.schedule`` runs the due ones on a clock).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from central import CentralError, downlink
from central.allocate.allocation import ShortageAction, Special, allocate
from central.hub import hub_of, state
from central.orders import lifecycle, masters, ordertypes, validation
from central.orders.lifecycle import Status
from central.orders.validation import Exposure, LineIn, OrderIn, Result
from central.process import tracker
from protocols import ids as record_ids
from protocols.frozen import quick_init
from protocols.order_changes import ChangeAction, OrderChange, parse_order_change
from runtime.clock import now_ms
from runtime.dbapi import dialect, give_back_id, next_ids
from runtime.sqlitedb import insert_rows, savepoint


class OrderError(CentralError):
    """A request about an order that cannot be done; ``status`` is the HTTP-ish class."""

    def __init__(self, reason: str, *, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # invalid | not_found | conflict


def order_no(order_id: int) -> str:
    return f"SO{order_id:08d}"


def today_of(now_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()


@dataclass(frozen=True, slots=True)
class Created:
    order_id: int
    order_no: str
    status: str
    result: Result


def create(
    conn: sqlite3.Connection,
    order: OrderIn,
    *,
    record_id: str,
    gateway: str,
    seq: int,
    channel: str,
    created_at: int,
    now: int,
    actor: str = "system",
    origin: str = "",
    refuse_failures: bool = False,
) -> Created:
    """Store, number and validate one order. With ``refuse_failures`` (manual entry, a person
    is there to fix it) an order failing completeness raises :class:`OrderError` instead."""
    snap = masters.cache(conn)
    result = _validate(conn, order, snap, now=now, order_id=None)
    if refuse_failures and result.failures:
        raise OrderError("; ".join(f"{c.name}: {c.detail}" for c in result.failures))
    # the id first, so the order is numbered in its INSERT (runtime.dbapi.next_ids)
    (oid,) = next_ids(conn, "orders", "order_id")
    number = order_no(oid)
    conn.execute(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, note, source_ref, created_at, received_at, updated_at, value, requirements)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?)",
        (
            oid,
            number,
            record_id,
            gateway,
            seq,
            order.customer,
            channel,
            order.order_type,
            order.requested_date.isoformat(),
            order.note,
            order.source_ref,
            created_at,
            now,
            now,
            result.value,
            result.requirements,
        ),
    )
    priced = {p.line_no: p for p in result.lines}
    conn.executemany(
        "INSERT INTO order_lines (order_id, line_no, gtin, sku, qty, price, unit_price, amount)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                oid,
                ln.line_no,
                ln.gtin,
                priced[ln.line_no].sku,
                ln.qty,
                ln.price,
                priced[ln.line_no].unit_price,
                priced[ln.line_no].amount,
            )
            for ln in order.lines
        ],
    )
    lifecycle.record_event(
        conn, oid, "received", detail=origin or f"via {channel}", actor=actor, status="received", now=now
    )
    row = lifecycle.OrderRow(
        "received", order.order_type, order.customer, result.value, gateway, record_id, number
    )
    with lifecycle.coalesce_status(conn):
        status = _decide(conn, oid, order, snap, result, actor=actor, now=now, current=row, run=1)
    return Created(oid, number, status, result)


def _validate(
    conn: sqlite3.Connection, order: OrderIn, snap: masters.Snapshot, *, now: int, order_id: int | None
) -> Result:
    row = conn.execute(
        "SELECT receivables, open_value FROM customers WHERE code = ?", (order.customer,)
    ).fetchone()
    exposure = Exposure(*row) if row else Exposure()
    tc = ordertypes.check(conn, order, snap, order_id=order_id)
    return validation.validate(
        order,
        snap,
        today=today_of(now),
        exposure=exposure,
        type_check=tc.check,
        fixed_prices=tc.fixed_prices,
        fixed_amounts=tc.fixed_amounts,
    )


def _record_checks(conn: sqlite3.Connection, oid: int, result: Result, now: int, run: int = 0) -> None:
    run = (
        run
        or conn.execute(
            "SELECT coalesce(max(run), 0) + 1 FROM order_checks WHERE order_id = ?", (oid,)
        ).fetchone()[0]
    )
    conn.executemany(
        "INSERT INTO order_checks (order_id, run, name, outcome, detail, at, pos)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(oid, run, c.name, c.outcome.value, c.detail, now, i) for i, c in enumerate(result.checks)],
    )


def _decide(
    conn: sqlite3.Connection,
    oid: int,
    order: OrderIn,
    snap: masters.Snapshot,
    result: Result,
    *,
    actor: str,
    now: int,
    current: Status | lifecycle.OrderRow,
    approved_by: str = "",
    run: int = 0,
) -> str:
    """Record the checks, then validate (and route) or hold the order. ``current`` is the
    status, or the whole row when the caller has it (a new order: saves reading it back)."""
    _record_checks(conn, oid, result, now, run)
    row = current if isinstance(current, lifecycle.OrderRow) else None
    status_now = Status(row.status) if row else current
    assert isinstance(status_now, Status)
    summary = result.summary()
    if result.passed or (approved_by and not result.failures):
        detail = f"checks: {summary}"
        if approved_by:
            detail = f"hold approved by {approved_by}; {detail}"
        ordertypes.apply_effects(conn, oid, order, snap, now)
        _move(conn, oid, row, Status.VALIDATED, actor=actor, detail=detail, now=now)
        ordertypes.route(conn, oid, order, snap, value=result.value, now=now)
        if row is not None and not hub_of(conn).on_validated and order.order_type not in _ROUTED:
            return Status.VALIDATED.value  # nothing else can have moved it
    else:
        reasons = "; ".join(c.text() for c in result.holds)
        if status_now is Status.HELD:
            conn.execute("UPDATE orders SET hold_reason = ? WHERE order_id = ?", (reasons, oid))
            lifecycle.record_event(conn, oid, "still held", detail=f"checks: {summary}", actor=actor, now=now)
            _notify_current(conn, oid, f"still held: {reasons}", now)
        else:
            _move(conn, oid, row, Status.HELD, actor=actor, detail=reasons, now=now)
            lifecycle.record_event(conn, oid, "checks", detail=summary, actor=actor, now=now)
            if row is not None:
                return Status.HELD.value
    status: str = conn.execute("SELECT status FROM orders WHERE order_id = ?", (oid,)).fetchone()[0]
    return status


_ROUTED = frozenset({"cash-sale", "drop-ship"})


def _move(
    conn: sqlite3.Connection,
    oid: int,
    row: lifecycle.OrderRow | None,
    new: Status,
    *,
    actor: str,
    detail: str,
    now: int,
) -> None:
    if row is None:
        lifecycle.transition(conn, oid, new, actor=actor, detail=detail, now=now)
    else:
        lifecycle.transition_from(conn, oid, row, new, actor=actor, detail=detail, now=now)


def _notify_current(conn: sqlite3.Connection, oid: int, detail: str, now: int) -> None:
    gw, rid, no, status = conn.execute(
        "SELECT gateway, record_id, order_no, status FROM orders WHERE order_id = ?", (oid,)
    ).fetchone()
    version = conn.execute("SELECT max(id) FROM order_events WHERE order_id = ?", (oid,)).fetchone()[0]
    lifecycle.notify_status(
        conn,
        gateway=gw,
        body={
            "record_id": rid,
            "order_no": no,
            "status": status,
            "detail": detail,
            "version": version,
            "at": now,
        },
    )


# -- loading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    order_id: int
    order_no: str
    status: Status
    gateway: str
    record_id: str
    value: int
    change_seq: int
    order: OrderIn


def find(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute(
        "SELECT order_id FROM orders WHERE order_no = ? OR record_id = ?", (key, key)
    ).fetchone()
    if row is None:
        raise OrderError(f"no order with number or record id {key!r}", kind="not_found")
    return int(row[0])


def load(conn: sqlite3.Connection, oid: int) -> Stored:
    row = conn.execute(
        "SELECT order_no, status, gateway, record_id, value, change_seq, customer, order_type,"
        " requested_date, note, source_ref FROM orders WHERE order_id = ?",
        (oid,),
    ).fetchone()
    if row is None:
        raise OrderError(f"no order with id {oid}", kind="not_found")
    lines = tuple(
        LineIn(line_no=r[0], qty=r[1], gtin=r[2], sku=r[3], price=r[4])
        for r in conn.execute(
            "SELECT line_no, qty, gtin, sku, price FROM order_lines WHERE order_id = ? AND cancelled = 0"
            " ORDER BY line_no",
            (oid,),
        )
    )
    order = OrderIn(
        customer=row[6],
        order_type=row[7],
        requested_date=dt.date.fromisoformat(row[8]),
        lines=lines,
        note=row[9],
        source_ref=row[10],
    )
    return Stored(oid, row[0], Status(row[1]), row[2], row[3], row[4], row[5], order)


# editable statuses whose value is in the customer's open orders and whose effects are applied
_COUNTED_OPEN = frozenset({Status.VALIDATED, Status.ALLOCATED})


def revalidate(conn: sqlite3.Connection, oid: int, *, actor: str, now: int, approved_by: str = "") -> str:
    """Run the checks again (after a change, a master fix, or a supervisor's approval). An
    allocated order (its allocation given back by :func:`apply_change`) goes back to
    validated - allocated again by the hub's ``on_validated`` hooks - or to held."""
    st = load(conn, oid)
    if st.status not in lifecycle.EDITABLE:
        raise OrderError(
            f"order {st.order_no} is {st.status}; checks run only before release to picking", kind="conflict"
        )
    if st.status in _COUNTED_OPEN:
        ordertypes.undo_effects(conn, oid)
    snap = masters.cache(conn)
    result = _validate(conn, st.order, snap, now=now, order_id=oid)
    if approved_by and result.failures:
        raise OrderError(
            "cannot approve past: " + "; ".join(f"{c.name}: {c.detail}" for c in result.failures),
            kind="conflict",
        )
    priced = {p.line_no: p for p in result.lines}
    conn.executemany(
        "UPDATE order_lines SET sku = ?, unit_price = ?, amount = ? WHERE order_id = ? AND line_no = ?",
        [(p.sku, p.unit_price, p.amount, oid, p.line_no) for p in priced.values()],
    )
    if st.status in _COUNTED_OPEN:  # the open value moves with the order's new value
        conn.execute(
            "UPDATE customers SET open_value = open_value + ? WHERE code = ?",
            (result.value - st.value, st.order.customer),
        )
    conn.execute(
        "UPDATE orders SET value = ?, requirements = ?, updated_at = ? WHERE order_id = ?",
        (result.value, result.requirements, now, oid),
    )
    with lifecycle.coalesce_status(conn):
        if st.status is Status.VALIDATED and result.passed:
            _record_checks(conn, oid, result, now)
            ordertypes.apply_effects(conn, oid, st.order, snap, now)
            lifecycle.record_event(
                conn, oid, "revalidated", detail=f"checks: {result.summary()}", actor=actor, now=now
            )
            _notify_current(conn, oid, "revalidated after a change", now)
            return st.status.value
        return _decide(
            conn,
            oid,
            st.order,
            snap,
            result,
            actor=actor,
            now=now,
            current=st.status,
            approved_by=approved_by,
        )


def approve(conn: sqlite3.Connection, key: str, *, actor: str, reason: str, now: int) -> str:
    oid = find(conn, key)
    st = load(conn, oid)
    if st.status is not Status.HELD:
        raise OrderError(f"order {st.order_no} is {st.status}, not held", kind="conflict")
    lifecycle.record_event(conn, oid, "hold approved", detail=reason or "approved", actor=actor, now=now)
    return revalidate(conn, oid, actor=actor, now=now, approved_by=actor)


def reject(conn: sqlite3.Connection, key: str, *, actor: str, reason: str, now: int) -> str:
    oid = find(conn, key)
    st = load(conn, oid)
    if st.status is not Status.HELD:
        raise OrderError(f"order {st.order_no} is {st.status}, not held", kind="conflict")
    lifecycle.record_event(conn, oid, "hold rejected", detail=reason or "rejected", actor=actor, now=now)
    lifecycle.transition(conn, oid, Status.CANCELLED, actor=actor, detail=f"hold rejected: {reason}", now=now)
    return Status.CANCELLED.value


# -- changes ------------------------------------------------------------------------------


def apply_change(conn: sqlite3.Connection, oid: int, change: OrderChange, *, actor: str, now: int) -> str:
    """Apply one change; raises OrderError(kind="conflict") when the order's state forbids it."""
    st = load(conn, oid)
    why = f" ({change.reason})" if change.reason else ""
    if change.action is ChangeAction.CANCEL_ORDER:
        if not lifecycle.allowed(st.status, Status.CANCELLED, st.order.order_type):
            raise OrderError(f"order {st.order_no} is {st.status}: too late to cancel", kind="conflict")
        with lifecycle.coalesce_status(conn):
            lifecycle.transition(conn, oid, Status.CANCELLED, actor=actor, detail=f"cancelled{why}", now=now)
        return Status.CANCELLED.value
    if st.status not in lifecycle.EDITABLE:
        raise OrderError(
            f"order {st.order_no} is {st.status}: lines can no longer change (released to picking)",
            kind="conflict",
        )
    lines = {ln.line_no: ln for ln in st.order.lines}
    if change.action is not ChangeAction.ADD_LINE:
        assert change.line_no is not None
        if change.line_no not in lines:
            raise OrderError(f"order {st.order_no} has no open line {change.line_no}", kind="conflict")
        if change.action is ChangeAction.CANCEL_LINE and len(lines) == 1:
            raise OrderError(
                f"line {change.line_no} is the last open line: cancel the order", kind="conflict"
            )
    if st.status is Status.ALLOCATED:  # the change is allowed: give the allocation back first
        for hook in hub_of(conn).on_give_back:  # (the checks below allocate again)
            hook(conn, oid)
    if change.action is ChangeAction.ADD_LINE:
        n = conn.execute("SELECT max(line_no) FROM order_lines WHERE order_id = ?", (oid,)).fetchone()[0]
        conn.execute(
            "INSERT INTO order_lines (order_id, line_no, gtin, sku, qty, price) VALUES (?, ?, ?, ?, ?, ?)",
            (oid, n + 1, change.gtin, change.sku, change.qty, change.price),
        )
        text = f"line {n + 1} added: {change.sku or change.gtin} x{change.qty}{why}"
    else:
        assert change.line_no is not None
        if change.action is ChangeAction.CANCEL_LINE:
            conn.execute(
                "UPDATE order_lines SET cancelled = 1 WHERE order_id = ? AND line_no = ?",
                (oid, change.line_no),
            )
            from central.promising import services  # noqa: PLC0415 - services imports this module

            services.on_line_cancelled(conn, oid, change.line_no, actor=actor, now=now)
            text = f"line {change.line_no} cancelled{why}"
        else:
            old = lines[change.line_no]
            price = change.price if change.price is not None else old.price
            conn.execute(
                "UPDATE order_lines SET qty = ?, price = ? WHERE order_id = ? AND line_no = ?",
                (change.qty, price, oid, change.line_no),
            )
            text = f"line {change.line_no} qty {old.qty} -> {change.qty}{why}"
    lifecycle.record_event(conn, oid, "changed", detail=text, actor=actor, now=now)
    return revalidate(conn, oid, actor=actor, now=now)


def may_have_parked(conn: sqlite3.Connection) -> bool:
    """False when no order change is parked. A connection that found none need not look again
    while nobody else has committed (SQLite's ``PRAGMA data_version`` unmoved): another central
    worker on the database may park a change for an order this one is about to create. On
    PostgreSQL it always looks (one indexed row at most)."""
    st = state(conn)
    version = conn.execute("PRAGMA data_version").fetchone()[0] if dialect(conn) == "sqlite" else None
    if version is not None and st.none_parked == version:
        return False
    if conn.execute("SELECT 1 FROM parked_changes LIMIT 1").fetchone() is None:
        st.none_parked = version
        return False
    return True


def gateway_change(
    conn: sqlite3.Connection, *, gateway: str, record_id: str, body: dict[str, Any], now: int
) -> str:
    """An ``order_change`` record: apply in the order's sequence, or park it until its turn."""
    change = parse_order_change(body)
    row = conn.execute(
        "SELECT order_id, gateway, change_seq, order_no FROM orders WHERE record_id = ?", (change.order,)
    ).fetchone()
    if row is not None and row[1] != gateway:
        raise OrderError(f"order {change.order!r} came from another gateway")
    if row is not None and change.change_seq <= row[2]:
        raise OrderError(f"change_seq {change.change_seq} already applied to {row[3]} (at {row[2]})")
    if row is None or change.change_seq != row[2] + 1:
        if conn.execute(
            "SELECT 1 FROM parked_changes WHERE order_ref = ? AND change_seq = ?",
            (change.order, change.change_seq),
        ).fetchone():
            raise OrderError(f"change_seq {change.change_seq} for {change.order!r} is already waiting")
        state(conn).none_parked = None
        conn.execute(
            "INSERT INTO parked_changes (order_ref, change_seq, record_id, gateway, body, parked_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (change.order, change.change_seq, record_id, gateway, msgpack.packb(body), now),
        )
        return "parked"
    _apply_in_sequence(conn, row[0], change, gateway=gateway, now=now)
    drain_parked(conn, change.order, now=now)
    return str(row[3])


def _apply_in_sequence(
    conn: sqlite3.Connection, oid: int, change: OrderChange, *, gateway: str, now: int
) -> None:
    conn.execute("UPDATE orders SET change_seq = ? WHERE order_id = ?", (change.change_seq, oid))
    try:
        with savepoint(conn, "order_change"):
            apply_change(conn, oid, change, actor=f"gateway:{gateway}", now=now)
    except OrderError as e:  # refused by the order's state: the sequence still moves on
        lifecycle.record_event(
            conn,
            oid,
            "change refused",
            detail=f"change {change.change_seq}: {e.reason}",
            actor=f"gateway:{gateway}",
            now=now,
        )
        _notify_current(conn, oid, f"change {change.change_seq} refused: {e.reason}", now)
        return


def drain_parked(conn: sqlite3.Connection, order_ref: str, *, now: int) -> int:
    """Apply parked changes of an order that are now next in its sequence."""
    applied = 0
    while True:
        row = conn.execute(
            "SELECT o.order_id, p.body, p.gateway, p.change_seq FROM orders o JOIN parked_changes p"
            " ON p.order_ref = o.record_id AND p.change_seq = o.change_seq + 1 WHERE o.record_id = ?",
            (order_ref,),
        ).fetchone()
        if row is None:
            return applied
        oid, packed, gw, cseq = row
        conn.execute("DELETE FROM parked_changes WHERE order_ref = ? AND change_seq = ?", (order_ref, cseq))
        change = parse_order_change(msgpack.unpackb(packed))
        _apply_in_sequence(conn, oid, change, gateway=gw, now=now)
        applied += 1


# -- contracts -------------------------------------------------------------------------------


def due_contract_deliveries(
    conn: sqlite3.Connection, today: dt.date, *, limit: int = -1
) -> list[tuple[str, str, str]]:
    """(contract, date, customer) of the active contracts' deliveries due by ``today`` that
    have no order yet, oldest first; at most ``limit`` of them (negative: all)."""
    sql = (
        "SELECT d.contract, d.date, c.customer FROM contract_deliveries d"
        " JOIN contracts c ON c.code = d.contract"
        " WHERE d.order_id IS NULL AND d.date <= ? AND c.active = 1 ORDER BY d.date, d.contract"
    )
    params: tuple[Any, ...] = (today.isoformat(),)
    if limit >= 0:  # PostgreSQL refuses SQLite's LIMIT -1
        sql, params = sql + " LIMIT ?", (*params, limit)
    return [(str(c), str(d), str(cu)) for c, d, cu in conn.execute(sql, params)]


def make_contract_delivery(
    conn: sqlite3.Connection, code: str, date: str, customer: str, *, today: dt.date, now: int
) -> Created:
    """The order of one scheduled contract delivery, marked on the delivery in the same
    transaction (so it is made once)."""
    lines = tuple(
        LineIn(line_no=i + 1, qty=q, sku=s)
        for i, (s, q) in enumerate(
            conn.execute("SELECT sku, qty FROM contract_lines WHERE contract = ? ORDER BY sku", (code,))
        )
    )
    gw = conn.execute("SELECT gateway FROM customers WHERE code = ?", (customer,)).fetchone()
    order = OrderIn(
        customer=customer,
        order_type="contract",
        requested_date=max(dt.date.fromisoformat(date), today),
        lines=lines,
        note=f"scheduled delivery {date} of contract {code}",
        source_ref=code,
    )
    created = create(
        conn,
        order,
        record_id=f"contract:{code}:{date}",
        gateway=(gw[0] or "") if gw else "",
        seq=0,
        channel="schedule",
        created_at=now,
        now=now,
        origin=f"contract {code} delivery due {date}",
    )
    cur = conn.execute(
        "UPDATE contract_deliveries SET order_id = ? WHERE contract = ? AND date = ? AND order_id IS NULL",
        (created.order_id, code, date),
    )
    if cur.rowcount != 1:
        raise OrderError(f"contract {code} delivery {date} already has its order", kind="conflict")
    return created


def with_line_numbers(order: OrderIn) -> OrderIn:
    return replace(order, lines=tuple(replace(ln, line_no=i + 1) for i, ln in enumerate(order.lines)))


# -- new orders from gateways: one path, set-based where it pays ---------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class NewOrder:
    """A new order from a gateway record, as :func:`create_batch` takes it."""

    record_id: str
    gateway: str
    seq: int
    channel: str
    created_at: int
    origin: str
    order: OrderIn


_FAST_KEYS = {"orders": "order_id", "order_events": "id", "alloc_runs": "run_id", "downlink_outbox": "seq"}


class _Ids:
    """The ids the set-based path gives its rows, in the order one by one would take them.
    SQLite (one writer): what AUTOINCREMENT would hand out next, read once and counted on.
    PostgreSQL: taken from the tables' sequences (other workers take theirs meanwhile) in a few
    round trips per run: a block of order ids at its first order, the runs', events' and
    downlink's ids once it is known how many went through; the order ids not used go back to
    the connection for the next orders (``runtime.dbapi.give_back_id``)."""

    __slots__ = ("_conn", "_next", "_orders")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._next: dict[str, int] | None = None
        self._orders: list[int] = []  # order ids taken (PostgreSQL), not used yet
        if dialect(conn) == "sqlite":
            row = conn.execute(
                "SELECT "
                + ", ".join(
                    f"max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{t}'), 0),"
                    f" coalesce((SELECT max({k}) FROM {t}), 0)) + 1"
                    for t, k in _FAST_KEYS.items()
                )
            ).fetchone()
            self._next = dict(zip(_FAST_KEYS, row, strict=True))

    def _count(self, table: str, n: int = 1) -> list[int]:
        assert self._next is not None
        first = self._next[table]
        self._next[table] = first + n
        return list(range(first, first + n))

    def order(self, left: int) -> int:
        """The next order's id; ``left``: orders left in the run, this one included."""
        if self._next is not None:
            return self._count("orders")[0]
        if not self._orders:
            self._orders = next_ids(self._conn, "orders", "order_id", left)
        return self._orders[0]

    def used(self) -> None:
        """The order of :meth:`order` went through."""
        if self._next is None:
            self._orders.pop(0)

    def done(self, n: int) -> list[tuple[int, list[int], int]]:
        """The run ended with ``n`` orders through: each one's run id, three event ids and
        status record's downlink seq. Order ids taken and not used go back."""
        for oid in reversed(self._orders):
            give_back_id(self._conn, "orders", "order_id", oid)
        self._orders = []
        if n == 0:
            return []
        if self._next is not None:
            out = []
            for _ in range(n):
                run, events = self._count("alloc_runs")[0], self._count("order_events", 3)
                out.append((run, events, self._count("downlink_outbox")[0]))
            return out
        runs = next_ids(self._conn, "alloc_runs", "run_id", n)
        events = next_ids(self._conn, "order_events", "id", 3 * n)
        seqs = next_ids(self._conn, "downlink_outbox", "seq", n)
        return [(runs[k], events[3 * k : 3 * k + 3], seqs[k]) for k in range(n)]


def create_batch(
    conn: sqlite3.Connection, new: Sequence[NewOrder], *, now: int, stop: Callable[[], bool] | None = None
) -> list[Created]:
    """Create new gateway orders, in their order: the one way a gateway's order is created.
    Each run of orders that takes the common path (a normal order that passes its checks and
    is allocated in full, allocation in real time and nothing else hooked) is written
    set-based, together; any other order goes through :func:`create` and then takes any
    change already parked for it. Either way every order leaves the same ids, rows and order
    history as one :func:`create` per order would. ``stop``, asked before each order once one
    is made, ends early when it says so; returns the orders created (a prefix of ``new``)."""
    out: list[Created] = []
    i = 0
    while i < len(new):
        if out and stop is not None and stop():
            break
        together = _create_together(conn, new[i:], now=now, stop=stop)
        if together:
            out += together
            i += len(together)
            continue
        n = new[i]
        created = create(
            conn,
            n.order,
            record_id=n.record_id,
            gateway=n.gateway,
            seq=n.seq,
            channel=n.channel,
            created_at=n.created_at,
            now=now,
            origin=n.origin,
        )
        if (
            may_have_parked(conn)
            and conn.execute(
                "SELECT 1 FROM parked_changes WHERE order_ref = ? LIMIT 1", (n.record_id,)
            ).fetchone()
        ):
            drain_parked(conn, n.record_id, now=now)
        out.append(created)
        i += 1
    return out


def _create_together(
    conn: sqlite3.Connection, new: Sequence[NewOrder], *, now: int, stop: Callable[[], bool] | None = None
) -> list[Created]:
    """The longest prefix of ``new`` that takes the common path, set-based: each order is
    validated and allocated in Python, in arrival order, over shared in-memory customer
    exposure and stock, then every table is written with one statement. ``[]`` when the
    first order does not take it. ``stop`` as for :func:`create_batch`."""
    from central.allocate import demand, inventory, waves  # noqa: PLC0415 - waves -> shortage -> demand

    hub = hub_of(conn)
    settings = hub.allocation
    if (
        not new
        or not settings.realtime
        or hub.on_validated != [waves.on_validated]
        or lifecycle.coalescing(conn)
        or may_have_parked(conn)
    ):
        return []
    # a line walking an imported process definition (central/PROCESS.md) takes the hooks: the
    # first order is asked before the run's reads, so orders going one by one cost no rereads
    process = tracker.batch_filter(conn)
    if process is not None and new[0].order.order_type == "normal":
        first, snap0 = new[0], masters.cache(conn)
        first_skus = [it.sku if (it := snap0.resolve(ln.gtin, ln.sku)) else "" for ln in first.order.lines]
        if process(first.order.customer, first.channel, first_skus):
            return []
        process.read({ln.sku for n in new for ln in n.order.lines if ln.sku})  # the run's items at once
    layout = demand.customer_layout(conn)
    if layout.key is None or layout.has_priority or "open_value" not in layout.select:
        return []
    i_recv = layout.select.index("receivables") if "receivables" in layout.select else None
    i_open = layout.select.index("open_value")
    # what the last run kept if nothing changed it since: stock, the customers' rows
    # (exposure and allocation profile) and who is owed ship-with-next stock (that order
    # takes the refill path, one by one); the customers of this run not known yet, read now
    kept = inventory.take_stock(conn)
    if kept.select != layout.select:
        kept.select, kept.customers, kept.owed = layout.select, {}, {}
    customers, owed = kept.customers, kept.owed
    unknown = sorted({n.order.customer for n in new} - customers.keys())
    for k in range(0, len(unknown), 500):
        names = unknown[k : k + 500]
        marks = ",".join("?" * len(names))
        customers.update(dict.fromkeys(names))
        for row in conn.execute(
            f"SELECT {', '.join(layout.select)} FROM customers WHERE {layout.key} IN ({marks})", names
        ):
            customers[row[0]] = list(row)
        owed.update(dict.fromkeys(names, False))
        for (c,) in conn.execute(
            "SELECT DISTINCT customer FROM shortages WHERE status = 'open' AND action = ?"
            f" AND customer IN ({marks})",
            [ShortageAction.SHIP_WITH_NEXT.value, *names],
        ):
            owed[c] = True
    snap = masters.cache(conn)
    network = kept.network = kept.network or inventory.load_network(conn)
    ids = _Ids(conn)
    today_v = today_of(now)
    today_a = dt.date.today()
    iso_today = today_a.isoformat()
    kw: dict[str, Any] = {"network": network, "rules": settings.priority, "company": settings.company}
    setting = (network, settings.priority, settings.company)
    if kept.packer is None or kept.packer[0] != setting:
        kept.packer = (setting, inventory.InputsPacker(**kw))
    packer = kept.packer[1]
    o_rows: list[tuple[Any, ...]] = []
    l_rows: list[tuple[Any, ...]] = []
    e_rows: list[tuple[Any, ...]] = []
    c_rows: list[tuple[Any, ...]] = []
    r_rows: list[tuple[Any, ...]] = []
    a_rows: list[tuple[Any, ...]] = []
    s_rows: list[tuple[Any, ...]] = []
    d_rows: list[tuple[Any, ...]] = []
    open_delta: dict[str, int] = {}
    bump: dict[tuple[str, str], int] = {}
    made: list[Created] = []
    through: list[tuple[Any, ...]] = []  # what each order that went through needs once ids are known
    # the stock of every sku named in this run not read yet, in one read (a sku given as a
    # GTIN only: when its order comes)
    avail = kept.avail
    kept.read(conn, sorted({ln.sku for n in new for ln in n.order.lines if ln.sku}))
    status_ids = iter(record_ids.new_record_ids(len(new), now))  # one random read for the run
    for k, n in enumerate(new):
        if made and stop is not None and stop():
            break
        order = n.order
        crow = customers[order.customer]
        if order.order_type != "normal" or not n.gateway or crow is None or owed[order.customer]:
            break
        tc = ordertypes.check(conn, order, snap, order_id=None)
        result = validation.validate(
            order,
            snap,
            today=today_v,
            exposure=Exposure(crow[i_recv] if i_recv is not None else 0, crow[i_open]),
            type_check=tc.check,
            fixed_prices=tc.fixed_prices,
            fixed_amounts=tc.fixed_amounts,
        )
        if not result.passed:
            break
        if process is not None and process(order.customer, n.channel, [p.sku or "" for p in result.lines]):
            break  # a line walks an imported process definition: one by one, through the hooks
        oid = ids.order(len(new) - k)
        number = order_no(oid)
        priced = {p.line_no: p for p in result.lines}
        lines = [(ln.line_no, ln.gtin, priced[ln.line_no].sku, ln.qty, ln.price) for ln in order.lines]
        requested = order.requested_date.isoformat()
        # validated: the order's value is open from here (the allocation sees it in credit)
        open_after = crow[i_open] + result.value
        profile = demand.profile(layout, (*crow[:i_open], open_after, *crow[i_open + 1 :]))
        special = set()
        if requested <= iso_today:
            special.add(Special.PROMISED.value)
        if str(order.note).upper().startswith("URGENT"):
            special.add(Special.URGENT.value)
        dl = sorted([(ln, sku or gtin or "", qty) for ln, gtin, sku, qty, _ in lines])
        d = demand.make_demand(
            oid, order.customer, dl, profile, special=special, received_at=now, value=result.value
        )
        skus = {ln.sku for ln in d.lines}
        kept.read(conn, skus)
        stock = kept.of(skus)
        title = f"real-time order {oid}"
        res = allocate([d], stock, title=title, **kw)
        if res.shortfalls or len(res.outcomes) != 1 or res.outcomes[0].status != "allocated":
            break
        # -- the order goes through: its rows, in the order one by one would write them (those
        # that carry run, event and downlink ids once the run's end tells how many)
        ids.used()
        t_alloc = now_ms()
        o_rows.append(
            (
                oid,
                number,
                n.record_id,
                n.gateway,
                n.seq,
                order.customer,
                n.channel,
                order.order_type,
                requested,
                "allocated",
                order.note,
                order.source_ref,
                n.created_at,
                now,
                t_alloc,
                result.value,
                result.requirements,
            )
        )
        l_rows.extend(
            (oid, ln, gtin, sku, qty, price, priced[ln].unit_price, priced[ln].amount)
            for ln, gtin, sku, qty, price in lines
        )
        c_rows.extend(
            (oid, 1, c.name, c.outcome.value, c.detail, now, i) for i, c in enumerate(result.checks)
        )
        open_delta[order.customer] = open_delta.get(order.customer, 0) + result.value
        crow[i_open] = open_after
        for a in res.allocations:
            key = (a.location, a.sku)
            avail[key] -= a.qty
            bump[key] = bump.get(key, 0) + a.qty
        through.append((n, oid, number, result, res, t_alloc, packer.pack([d], stock, title=title)))
        made.append(Created(oid, number, "allocated", result))
    for (run_id, (ev, ev1, ev2), dl_seq), (n, oid, number, result, res, t_alloc, inputs) in zip(
        ids.done(len(made)), through, strict=True
    ):
        outcome = res.outcomes[0]
        detail = (
            f"realtime run {run_id}: {outcome.allocated} allocated, {outcome.short} short"
            f" (rank {outcome.rank})"
        )
        e_rows.append((ev, oid, now, "received", "received", n.origin or f"via {n.channel}", "system"))
        e_rows.append((ev1, oid, now, "validated", "validated", f"checks: {result.summary()}", "system"))
        text = res.trace_text
        r_rows.append(
            (run_id, "realtime", None, t_alloc, inputs, text, hashlib.sha256(text.encode()).hexdigest())
        )
        a_rows.extend(
            (a.order_id, a.line_no, a.location, a.sku, a.qty, a.rule, run_id, None, t_alloc)
            for a in res.allocations
        )
        s_rows.append((oid, "allocated", run_id, None, None, t_alloc))
        e_rows.append((ev2, oid, t_alloc, "allocated", "allocated", detail, "allocation"))
        body = {
            "record_id": n.record_id,
            "order_no": number,
            "status": "allocated",
            "detail": detail,
            "version": ev2,
            "at": t_alloc,
        }
        d_rows.append(
            downlink.packed_row(
                n.gateway,
                lifecycle.STATUS_RECORD,
                body,
                seq=dl_seq,
                record_id=next(status_ids),
            )
        )
    if not made:
        inventory.keep_stock(conn, kept)
        return []
    # every table in a few multi-row statements, in the order one by one writes them
    insert_rows(
        conn,
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel,"
        " order_type, requested_date, status, note, source_ref, created_at, received_at, updated_at,"
        " value, requirements)",
        o_rows,
    )
    insert_rows(
        conn, "INSERT INTO order_lines (order_id, line_no, gtin, sku, qty, price, unit_price, amount)", l_rows
    )
    insert_rows(conn, "INSERT INTO order_events (id, order_id, at, event, status, detail, actor)", e_rows)
    insert_rows(conn, "INSERT INTO order_checks (order_id, run, name, outcome, detail, at, pos)", c_rows)
    conn.executemany(
        "UPDATE customers SET open_value = open_value + ? WHERE code = ?",
        [(v, c) for c, v in open_delta.items()],
    )
    insert_rows(conn, "INSERT INTO alloc_runs (run_id, kind, wave_id, at, inputs, trace, digest)", r_rows)
    inventory.bump(conn, bump)
    insert_rows(
        conn,
        "INSERT INTO allocations (order_id, line_no, location, sku, qty, rule, run_id, wave_id, created_at)",
        a_rows,
    )
    insert_rows(
        conn, "INSERT INTO alloc_orders (order_id, status, run_id, wave_id, deadline, updated_at)", s_rows
    )
    downlink.insert_rows(conn, d_rows)
    inventory.keep_stock(conn, kept)  # the rows now match it, bumps included
    return made
