"""The tables of promising and scheduling (``central/PROMISE.md``): the masters
``lead_times``, ``services``, ``vas_capacity``, ``slot_templates``; what is booked
(``vas_load``, ``slot_load``); kept promises (``promises``, ``promise_lines``: their stock
is ``reservation`` rows of ``allocations``) and the order lines' service bookings
(``service_bookings``). Part of ``central.schema.MIGRATIONS`` (every central database has
them: the lifecycle's hooks read them). Portable SQL: SQLite and PostgreSQL."""

from __future__ import annotations

from runtime.sqlitedb import Migration

MIGRATIONS: list[Migration] = [
    Migration(
        "promising_0001",
        """
        CREATE TABLE lead_times (
            location TEXT NOT NULL,
            zone TEXT NOT NULL,
            lead_days INTEGER NOT NULL DEFAULT 0,
            transit_days INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (location, zone)
        );
        CREATE TABLE services (
            code TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            minutes_per_unit INTEGER NOT NULL DEFAULT 0,
            slot_units INTEGER NOT NULL DEFAULT 1,
            active INTEGER NOT NULL DEFAULT 1
        );
        CREATE TABLE vas_capacity (
            location TEXT PRIMARY KEY,
            minutes_per_day INTEGER NOT NULL
        );
        CREATE TABLE vas_load (
            location TEXT NOT NULL,
            day TEXT NOT NULL,
            booked INTEGER NOT NULL DEFAULT 0 CHECK (booked >= 0),
            PRIMARY KEY (location, day)
        );
        CREATE TABLE slot_templates (
            route TEXT NOT NULL,
            weekday TEXT NOT NULL,
            slot TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            PRIMARY KEY (route, weekday, slot)
        );
        CREATE TABLE slot_load (
            route TEXT NOT NULL,
            day TEXT NOT NULL,
            slot TEXT NOT NULL,
            booked INTEGER NOT NULL DEFAULT 0 CHECK (booked >= 0),
            PRIMARY KEY (route, day, slot)
        );
        CREATE TABLE promises (
            promise_id INTEGER PRIMARY KEY AUTOINCREMENT,
            ref TEXT NOT NULL UNIQUE,
            customer TEXT NOT NULL,
            zone TEXT NOT NULL,
            status TEXT NOT NULL,
            hold_until INTEGER NOT NULL,
            record_id TEXT,
            order_id INTEGER,
            created_at INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            closed_at INTEGER,
            closed_reason TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX promises_due ON promises(status, hold_until, promise_id);
        CREATE TABLE promise_lines (
            promise_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            location TEXT NOT NULL,
            ship_date TEXT NOT NULL,
            delivery_date TEXT NOT NULL,
            limited_by TEXT NOT NULL,
            stock_qty INTEGER NOT NULL DEFAULT 0,
            receipt_id INTEGER,
            receipt_qty INTEGER NOT NULL DEFAULT 0,
            service TEXT NOT NULL DEFAULT '',
            vas_day TEXT,
            vas_minutes INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (promise_id, line_no)
        );
        CREATE INDEX promise_lines_sku ON promise_lines(sku, receipt_id);
        CREATE TABLE service_bookings (
            booking_id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            service TEXT NOT NULL,
            route TEXT NOT NULL,
            day TEXT NOT NULL,
            slot TEXT NOT NULL,
            units INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            completed_by TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX service_bookings_order ON service_bookings(order_id, booking_id);
        """,
    ),
]
