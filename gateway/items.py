"""The gateway's cache of central's item master (GTIN -> SKU, pack size, reorder parameters).

Central publishes master changes down to the gateway; the cache lets ordering and the
safety-stock reorder keep working while central is unreachable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.inbox import InboxRejected
from protocols.bounded import value_repr
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
    )
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


_COLS = "gtin, sku, description, pack_size, price, safety_stock, order_up_to"


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
            now,
        )
        for i in items
    ]
    conn.executemany(
        f"INSERT OR REPLACE INTO items ({_COLS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
    )
    return len(rows)


MASTER_RECORD = "master_items"
_ITEM_FIELDS = {"gtin", "sku", "description", "pack_size", "price", "safety_stock", "order_up_to"}


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
    for k in ("pack_size", "safety_stock", "order_up_to"):
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
