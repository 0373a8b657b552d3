"""Delivery slots per route and date, and the field services of order lines booked into them.

The ``slots`` master is a weekly template: per route (a customer's ``route``, else its zone,
its ``region``), weekday and slot name, a capacity (visits). A date's slots are its weekday's
rows; what is booked on a date is kept in ``slot_load`` (route, day, slot, booked), moved
only by :func:`_take` / :func:`_give` - the capacity is checked in the UPDATE itself
(``booked + units <= capacity``), so bookings made at once can never pass it.

A line of ``POST /api/orders`` may carry ``"service": {"code": "INSTALL", "date":
"2026-12-08", "slot": "08-12"}`` (a ``field`` service of the ``services`` master; each booking
takes its ``slot_units``). :func:`book_order` books every such line in the order's own
transaction: booked, or - the slot full - the booking is kept ``waiting`` and the order is
held (``slot full: ...``, its allocation given back) with the free slots around the date
offered. Rescheduling a waiting booking into a free slot books it and checks the order again
(a held order with nothing else wrong is validated and allocated); until then nothing but
a supervisor's approve lets the order go on (:func:`keeps_held`). A gateway's order is
booked the same way when central processes it, never refused: what cannot be booked holds
it. Rescheduling or cancelling a booking frees its capacity; an order cancel frees all its
bookings (:func:`on_cancelled`, on the hub's ``on_cancelled``), a cancelled line its own.
Completing the service is an event in the order's history.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from central.hub import hub_of
from central.orders import lifecycle, orders
from central.orders.masters import WEEKDAYS
from central.promising import ScheduleError
from protocols.records import LineService
from runtime.clock import now_ms

ALTERNATIVES = 5  # free slots offered when the one asked for is full
SEARCH_DAYS = 28  # how far alternatives are looked for
MAX_DAYS = 92  # GET /api/slots: days in one answer


@dataclass(frozen=True, slots=True)
class ServiceAsk:
    line_no: int
    code: str
    date: dt.date
    slot: str


def asks_of(lines: Sequence[LineService | None]) -> list[ServiceAsk]:
    """The service requests of an order's lines (``protocols.records.OrderLine.service``),
    numbered as the lines are (from 1)."""
    return [ServiceAsk(i, s.code, s.date, s.slot) for i, s in enumerate(lines, 1) if s is not None]


def split_promise(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``POST /api/orders``'s body -> (the order record's body, the promise ref it claims or "")."""
    if "promise" not in body:
        return body, ""
    body = dict(body)
    ref = body.pop("promise")
    if not isinstance(ref, str) or not ref or len(ref) > 64:
        raise ScheduleError("promise: expected a promise ref (text)")
    return body, ref


# -- routes and slots -------------------------------------------------------------------------


def route_of(conn: sqlite3.Connection, customer: str) -> str:
    row = conn.execute("SELECT route, region FROM customers WHERE code = ?", (customer,)).fetchone()
    if row is None:
        raise ScheduleError(f"customer {customer!r} is not in the masters")
    return str(row[0] or row[1] or "")


def weekday(day: dt.date) -> str:
    return WEEKDAYS[day.weekday()]


def capacity(conn: sqlite3.Connection, route: str, day: dt.date, slot: str) -> int | None:
    """The template's capacity of ``slot`` on ``day`` for ``route``; None: no such slot."""
    row = conn.execute(
        "SELECT capacity FROM slot_templates WHERE route = ? AND weekday = ? AND slot = ?",
        (route, weekday(day), slot),
    ).fetchone()
    return None if row is None else int(row[0])


def slots(conn: sqlite3.Connection, route: str, start: dt.date, days: int) -> list[dict[str, Any]]:
    """Every slot of ``route`` from ``start`` for ``days`` days: capacity, booked, free."""
    template: dict[str, list[tuple[str, int]]] = {}
    for wd, slot, cap in conn.execute(
        "SELECT weekday, slot, capacity FROM slot_templates WHERE route = ? ORDER BY weekday, slot", (route,)
    ):
        template.setdefault(wd, []).append((slot, int(cap)))
    end = start + dt.timedelta(days=days - 1)
    booked = {
        (d, s): int(b)
        for d, s, b in conn.execute(
            "SELECT day, slot, booked FROM slot_load WHERE route = ? AND day >= ? AND day <= ?"
            " ORDER BY day, slot",
            (route, start.isoformat(), end.isoformat()),
        )
    }
    out = []
    for i in range(days):
        day = start + dt.timedelta(days=i)
        for slot, cap in template.get(weekday(day), []):
            b = booked.get((day.isoformat(), slot), 0)
            out.append(
                {"date": day.isoformat(), "slot": slot, "capacity": cap, "booked": b, "free": max(0, cap - b)}
            )
    return out


def alternatives(conn: sqlite3.Connection, route: str, start: dt.date, units: int) -> list[dict[str, Any]]:
    """Up to :data:`ALTERNATIVES` slots from ``start`` with room for ``units``."""
    return [
        {"date": s["date"], "slot": s["slot"], "free": s["free"]}
        for s in slots(conn, route, start, SEARCH_DAYS)
        if s["free"] >= units
    ][:ALTERNATIVES]


def _take(conn: sqlite3.Connection, route: str, day: dt.date, slot: str, units: int) -> bool:
    """Book ``units`` of the slot if it has room: checked and written in one UPDATE."""
    cap = capacity(conn, route, day, slot)
    if cap is None:
        return False
    conn.execute(
        "INSERT INTO slot_load (route, day, slot, booked) VALUES (?, ?, ?, 0)"
        " ON CONFLICT (route, day, slot) DO NOTHING",
        (route, day.isoformat(), slot),
    )
    cur = conn.execute(
        "UPDATE slot_load SET booked = booked + ?"
        " WHERE route = ? AND day = ? AND slot = ? AND booked + ? <= ?",
        (units, route, day.isoformat(), slot, units, cap),
    )
    return cur.rowcount == 1


def _give(conn: sqlite3.Connection, route: str, day: str, slot: str, units: int) -> None:
    conn.execute(
        "UPDATE slot_load SET booked = booked - ? WHERE route = ? AND day = ? AND slot = ?",
        (units, route, day, slot),
    )


def field_service(conn: sqlite3.Connection, code: str) -> int:
    """The slot units one booking of the field service ``code`` takes."""
    row = conn.execute("SELECT kind, slot_units, active FROM services WHERE code = ?", (code,)).fetchone()
    if row is None or row[2] != 1:
        raise ScheduleError(f"service {code!r} is not an active service in the masters")
    if row[0] != "field":
        raise ScheduleError(f"service {code!r} is a {row[0]} service; only field services take a slot")
    return int(row[1])


def _check_slot(conn: sqlite3.Connection, route: str, ask: ServiceAsk, today: dt.date) -> None:
    if ask.date < today:
        raise ScheduleError(f"line {ask.line_no}: service date {ask.date} is in the past")
    if capacity(conn, route, ask.date, ask.slot) is None:
        raise ScheduleError(
            f"line {ask.line_no}: route {route or '-'} has no slot {ask.slot!r} on {ask.date}"
        )


# -- bookings ---------------------------------------------------------------------------------

_COLS = (
    "booking_id",
    "line_no",
    "service",
    "route",
    "day",
    "slot",
    "units",
    "status",
    "completed_by",
    "note",
)


def bookings(conn: sqlite3.Connection, order_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {', '.join(_COLS)} FROM service_bookings WHERE order_id = ? ORDER BY booking_id", (order_id,)
    )
    return [dict(zip(_COLS, r, strict=True)) for r in rows]


def validate_asks(
    conn: sqlite3.Connection, customer: str, asks: Sequence[ServiceAsk], *, n_lines: int, today: dt.date
) -> None:
    """Refuse (400) a request naming no such line, service or slot - before anything is stored."""
    route = route_of(conn, customer)
    seen = set()
    for a in asks:
        if not 1 <= a.line_no <= n_lines or a.line_no in seen:
            raise ScheduleError(f"line {a.line_no}: one service per order line")
        seen.add(a.line_no)
        field_service(conn, a.code)
        _check_slot(conn, route, a, today)


def book_order(
    conn: sqlite3.Connection, order_id: int, asks: Sequence[ServiceAsk], *, actor: str, now: int
) -> list[dict[str, Any]]:
    """Book each line's service. A full slot keeps the booking waiting and holds the order,
    offering free slots; a request that cannot be booked at all (no such service or slot, a
    past date, an unknown customer - what REST refuses first with :func:`validate_asks`, but a
    gateway's order is never refused) holds the order with the reason. Returns the bookings."""
    (customer,) = conn.execute("SELECT customer FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    problems: list[str] = []
    try:
        route = route_of(conn, customer)
    except ScheduleError as e:
        _hold(conn, order_id, f"service: {e.reason}", actor=actor, now=now)
        return bookings(conn, order_id)
    full = []
    for a in asks:
        try:
            units = field_service(conn, a.code)
        except ScheduleError as e:
            problems.append(f"line {a.line_no}: {e.reason}")
            continue  # nothing to book or reschedule
        problem = ""
        try:
            _check_slot(conn, route, a, orders.today_of(now))
        except ScheduleError as e:
            problem = e.reason
        ok = not problem and _take(conn, route, a.date, a.slot, units)
        conn.execute(
            "INSERT INTO service_bookings (order_id, line_no, service, route, day, slot, units, status,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order_id, a.line_no, a.code, route, a.date.isoformat(), a.slot, units,
             "booked" if ok else "waiting", now, now),
        )  # fmt: skip
        where = f"line {a.line_no} {a.code} on {a.date} {a.slot} (route {route or '-'})"
        if ok:
            lifecycle.record_event(conn, order_id, "service booked", detail=where, actor=actor, now=now)
        elif problem:  # waiting: a reschedule into a real slot books it
            problems.append(problem)
        else:
            alts = alternatives(conn, route, a.date, units)
            free = ", ".join(f"{x['date']} {x['slot']}" for x in alts) or f"none within {SEARCH_DAYS} days"
            full.append(f"{where}; free: {free}")
    reasons = (["slot full: " + "; ".join(full)] if full else []) + [f"service: {p}" for p in problems]
    if reasons:
        _hold(conn, order_id, "; ".join(reasons), actor=actor, now=now)
    return bookings(conn, order_id)


def _waiting_reason(conn: sqlite3.Connection, order_id: int) -> str:
    """``slot full: ...`` for the order's waiting bookings, with the free slots now ("" if none)."""
    parts = []
    for b in bookings(conn, order_id):
        if b["status"] != "waiting":
            continue
        alts = alternatives(conn, b["route"], dt.date.fromisoformat(b["day"]), b["units"])
        free = ", ".join(f"{x['date']} {x['slot']}" for x in alts) or f"none within {SEARCH_DAYS} days"
        where = f"line {b['line_no']} {b['service']} on {b['day']} {b['slot']} (route {b['route'] or '-'})"
        parts.append(f"{where}; free: {free}")
    return "slot full: " + "; ".join(parts) if parts else ""


def keeps_held(conn: sqlite3.Connection, order_id: int) -> bool:
    """Called as an order is validated, before allocation (``central.allocate.waves.on_validated``):
    an order whose service still waits for a slot is held again, whatever validated it (a
    change, a re-check) - unless a supervisor approved the hold, which lets it go on without
    the slot. True when it was held."""
    if not conn.execute(
        "SELECT 1 FROM service_bookings WHERE order_id = ? AND status = 'waiting'", (order_id,)
    ).fetchone():
        return False
    last = conn.execute(
        "SELECT detail FROM order_events WHERE order_id = ? ORDER BY id DESC LIMIT 1", (order_id,)
    ).fetchone()
    if last is not None and str(last[0]).startswith("hold approved by"):
        return False
    _hold(conn, order_id, _waiting_reason(conn, order_id), actor="services", now=now_ms())
    return True


def on_line_cancelled(conn: sqlite3.Connection, order_id: int, line_no: int, *, actor: str, now: int) -> None:
    """A cancelled order line's service bookings are cancelled, their capacity freed."""
    for b in bookings(conn, order_id):
        if b["line_no"] == line_no and b["status"] in ("booked", "waiting"):
            _cancel_row(conn, b, now)
            lifecycle.record_event(
                conn,
                order_id,
                "service cancelled",
                detail=f"line {line_no} {b['service']} on {b['day']} {b['slot']}: the line was cancelled",
                actor=actor,
                now=now,
            )


def _hold(conn: sqlite3.Connection, order_id: int, reason: str, *, actor: str, now: int) -> None:
    status = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()[0]
    if status == lifecycle.Status.ALLOCATED:
        for hook in hub_of(conn).on_give_back:  # as a change does: the allocation goes back first
            hook(conn, order_id)
    if status in (lifecycle.Status.ALLOCATED, lifecycle.Status.VALIDATED, lifecycle.Status.RECEIVED):
        lifecycle.transition(conn, order_id, lifecycle.Status.HELD, actor=actor, detail=reason, now=now)
    else:  # held already (or past holding): say it in the history
        conn.execute(
            "UPDATE orders SET hold_reason ="
            " CASE WHEN hold_reason = '' THEN ? ELSE hold_reason || '; ' || ? END"
            " WHERE order_id = ? AND status = 'held'",
            (reason, reason, order_id),
        )
        lifecycle.record_event(conn, order_id, "slot full", detail=reason, actor=actor, now=now)


def _booking(conn: sqlite3.Connection, order_key: str, booking_id: int) -> tuple[int, str, dict[str, Any]]:
    try:
        oid = orders.find(conn, order_key)
    except orders.OrderError:
        raise ScheduleError(f"no order {order_key!r}", status=404) from None
    status = conn.execute("SELECT status FROM orders WHERE order_id = ?", (oid,)).fetchone()[0]
    b = next((x for x in bookings(conn, oid) if x["booking_id"] == booking_id), None)
    if b is None:
        raise ScheduleError(f"order {order_key} has no service booking {booking_id}", status=404)
    return oid, str(status), b


def reschedule(
    conn: sqlite3.Connection,
    order_key: str,
    booking_id: int,
    *,
    date: dt.date,
    slot: str,
    actor: str,
    now: int,
) -> dict[str, Any]:
    """Move a booking (booked or waiting) to another slot; the old one's capacity is freed.
    A full new slot is a 409 with the free ones, and nothing changes."""
    oid, status, b = _booking(conn, order_key, booking_id)
    if b["status"] not in ("booked", "waiting"):
        raise ScheduleError(f"booking {booking_id} is {b['status']}", status=409)
    if status in (lifecycle.Status.CANCELLED, lifecycle.Status.RETURNED):
        raise ScheduleError(f"order {order_key} is {status}", status=409)
    ask = ServiceAsk(b["line_no"], b["service"], date, slot)
    _check_slot(conn, b["route"], ask, orders.today_of(now))
    _moved(conn, b, "booked", now, day=date.isoformat(), slot=slot)
    if b["status"] == "booked":
        _give(conn, b["route"], b["day"], b["slot"], b["units"])
    if not _take(conn, b["route"], date, slot, b["units"]):  # the job's rollback undoes the move
        alts = alternatives(conn, b["route"], date, b["units"])
        free = ", ".join(f"{x['date']} {x['slot']}" for x in alts) or f"none within {SEARCH_DAYS} days"
        raise ScheduleError(
            f"slot full: {date} {slot} on route {b['route'] or '-'}; free: {free}", status=409
        )
    lifecycle.record_event(
        conn,
        oid,
        "service rescheduled",
        detail=f"line {b['line_no']} {b['service']}: {b['day']} {b['slot']} ({b['status']}) -> {date} {slot}",
        actor=actor,
        now=now,
    )
    waiting = conn.execute(
        "SELECT count(*) FROM service_bookings WHERE order_id = ? AND status = 'waiting'", (oid,)
    ).fetchone()[0]
    hold = conn.execute("SELECT hold_reason FROM orders WHERE order_id = ?", (oid,)).fetchone()[0] or ""
    if status == lifecycle.Status.HELD and not waiting and hold.startswith(("slot full", "service:")):
        orders.revalidate(
            conn, oid, actor=actor, now=now
        )  # validated (and allocated), or held for another reason
    return next(x for x in bookings(conn, oid) if x["booking_id"] == booking_id)


def cancel(
    conn: sqlite3.Connection, order_key: str, booking_id: int, *, actor: str, now: int
) -> dict[str, Any]:
    """Cancel a booking; a booked one frees its capacity."""
    oid, _, b = _booking(conn, order_key, booking_id)
    if b["status"] not in ("booked", "waiting"):
        raise ScheduleError(f"booking {booking_id} is {b['status']}", status=409)
    _cancel_row(conn, b, now)
    lifecycle.record_event(
        conn,
        oid,
        "service cancelled",
        detail=f"line {b['line_no']} {b['service']} on {b['day']} {b['slot']}",
        actor=actor,
        now=now,
    )
    return next(x for x in bookings(conn, oid) if x["booking_id"] == booking_id)


def _moved(
    conn: sqlite3.Connection,
    b: dict[str, Any],
    status: str,
    now: int,
    *,
    day: str | None = None,
    slot: str | None = None,
    completed_by: str | None = None,
    note: str | None = None,
) -> None:
    """Change booking ``b`` only if it is still as read (status, day, slot): of two writers
    changing it at once (two workers on PostgreSQL) the second's UPDATE waits for the
    first's commit and then matches nothing - a 409, so its capacity moves once."""
    cur = conn.execute(
        "UPDATE service_bookings SET status = ?, day = ?, slot = ?, updated_at = ?,"
        " completed_by = coalesce(?, completed_by), note = coalesce(?, note)"
        " WHERE booking_id = ? AND status = ? AND day = ? AND slot = ?",
        (status, day or b["day"], slot or b["slot"], now, completed_by, note,
         b["booking_id"], b["status"], b["day"], b["slot"]),
    )  # fmt: skip
    if cur.rowcount != 1:
        raise ScheduleError(f"booking {b['booking_id']} was changed meanwhile; look again", status=409)


def _cancel_row(conn: sqlite3.Connection, b: dict[str, Any], now: int) -> None:
    _moved(conn, b, "cancelled", now)
    if b["status"] == "booked":
        _give(conn, b["route"], b["day"], b["slot"], b["units"])


def complete(
    conn: sqlite3.Connection, order_key: str, booking_id: int, *, actor: str, note: str, now: int
) -> dict[str, Any]:
    """The service was done: the booking is ``completed``, an event in the order's history."""
    oid, status, b = _booking(conn, order_key, booking_id)
    if b["status"] != "booked":
        raise ScheduleError(
            f"booking {booking_id} is {b['status']}; only a booked service completes", status=409
        )
    if status in (lifecycle.Status.CANCELLED, lifecycle.Status.HELD, lifecycle.Status.RECEIVED):
        raise ScheduleError(f"order {order_key} is {status}", status=409)
    _moved(conn, b, "completed", now, completed_by=actor, note=note)
    lifecycle.record_event(
        conn,
        oid,
        "service completed",
        detail=f"line {b['line_no']} {b['service']} ({b['day']} {b['slot']})" + (f": {note}" if note else ""),
        actor=actor,
        now=now,
    )
    return next(x for x in bookings(conn, oid) if x["booking_id"] == booking_id)


def on_cancelled(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_cancelled`` hook: the order's open bookings are cancelled, their capacity freed."""
    now = now_ms()
    for b in bookings(conn, order_id):
        if b["status"] in ("booked", "waiting"):
            _cancel_row(conn, b, now)
