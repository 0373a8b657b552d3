"""Promise dates: the earliest date each line of an order or a quote can be delivered, and
promises kept as reservations until a deadline.

Per line, every source that serves the customer's zone (the sourcing rules, ``alloc_sourcing``:
the zone's, else ``*``; normal sources first - preferred, then cost, then code - then transfer
sources) is asked when it could have the whole quantity ready:

- available now (on hand - allocated; reservations are allocations, so a promise kept by
  another quote is not promised twice): ready today;
- else with its expected receipts (``receipts``, due on or before a day) less what earlier
  kept promises claimed of them and less the open back orders of the sku (they are served
  first when stock arrives): ready on the receipt's date;
- plus the source's lead days for the zone (``lead_times``: the zone's row, else ``*``,
  else 0);
- a value-added service on the line (``services`` of kind ``vas``: minutes per unit) needs
  that many minutes free on one day at the source (``vas_capacity`` per day, less what is
  booked in ``vas_load``), on or after the ready day; the line ships that day;
- delivered ``transit_days`` after it ships.

The earliest delivery wins (ties: the sourcing order); lines of one request share what they
use (the second line of an sku sees what the first took). Nothing is written by
:func:`plan`. :func:`keep` writes a promise: its on-hand units as ``reservation``
allocations (``ref`` = the promise's ref), its receipt units as claims on the receipt
(converted to reservations when the receipt is booked in, :func:`on_received`), its VAS
minutes booked in ``vas_load`` - each write checked by the database in the same statement
(``0 <= allocated <= on_hand``; ``booked + minutes <= capacity`` in the UPDATE's WHERE), so
two promises at once can never take the same unit or minute.

An order claims a kept promise by its ref (``POST /api/orders`` with ``"promise"``); when the
order is allocated (real time or in a wave, :func:`free_claimed` from
``central.allocate.waves``) the reservation goes back to available in that same transaction
and the allocation takes it. A promise not claimed - or claimed by an order not allocated -
by its ``hold_until`` expires on central's clock (job ``promise-expiry``,
:func:`expire_due`); a cancelled claiming order releases it at once (:func:`on_cancelled`).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from central.allocate import inventory
from central.orders import lifecycle
from central.promising import ScheduleError
from runtime.clock import now_ms
from runtime.sqlitedb import savepoint

HORIZON_DAYS = 60  # a line with no date within this many days has none
DEFAULT_HOLD_S = 24 * 3600  # a kept promise without hold_until
MAX_HOLD_S = 30 * 86400
MAX_LINES = 500
OPEN = ("held", "claimed")  # promise statuses that hold stock and minutes
KEEP_TRIES = 5  # plans made again when another writer took what the plan counted on


class TakenMeanwhile(ScheduleError):
    """Stock or VAS minutes the plan counted on were taken by another writer between the
    plan's reads and the keep's checked writes (several workers on PostgreSQL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=409)


@dataclass(frozen=True, slots=True)
class LineAsk:
    line_no: int
    sku: str
    qty: int
    service: str = ""  # a value-added service code


@dataclass(frozen=True, slots=True)
class LineAnswer:
    line_no: int
    sku: str
    qty: int
    service: str
    date: dt.date | None  # the earliest delivery date; None: none within the horizon
    location: str = ""
    ship_date: dt.date | None = None
    limited_by: str = "no_stock"  # lead_transit | receipt | vas_capacity | no_stock
    detail: str = ""
    stock_qty: int = 0  # from stock available now
    receipt_id: int | None = None
    receipt_date: dt.date | None = None
    receipt_qty: int = 0  # from expected receipts
    vas_day: dt.date | None = None
    vas_minutes: int = 0
    lead_days: int = 0
    transit_days: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "line_no": self.line_no,
            "sku": self.sku,
            "qty": self.qty,
            "service": self.service or None,
            "date": _iso(self.date),
            "location": self.location or None,
            "ship_date": _iso(self.ship_date),
            "limited_by": self.limited_by,
            "detail": self.detail,
            "stock_qty": self.stock_qty,
            "receipt_id": self.receipt_id,
            "receipt_date": _iso(self.receipt_date),
            "receipt_qty": self.receipt_qty,
            "vas_day": _iso(self.vas_day),
            "vas_minutes": self.vas_minutes,
            "lead_days": self.lead_days,
            "transit_days": self.transit_days,
        }


def _iso(d: dt.date | None) -> str | None:
    return d.isoformat() if d is not None else None


# -- reading the network ------------------------------------------------------------------


def zone_of(conn: sqlite3.Connection, customer: str) -> str:
    row = conn.execute("SELECT region, active FROM customers WHERE code = ?", (customer,)).fetchone()
    if row is None or row[1] != 1:
        raise ScheduleError(f"customer {customer!r} is not an active customer in the masters")
    return str(row[0] or "")


def sources(conn: sqlite3.Connection, zone: str) -> list[str]:
    """The zone's sources in sourcing order (its own rules, else ``*``'s)."""
    for z in (zone, "*"):
        rows = conn.execute(
            "SELECT location FROM alloc_sourcing WHERE zone = ?"
            " ORDER BY transfer, preferred DESC, cost, location",
            (z,),
        ).fetchall()
        if rows:
            return [r[0] for r in rows]
    return []


def lead_times(conn: sqlite3.Connection, zone: str) -> dict[str, tuple[int, int]]:
    """location -> (lead days, transit days) for ``zone`` (its row, else the ``*`` row)."""
    out: dict[str, tuple[int, int]] = {}
    rows = conn.execute(
        "SELECT location, zone, lead_days, transit_days FROM lead_times WHERE zone = ? OR zone = '*'"
        " ORDER BY location, zone",
        (zone,),
    ).fetchall()
    for loc, z, lead, transit in rows:
        if z == zone or loc not in out:
            out[loc] = (int(lead), int(transit))
    return out


def vas_service(conn: sqlite3.Connection, code: str) -> tuple[str, int]:
    row = conn.execute(
        "SELECT kind, minutes_per_unit, active, description FROM services WHERE code = ?", (code,)
    ).fetchone()
    if row is None or row[2] != 1:
        raise ScheduleError(f"service {code!r} is not an active service in the masters")
    if row[0] != "vas":
        raise ScheduleError(f"service {code!r} is a {row[0]} service, not a value-added one (vas)")
    return str(row[3] or code), int(row[1])


class _Supply:
    """What one request can still use of one sku: available now per location, expected
    receipts per location less earlier claims, open back orders; with what earlier lines of
    the request took."""

    def __init__(self, conn: sqlite3.Connection, sku: str, own: Mapping[tuple[str, str], int]) -> None:
        self.now = {
            loc: int(q)
            for loc, q in conn.execute(
                "SELECT location, on_hand - allocated FROM inventory WHERE sku = ? ORDER BY location", (sku,)
            )
        }
        for (loc, s), q in own.items():  # an order's own allocation is there for it
            if s == sku:
                self.now[loc] = self.now.get(loc, 0) + q
        self.receipts: dict[str, list[tuple[dt.date, int, int]]] = {}  # loc -> (date, id, qty)
        for rid, loc, qty, date in conn.execute(
            "SELECT receipt_id, location, qty, expected_date FROM receipts"
            " WHERE sku = ? AND status = 'expected' ORDER BY expected_date, receipt_id",
            (sku,),
        ):
            self.receipts.setdefault(loc, []).append((dt.date.fromisoformat(date), int(rid), int(qty)))
        # claims of kept promises on receipts not yet booked in, at their receipt's date
        self.claims: dict[str, list[tuple[dt.date, int]]] = {}
        for loc, qty, date in conn.execute(
            "SELECT pl.location, pl.receipt_qty, r.expected_date FROM promise_lines pl"
            " JOIN promises p ON p.promise_id = pl.promise_id"
            " JOIN receipts r ON r.receipt_id = pl.receipt_id"
            " WHERE pl.sku = ? AND pl.receipt_qty > 0 AND r.status = 'expected'"
            " AND p.status IN ('held', 'claimed')"
            " ORDER BY pl.promise_id, pl.line_no",
            (sku,),
        ):
            self.claims.setdefault(loc, []).append((dt.date.fromisoformat(date), int(qty)))
        self.owed = int(
            conn.execute(
                "SELECT coalesce(sum(qty - filled), 0) FROM shortages WHERE sku = ? AND status = 'open'",
                (sku,),
            ).fetchone()[0]
        )
        self.used_future: dict[str, int] = {}

    def ready(self, loc: str, qty: int) -> tuple[int, tuple[dt.date, int] | None] | None:
        """(units from stock now, the receipt (date, id) that completes the rest or None);
        None when the location cannot have ``qty`` from what is known."""
        now = max(0, self.now.get(loc, 0))
        if now >= qty:
            return qty, None
        need = qty - now
        got = -self.owed - self.used_future.get(loc, 0)
        claims = self.claims.get(loc, [])
        for date, rid, q in self.receipts.get(loc, []):
            got += q
            have = got - sum(c for d, c in claims if d <= date)
            if have >= need:
                return now, (date, rid)
        return None

    def take(self, loc: str, stock: int, future: int) -> None:
        self.now[loc] = self.now.get(loc, 0) - stock
        self.used_future[loc] = self.used_future.get(loc, 0) + future


def _vas_free(
    conn: sqlite3.Connection, loc: str, start: dt.date, end: dt.date, used: dict[tuple[str, dt.date], int]
) -> tuple[int, dict[dt.date, int]]:
    row = conn.execute("SELECT minutes_per_day FROM vas_capacity WHERE location = ?", (loc,)).fetchone()
    cap = int(row[0]) if row else 0
    booked = {
        dt.date.fromisoformat(d): int(b)
        for d, b in conn.execute(
            "SELECT day, booked FROM vas_load WHERE location = ? AND day >= ? AND day <= ? ORDER BY day",
            (loc, start.isoformat(), end.isoformat()),
        )
    }
    for (u_loc, day), minutes in used.items():
        if u_loc == loc:
            booked[day] = booked.get(day, 0) + minutes
    return cap, booked


def plan(
    conn: sqlite3.Connection,
    *,
    zone: str,
    lines: Sequence[LineAsk],
    today: dt.date,
    own: Mapping[tuple[str, str], int] | None = None,
) -> list[LineAnswer]:
    """The earliest delivery date of each line (see the module docstring); writes nothing.
    ``own``: units allocated to the order being promised, per ``(location, sku)`` - available
    to it (:func:`order_request`)."""
    srcs = sources(conn, zone)
    days = lead_times(conn, zone)
    supply: dict[str, _Supply] = {}
    vas_used: dict[tuple[str, dt.date], int] = {}
    horizon = today + dt.timedelta(days=HORIZON_DAYS)
    out = []
    for ln in lines:
        sup = supply.get(ln.sku)
        if sup is None:
            sup = supply[ln.sku] = _Supply(conn, ln.sku, own or {})
        service_name, per_unit = vas_service(conn, ln.service) if ln.service else ("", 0)
        minutes = per_unit * ln.qty
        best: LineAnswer | None = None
        why_not: list[str] = []
        for loc in srcs:
            got = sup.ready(loc, ln.qty)
            if got is None:
                continue
            stock_qty, receipt = got
            lead, transit = days.get(loc, (0, 0))
            ready = (max(receipt[0], today) if receipt else today) + dt.timedelta(days=lead)
            ship, vas_day = ready, None
            if minutes:
                cap, booked = _vas_free(conn, loc, ready, horizon, vas_used)
                vas_day = next(
                    (
                        d
                        for d in (ready + dt.timedelta(days=i) for i in range((horizon - ready).days + 1))
                        if cap - booked.get(d, 0) >= minutes
                    ),
                    None,
                )
                if vas_day is None:
                    why_not.append(f"{loc}: {service_name} needs {minutes} min a day, {cap} a day there")
                    continue
                ship = vas_day
            delivery = ship + dt.timedelta(days=transit)
            if delivery > horizon or (best is not None and best.date is not None and delivery >= best.date):
                continue
            if vas_day is not None and vas_day > ready:
                limited, detail = (
                    "vas_capacity",
                    f"{service_name} ({minutes} min) at {loc}: first day with capacity {vas_day}",
                )
            elif receipt is not None:
                limited, detail = (
                    "receipt",
                    f"receipt {receipt[1]} at {loc} due {receipt[0]}; lead {lead} + transit {transit} days",
                )
            else:
                limited, detail = "lead_transit", f"on hand at {loc}; lead {lead} + transit {transit} days"
            best = LineAnswer(
                line_no=ln.line_no,
                sku=ln.sku,
                qty=ln.qty,
                service=ln.service,
                date=delivery,
                location=loc,
                ship_date=ship,
                limited_by=limited,
                detail=detail,
                stock_qty=stock_qty,
                receipt_id=receipt[1] if receipt else None,
                receipt_date=receipt[0] if receipt else None,
                receipt_qty=ln.qty - stock_qty,
                vas_day=vas_day,
                vas_minutes=minutes,
                lead_days=lead,
                transit_days=transit,
            )
        if best is None:
            reason = f"no source for zone {zone or '-'} has {ln.qty} x {ln.sku} within {HORIZON_DAYS} days"
            if why_not:
                reason += " (" + "; ".join(why_not) + ")"
            out.append(LineAnswer(ln.line_no, ln.sku, ln.qty, ln.service, None, detail=reason))
            continue
        sup.take(best.location, best.stock_qty, best.receipt_qty)
        if best.vas_day is not None:
            key = (best.location, best.vas_day)
            vas_used[key] = vas_used.get(key, 0) + minutes
        out.append(best)
    return out


def order_request(
    conn: sqlite3.Connection, key: str
) -> tuple[str, str, list[LineAsk], dict[tuple[str, str], int]]:
    """An order's promise request: (order number, customer, its open lines, the units
    allocated to it per (location, sku) - which are there for it)."""
    row = conn.execute(
        "SELECT order_id, order_no, customer, status FROM orders WHERE order_no = ? OR record_id = ?",
        (key, key),
    ).fetchone()
    if row is None:
        raise ScheduleError(f"no order with number or record id {key!r}", status=404)
    oid, number, customer, status = row
    if status in ("cancelled", "returned", "delivered"):
        raise ScheduleError(f"order {number} is {status}: nothing to promise", status=409)
    lines = [
        LineAsk(int(n), str(sku or gtin), int(qty))
        for n, sku, gtin, qty in conn.execute(
            "SELECT line_no, sku, gtin, qty FROM order_lines WHERE order_id = ? AND cancelled = 0"
            " ORDER BY line_no",
            (oid,),
        )
    ]
    own = {
        (str(loc), str(sku)): int(q)
        for loc, sku, q in conn.execute(
            "SELECT location, sku, sum(qty) FROM allocations WHERE order_id = ? AND status = 'allocated'"
            " GROUP BY location, sku ORDER BY location, sku",
            (oid,),
        )
    }
    return str(number), str(customer), lines, own


# -- kept promises --------------------------------------------------------------------------


def ref_of(promise_id: int) -> str:
    return f"PR{promise_id:08d}"


def _book_vas(conn: sqlite3.Connection, loc: str, day: dt.date, minutes: int) -> None:
    """Book ``minutes`` at ``loc`` on ``day`` - the capacity checked in the UPDATE itself."""
    row = conn.execute("SELECT minutes_per_day FROM vas_capacity WHERE location = ?", (loc,)).fetchone()
    cap = int(row[0]) if row else 0
    conn.execute(
        "INSERT INTO vas_load (location, day, booked) VALUES (?, ?, 0)"
        " ON CONFLICT (location, day) DO NOTHING",
        (loc, day.isoformat()),
    )
    cur = conn.execute(
        "UPDATE vas_load SET booked = booked + ? WHERE location = ? AND day = ? AND booked + ? <= ?",
        (minutes, loc, day.isoformat(), minutes, cap),
    )
    if cur.rowcount != 1:
        raise TakenMeanwhile(f"VAS capacity at {loc} on {day} was taken meanwhile; nothing kept, ask again")


def keep(
    conn: sqlite3.Connection,
    answers: Sequence[LineAnswer],
    *,
    customer: str,
    zone: str,
    hold_until: int,
    now: int,
    actor: str,
) -> str:
    """Keep ``answers`` (from :func:`plan` in this same transaction) as a promise; its ref."""
    missing = [a for a in answers if a.date is None]
    if missing:
        a = missing[0]
        raise ScheduleError(f"line {a.line_no}: {a.detail}; nothing reserved", status=409)
    cur = conn.execute(
        "INSERT INTO promises (ref, customer, zone, status, hold_until, created_at, created_by)"
        " VALUES (?, ?, ?, 'held', ?, ?, ?) RETURNING promise_id",
        (f"new:{now}:{actor}", customer, zone, hold_until, now, actor),
    )
    pid = int(cur.fetchone()[0])
    cur.close()
    ref = ref_of(pid)
    conn.execute("UPDATE promises SET ref = ? WHERE promise_id = ?", (ref, pid))
    for a in answers:
        assert a.date is not None and a.ship_date is not None
        if a.stock_qty:
            try:
                inventory.reserve(conn, a.location, a.sku, a.stock_qty, ref=ref, now=now)
            except inventory.InventoryError:
                raise TakenMeanwhile(
                    f"line {a.line_no}: {a.stock_qty} x {a.sku} at {a.location} were taken meanwhile;"
                    " nothing kept, ask again"
                ) from None
        if a.vas_day is not None:
            _book_vas(conn, a.location, a.vas_day, a.vas_minutes)
        conn.execute(
            "INSERT INTO promise_lines (promise_id, line_no, sku, qty, location, ship_date, delivery_date,"
            " limited_by, stock_qty, receipt_id, receipt_qty, service, vas_day, vas_minutes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                pid,
                a.line_no,
                a.sku,
                a.qty,
                a.location,
                a.ship_date.isoformat(),
                a.date.isoformat(),
                a.limited_by,
                a.stock_qty,
                a.receipt_id,
                a.receipt_qty,
                a.service,
                a.vas_day.isoformat() if a.vas_day else None,
                a.vas_minutes,
            ),
        )
    return ref


def plan_and_keep(
    conn: sqlite3.Connection,
    *,
    zone: str,
    lines: Sequence[LineAsk],
    today: dt.date,
    customer: str,
    hold_until: int,
    now: int,
    actor: str,
) -> tuple[list[LineAnswer], str]:
    """:func:`plan` then :func:`keep` in the caller's transaction: (the answers kept, the ref).
    Another writer (a second worker on PostgreSQL, where each statement reads the latest
    commits) may take stock or VAS minutes between the plan's reads and the keep's checked
    writes: the keep is undone and the plan made again on what is there now, up to
    :data:`KEEP_TRIES` times - so a request answers what is really left, not "ask again"."""
    for attempt in range(KEEP_TRIES):
        answers = plan(conn, zone=zone, lines=lines, today=today)
        try:
            with savepoint(conn, "promise_keep"):
                ref = keep(
                    conn, answers, customer=customer, zone=zone, hold_until=hold_until, now=now, actor=actor
                )
        except TakenMeanwhile:
            if attempt + 1 == KEEP_TRIES:
                raise
            continue
        return answers, ref
    raise AssertionError("unreachable")


_PROMISE_COLS = (
    "promise_id",
    "ref",
    "customer",
    "zone",
    "status",
    "hold_until",
    "order_id",
    "created_at",
    "created_by",
    "closed_at",
    "closed_reason",
)
_LINE_COLS = (
    "line_no",
    "sku",
    "qty",
    "location",
    "ship_date",
    "delivery_date",
    "limited_by",
    "stock_qty",
    "receipt_id",
    "receipt_qty",
    "service",
    "vas_day",
    "vas_minutes",
)


def get(conn: sqlite3.Connection, ref: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(_PROMISE_COLS)} FROM promises WHERE ref = ?", (ref,)).fetchone()
    if row is None:
        return None
    out = dict(zip(_PROMISE_COLS, row, strict=True))
    out["lines"] = [
        dict(zip(_LINE_COLS, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(_LINE_COLS)} FROM promise_lines WHERE promise_id = ? ORDER BY line_no",
            (out["promise_id"],),
        )
    ]
    out["reserved"] = int(
        conn.execute(
            "SELECT coalesce(sum(qty), 0) FROM allocations WHERE kind = 'reservation' AND ref = ?"
            " AND status = 'allocated'",
            (ref,),
        ).fetchone()[0]
    )
    return out


def _give_back_stock(conn: sqlite3.Connection, ref: str) -> int:
    """Release the promise's open stock reservations; the units released."""
    rows = conn.execute(
        "SELECT alloc_id, qty FROM allocations WHERE kind = 'reservation' AND ref = ?"
        " AND status = 'allocated' ORDER BY alloc_id",
        (ref,),
    ).fetchall()
    for alloc_id, _ in rows:
        inventory.release_reservation(conn, alloc_id)
    return sum(int(q) for _, q in rows)


def _give_back_vas(conn: sqlite3.Connection, pid: int) -> int:
    rows = conn.execute(
        "SELECT location, vas_day, vas_minutes FROM promise_lines"
        " WHERE promise_id = ? AND vas_day IS NOT NULL ORDER BY line_no",
        (pid,),
    ).fetchall()
    for loc, day, minutes in rows:
        conn.execute(
            "UPDATE vas_load SET booked = booked - ? WHERE location = ? AND day = ?", (minutes, loc, day)
        )
    return sum(int(m) for _, _, m in rows)


def close(conn: sqlite3.Connection, ref: str, *, status: str, reason: str, now: int) -> dict[str, Any]:
    """End an open promise (``released`` by hand, ``expired``, ``cancelled`` with its order):
    its stock and VAS minutes go back. Returns what went back."""
    row = conn.execute("SELECT promise_id, status, order_id FROM promises WHERE ref = ?", (ref,)).fetchone()
    if row is None:
        raise ScheduleError(f"no promise {ref!r}", status=404)
    pid, current, order_id = row
    # the status moves first, only from an open one: of two writers ending it at once (a
    # release and the expiry on two workers) the second's UPDATE waits for the first's commit
    # and then changes nothing, so stock and minutes go back once
    if current not in OPEN or (
        conn.execute(
            "UPDATE promises SET status = ?, closed_at = ?, closed_reason = ?"
            " WHERE promise_id = ? AND status IN ('held', 'claimed')",
            (status, now, reason, pid),
        ).rowcount
        != 1
    ):
        current = conn.execute("SELECT status FROM promises WHERE promise_id = ?", (pid,)).fetchone()[0]
        raise ScheduleError(f"promise {ref} is {current}; only a held or claimed promise can end", status=409)
    units = _give_back_stock(conn, ref)
    minutes = _give_back_vas(conn, pid)
    if order_id is not None:
        lifecycle.record_event(
            conn,
            order_id,
            f"promise {status}",
            detail=f"promise {ref} {status} ({reason}): {units} units and {minutes} VAS minutes given back",
            actor="promise",
            now=now,
        )
    return {"ref": ref, "status": status, "units": units, "vas_minutes": minutes}


def claim(conn: sqlite3.Connection, ref: str, *, customer: str, record_id: str, now: int) -> None:
    """An order being entered (``record_id``) claims the promise ``ref``."""
    row = conn.execute(
        "SELECT promise_id, status, customer, hold_until FROM promises WHERE ref = ?", (ref,)
    ).fetchone()
    if row is None:
        raise ScheduleError(f"promise: no promise {ref!r}", status=422)
    pid, status, owner, hold_until = row
    if status != "held":
        raise ScheduleError(f"promise: {ref} is {status}, not held", status=409)
    if hold_until <= now:
        raise ScheduleError(f"promise: {ref} expired (held until {hold_until} ms)", status=409)
    if owner != customer:
        raise ScheduleError(f"promise: {ref} was made for customer {owner}, not {customer}", status=422)
    if (
        conn.execute(
            "UPDATE promises SET status = 'claimed', record_id = ? WHERE promise_id = ? AND status = 'held'",
            (record_id, pid),
        ).rowcount
        != 1
    ):  # another order claimed it (or it ended) meanwhile: a second worker's, on PostgreSQL
        raise ScheduleError(f"promise: {ref} was claimed or ended meanwhile, not held", status=409)


def claimed_by(conn: sqlite3.Connection, order_id: int, record_id: str, *, now: int) -> None:
    """After the claiming order is stored (and maybe allocated already, :func:`free_claimed`):
    tie a promise still waiting for the order's allocation to it, and say so in its history."""
    for ref, until in conn.execute(
        "SELECT ref, hold_until FROM promises WHERE record_id = ? AND status = 'claimed' ORDER BY promise_id",
        (record_id,),
    ).fetchall():
        conn.execute("UPDATE promises SET order_id = ? WHERE ref = ?", (order_id, ref))
        lifecycle.record_event(
            conn,
            order_id,
            "promise claimed",
            detail=f"promise {ref}: its stock stays reserved until the order is allocated"
            f" (at the latest by {until} ms, when it expires)",
            actor="promise",
            now=now,
        )


def free_claimed(conn: sqlite3.Connection, order_ids: Sequence[int], *, now: int) -> int:
    """Before allocating ``order_ids``: the promises they claimed give their reserved stock
    back to available for this allocation (same transaction) and are ``fulfilled`` (their
    VAS minutes stay booked: the order's work). Returns the units given back."""
    rows = conn.execute(
        "SELECT promise_id, ref, record_id FROM promises WHERE status = 'claimed' ORDER BY promise_id"
    ).fetchall()
    if not rows:
        return 0
    wanted = set(order_ids)
    total = 0
    for pid, ref, record_id in rows:
        got = conn.execute("SELECT order_id FROM orders WHERE record_id = ?", (record_id,)).fetchone()
        if got is None or got[0] not in wanted:
            continue
        if (
            conn.execute(
                "UPDATE promises SET status = 'fulfilled', order_id = ?, closed_at = ?,"
                " closed_reason = 'allocated to the order' WHERE promise_id = ? AND status = 'claimed'",
                (got[0], now, pid),
            ).rowcount
            != 1
        ):
            continue  # ended meanwhile (expired by another worker): its stock went back there
        units = _give_back_stock(conn, ref)
        total += units
        lifecycle.record_event(
            conn,
            got[0],
            "promise fulfilled",
            detail=f"promise {ref} claimed: its {units} reserved units handed to this order's allocation",
            actor="promise",
            now=now,
        )
    return total


def on_cancelled(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_cancelled`` hook: a promise the cancelled order claimed gives its stock and VAS
    minutes back; one already fulfilled (its stock went to the order's allocation, which the
    cancel gives back) gives back its VAS minutes."""
    now = now_ms()
    for ref, status in conn.execute(
        "SELECT ref, status FROM promises WHERE order_id = ? AND status IN ('claimed', 'fulfilled')"
        " ORDER BY promise_id",
        (order_id,),
    ).fetchall():
        if status == "claimed":
            close(conn, ref, status="cancelled", reason="order cancelled", now=now)
            continue
        (pid,) = conn.execute("SELECT promise_id FROM promises WHERE ref = ?", (ref,)).fetchone()
        if (
            conn.execute(
                "UPDATE promises SET status = 'cancelled', closed_at = ?, closed_reason = 'order cancelled'"
                " WHERE promise_id = ? AND status = 'fulfilled'",
                (now, pid),
            ).rowcount
            != 1
        ):
            continue  # cancelled meanwhile: its minutes went back then
        minutes = _give_back_vas(conn, pid)
        lifecycle.record_event(
            conn,
            order_id,
            "promise cancelled",
            detail=f"promise {ref}: {minutes} VAS minutes given back with the order",
            actor="promise",
            now=now,
        )


def due(conn: sqlite3.Connection, now: int, *, limit: int | None = None) -> list[tuple[str, int]]:
    """(ref, hold_until) of (up to ``limit``) open promises past their deadline, oldest first."""
    sql = (
        "SELECT ref, hold_until FROM promises WHERE status IN ('held', 'claimed') AND hold_until <= ?"
        " ORDER BY hold_until, promise_id"
    )
    args: list[Any] = [now]
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [(str(r[0]), int(r[1])) for r in conn.execute(sql, args)]


def on_received(conn: sqlite3.Connection, receipt_id: int, *, now: int) -> int:
    """An expected receipt was booked in (after its back orders were served): the promises
    that claimed units of it reserve them now, as far as the stock goes. Returns the units."""
    total = 0
    for pid, line_no, ref, loc, sku, qty in conn.execute(
        "SELECT pl.promise_id, pl.line_no, p.ref, pl.location, pl.sku, pl.receipt_qty FROM promise_lines pl"
        " JOIN promises p ON p.promise_id = pl.promise_id"
        " WHERE pl.receipt_id = ? AND pl.receipt_qty > 0 AND p.status IN ('held', 'claimed')"
        " ORDER BY pl.promise_id, pl.line_no",
        (receipt_id,),
    ).fetchall():
        avail = conn.execute(
            "SELECT on_hand - allocated FROM inventory WHERE location = ? AND sku = ?", (loc, sku)
        ).fetchone()
        take = min(int(qty), int(avail[0]) if avail else 0)
        if take > 0:
            inventory.reserve(conn, loc, sku, take, ref=ref, now=now)
            total += take
        conn.execute(
            "UPDATE promise_lines SET stock_qty = stock_qty + ?, receipt_qty = 0"
            " WHERE promise_id = ? AND line_no = ?",
            (take, pid, line_no),
        )
    return total


def hold_until_of(raw: object, *, now: int) -> int:
    """``hold_until`` of a request: epoch ms or an ISO time (UTC unless it names its zone);
    default now + :data:`DEFAULT_HOLD_S`; in the future and at most :data:`MAX_HOLD_S` ahead."""
    if raw is None:
        return now + DEFAULT_HOLD_S * 1000
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ScheduleError(f"hold_until: expected epoch ms or an ISO time, got {type(raw).__name__}")
    if isinstance(raw, str):
        try:
            t = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ScheduleError(f"hold_until: {raw[:40]!r} is not an ISO time") from None
        ms = int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)
    else:
        ms = raw
    if ms <= now:
        raise ScheduleError("hold_until: must be in the future")
    if ms > now + MAX_HOLD_S * 1000:
        raise ScheduleError(f"hold_until: at most {MAX_HOLD_S // 86400} days ahead")
    return ms
