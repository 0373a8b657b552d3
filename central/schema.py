"""Central's SQLite schema, as named migrations applied at start."""

from __future__ import annotations

from central import downlink
from ops.sqlitedb import Migration

MIGRATIONS: list[Migration] = [
    Migration(
        "central_0001_spine",
        """
        CREATE TABLE processed (
            record_id TEXT PRIMARY KEY,
            gateway TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            ref TEXT,
            processed_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX processed_gw_seq ON processed(gateway, seq);
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            gateway TEXT,
            topic TEXT NOT NULL,
            record_id TEXT,
            seq INTEGER,
            type TEXT,
            reason TEXT NOT NULL,
            raw BLOB,
            at INTEGER NOT NULL
        );
        CREATE TABLE orders (
            order_id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_no TEXT NOT NULL UNIQUE,
            record_id TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            seq INTEGER NOT NULL,
            customer TEXT NOT NULL,
            channel TEXT NOT NULL,
            order_type TEXT NOT NULL,
            requested_date TEXT NOT NULL,
            status TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            source_ref TEXT NOT NULL DEFAULT '',
            created_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX orders_gateway ON orders(gateway, order_id);
        CREATE INDEX orders_customer ON orders(customer, order_id);
        CREATE INDEX orders_status ON orders(status, order_id);
        CREATE TABLE order_lines (
            order_id INTEGER NOT NULL REFERENCES orders(order_id),
            line_no INTEGER NOT NULL,
            gtin TEXT,
            sku TEXT,
            qty INTEGER NOT NULL,
            price INTEGER,
            PRIMARY KEY (order_id, line_no)
        ) WITHOUT ROWID;
        CREATE TABLE order_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL REFERENCES orders(order_id),
            at INTEGER NOT NULL,
            event TEXT NOT NULL,
            status TEXT,
            detail TEXT NOT NULL DEFAULT '',
            actor TEXT NOT NULL DEFAULT 'system'
        );
        CREATE INDEX order_events_order ON order_events(order_id, id);
        """,
    ),
    *downlink.MIGRATIONS,
]
