"""The gateway's cache of central's masters: the item master (GTIN -> SKU, pack size, price,
largest order quantity, reorder parameters) and the standing of the customers mapped to this
gateway (credit limit, receivables, open-order value).

Central publishes master changes down to the gateway (``master_items``,
``customer_standing``); the cache lets ordering, the edge checks (:mod:`gateway.edge_checks`)
and the safety-stock reorder keep working while central is unreachable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.inbox import InboxRejected
from protocols.bounded import names, value_repr
from protocols.envelope import Record
from runtime.sqlitedb import Migration

MIGRATIONS = [
    Migration(
        "items_0001",
        """
        CREATE TABLE items (
            gtin TEXT PRIMARY KEY,
            sku TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            pack_size INTEGER NOT NULL DEFAULT 1,
            price INTEGER,
            safety_stock INTEGER NOT NULL DEFAULT 0,
            order_up_to INTEGER NOT NULL DEFAULT 0,
            updated_at INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX items_sku ON items(sku);
        """,
    ),
    Migration(
        "items_0002",
        """
        ALTER TABLE items ADD COLUMN max_order_qty INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE customers (
            code TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            active INTEGER NOT NULL DEFAULT 1,
            credit_limit INTEGER,
            receivables INTEGER NOT NULL DEFAULT 0,
            open_value INTEGER NOT NULL DEFAULT 0,
            as_of INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE edge_orders (
            record_id TEXT PRIMARY KEY,
            customer TEXT NOT NULL,
            value INTEGER NOT NULL,
            entered_at INTEGER NOT NULL,
            credit TEXT NOT NULL,
            detail TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX edge_orders_customer ON edge_orders(customer, entered_at);
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class Item:
    gtin: str
    sku: str
    description: str = ""
    pack_size: int = 1
    price: int | None = None
    safety_stock: int = 0
    order_up_to: int = 0
    max_order_qty: int = 0  # 0: no item limit (the edge's own limit still applies)


_COLS = "gtin, sku, description, pack_size, price, safety_stock, order_up_to, max_order_qty"


def lookup_gtin(conn: sqlite3.Connection, gtin: str) -> Item | None:
    """Find an item by GTIN; an 8/12/13-digit GTIN also matches its 14-digit form."""
    row = conn.execute(f"SELECT {_COLS} FROM items WHERE gtin = ?", (gtin.zfill(14),)).fetchone()
    return Item(*row) if row else None


def lookup_sku(conn: sqlite3.Connection, sku: str) -> Item | None:
    row = conn.execute(f"SELECT {_COLS} FROM items WHERE sku = ?", (sku,)).fetchone()
    return Item(*row) if row else None


def upsert_items(conn: sqlite3.Connection, items: Iterable[Item], *, now: int = 0) -> int:
    rows = [
        (
            i.gtin.zfill(14),
            i.sku,
            i.description,
            i.pack_size,
            i.price,
            i.safety_stock,
            i.order_up_to,
            i.max_order_qty,
            now,
        )
        for i in items
    ]
    conn.executemany(
        f"INSERT OR REPLACE INTO items ({_COLS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
    )
    return len(rows)


MASTER_RECORD = "master_items"
_ITEM_FIELDS = {
    "gtin",
    "sku",
    "description",
    "pack_size",
    "price",
    "safety_stock",
    "order_up_to",
    "max_order_qty",
}


def item_from_wire(raw: object) -> Item:
    """One item of a ``master_items`` downlink record; ValueError with a reason if malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"item: expected map, got {type(raw).__name__}")
    unknown = set(raw) - _ITEM_FIELDS
    if unknown:
        raise ValueError(f"item: unknown field {sorted(map(str, unknown))[0]}")
    gtin, sku = raw.get("gtin"), raw.get("sku")
    if not isinstance(gtin, str) or not gtin.isdigit() or len(gtin) not in (8, 12, 13, 14):
        raise ValueError(f"item.gtin: {value_repr(gtin)} is not 8, 12, 13 or 14 digits")
    if not isinstance(sku, str) or not sku:
        raise ValueError(f"item.sku: {value_repr(sku)} is not a code")
    ints = {}
    for k in ("pack_size", "safety_stock", "order_up_to", "max_order_qty"):
        v = raw.get(k, 1 if k == "pack_size" else 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"item.{k}: {value_repr(v)} is not a non-negative integer")
        ints[k] = v
    price = raw.get("price")
    if price is not None and (not isinstance(price, int) or isinstance(price, bool)):
        raise ValueError(f"item.price: {value_repr(price)} is not an integer (minor units)")
    desc = raw.get("description", "")
    return Item(gtin=gtin, sku=sku, description=str(desc), price=price, **ints)


def apply_master_items(conn: sqlite3.Connection, rec: Record) -> None:
    """Inbox handler for ``master_items``: body ``{"items": [...], "replace": false}``."""
    raw_items = rec.body.get("items")
    if not isinstance(raw_items, list):
        raise InboxRejected("items: expected an array")
    try:
        parsed = [item_from_wire(r) for r in raw_items]
    except ValueError as e:
        raise InboxRejected(str(e)) from None
    if rec.body.get("replace"):
        conn.execute("DELETE FROM items")
    upsert_items(conn, parsed, now=rec.ts)


def has_items(conn: sqlite3.Connection) -> bool:
    """True once central's item master has reached this gateway (the cache is not empty)."""
    return conn.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None


# -- customer standing ------------------------------------------------------------------

STANDING_RECORD = "customer_standing"
_STANDING_FIELDS = {"code", "name", "active", "credit_limit", "receivables", "open_value"}


@dataclass(frozen=True, slots=True)
class Standing:
    """A customer as central last reported it to this gateway."""

    code: str
    name: str = ""
    active: bool = True
    credit_limit: int | None = None
    receivables: int = 0
    open_value: int = 0
    as_of: int = 0  # central's clock (ms) when it read these figures


def _money(raw: dict[str, object], key: str, *, optional: bool = False) -> int | None:
    v = raw.get(key)
    if v is None and optional:
        return None
    if v is None:
        return 0
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"customer.{key}: {value_repr(v)} is not an integer (minor units)")
    return v


def standing_from_wire(raw: object, as_of: int) -> Standing:
    """One customer of a ``customer_standing`` record; ValueError with a reason if malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"customer: expected map, got {type(raw).__name__}")
    unknown = set(raw) - _STANDING_FIELDS
    if unknown:
        raise ValueError(f"customer: unknown field {names(unknown)}")
    code = raw.get("code")
    if not isinstance(code, str) or not code:
        raise ValueError(f"customer.code: {value_repr(code)} is not a code")
    active = raw.get("active", True)
    if not isinstance(active, bool):
        raise ValueError(f"customer.active: {value_repr(active)} is not true/false")
    return Standing(
        code=code,
        name=str(raw.get("name", "")),
        active=active,
        credit_limit=_money(raw, "credit_limit", optional=True),
        receivables=_money(raw, "receivables") or 0,
        open_value=_money(raw, "open_value") or 0,
        as_of=as_of,
    )


def apply_customer_standing(conn: sqlite3.Connection, rec: Record) -> None:
    """Inbox handler for ``customer_standing``: body ``{"customers": [...], "at": ms,
    "replace": false}``. An older report (smaller ``at``) never overwrites a newer one."""
    raw, as_of = rec.body.get("customers"), rec.body.get("at")
    if not isinstance(raw, list):
        raise InboxRejected("customers: expected an array")
    if not isinstance(as_of, int) or isinstance(as_of, bool) or as_of < 0:
        raise InboxRejected(f"at: {value_repr(as_of)} is not a time in ms")
    try:
        parsed = [standing_from_wire(r, as_of) for r in raw]
    except ValueError as e:
        raise InboxRejected(str(e)) from None
    if rec.body.get("replace"):
        conn.execute("DELETE FROM customers")
    upsert_standing(conn, parsed)
    from gateway.edge_checks import prune_entries  # noqa: PLC0415 - edge_checks reads this module

    for s in parsed:
        prune_entries(conn, s.code, s.as_of)


def upsert_standing(conn: sqlite3.Connection, customers: Iterable[Standing]) -> None:
    """Store customers' standing (an older report never overwrites a newer one)."""
    rows = list(customers)
    conn.executemany(
        "INSERT INTO customers (code, name, active, credit_limit, receivables, open_value, as_of)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(code) DO UPDATE SET name = excluded.name,"
        " active = excluded.active, credit_limit = excluded.credit_limit,"
        " receivables = excluded.receivables, open_value = excluded.open_value, as_of = excluded.as_of"
        " WHERE excluded.as_of >= customers.as_of",
        [(s.code, s.name, int(s.active), s.credit_limit, s.receivables, s.open_value, s.as_of) for s in rows],
    )


def standing(conn: sqlite3.Connection, code: str) -> Standing | None:
    row = conn.execute(
        "SELECT code, name, active, credit_limit, receivables, open_value, as_of FROM customers"
        " WHERE code = ?",
        (code,),
    ).fetchone()
    return None if row is None else Standing(row[0], row[1], bool(row[2]), *row[3:])


def known_customers(conn: sqlite3.Connection) -> set[str]:
    return {c for (c,) in conn.execute("SELECT code FROM customers")}
