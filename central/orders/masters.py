"""Master data: customers, items, price lists, locations (and the gateway mapping),
sourcing rules (which locations serve a delivery zone), AS/RS totes (which storage tote
holds an item at a DC), and what promising and scheduling read (``central/PROMISE.md``):
lead and transit days per source and zone, services (value-added and field), value-added
service capacity per location and the weekly delivery-slot template per route.

Every write goes through this module, inside the caller's write transaction:
:func:`upsert` / :func:`delete` / :func:`import_csv` validate the row against the kind's
field table (:data:`KINDS`) and raise :class:`MasterError` naming the field and the reason.

Master changes that gateways need (items, their prices for the gateway's customer class,
reorder parameters) are published down durably with ``downlink.enqueue(type="master_items")``
in the same transaction. A gateway newly mapped to a customer or location gets a full
snapshot (``replace: true``). The credit standing of the customers mapped to a gateway
(limit, receivables, open-order value: what the edge credit check reads) goes down as
``customer_standing`` with the snapshot, on every change of such a customer, and when an
order's status moves the customer's exposure (:mod:`central.orders.lifecycle`).

Validation reads masters through :func:`cache` - an in-memory snapshot per connection,
dropped by every master write here and by commits from other processes
(``PRAGMA data_version``; on PostgreSQL the ``master_version`` row that triggers renumber),
so the order hot path does no per-line master queries.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from central import CentralError, downlink
from central.hub import state
from protocols.asrs import ID_RE as ASRS_ID_RE
from protocols.bounded import value_repr
from protocols.topics import GATEWAY_ID_RE
from runtime.clock import now_ms
from runtime.dbapi import dialect
from runtime.sqlitedb import savepoint

log = logging.getLogger(__name__)

ITEMS_PER_RECORD = 500
GRADES = ("A", "B", "C")
BACKORDER_POLICIES = ("none", "backorder", "next-order", "all-at-once")
LOCATION_KINDS = ("store", "dc", "supplier")
SERVICE_KINDS = ("vas", "field")  # value-added at the source (minutes), field service in a slot
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MasterError(CentralError):
    """A master row that cannot be stored; ``field`` and ``reason`` say why."""

    def __init__(self, kind: str, key: str, field: str, reason: str) -> None:
        where = f"{kind} {value_repr(key)}" if key else kind
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
        self.kind = kind
        self.key = key
        self.field = field
        self.reason = reason


# -- field tables ------------------------------------------------------------------------

Conv = Callable[[object], object]


def _text(max_len: int = 200) -> Conv:
    def conv(v: object) -> object:
        if v is None:
            return ""
        if not isinstance(v, str):
            raise ValueError(f"expected text, got {type(v).__name__}")
        if len(v) > max_len:
            raise ValueError(f"longer than {max_len} characters")
        return v.strip()

    return conv


def _code(v: object) -> object:
    s = _text(64)(v)
    if not s:
        raise ValueError("empty")
    return s


def _int(lo: int, hi: int, *, optional: bool = False) -> Conv:
    def conv(v: object) -> object:
        if v is None or v == "":
            if optional:
                return None
            raise ValueError("missing")
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise ValueError(f"{value_repr(v)} is not an integer") from None
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"expected integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} not in {lo}..{hi}")
        return v

    return conv


def _real(lo: float, hi: float) -> Conv:
    def conv(v: object) -> object:
        if isinstance(v, str):
            try:
                v = float(v.strip() or 0)
            except ValueError:
                raise ValueError(f"{value_repr(v)} is not a number") from None
        if v is None:
            v = 0.0
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ValueError(f"expected number, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} not in {lo}..{hi}")
        return float(v)

    return conv


def _choice(options: tuple[str, ...], default: str) -> Conv:
    def conv(v: object) -> object:
        s = _text(32)(v) or default
        if s not in options:
            raise ValueError(f"{s!r} is not one of {', '.join(options)}")
        return s

    return conv


def _gateway(v: object) -> object:
    s = _text(64)(v)
    if not s:
        return None
    assert isinstance(s, str)
    if not GATEWAY_ID_RE.match(s):
        raise ValueError(f"{s!r} is not a valid gateway id")
    return s


def _bool(v: object) -> object:
    if v is None or v == "":
        return 1
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and v in (0, 1):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "0", "true", "false", "yes", "no"):
        return int(v.strip().lower() in ("1", "true", "yes"))
    raise ValueError(f"{value_repr(v)} is not a boolean")


def _flag(v: object) -> object:
    """A yes/no field that is no unless given."""
    return 0 if v is None or v == "" else _bool(v)


def _asrs_id(v: object) -> object:
    s = _text(20)(v)
    if not isinstance(s, str) or not ASRS_ID_RE.fullmatch(s):
        raise ValueError(f"{s!r} is not 1-20 characters of A-Z a-z 0-9 - . / : (an AS/RS id)")
    return s


MONEY = _int(0, 10**12)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    table: str
    key: str
    fields: dict[str, Conv]
    extra: tuple[str, ...] = ()  # fields stored outside the main table
    # A kind kept generically (one table, validated by the field table and ``check``):
    # the table's primary key; ``group``: the kind's key names several rows (GET lists them).
    rows_key: tuple[str, ...] = ()
    group: bool = False


KINDS: dict[str, Kind] = {
    "customers": Kind(
        "customers",
        "customers",
        "code",
        {
            "code": _code,
            "name": _text(),
            "grade": _choice(GRADES, "C"),
            "price_class": _text(32),
            "credit_limit": _int(0, 10**13, optional=True),
            "receivables": _int(-(10**13), 10**13, optional=True),
            "payment_terms": _text(),
            "discount_pct": _real(0, 100),
            "salesperson": _text(),
            "region": _text(),
            "district": _text(),
            "area": _text(),
            "billing_address": _text(),
            "route": _text(),
            "drop_seq": _int(0, 10**6, optional=True),
            "vehicle_type": _text(),
            "unloading": _text(),
            "delivery_window": _text(),
            "delivery_requirements": _text(),
            "backorder_policy": _choice(BACKORDER_POLICIES, "backorder"),
            "backorder_limit_days": _int(0, 3650, optional=True),
            "allow_split": _flag,
            "gateway": _gateway,
            "active": _bool,
        },
    ),
    "items": Kind(
        "items",
        "items",
        "sku",
        {
            "sku": _code,
            "description": _text(),
            "unit": _text(16),
            "pack_size": _int(1, 100_000, optional=True),
            "supplier": _text(64),
            "price": _int(0, 10**12, optional=True),
            "safety_stock": _int(0, 10**9, optional=True),
            "order_up_to": _int(0, 10**9, optional=True),
            "max_order_qty": _int(0, 10**9, optional=True),
            "pick_seconds": _real(0, 86_400),
            "item_class": _text(32),  # process definitions' line condition (central/PROCESS.md)
            "service": _text(32),  # a service the item needs (installation...), ditto
            "active": _bool,
        },
        extra=("gtins", "storage"),
    ),
    "locations": Kind(
        "locations",
        "locations",
        "code",
        {
            "code": _code,
            "kind": _choice(LOCATION_KINDS, ""),
            "name": _text(),
            "region": _text(),
            "gateway": _gateway,
            "active": _bool,
        },
    ),
    "prices": Kind(
        "prices",
        "price_breaks",
        "price_class",
        {
            "price_class": _code,
            "sku": _code,
            "min_qty": _int(1, 10**9, optional=True),
            "price": MONEY,
            "tolerance_pct": _real(0, 100),
        },
    ),
    "sourcing": Kind(
        "sourcing",
        "alloc_sourcing",
        "zone",
        {
            "zone": _code,  # a customer's delivery zone (its region), or * for every other zone
            "location": _code,
            "cost": _int(0, 10**9, optional=True),
            "preferred": _flag,
            "transfer": _flag,
        },
    ),
    "totes": Kind(
        "totes",
        "pick_totes",
        "tote",
        {
            "tote": _asrs_id,
            "location": _code,
            "sku": _code,
            "tote_location": _asrs_id,
        },
    ),
    "lead_times": Kind(
        "lead_times",
        "lead_times",
        "location",
        {
            "location": _code,  # the source
            "zone": _code,  # a customer's delivery zone (its region), or * for every other zone
            "lead_days": _int(0, 365, optional=True),  # ready to ship after (pick, pack, order at a supplier)
            "transit_days": _int(0, 365, optional=True),  # on the road to the zone
        },
        rows_key=("location", "zone"),
        group=True,
    ),
    "services": Kind(
        "services",
        "services",
        "code",
        {
            "code": _code,
            "kind": _choice(SERVICE_KINDS, ""),
            "description": _text(),
            "minutes_per_unit": _int(0, 100_000, optional=True),  # vas: work per unit of the line
            "slot_units": _int(1, 1000, optional=True),  # field: slot capacity one booking takes
            "active": _bool,
        },
        rows_key=("code",),
    ),
    "vas_capacity": Kind(
        "vas_capacity",
        "vas_capacity",
        "location",
        {"location": _code, "minutes_per_day": _int(0, 1_000_000)},
        rows_key=("location",),
    ),
    "slots": Kind(
        "slots",
        "slot_templates",
        "route",
        {
            "route": _code,  # a customer's route, else its zone (region)
            "weekday": _choice(WEEKDAYS, ""),
            "slot": _code,  # e.g. 08-12
            "capacity": _int(0, 100_000),
        },
        rows_key=("route", "weekday", "slot"),
        group=True,
    ),
}
_DEFAULTS = {
    "unit": "EA",
    "pack_size": 1,
    "safety_stock": 0,
    "order_up_to": 0,
    "max_order_qty": 0,
    "drop_seq": 0,
    "receivables": 0,
    "min_qty": 1,
    "cost": 0,
    "lead_days": 0,
    "transit_days": 0,
    "minutes_per_unit": 0,
    "slot_units": 1,
}


def _gtins(v: object) -> list[str]:
    if v is None or v == "":
        return []
    parts = v.split("|") if isinstance(v, str) else v
    if not isinstance(parts, list):
        raise ValueError("expected a list of GTINs or 'gtin|gtin' text")
    out = []
    for g in parts:
        if not isinstance(g, str) or not g.strip().isdigit() or len(g.strip()) not in (8, 12, 13, 14):
            raise ValueError(f"{g!r} is not 8, 12, 13 or 14 digits")
        out.append(g.strip().zfill(14))
    return list(dict.fromkeys(out))


def _storage(v: object) -> dict[str, str]:
    if v is None or v == "":
        return {}
    if isinstance(v, str):
        pairs: dict[str, object] = {}
        for part in v.split("|"):
            loc, sep, slot = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not LOCATION=SLOT")
            pairs[loc.strip()] = slot.strip()
        v = pairs
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and k and isinstance(s, str) and s for k, s in v.items()
    ):
        raise ValueError("expected {location: slot}")
    return dict(v)


def parse_row(kind: str, raw: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """Check and convert one master row; unknown fields and bad values raise MasterError."""
    k = KINDS.get(kind)
    if k is None:
        raise MasterError(kind, "", "", f"unknown master kind; known: {', '.join(KINDS)}")
    if key is not None:
        raw = {**raw, k.key: raw.get(k.key, key)}
        if raw[k.key] != key:
            raise MasterError(kind, key, k.key, f"body says {raw[k.key]!r} but the path says {key!r}")
    label = str(raw.get(k.key, ""))
    unknown = set(raw) - set(k.fields) - set(k.extra)
    if unknown:
        raise MasterError(kind, label, sorted(unknown)[0], "unknown field")
    row: dict[str, Any] = {}
    for name, conv in k.fields.items():
        try:
            value = conv(raw.get(name))
        except ValueError as e:
            raise MasterError(kind, label, name, str(e)) from None
        if value is None and name in _DEFAULTS:
            value = _DEFAULTS[name]
        row[name] = value
    try:
        if "gtins" in k.extra:
            row["gtins"] = _gtins(raw.get("gtins"))
        if "storage" in k.extra:
            row["storage"] = _storage(raw.get("storage"))
    except ValueError as e:
        raise MasterError(kind, label, "gtins" if "gtin" in str(e) else "storage", str(e)) from None
    if kind == "customers" and not row["price_class"]:
        row["price_class"] = row["grade"]
    if kind == "locations" and not row["kind"]:
        raise MasterError(kind, label, "kind", f"missing; one of {', '.join(LOCATION_KINDS)}")
    if kind == "sourcing" and row["preferred"] and row["transfer"]:
        raise MasterError(kind, label, "preferred", "a transfer source cannot be the preferred one")
    if kind == "services" and not row["kind"]:
        raise MasterError(kind, label, "kind", f"missing; one of {', '.join(SERVICE_KINDS)}")
    if kind == "services" and row["kind"] == "vas" and not row["minutes_per_unit"]:
        raise MasterError(kind, label, "minutes_per_unit", "a value-added service needs minutes per unit > 0")
    if kind == "slots" and not row["weekday"]:
        raise MasterError(kind, label, "weekday", f"missing; one of {', '.join(WEEKDAYS)}")
    return row


# -- writes ---------------------------------------------------------------------------


def _publish_items(conn: sqlite3.Connection, skus: list[str]) -> None:
    batch = state(conn).master_batch  # what an import publishes at its end
    if batch is not None:
        batch[0].update(skus)
    else:
        publish_items(conn, skus)


def _publish_snapshot(conn: sqlite3.Connection, gw: str) -> None:
    batch = state(conn).master_batch  # what an import publishes at its end
    if batch is not None:
        batch[1].add(gw)
    else:
        publish_snapshot(conn, gw)


def _publish_standing(conn: sqlite3.Connection, code: str) -> None:
    batch = state(conn).master_batch  # what an import publishes at its end
    if batch is not None:
        batch[2].add(code)
    else:
        publish_standing(conn, [code])


def upsert(conn: sqlite3.Connection, kind: str, raw: dict[str, Any], *, key: str | None = None) -> str:
    """Insert or replace one master row (inside a write transaction); returns its key."""
    row = parse_row(kind, raw, key=key)
    invalidate(conn)
    k = KINDS[kind]
    if k.rows_key:
        if kind in ("lead_times", "vas_capacity"):
            _known(conn, kind, row["location"], "location", master="locations", code=row["location"])
        _replace(conn, k.table, row, key=k.rows_key)
        return "/".join(str(row[c]) for c in k.rows_key)
    if kind == "customers":
        old = conn.execute(
            "SELECT gateway, receivables, open_value, price_class FROM customers WHERE code = ?",
            (row["code"],),
        ).fetchone()
        if row["receivables"] is None or "receivables" not in raw:
            row["receivables"] = old[1] if old else 0
        cols = list(row)
        conn.execute(
            f"INSERT INTO customers ({', '.join(cols)}, open_value) VALUES"
            f" ({', '.join('?' * len(cols))}, ?) ON CONFLICT(code) DO UPDATE SET"
            f" {', '.join(f'{c} = excluded.{c}' for c in cols if c != 'code')}",
            [*row.values(), old[2] if old else 0],
        )
        if row["gateway"] and (old is None or (old[0], old[3]) != (row["gateway"], row["price_class"])):
            _publish_snapshot(conn, row["gateway"])  # newly mapped, or its prices changed
        else:
            _publish_standing(conn, row["code"])
        return str(row["code"])
    if kind == "locations":
        old = conn.execute("SELECT gateway FROM locations WHERE code = ?", (row["code"],)).fetchone()
        _replace(conn, "locations", row, key=("code",))
        if row["gateway"] and (old is None or old[0] != row["gateway"]):
            _publish_snapshot(conn, row["gateway"])
        return str(row["code"])
    if kind == "items":
        gtins, storage = row.pop("gtins"), row.pop("storage")
        _replace(conn, "items", row, key=("sku",))
        sku = row["sku"]
        taken = (  # no GTINs: nothing to look up (PostgreSQL refuses an empty IN ())
            conn.execute(
                f"SELECT gtin, sku FROM item_gtins WHERE gtin IN ({', '.join('?' * len(gtins))})"
                " AND sku != ?",
                [*gtins, sku],
            ).fetchall()
            if gtins
            else []
        )
        if taken:
            raise MasterError("items", sku, "gtins", f"GTIN {taken[0][0]} already belongs to {taken[0][1]!r}")
        conn.execute("DELETE FROM item_gtins WHERE sku = ?", (sku,))
        conn.executemany("INSERT INTO item_gtins (gtin, sku) VALUES (?, ?)", [(g, sku) for g in gtins])
        conn.execute("DELETE FROM item_storage WHERE sku = ?", (sku,))
        conn.executemany(
            "INSERT INTO item_storage (sku, location, slot) VALUES (?, ?, ?)",
            [(sku, loc, slot) for loc, slot in storage.items()],
        )
        _publish_items(conn, [sku])
        return str(sku)
    if kind == "sourcing":
        _known(conn, kind, row["zone"], "location", master="locations", code=row["location"])
        _replace(conn, "alloc_sourcing", row, key=("zone", "location"))
        return f"{row['zone']}/{row['location']}"
    if kind == "totes":
        _known(conn, kind, row["tote"], "location", master="locations", code=row["location"], dc=True)
        _known(conn, kind, row["tote"], "sku", master="items", code=row["sku"])
        other = conn.execute(
            "SELECT location, sku FROM pick_totes WHERE tote = ? AND (location, sku) != (?, ?)",
            (row["tote"], row["location"], row["sku"]),
        ).fetchone()
        if other is not None:
            raise MasterError(kind, row["tote"], "tote", f"already holds {other[1]!r} at {other[0]}")
        _replace(conn, "pick_totes", row, key=("location", "sku"))
        return str(row["tote"])
    # prices: one quantity break of one class; tolerance is per class
    tol = row.pop("tolerance_pct")
    conn.execute(
        "INSERT INTO price_lists (price_class, tolerance_pct) VALUES (?, ?)"
        " ON CONFLICT(price_class) DO UPDATE SET tolerance_pct = excluded.tolerance_pct",
        (row["price_class"], tol),
    )
    _replace(conn, "price_breaks", row, key=("price_class", "sku", "min_qty"))
    _publish_items(conn, [row["sku"]])
    return f"{row['price_class']}/{row['sku']}/{row['min_qty']}"


def _known(
    conn: sqlite3.Connection, kind: str, label: str, field: str, *, master: str, code: str, dc: bool = False
) -> None:
    """``code`` must be an active row of the ``master`` kind (a DC when ``dc``)."""
    k = KINDS[master]
    row = conn.execute(
        f"SELECT active{', kind' if dc else ''} FROM {k.table} WHERE {k.key} = ?", (code,)
    ).fetchone()
    if row is None or not row[0]:
        raise MasterError(kind, label, field, f"{code!r} is not an active {master[:-1]} in the masters")
    if dc and row[1] != "dc":
        raise MasterError(kind, label, field, f"{code!r} is a {row[1]}, not a dc")


def _replace(conn: sqlite3.Connection, table: str, row: dict[str, Any], *, key: tuple[str, ...]) -> None:
    """Upsert in place (never delete-and-insert: other tables refer to masters)."""
    cols = list(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)
    conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}",
        list(row.values()),
    )


def delete(conn: sqlite3.Connection, kind: str, key: str) -> bool:
    """Deactivate a customer/item/location (orders refer to them); remove a price class."""
    invalidate(conn)
    if kind == "prices":
        n = conn.execute("DELETE FROM price_breaks WHERE price_class = ?", (key,)).rowcount
        conn.execute("DELETE FROM price_lists WHERE price_class = ?", (key,))
        return n > 0
    if kind == "sourcing":  # the zone's rules (nothing refers to them)
        return conn.execute("DELETE FROM alloc_sourcing WHERE zone = ?", (key,)).rowcount > 0
    if kind == "totes":
        return conn.execute("DELETE FROM pick_totes WHERE tote = ?", (key,)).rowcount > 0
    k = KINDS.get(kind)
    if k is None:
        raise MasterError(kind, key, "", f"unknown master kind; known: {', '.join(KINDS)}")
    if k.rows_key and "active" not in k.fields:  # nothing refers to these rows: remove them
        return conn.execute(f"DELETE FROM {k.table} WHERE {k.key} = ?", (key,)).rowcount > 0
    n = conn.execute(f"UPDATE {k.table} SET active = 0 WHERE {k.key} = ?", (key,)).rowcount
    if n and kind == "customers":
        _publish_standing(conn, key)
    return n > 0


def import_csv(conn: sqlite3.Connection, kind: str, text: str) -> int:
    """Import a CSV (header row = field names) atomically; errors name the CSV line."""
    if kind not in KINDS:
        raise MasterError(kind, "", "", f"unknown master kind; known: {', '.join(KINDS)}")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise MasterError(kind, "", "", "CSV has no header row")
    n = 0
    batch: tuple[set[str], set[str], set[str]] = (set(), set(), set())
    st = state(conn)
    with savepoint(conn, "master_import"):
        st.master_batch = batch
        try:
            for row in reader:
                if None in row:
                    raise MasterError(kind, "", "", f"line {reader.line_num}: more values than header fields")
                try:
                    upsert(conn, kind, {k: v for k, v in row.items() if v is not None})
                except MasterError as e:
                    raise MasterError(kind, e.key, e.field, f"line {reader.line_num}: {e.reason}") from None
                n += 1
        finally:
            st.master_batch = None
        skus, gws, standing = batch
        for gw in sorted(gws):
            publish_snapshot(conn, gw)
        publish_standing(conn, sorted(standing), skip_gateways=gws)
        if skus:  # the snapshots above already carry them
            for gw, cls in gateways(conn).items():
                if gw not in gws:
                    _send(conn, gw, _item_wire(conn, sorted(skus), cls), replace=False)
    return n


def adjust_receivables(conn: sqlite3.Connection, customer: str, delta: int) -> None:
    """Book ``delta`` on the customer's receivables (a credit note, a payment) and tell the
    customer's gateway its new standing."""
    conn.execute("UPDATE customers SET receivables = receivables + ? WHERE code = ?", (delta, customer))
    if delta:
        _publish_standing(conn, customer)


# -- reads ----------------------------------------------------------------------------


def get(conn: sqlite3.Connection, kind: str, key: str) -> dict[str, Any] | None:
    k = KINDS.get(kind)
    if k is None:
        return None
    if kind == "prices":
        tol = conn.execute("SELECT tolerance_pct FROM price_lists WHERE price_class = ?", (key,)).fetchone()
        if tol is None:
            return None
        breaks = conn.execute(
            "SELECT sku, min_qty, price FROM price_breaks WHERE price_class = ? ORDER BY sku, min_qty", (key,)
        ).fetchall()
        return {
            "price_class": key,
            "tolerance_pct": tol[0],
            "breaks": [{"sku": s, "min_qty": q, "price": p} for s, q, p in breaks],
        }
    if kind == "sourcing":
        rules = conn.execute(
            "SELECT location, cost, preferred, transfer FROM alloc_sourcing WHERE zone = ?"
            " ORDER BY preferred DESC, cost, location",
            (key,),
        ).fetchall()
        if not rules:
            return None
        cols = ("location", "cost", "preferred", "transfer")
        return {"zone": key, "rules": [dict(zip(cols, r, strict=True)) for r in rules]}
    if k.group:
        names = [c for c in k.fields if c != k.key]
        rows = conn.execute(
            f"SELECT {', '.join(names)} FROM {k.table} WHERE {k.key} = ? ORDER BY {', '.join(k.rows_key)}",
            (key,),
        ).fetchall()
        if not rows:
            return None
        return {k.key: key, "rules": [dict(zip(names, r, strict=True)) for r in rows]}
    cur = conn.execute(f"SELECT * FROM {k.table} WHERE {k.key} = ?", (key,))
    row = cur.fetchone()
    if row is None:
        return None
    out = dict(zip([d[0] for d in cur.description], row, strict=True))
    if kind == "items":
        out["gtins"] = [g for (g,) in conn.execute("SELECT gtin FROM item_gtins WHERE sku = ?", (key,))]
        out["storage"] = dict(conn.execute("SELECT location, slot FROM item_storage WHERE sku = ?", (key,)))
    return out


def list_keys(conn: sqlite3.Connection, kind: str, *, limit: int, after: str = "") -> list[dict[str, Any]]:
    k = KINDS[kind]
    if kind == "prices":
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT price_class FROM price_lists WHERE price_class > ? ORDER BY 1 LIMIT ?", (after, limit)
            )
        ]
    else:
        keys = [
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT {k.key} FROM {k.table} WHERE {k.key} > ? ORDER BY 1 LIMIT ?", (after, limit)
            )
        ]
    return [row for key in keys if (row := get(conn, kind, key)) is not None]


# -- in-memory snapshot for validation ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Customer:
    code: str
    name: str
    grade: str
    price_class: str
    credit_limit: int | None
    delivery_requirements: str
    delivery_window: str
    unloading: str
    gateway: str | None
    active: bool
    discount_pct: float = 0.0


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    description: str
    pack_size: int
    supplier: str
    price: int | None
    max_order_qty: int
    active: bool


@dataclass(slots=True)
class Snapshot:
    customers: dict[str, Customer] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    sku_by_gtin: dict[str, str] = field(default_factory=dict)
    breaks: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    tolerance_pct: dict[str, float] = field(default_factory=dict)

    def resolve(self, gtin: str | None, sku: str | None) -> Item | None:
        if sku is None and gtin is not None:
            sku = self.sku_by_gtin.get(gtin.zfill(14))
        return self.items.get(sku) if sku is not None else None

    def unit_price(self, price_class: str, item: Item, qty: int) -> int | None:
        """The price list's price for this quantity (highest break <= qty), else the item's."""
        best = None
        for min_qty, price in self.breaks.get((price_class, item.sku), ()):
            if min_qty <= qty:
                best = price
        return best if best is not None else item.price


def load_snapshot(conn: sqlite3.Connection) -> Snapshot:
    snap = Snapshot()
    for r in conn.execute(
        "SELECT code, name, grade, price_class, credit_limit, delivery_requirements, delivery_window,"
        " unloading, gateway, active, discount_pct FROM customers"
    ):
        snap.customers[r[0]] = Customer(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]), float(r[10])
        )
    for r in conn.execute(
        "SELECT sku, description, pack_size, supplier, price, max_order_qty, active FROM items"
    ):
        snap.items[r[0]] = Item(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]))
    snap.sku_by_gtin = dict(conn.execute("SELECT gtin, sku FROM item_gtins"))
    for cls, sku, min_qty, price in conn.execute(
        "SELECT price_class, sku, min_qty, price FROM price_breaks ORDER BY price_class, sku, min_qty"
    ):
        snap.breaks.setdefault((cls, sku), []).append((min_qty, price))
    snap.tolerance_pct = dict(conn.execute("SELECT price_class, tolerance_pct FROM price_lists"))
    return snap


# SQLite: moves with any commit by another connection (this one's own master writes call
# invalidate); PostgreSQL: a number new with every master change by anyone (central_0010)
_VERSION = {
    "sqlite": "PRAGMA data_version",
    "postgresql": "SELECT version FROM master_version WHERE id = 1",
}


def cache(conn: sqlite3.Connection) -> Snapshot:
    """The masters as of this connection's latest view; reloaded after any master change."""
    version = conn.execute(_VERSION[dialect(conn)]).fetchone()[0]
    st = state(conn)
    if st.masters is not None and st.masters[0] == version:
        return st.masters[1]
    snap = load_snapshot(conn)
    st.masters = (version, snap)
    return snap


def invalidate(conn: sqlite3.Connection) -> None:
    state(conn).masters = None


# -- publishing to gateways -----------------------------------------------------------


def gateways(conn: sqlite3.Connection) -> dict[str, str | None]:
    """Every gateway mapped in the masters -> the price class of its customer (if any)."""
    out: dict[str, str | None] = {
        gw: None for (gw,) in conn.execute("SELECT gateway FROM locations WHERE gateway IS NOT NULL")
    }
    for gw, cls in conn.execute(
        "SELECT gateway, price_class FROM customers WHERE gateway IS NOT NULL AND active = 1"
    ):
        out[gw] = cls
    return out


def _item_wire(
    conn: sqlite3.Connection, skus: Iterable[str] | None, price_class: str | None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT g.gtin, i.sku, i.description, i.pack_size, i.price, i.safety_stock, i.order_up_to,"
        " i.max_order_qty, (SELECT price FROM price_breaks b WHERE b.price_class = ? AND b.sku = i.sku"
        "  ORDER BY b.min_qty LIMIT 1)"
        " FROM items i JOIN item_gtins g ON g.sku = i.sku WHERE i.active = 1"
    )
    args: list[Any] = [price_class or ""]
    if skus is not None:
        skus = list(skus)
        if not skus:  # ``IN ()`` is SQLite's only
            return []
        sql += f" AND i.sku IN ({', '.join('?' * len(skus))})"
        args += skus
    out = []
    for gtin, sku, desc, pack, price, ss, out_to, max_qty, class_price in conn.execute(
        sql + " ORDER BY g.gtin", args
    ):
        item: dict[str, Any] = {
            "gtin": gtin,
            "sku": sku,
            "description": desc,
            "pack_size": pack,
            "safety_stock": ss,
            "order_up_to": out_to,
        }
        if max_qty:
            item["max_order_qty"] = max_qty
        p = class_price if class_price is not None else price
        if p is not None:
            item["price"] = p
        out.append(item)
    return out


def _send(conn: sqlite3.Connection, gw: str, items: list[dict[str, Any]], *, replace: bool) -> None:
    if not items and not replace:
        return
    for i in range(0, max(len(items), 1), ITEMS_PER_RECORD):
        downlink.enqueue(
            conn,
            gateway=gw,
            type="master_items",
            body={"items": items[i : i + ITEMS_PER_RECORD], "replace": replace and i == 0},
        )


def publish_items(conn: sqlite3.Connection, skus: list[str]) -> None:
    """Send the changed items to every mapped gateway (priced for its customer's class)."""
    for gw, cls in gateways(conn).items():
        _send(conn, gw, _item_wire(conn, skus, cls), replace=False)


def publish_snapshot(conn: sqlite3.Connection, gw: str) -> None:
    """Send a gateway the whole active item master, replacing what it had, and the standing
    of every customer mapped to it."""
    cls = gateways(conn).get(gw)
    _send(conn, gw, _item_wire(conn, None, cls), replace=True)
    codes = [c for (c,) in conn.execute("SELECT code FROM customers WHERE gateway = ? ORDER BY code", (gw,))]
    _send_standing(conn, gw, _standing_rows(conn, codes), replace=True)


STANDING_RECORD = "customer_standing"
_STANDING_COLS = ("code", "name", "active", "credit_limit", "receivables", "open_value")


def _standing_rows(conn: sqlite3.Connection, codes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """gateway -> the standing of those of ``codes`` mapped to it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k in range(0, len(codes), 500):
        part = codes[k : k + 500]
        for row in conn.execute(
            f"SELECT gateway, {', '.join(_STANDING_COLS)} FROM customers"
            f" WHERE gateway IS NOT NULL AND code IN ({', '.join('?' * len(part))}) ORDER BY code",
            part,
        ):
            c = dict(zip(_STANDING_COLS, row[1:], strict=True))
            c["active"] = bool(c["active"])
            if c["credit_limit"] is None:
                del c["credit_limit"]
            out.setdefault(row[0], []).append(c)
    return out


def _send_standing(
    conn: sqlite3.Connection, gw: str, rows: dict[str, list[dict[str, Any]]], *, replace: bool
) -> None:
    customers = rows.get(gw, [])
    if customers or replace:
        downlink.enqueue(
            conn,
            gateway=gw,
            type=STANDING_RECORD,
            body={"customers": customers, "at": now_ms(), "replace": replace},
        )


def publish_standing(
    conn: sqlite3.Connection, codes: Iterable[str], *, skip_gateways: Iterable[str] = ()
) -> None:
    """Send the credit standing of these customers to the gateways they are mapped to (the
    edge credit check reads it; ``at`` is central's clock when it was read)."""
    rows = _standing_rows(conn, list(codes))
    skip = set(skip_gateways)
    for gw in sorted(rows.keys() - skip):
        _send_standing(conn, gw, rows, replace=False)


# -- CLI ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``storegate masters import KIND FILE.csv --db PATH|URL``: import a master CSV atomically
    (``--db``: central's SQLite file, or its PostgreSQL database as a ``postgresql://`` URL)."""
    from central.migrations import all_migrations  # noqa: PLC0415
    from runtime import dbapi  # noqa: PLC0415 - CLI only

    p = argparse.ArgumentParser(prog="storegate masters", description="Central master data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="import a CSV file (header row = field names)")
    imp.add_argument("kind", choices=sorted(KINDS))
    imp.add_argument("file")
    imp.add_argument(
        "--db", default="var/central/central.db", help="central database file or postgresql:// URL"
    )
    args = p.parse_args(argv)
    conn = dbapi.connect(args.db, migrations=all_migrations())
    try:
        with open(args.file, encoding="utf-8-sig") as f:
            text = f.read()
        dbapi.begin(conn)
        try:
            n = import_csv(conn, args.kind, text)
        except MasterError as e:
            conn.execute("ROLLBACK")
            print(f"error: {e}", file=sys.stderr)
            return 1
        conn.execute("COMMIT")
        print(f"imported {n} {args.kind}")
        return 0
    finally:
        conn.close()
