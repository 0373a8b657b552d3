"""The gateway's cache of central's item master (GTIN -> SKU, pack size, reorder parameters).

Central publishes master changes down to the gateway; the cache lets ordering and the
safety-stock reorder keep working while central is unreachable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from ops.sqlitedb import Migration

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
