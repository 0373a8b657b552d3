"""Adapter: orders and customer masters in the database -> the engine's :class:`OrderDemand`.

The customer master (grade, zone, route, vehicle, credit, split and shortage preferences,
salesperson) comes from the masters' ``customers`` table when it exists, matched by column
name (:data:`CUSTOMER_COLUMNS` lists the names accepted for each field), and otherwise from
``alloc_customer_profile``, which this module owns. Unknown customers get
:data:`DEFAULT_PROFILE`. Everything is read in a few set-based queries (no per-line SQL).

Order status: allocation keeps its own per-order state in ``alloc_orders`` and writes an
``order_events`` row; when ``central.orders.lifecycle`` is present its ``transition`` is called
with the status from :data:`ORDER_STATUS` (so the store hears about it).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from central.allocate.allocation import CustomerPref, DemandLine, OrderDemand, Special
from central.hub import state
from central.orders import lifecycle
from protocols.frozen import quick_init
from runtime.dbapi import columns, dialect

CUSTOMER_COLUMNS: dict[str, tuple[str, ...]] = {
    "grade": ("grade",),
    "zone": ("zone", "delivery_zone", "region"),
    "route": ("route", "route_seq", "delivery_route"),
    "vehicle": ("vehicle", "vehicle_type"),
    "credit": ("credit", "credit_score", "credit_standing", "credit_limit"),
    "allow_split": ("allow_split",),
    "pref": ("pref", "backorder_policy", "shortage_pref"),
    "delay_days": ("delay_days", "backorder_limit_days"),
    "salesperson": ("salesperson", "sales_rep"),
}

#: allocation outcome -> order lifecycle status (used only when central.orders.lifecycle exists)
ORDER_STATUS: dict[str, str] = {"allocated": "allocated", "short": "allocated", "cancelled": "cancelled"}


@quick_init
@dataclass(frozen=True, slots=True)
class CustomerProfile:
    grade: str = "C"
    zone: str = ""
    route: str = ""
    vehicle: str = ""
    credit: int = 0
    allow_split: bool = False
    pref: CustomerPref = CustomerPref.BACKORDER
    delay_days: int | None = None
    salesperson: str = ""


DEFAULT_PROFILE = CustomerProfile()
_PROFILE_FIELDS = tuple(f.name for f in fields(CustomerProfile))
_CREDIT_AT = _PROFILE_FIELDS.index("credit")


# What the layout is read from, on PostgreSQL: the columns of both tables, in order (their
# names change only with the schema)
_PG_LAYOUT_KEY = (
    "SELECT string_agg(attrelid::regclass::text || '.' || attname, ',' ORDER BY attrelid, attnum)"
    " FROM pg_attribute WHERE attrelid IN (to_regclass('customers'), to_regclass('orders'))"
    " AND attnum > 0 AND NOT attisdropped"
)


def _schema_key(conn: sqlite3.Connection) -> int | str:
    """Moves whenever ``customers`` or ``orders`` may have changed columns: SQLite's ``PRAGMA
    schema_version`` (every CREATE/ALTER, from any connection); on PostgreSQL their columns."""
    if dialect(conn) == "sqlite":
        version: int = conn.execute("PRAGMA schema_version").fetchone()[0]
        return version
    return str(conn.execute(_PG_LAYOUT_KEY).fetchone()[0])


@dataclass(frozen=True, slots=True)
class Layout:
    """How this database names things: which ``customers`` columns feed which profile
    field, and whether ``orders`` has a ``priority`` column. Read once per schema version."""

    key: str | None  # customers' code column (None: no customers table)
    fields: dict[str, str | None]
    select: tuple[str, ...]
    has_priority: bool
    n_profile: int = 0  # the leading columns of ``select``; the rest is exposure (receivables, open value)
    # customers row but its exposure -> (profile, exposure it was built at), see :func:`profile`
    profiles: dict[tuple[Any, ...], tuple[CustomerProfile, int]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )


def customer_layout(conn: sqlite3.Connection) -> Layout:
    """The column layout, cached per connection until the schema changes (:func:`_schema_key`)."""
    version = _schema_key(conn)
    st = state(conn)
    if st.layout is not None and st.layout[0] == version:
        return st.layout[1]
    cols = columns(conn, "customers")
    key = next((c for c in ("code", "customer", "customer_code") if c in cols), None)
    fields = {f: next((c for c in names if c in cols), None) for f, names in CUSTOMER_COLUMNS.items()}
    sel: list[str] = [key] if key else []
    sel += [c for c in fields.values() if c is not None]
    n_profile = len(sel)
    sel += [c for c in ("receivables", "open_value") if c in cols and c not in sel]
    layout = Layout(key, fields, tuple(sel), "priority" in columns(conn, "orders"), n_profile)
    st.layout = (version, layout)
    return layout


MAX_CACHED_PROFILES = 10_000


def profile(layout: Layout, row: tuple[Any, ...]) -> CustomerProfile:
    """The allocation profile of a ``customers`` row read with ``layout``'s columns, kept on
    the layout (so per connection): the row holds every input, so an equal row gives an
    equal profile; receivables and open value move only the credit standing, and only where
    it is the headroom under the limit."""
    profiles = layout.profiles
    key = row[: layout.n_profile]
    used = 0
    if layout.fields["credit"] == "credit_limit":
        used = sum(int(v or 0) for v in row[layout.n_profile :])
    hit = profiles.get(key)
    if hit is not None:
        p, used_then = hit
        if used == used_then:
            return p
        # what replace(p, credit=...) gives, without its field walk
        moved = [getattr(p, f) for f in _PROFILE_FIELDS]
        moved[_CREDIT_AT] = p.credit - (used - used_then)
        return CustomerProfile(*moved)
    p = _build_profile(layout, row)
    if len(profiles) >= MAX_CACHED_PROFILES:
        profiles.clear()
    profiles[key] = (p, used)
    return p


def _build_profile(layout: Layout, row: tuple[Any, ...]) -> CustomerProfile:
    fields = layout.fields
    d = dict(zip(layout.select, row, strict=True))
    v = {f: d[c] for f, c in fields.items() if c is not None and d[c] is not None}
    if fields["credit"] == "credit_limit":  # standing = headroom under the limit
        used = sum(int(d.get(c) or 0) for c in ("receivables", "open_value"))
        v["credit"] = int(v.get("credit", 10**12)) - used
    if v.get("pref") == "all-at-once" and v.get("delay_days") == 0:
        v["pref"] = CustomerPref.CANCEL.value  # all at once and not late at all
    return CustomerProfile(
        grade=str(v.get("grade", "C")),
        zone=str(v.get("zone", "")),
        route=str(v.get("route", "")),
        vehicle=str(v.get("vehicle", "")),
        credit=int(v.get("credit", 0)),
        allow_split=bool(v.get("allow_split", False)),
        pref=_pref(v.get("pref", "backorder")),
        delay_days=None if v.get("delay_days") is None else int(v["delay_days"]),
        salesperson=str(v.get("salesperson", "")),
    )


def set_profile(conn: sqlite3.Connection, customer: str, p: CustomerProfile) -> None:
    conn.execute(
        "INSERT INTO alloc_customer_profile (customer, grade, zone, route, vehicle, credit,"
        " allow_split, pref, delay_days, salesperson) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (customer) DO UPDATE SET grade = excluded.grade, zone = excluded.zone,"
        " route = excluded.route, vehicle = excluded.vehicle, credit = excluded.credit,"
        " allow_split = excluded.allow_split, pref = excluded.pref, delay_days = excluded.delay_days,"
        " salesperson = excluded.salesperson",
        (
            customer,
            p.grade,
            p.zone,
            p.route,
            p.vehicle,
            p.credit,
            int(p.allow_split),
            p.pref.value,
            p.delay_days,
            p.salesperson,
        ),
    )


#: the masters' ``backorder_policy`` values
MASTER_POLICY = {
    "none": CustomerPref.CUT,
    "backorder": CustomerPref.BACKORDER,
    "next-order": CustomerPref.SHIP_WITH_NEXT,
    "all-at-once": CustomerPref.DELAY,
}


def _pref(raw: Any) -> CustomerPref:
    if raw in MASTER_POLICY:
        return MASTER_POLICY[raw]
    try:
        return CustomerPref(str(raw).lower())
    except ValueError:
        return CustomerPref.BACKORDER


def load_profiles(conn: sqlite3.Connection, customers: Iterable[str]) -> dict[str, CustomerProfile]:
    return _load_profiles(conn, customers, None)


def _load_profiles(
    conn: sqlite3.Connection, customers: Iterable[str], layout: Layout | None
) -> dict[str, CustomerProfile]:
    wanted = sorted(set(customers))
    out: dict[str, CustomerProfile] = {}
    if not wanted:
        return out
    layout = layout or customer_layout(conn)
    if layout.key is not None:
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {', '.join(layout.select)} FROM customers WHERE {layout.key} IN ({marks})", chunk
            ):
                out[str(row[0])] = profile(layout, row)
    missing = [c for c in wanted if c not in out]
    for chunk in _chunks(missing):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT customer, grade, zone, route, vehicle, credit, allow_split, pref, delay_days, salesperson"
            f" FROM alloc_customer_profile WHERE customer IN ({marks})",
            chunk,
        ):
            out[row[0]] = CustomerProfile(
                row[1], row[2], row[3], row[4], row[5], bool(row[6]), _pref(row[7]), row[8], row[9]
            )
    return out


def _chunks(items: Sequence[Any], n: int = 500) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def load_demands(
    conn: sqlite3.Connection, order_ids: Sequence[int], *, today: dt.date | None = None
) -> list[OrderDemand]:
    """Build demands for ``order_ids`` (in that order). Special priority: ``promised`` when
    the requested date is today or past; ``urgent`` when the order has a ``priority`` column
    saying so or its note starts with ``URGENT``."""
    today = today or dt.date.today()
    layout = customer_layout(conn)
    has_priority = layout.has_priority
    heads: dict[int, tuple[Any, ...]] = {}
    lines: dict[int, list[tuple[int, str, int]]] = {}
    for chunk in _chunks(list(order_ids)):
        marks = ",".join("?" * len(chunk))
        extra = ", priority" if has_priority else ", ''"
        for row in conn.execute(
            f"SELECT order_id, customer, requested_date, note, received_at, value{extra} FROM orders"
            f" WHERE order_id IN ({marks})",
            chunk,
        ):
            heads[row[0]] = row
        for oid, ln, gtin, sku, qty in conn.execute(
            f"SELECT order_id, line_no, gtin, sku, qty FROM order_lines WHERE order_id IN ({marks})"
            " AND cancelled = 0 ORDER BY order_id, line_no",  # a cancelled line is not demand
            chunk,
        ):
            lines.setdefault(oid, []).append((ln, sku or gtin or "", qty))
    profiles = _load_profiles(conn, (h[1] for h in heads.values()), layout)
    out = []
    iso_today = today.isoformat()
    for oid in order_ids:
        h = heads.get(oid)
        if h is None:
            continue
        _, customer, requested, note, received, value, priority = h
        p = profiles.get(customer, DEFAULT_PROFILE)
        special = set()
        if requested and requested <= iso_today:
            special.add(Special.PROMISED.value)
        if str(priority).lower() == "urgent" or str(note).upper().startswith("URGENT"):
            special.add(Special.URGENT.value)
        ls = lines.get(oid, [])
        out.append(
            make_demand(oid, customer, ls, p, special=special, received_at=received, value=int(value or 0))
        )
    return out


def set_status(
    conn: sqlite3.Connection,
    order_id: int,
    status: str,
    *,
    detail: str,
    now: int,
    run_id: int | None = None,
    wave_id: int | None = None,
    deadline: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO alloc_orders (order_id, status, run_id, wave_id, deadline, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,"
        " run_id = coalesce(excluded.run_id, alloc_orders.run_id),"
        " wave_id = coalesce(excluded.wave_id, alloc_orders.wave_id),"
        " deadline = coalesce(excluded.deadline, alloc_orders.deadline), updated_at = excluded.updated_at",
        (order_id, status, run_id, wave_id, deadline, now),
    )
    target = ORDER_STATUS.get(status)
    if target is not None:
        row = conn.execute(
            "SELECT status, order_type, customer, value, gateway, record_id, order_no FROM orders"
            " WHERE order_id = ?",
            (order_id,),
        ).fetchone()
        if row is not None and row[0] != target and lifecycle.allowed(row[0], target, row[1]):
            lifecycle.transition_from(
                conn, order_id, lifecycle.OrderRow(*row), target, actor="allocation", detail=detail, now=now
            )
            return
    conn.execute(
        "INSERT INTO order_events (order_id, at, event, status, detail, actor)"
        " VALUES (?, ?, 'allocation', ?, ?, 'allocation')",
        (order_id, now, status, detail),
    )


def make_demand(
    order_id: int,
    customer: str,
    lines: list[tuple[int, str, int]],
    profile: CustomerProfile,
    *,
    special: set[str],
    received_at: int,
    value: int,
) -> OrderDemand:
    """The engine's view of one order: ``lines`` are (line_no, sku, qty); ``value`` is the
    order's value as priced (``orders.value``, see ``central.orders.valuation``)."""
    return OrderDemand(
        order_id=order_id,
        customer=customer,
        lines=tuple(DemandLine(ln, sku, qty) for ln, sku, qty in lines),
        grade=profile.grade,
        zone=profile.zone,
        route=profile.route,
        vehicle=profile.vehicle,
        special=frozenset(special),
        value=value,
        credit=profile.credit,
        allow_split=profile.allow_split,
        pref=profile.pref,
        delay_days=profile.delay_days,
        received_at=received_at,
    )
