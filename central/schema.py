"""Central's SQLite schema, as named migrations applied at start."""

from __future__ import annotations

from central import downlink
from central.promising import tables as promising_tables
from runtime.sqlitedb import Migration

# the tables and columns masters.Snapshot holds (customers' open value and receivables move
# with every order: not in it, not counted)
_SNAPSHOT_TABLES = {
    "customers": "code, name, grade, price_class, credit_limit, delivery_requirements, delivery_window,"
    " unloading, gateway, active, discount_pct",
    "items": "",
    "item_gtins": "",
    "price_breaks": "",
    "price_lists": "",
}
MASTER_VERSION_PG = """
    CREATE SEQUENCE master_version_seq;
    CREATE TABLE master_version (id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
    INSERT INTO master_version (id, version) VALUES (1, 0);
    CREATE FUNCTION master_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE master_version SET version = nextval('master_version_seq') WHERE id = 1;
        RETURN NULL;
    END $$;
    """ + "".join(
    f"CREATE TRIGGER {t}_master_version AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE"
    f"{' OF ' + cols if cols else ''} ON {t} FOR EACH STATEMENT EXECUTE FUNCTION master_version_bump();\n"
    for t, cols in _SNAPSHOT_TABLES.items()
)

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
    Migration(
        "central_0002_orders",
        """
        CREATE TABLE customers (
            code TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            grade TEXT NOT NULL DEFAULT 'C',
            price_class TEXT NOT NULL DEFAULT '',
            credit_limit INTEGER,
            receivables INTEGER NOT NULL DEFAULT 0,
            open_value INTEGER NOT NULL DEFAULT 0,
            payment_terms TEXT NOT NULL DEFAULT '',
            discount_pct REAL NOT NULL DEFAULT 0,
            salesperson TEXT NOT NULL DEFAULT '',
            region TEXT NOT NULL DEFAULT '',
            district TEXT NOT NULL DEFAULT '',
            area TEXT NOT NULL DEFAULT '',
            billing_address TEXT NOT NULL DEFAULT '',
            route TEXT NOT NULL DEFAULT '',
            drop_seq INTEGER NOT NULL DEFAULT 0,
            vehicle_type TEXT NOT NULL DEFAULT '',
            unloading TEXT NOT NULL DEFAULT '',
            delivery_window TEXT NOT NULL DEFAULT '',
            delivery_requirements TEXT NOT NULL DEFAULT '',
            backorder_policy TEXT NOT NULL DEFAULT 'backorder',
            backorder_limit_days INTEGER,
            gateway TEXT,
            active INTEGER NOT NULL DEFAULT 1
        ) WITHOUT ROWID;
        CREATE INDEX customers_gateway ON customers(gateway);
        CREATE TABLE items (
            sku TEXT PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            unit TEXT NOT NULL DEFAULT 'EA',
            pack_size INTEGER NOT NULL DEFAULT 1,
            supplier TEXT NOT NULL DEFAULT '',
            price INTEGER,
            safety_stock INTEGER NOT NULL DEFAULT 0,
            order_up_to INTEGER NOT NULL DEFAULT 0,
            max_order_qty INTEGER NOT NULL DEFAULT 0,
            pick_seconds REAL NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1
        ) WITHOUT ROWID;
        CREATE TABLE item_gtins (
            gtin TEXT PRIMARY KEY,
            sku TEXT NOT NULL REFERENCES items(sku) ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE INDEX item_gtins_sku ON item_gtins(sku);
        CREATE TABLE item_storage (
            sku TEXT NOT NULL REFERENCES items(sku) ON DELETE CASCADE,
            location TEXT NOT NULL,
            slot TEXT NOT NULL,
            PRIMARY KEY (sku, location)
        ) WITHOUT ROWID;
        CREATE TABLE price_lists (
            price_class TEXT PRIMARY KEY,
            tolerance_pct REAL NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE price_breaks (
            price_class TEXT NOT NULL,
            sku TEXT NOT NULL,
            min_qty INTEGER NOT NULL,
            price INTEGER NOT NULL,
            PRIMARY KEY (price_class, sku, min_qty)
        ) WITHOUT ROWID;
        CREATE TABLE locations (
            code TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            region TEXT NOT NULL DEFAULT '',
            gateway TEXT,
            active INTEGER NOT NULL DEFAULT 1
        ) WITHOUT ROWID;
        CREATE INDEX locations_gateway ON locations(gateway);
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            token_sha256 TEXT UNIQUE,
            password_hash TEXT,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        ALTER TABLE orders ADD COLUMN value INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE orders ADD COLUMN requirements TEXT NOT NULL DEFAULT '';
        ALTER TABLE orders ADD COLUMN hold_reason TEXT NOT NULL DEFAULT '';
        ALTER TABLE orders ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX orders_channel ON orders(channel, order_id);
        CREATE INDEX orders_source_ref ON orders(source_ref, order_id);
        ALTER TABLE order_lines ADD COLUMN unit_price INTEGER;
        ALTER TABLE order_lines ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE order_checks (
            order_id INTEGER NOT NULL REFERENCES orders(order_id),
            run INTEGER NOT NULL,
            name TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX order_checks_order ON order_checks(order_id, run);
        CREATE TABLE parked_changes (
            order_ref TEXT NOT NULL,
            change_seq INTEGER NOT NULL,
            record_id TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            body BLOB NOT NULL,
            parked_at INTEGER NOT NULL,
            PRIMARY KEY (order_ref, change_seq)
        ) WITHOUT ROWID;
        CREATE TABLE drop_ships (
            order_id INTEGER NOT NULL REFERENCES orders(order_id),
            supplier TEXT NOT NULL,
            status TEXT NOT NULL,
            supplier_ref TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '',
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (order_id, supplier)
        ) WITHOUT ROWID;
        CREATE TABLE contracts (
            code TEXT PRIMARY KEY,
            customer TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            note TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        CREATE TABLE contract_lines (
            contract TEXT NOT NULL REFERENCES contracts(code),
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            PRIMARY KEY (contract, sku)
        ) WITHOUT ROWID;
        CREATE TABLE contract_deliveries (
            contract TEXT NOT NULL REFERENCES contracts(code),
            date TEXT NOT NULL,
            order_id INTEGER REFERENCES orders(order_id),
            PRIMARY KEY (contract, date)
        ) WITHOUT ROWID;
        CREATE TABLE consignment_lots (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            customer TEXT NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            remaining INTEGER NOT NULL,
            price INTEGER NOT NULL,
            deposited_at INTEGER NOT NULL,
            ref TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX consignment_lots_cust ON consignment_lots(customer, sku, id);
        CREATE TABLE consignment_moves (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            lot_id INTEGER NOT NULL REFERENCES consignment_lots(id),
            order_id INTEGER REFERENCES orders(order_id),
            line_no INTEGER,
            qty INTEGER NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX consignment_moves_order ON consignment_moves(order_id);
        CREATE TABLE vouchers (
            code TEXT PRIMARY KEY,
            customer TEXT,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'issued',
            order_id INTEGER REFERENCES orders(order_id),
            issued_at INTEGER NOT NULL,
            consumed_at INTEGER
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        "central_0003_work_queue",
        """
        CREATE TABLE work_queue (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            record_id TEXT NOT NULL,
            gateway TEXT NOT NULL,
            raw BLOB NOT NULL
        );
        """,
    ),
    Migration(
        # A row holds several records of one received message (up to
        # ingest.QUEUE_ROW_RECORDS) rather than one: ``raws`` is their msgpack maps one after
        # another, as they arrived; ``done`` how many of them processing has finished (the row
        # goes when all ``count`` are). Rows queued before stay queued, one record each.
        "central_0004_work_queue_by_message",
        """
        CREATE TABLE work_queue_m (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            gateway TEXT NOT NULL,
            raws BLOB NOT NULL,
            count INTEGER NOT NULL CHECK (count > 0),
            done INTEGER NOT NULL DEFAULT 0 CHECK (done >= 0 AND done < count)
        );
        INSERT INTO work_queue_m (n, gateway, raws, count)
            SELECT n, gateway, raw, 1 FROM work_queue ORDER BY n;
        DROP TABLE work_queue;
        ALTER TABLE work_queue_m RENAME TO work_queue;
        """,
    ),
    Migration(
        # What each order line is worth (``central.orders.valuation``): its validated unit price x
        # qty less the customer's discount, written when the line is priced. Lines priced
        # before are valued at their unit price (the discount was not applied then).
        "central_0005_line_amount",
        """
        ALTER TABLE order_lines ADD COLUMN amount INTEGER;
        UPDATE order_lines SET amount = qty * unit_price WHERE unit_price IS NOT NULL;
        """,
    ),
    Migration(
        # What central's clock ran (``central.schedule``): one row per job item, written in
        # the transaction of the item's effect, so no item runs twice.
        "central_0006_schedule_runs",
        """
        CREATE TABLE schedule_runs (
            job TEXT NOT NULL,
            item TEXT NOT NULL,
            ran_at INTEGER NOT NULL,
            result TEXT NOT NULL,
            PRIMARY KEY (job, item)
        ) WITHOUT ROWID;
        CREATE INDEX schedule_runs_at ON schedule_runs(ran_at);
        """,
    ),
    Migration(
        # the customer master says whether a line may be split over several sources
        "central_0007_customer_allow_split",
        "ALTER TABLE customers ADD COLUMN allow_split INTEGER NOT NULL DEFAULT 0;",
    ),
    Migration(
        # POST /api/orders' Idempotency-Key -> the first answer (``central.web.idempotency``)
        "central_0008_idempotency",
        """
        CREATE TABLE idempotency (
            key TEXT PRIMARY KEY,
            fingerprint BLOB NOT NULL,
            status INTEGER NOT NULL,
            answer TEXT NOT NULL,
            order_no TEXT NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX idempotency_created ON idempotency(created_at);
        """,
    ),
    Migration(
        # a check's place in its run, for listing the checks in the order they ran (was rowid)
        "central_0009_order_checks_pos",
        """
        ALTER TABLE order_checks ADD COLUMN pos INTEGER NOT NULL DEFAULT 0;
        UPDATE order_checks SET pos = rowid;
        """,
        postgres="ALTER TABLE order_checks ADD COLUMN pos BIGINT NOT NULL DEFAULT 0",
    ),
    Migration(
        # the masters' version (``masters.cache``): on PostgreSQL, where other workers change
        # masters, every change of what the snapshot holds takes a new number from a sequence
        # (never one seen before, rollbacks included); SQLite reads PRAGMA data_version instead
        "central_0010_master_version",
        "CREATE TABLE master_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);"
        " INSERT INTO master_version (id, version) VALUES (1, 0);",
        postgres=MASTER_VERSION_PG,
    ),
    *promising_tables.MIGRATIONS,
    Migration(
        # process definitions (``central.process``): versions of the master, each line's walk
        # through its definition, steps finished by a person or partner; partners and their events
        "central_0011_process",
        """
        ALTER TABLE items ADD COLUMN item_class TEXT NOT NULL DEFAULT '';
        ALTER TABLE items ADD COLUMN service TEXT NOT NULL DEFAULT '';
        CREATE TABLE process_versions (
            version INTEGER PRIMARY KEY,
            imported_at INTEGER NOT NULL,
            imported_by TEXT NOT NULL,
            digest TEXT NOT NULL
        );
        CREATE TABLE process_definitions (
            version INTEGER NOT NULL,
            position INTEGER NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (version, name)
        );
        CREATE TABLE process_lines (
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            definition TEXT NOT NULL,
            version INTEGER NOT NULL,
            partner TEXT NOT NULL DEFAULT '',
            step TEXT NOT NULL DEFAULT '',
            waiting INTEGER NOT NULL DEFAULT 0,
            since INTEGER NOT NULL,
            PRIMARY KEY (order_id, line_no)
        );
        CREATE INDEX process_lines_partner ON process_lines(partner, order_id);
        CREATE INDEX process_lines_waiting ON process_lines(waiting, order_id);
        CREATE TABLE process_done (
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            step TEXT NOT NULL,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (order_id, line_no, step)
        );
        CREATE TABLE partners (
            code TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            key_sha256 TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            updated_at INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX partners_key ON partners(key_sha256);
        CREATE TABLE partner_events (
            partner TEXT NOT NULL,
            event_key TEXT NOT NULL,
            order_id INTEGER NOT NULL,
            fingerprint BLOB NOT NULL,
            status INTEGER NOT NULL,
            answer TEXT NOT NULL,
            at INTEGER NOT NULL,
            PRIMARY KEY (partner, event_key)
        );
        """,
    ),
    Migration(
        # what slice of the stock a user sees (``central.web.auth.Scope``): no rows = all
        "central_0012_user_scopes",
        """
        CREATE TABLE user_scopes (
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (name, kind, value)
        );
        """,
    ),
]
