"""Inventory per location: on hand, allocated, available, expected receipts, ATP, reservations.

``inventory`` holds one row per ``(location, sku)`` with ``on_hand`` and ``allocated``;
available = on_hand - allocated. The table's CHECK constraints enforce
``0 <= allocated <= on_hand`` in the database itself, so no code path - a bug, a race
between workers, a replayed record - can promise stock that is not there: the write fails
and its transaction rolls back.

Every allocated unit is a row in ``allocations`` (an order line's share at one location, or
a reservation with a free-text reference); ``inventory.allocated`` is their running sum.
Every engine run is kept in ``alloc_runs`` with its inputs (msgpack; JSON in runs stored
before) and its readable trace, so it can be replayed (:func:`replay_run`).

All functions take a job's connection (SQLite or PostgreSQL, ``runtime.dbapi``) and run
inside the caller's transaction (a ``write`` job); none commits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from central import CentralError
from central.allocate.allocation import (
    AllocationResult,
    CompanyPolicy,
    Network,
    OrderDemand,
    PriorityRules,
    SourcingRule,
    decode_inputs,
    encode_available,
    encode_orders,
    encode_setting,
    trace_digest,
)
from central.hub import state
from runtime.dbapi import IntegrityError, dialect, has_table
from runtime.sqlitedb import Migration, savepoint

MIGRATIONS: list[Migration] = [
    Migration(
        "allocation_0001",
        """
        CREATE TABLE inventory (
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            on_hand INTEGER NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
            allocated INTEGER NOT NULL DEFAULT 0 CHECK (allocated >= 0 AND allocated <= on_hand),
            bin TEXT NOT NULL DEFAULT '',
            supplier TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (location, sku)
        ) WITHOUT ROWID;
        CREATE INDEX inventory_sku ON inventory(sku, location);
        CREATE TABLE receipts (
            receipt_id INTEGER PRIMARY KEY AUTOINCREMENT,
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL CHECK (qty > 0),
            expected_date TEXT NOT NULL,
            supplier TEXT NOT NULL DEFAULT '',
            ref TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'expected',
            received_at INTEGER
        );
        CREATE INDEX receipts_open ON receipts(sku, status, expected_date);
        CREATE TABLE alloc_sourcing (
            zone TEXT NOT NULL,
            location TEXT NOT NULL,
            cost INTEGER NOT NULL DEFAULT 0,
            preferred INTEGER NOT NULL DEFAULT 0,
            transfer INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (zone, location)
        ) WITHOUT ROWID;
        CREATE TABLE alloc_runs (
            run_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            wave_id INTEGER,
            at INTEGER NOT NULL,
            inputs BLOB NOT NULL,
            trace TEXT NOT NULL,
            digest TEXT NOT NULL
        );
        CREATE TABLE allocations (
            alloc_id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER,
            line_no INTEGER,
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL CHECK (qty > 0),
            kind TEXT NOT NULL DEFAULT 'order',
            ref TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'allocated',
            rule TEXT NOT NULL DEFAULT '',
            run_id INTEGER,
            wave_id INTEGER,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX allocations_order ON allocations(order_id, line_no);
        CREATE INDEX allocations_wave ON allocations(wave_id);
        CREATE TABLE alloc_orders (
            order_id INTEGER PRIMARY KEY,
            status TEXT NOT NULL,
            run_id INTEGER,
            wave_id INTEGER,
            deadline TEXT,
            updated_at INTEGER NOT NULL
        );
        CREATE TABLE alloc_customer_profile (
            customer TEXT PRIMARY KEY,
            grade TEXT NOT NULL DEFAULT 'C',
            zone TEXT NOT NULL DEFAULT '',
            route TEXT NOT NULL DEFAULT '',
            vehicle TEXT NOT NULL DEFAULT '',
            credit INTEGER NOT NULL DEFAULT 0,
            allow_split INTEGER NOT NULL DEFAULT 0,
            pref TEXT NOT NULL DEFAULT 'backorder',
            delay_days INTEGER,
            salesperson TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        CREATE TABLE shortages (
            shortage_id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL CHECK (qty > 0),
            filled INTEGER NOT NULL DEFAULT 0 CHECK (filled >= 0 AND filled <= qty),
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open',
            customer TEXT NOT NULL DEFAULT '',
            salesperson TEXT NOT NULL DEFAULT '',
            supplier TEXT NOT NULL DEFAULT '',
            deadline TEXT,
            run_id INTEGER,
            created_at INTEGER NOT NULL,
            resolved_at INTEGER,
            resolution TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX shortages_sku ON shortages(sku, status);
        CREATE INDEX shortages_order ON shortages(order_id);
        CREATE INDEX shortages_customer ON shortages(customer, status);
        CREATE TABLE waves (
            wave_id INTEGER PRIMARY KEY AUTOINCREMENT,
            batch_key TEXT NOT NULL,
            cutoff INTEGER NOT NULL,
            departure INTEGER,
            status TEXT NOT NULL DEFAULT 'allocated',
            pick_seconds REAL NOT NULL DEFAULT 0,
            run_id INTEGER,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE wave_orders (
            wave_id INTEGER NOT NULL,
            order_id INTEGER NOT NULL,
            PRIMARY KEY (wave_id, order_id)
        ) WITHOUT ROWID;
        CREATE TABLE rmas (
            rma_id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL CHECK (qty > 0),
            reason TEXT NOT NULL,
            disposition TEXT NOT NULL,
            location TEXT NOT NULL DEFAULT '',
            rule TEXT NOT NULL,
            credit INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX rmas_order ON rmas(order_id, line_no);
        CREATE TABLE receivables (
            entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
            customer TEXT NOT NULL,
            order_id INTEGER,
            amount INTEGER NOT NULL,
            kind TEXT NOT NULL,
            ref TEXT NOT NULL DEFAULT '',
            at INTEGER NOT NULL
        );
        CREATE INDEX receivables_customer ON receivables(customer, entry_id);
        """,
    ),
    Migration(
        # the release tick asks, per allocated order, whether it waits for a wave
        "allocation_0002_wave_orders_by_order",
        "CREATE INDEX wave_orders_order ON wave_orders(order_id, wave_id);",
    ),
    Migration(
        # who changed on hand, when, from what to what (``audit_stock``)
        "allocation_0003_stock_audit",
        """
        CREATE TABLE stock_audit (
            audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            before_qty INTEGER,
            after_qty INTEGER NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX stock_audit_loc ON stock_audit(location, sku, audit_id);
        """,
    ),
]


class InventoryError(CentralError):
    """A stock operation that would break an invariant; carries the location and sku."""

    def __init__(self, location: str, sku: str, reason: str) -> None:
        super().__init__(f"{location}/{sku}: {reason}")
        self.location = location
        self.sku = sku
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StockRow:
    location: str
    sku: str
    on_hand: int
    allocated: int
    bin: str
    supplier: str

    @property
    def available(self) -> int:
        return self.on_hand - self.allocated


def on_hand(conn: sqlite3.Connection, location: str, sku: str) -> int | None:
    row = conn.execute(
        "SELECT on_hand FROM inventory WHERE location = ? AND sku = ?", (location, sku)
    ).fetchone()
    return None if row is None else int(row[0])


def audit_stock(
    conn: sqlite3.Connection,
    *,
    actor: str,
    action: str,
    location: str,
    sku: str,
    before: int | None,
    after: int,
    now: int,
    detail: str = "",
) -> None:
    """Keep who changed a location's on hand, from what to what (``stock_audit``)."""
    conn.execute(
        "INSERT INTO stock_audit (at, actor, action, location, sku, before_qty, after_qty, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (now, actor, action, location, sku, before, after, detail),
    )


AUDIT_COLUMNS = ("audit_id", "at", "actor", "action", "location", "sku", "before_qty", "after_qty", "detail")


def stock_audit(
    conn: sqlite3.Connection,
    *,
    location: str | None = None,
    sku: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The audit trail, newest first."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    for col, val in (("location", location), ("sku", sku)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    if before_id is not None:
        where.append("audit_id < ?")
        args.append(before_id)
    rows = conn.execute(
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM stock_audit WHERE {' AND '.join(where)}"
        " ORDER BY audit_id DESC LIMIT ?",
        (*args, limit),
    )
    return [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]


def set_stock(
    conn: sqlite3.Connection, location: str, sku: str, on_hand: int, *, bin: str = "", supplier: str = ""
) -> None:
    """Set the counted on-hand quantity (a stock take); bin/supplier kept if not given."""
    try:
        conn.execute(
            "INSERT INTO inventory (location, sku, on_hand, bin, supplier) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (location, sku) DO UPDATE SET on_hand = excluded.on_hand,"
            " bin = CASE WHEN excluded.bin = '' THEN inventory.bin ELSE excluded.bin END,"
            " supplier = CASE WHEN excluded.supplier = '' THEN inventory.supplier ELSE excluded.supplier END",
            (location, sku, on_hand, bin, supplier),
        )
    except IntegrityError:
        raise InventoryError(location, sku, f"on hand {on_hand} below what is allocated") from None


def add_stock(conn: sqlite3.Connection, location: str, sku: str, qty: int) -> None:
    """Add (or with a negative ``qty`` remove) units on hand. A removal is a plain UPDATE: an
    upsert's candidate row (on hand = ``qty`` < 0) would fail the CHECK before the conflict
    turns it into the update."""
    try:
        if qty < 0:
            cur = conn.execute(
                "UPDATE inventory SET on_hand = on_hand + ? WHERE location = ? AND sku = ?",
                (qty, location, sku),
            )
            if cur.rowcount != 1:
                raise InventoryError(location, sku, f"cannot change on hand by {qty}: no inventory row")
            return
        conn.execute(
            "INSERT INTO inventory (location, sku, on_hand) VALUES (?, ?, ?)"
            " ON CONFLICT (location, sku) DO UPDATE SET on_hand = inventory.on_hand + excluded.on_hand",
            (location, sku, qty),
        )
    except IntegrityError:
        raise InventoryError(location, sku, f"cannot change on hand by {qty}") from None


def stock(conn: sqlite3.Connection, *, sku: str | None = None, location: str | None = None) -> list[StockRow]:
    sql = "SELECT location, sku, on_hand, allocated, bin, supplier FROM inventory"
    where, args = [], []
    if sku is not None:
        where.append("sku = ?")
        args.append(sku)
    if location is not None:
        where.append("location = ?")
        args.append(location)
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [StockRow(*r) for r in conn.execute(sql + " ORDER BY location, sku", args)]


def available(conn: sqlite3.Connection, skus: Iterable[str] | None = None) -> dict[tuple[str, str], int]:
    """Available quantity per ``(location, sku)`` - the engine's stock input.

    On PostgreSQL (several central workers allocating at once) the rows read are locked
    (``FOR UPDATE``) until the transaction ends, in one order - by sku, then location, a
    chunk of skus after another in sku order - so two allocations never both promise what
    one of them read (the second waits for the first's commit and reads what is left), and
    two that need overlapping skus lock them in the same order. On SQLite the single writer
    already serialises allocations."""
    lock = " ORDER BY sku, location FOR UPDATE" if dialect(conn) == "postgresql" else ""
    if skus is None:
        rows = conn.execute("SELECT location, sku, on_hand - allocated FROM inventory" + lock)
        return {(loc, s): q for loc, s, q in rows}
    wanted = sorted(set(skus))
    out: dict[tuple[str, str], int] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for loc, s, q in conn.execute(
            f"SELECT location, sku, on_hand - allocated FROM inventory WHERE sku IN ({marks})" + lock, chunk
        ):
            out[(loc, s)] = q
    return out


class Stock:
    """What the real-time batch path keeps in memory between runs (see :func:`take_stock`):
    available quantity per ``(location, sku)`` for the skus read so far (every location
    holding each), the customers' rows read so far (``None``: no such customer) with
    whether each is owed ship-with-next stock, as the batch path selects them, and the
    sourcing network."""

    __slots__ = ("avail", "customers", "keys_of", "network", "owed", "packer", "select")

    def __init__(self) -> None:
        self.avail: dict[tuple[str, str], int] = {}
        self.keys_of: dict[str, list[tuple[str, str]]] = {}  # sku -> its rows' keys
        self.select: tuple[str, ...] = ()  # the customers columns of the rows kept
        self.customers: dict[str, list[Any] | None] = {}
        self.owed: dict[str, bool] = {}
        self.network: Network | None = None  # the sourcing rules
        self.packer: tuple[tuple[object, ...], InputsPacker] | None = None  # for these settings

    def read(self, conn: sqlite3.Connection, skus: Iterable[str]) -> None:
        """Read the skus not read yet (one statement per 500)."""
        keys_of = self.keys_of
        missing = [s for s in skus if s not in keys_of]
        if not missing:
            return
        for s in missing:
            keys_of[s] = []
        avail = self.avail
        for key, q in available(conn, missing).items():
            avail[key] = q
            keys_of[key[1]].append(key)

    def of(self, skus: Iterable[str]) -> dict[tuple[str, str], int]:
        """The engine's stock input for ``skus`` (read before)."""
        avail, keys_of = self.avail, self.keys_of
        return {key: avail[key] for s in skus for key in keys_of[s]}


MAX_KEPT_STOCK = 200_000  # (location, sku) rows kept per connection; more: start again
_STOCK_WATCH = (
    "CREATE TEMP TABLE IF NOT EXISTS sg_stock_watch (changes INTEGER NOT NULL, stamp INTEGER NOT NULL)",
    "INSERT INTO temp.sg_stock_watch SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM temp.sg_stock_watch)",
    *(
        f"CREATE TEMP TRIGGER IF NOT EXISTS sg_watch_{table}_{name} AFTER {op} ON main.{table}"
        " BEGIN UPDATE sg_stock_watch SET changes = changes + 1; END"
        for table in ("inventory", "customers", "shortages", "alloc_sourcing")
        for name, op in (
            ("ins", "INSERT"),
            ("upd", "UPDATE OF location, sku, on_hand" if table == "inventory" else "UPDATE"),
            ("del", "DELETE"),
        )
    ),
)


# Stamps unique in the process, not per connection: a connection given fresh state
# (``Hub.attach``) keeps its TEMP table, and a stamp it wrote before must never come again.
_STAMPS = itertools.count(1)


def take_stock(conn: sqlite3.Connection) -> Stock:
    """What this connection kept with :func:`keep_stock` (:class:`Stock`), if nothing can
    have changed it since; else an empty one. The caller owns it (it is no longer kept): on
    any failure before :func:`keep_stock` it is simply dropped.

    How a change is seen: a commit by another connection moves ``PRAGMA data_version``;
    every row this connection inserts, updates or deletes in ``customers``, ``shortages``
    or ``alloc_sourcing``, and every row of ``inventory`` it inserts or deletes or whose
    location, sku or on hand it updates - by any code, raw SQL included - counts in a TEMP
    table through TEMP triggers (this connection only, nothing in the database file);
    ``allocated`` moves only in :func:`bump`, which drops what is kept (a trigger on it
    would fire for every row the batch path bumps itself, about half again the cost of the
    bump); and :func:`keep_stock` writes a fresh stamp in the TEMP table in the same
    transaction as the writes the kept state reflects, so a rollback of those writes - to a
    savepoint or of the whole transaction - takes the stamp back with them.

    On PostgreSQL other processes (central's workers) change stock at any time and nothing
    here would see it: nothing is kept, every batch reads stock afresh inside its transaction."""
    st = state(conn)
    hit, st.kept = st.kept, None
    if dialect(conn) != "sqlite":
        return Stock()
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    try:
        changes, stamp = conn.execute("SELECT changes, stamp FROM temp.sg_stock_watch").fetchone()
    except sqlite3.OperationalError:  # not watched yet on this connection (or rolled back)
        for sql in _STOCK_WATCH:
            conn.execute(sql)
        return Stock()
    if hit is not None and hit[:3] == (version, changes, stamp):
        return hit[3]
    return Stock()


def keep_stock(conn: sqlite3.Connection, stock: Stock) -> None:
    """Keep ``stock`` for the next :func:`take_stock`: call it inside the transaction, once
    the rows it reflects match it (the caller's own writes done)."""
    if len(stock.avail) > MAX_KEPT_STOCK or dialect(conn) != "sqlite":
        return
    stamp = next(_STAMPS)
    (changes,) = conn.execute(
        "UPDATE temp.sg_stock_watch SET stamp = ? RETURNING changes", (stamp,)
    ).fetchone()
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    state(conn).kept = (version, changes, stamp, stock)


def set_sourcing(conn: sqlite3.Connection, rules: Iterable[SourcingRule]) -> None:
    conn.executemany(
        "INSERT INTO alloc_sourcing (zone, location, cost, preferred, transfer) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (zone, location) DO UPDATE SET cost = excluded.cost, preferred = excluded.preferred,"
        " transfer = excluded.transfer",
        [(r.zone, r.location, r.cost, int(r.preferred), int(r.transfer)) for r in rules],
    )


def load_network(conn: sqlite3.Connection) -> Network:
    """The sourcing rules as a :class:`Network`. The rows are read every time (so a change by
    any connection, or one rolled back, is seen); while they are unchanged the same Network
    is returned, so its per-zone candidate lists are built once, not once per order."""
    rows = conn.execute(
        "SELECT zone, location, cost, preferred, transfer FROM alloc_sourcing ORDER BY zone, location"
    ).fetchall()
    st = state(conn)
    if st.network is not None and st.network[0] == rows:
        return st.network[1]
    net = Network(tuple(SourcingRule(z, loc, c, bool(p), bool(t)) for z, loc, c, p, t in rows))
    st.network = (rows, net)
    return net


# -- allocations and runs -------------------------------------------------------------------


def pack_inputs(inputs: dict[str, Any]) -> bytes:
    """A run's inputs as stored: msgpack (compact and fast; a person reads the trace, and
    :func:`unpack_inputs` / :func:`replay_run` turn it back into the engine's inputs)."""
    packed: bytes = msgpack.packb(inputs, use_bin_type=True)
    return packed


class InputsPacker:
    """``pack_inputs(encode_inputs(orders, available, title=title, **setting))`` for many runs
    over one network, priority rules and company policy: the part they share is encoded and
    packed once, and each run's bytes are the same as packing its whole inputs."""

    def __init__(self, *, network: Network, rules: PriorityRules, company: CompanyPolicy) -> None:
        shared = encode_setting(network=network, rules=rules, company=company)
        self._packer = msgpack.Packer(use_bin_type=True)
        pack = self._packer.pack
        self._title = pack("title")
        self._shared = b"".join(pack(k) + pack(v) for k, v in shared.items())
        self._available = pack("available")
        self._orders = pack("orders")
        self._header = msgpack.packb(dict.fromkeys(("title", *shared, "available", "orders")))[:1]

    def pack(
        self, orders: Sequence[OrderDemand], available: Mapping[tuple[str, str], int], *, title: str
    ) -> bytes:
        pack = self._packer.pack
        return b"".join(
            (
                self._header,  # a map of the six keys, in encode_inputs' order
                self._title,
                pack(title),
                self._shared,
                self._available,
                pack(encode_available(available)),
                self._orders,
                pack(encode_orders(orders)),
            )
        )


def unpack_inputs(stored: bytes | str) -> dict[str, Any]:
    """Stored inputs -> the :func:`central.allocate.allocation.encode_inputs` dict (JSON text from
    runs stored before inputs were packed, msgpack since)."""
    data: dict[str, Any] = json.loads(stored) if isinstance(stored, str) else msgpack.unpackb(stored)
    return data


def record_run(
    conn: sqlite3.Connection,
    *,
    kind: str,
    inputs: dict[str, Any],
    result: AllocationResult,
    now: int,
    wave_id: int | None = None,
) -> int:
    """Keep the run (inputs + trace) and apply its allocations to stock; return the run id."""
    text = result.trace_text  # its SHA-256 is trace_digest(result.trace)
    cur = conn.execute(
        "INSERT INTO alloc_runs (kind, wave_id, at, inputs, trace, digest) VALUES (?, ?, ?, ?, ?, ?)",
        (kind, wave_id, now, pack_inputs(inputs), text, hashlib.sha256(text.encode()).hexdigest()),
    )
    run_id = cur.lastrowid
    assert run_id is not None
    add_allocations(
        conn,
        [(a.order_id, a.line_no, a.location, a.sku, a.qty, a.rule) for a in result.allocations],
        run_id=run_id,
        wave_id=wave_id,
        now=now,
    )
    return run_id


def add_allocations(
    conn: sqlite3.Connection,
    rows: list[tuple[int, int, str, str, int, str]],
    *,
    run_id: int | None,
    wave_id: int | None,
    now: int,
) -> None:
    """Insert allocation rows ``(order_id, line_no, location, sku, qty, rule)`` and raise
    ``inventory.allocated``; fails (InventoryError) if any location would go over on hand."""
    if not rows:
        return
    per: dict[tuple[str, str], int] = {}
    for _, _, loc, sku, qty, _ in rows:
        per[(loc, sku)] = per.get((loc, sku), 0) + qty
    bump(conn, per)
    conn.executemany(
        "INSERT INTO allocations (order_id, line_no, location, sku, qty, rule, run_id, wave_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*r, run_id, wave_id, now) for r in rows],
    )


_BUMP_SQL = "UPDATE inventory SET allocated = allocated + ? WHERE location = ? AND sku = ?"


def bump(conn: sqlite3.Connection, per: dict[tuple[str, str], int]) -> None:
    """Add ``qty`` to ``allocated`` of each ``(location, sku)``, all or nothing: one prepared
    statement run for every row under a savepoint (a broken CHECK or a missing row leaves
    nothing changed); on a failure, row by row to name the row at fault. Drops the stock
    this connection keeps (:func:`take_stock`): every change of ``allocated`` comes here."""
    state(conn).kept = None
    items = sorted(per.items())
    if len(items) == 1:
        _bump_one(conn, *items[0])
        return
    with savepoint(conn, "bump") as sp:
        try:
            changed = conn.executemany(_BUMP_SQL, [(qty, loc, sku) for (loc, sku), qty in items]).rowcount
        except IntegrityError:
            changed = -1
        if changed != len(items):
            sp.rollback()
            for key, qty in items:
                _bump_one(conn, key, qty)  # raises at the row at fault


def _bump_one(conn: sqlite3.Connection, key: tuple[str, str], qty: int) -> None:
    loc, sku = key
    try:
        cur = conn.execute(_BUMP_SQL, (qty, loc, sku))
    except IntegrityError:
        raise InventoryError(loc, sku, f"allocating {qty:+d} would break 0 <= allocated <= on hand") from None
    if cur.rowcount != 1:
        raise InventoryError(loc, sku, "no inventory row")


def release_order(conn: sqlite3.Connection, order_id: int, *, line_no: int | None = None) -> int:
    """Give back an order's (or one line's) open allocations; return the units released."""
    sql = "SELECT alloc_id, location, sku, qty FROM allocations WHERE order_id = ? AND status = 'allocated'"
    args: list[Any] = [order_id]
    if line_no is not None:
        sql += " AND line_no = ?"
        args.append(line_no)
    rows = conn.execute(sql, args).fetchall()
    per: dict[tuple[str, str], int] = {}
    for _, loc, sku, qty in rows:
        per[(loc, sku)] = per.get((loc, sku), 0) - qty
    conn.executemany("UPDATE allocations SET status = 'released' WHERE alloc_id = ?", [(r[0],) for r in rows])
    bump(conn, per)
    return -sum(per.values())


def suppliers(conn: sqlite3.Connection, skus: Iterable[str]) -> dict[str, str]:
    """Each sku's supplier: the item master's ``supplier`` (``items``), else the first
    location's ``inventory.supplier``; a sku with neither is left out."""
    want = sorted(set(skus))
    out: dict[str, str] = {}
    has_items = has_table(conn, "items")
    for k in range(0, len(want), 500):
        part = want[k : k + 500]
        marks = ",".join("?" * len(part))
        if has_items:
            out.update(
                conn.execute(
                    f"SELECT sku, supplier FROM items WHERE supplier != '' AND sku IN ({marks})", part
                )
            )
        for sku, supplier in conn.execute(
            f"SELECT sku, supplier FROM inventory WHERE supplier != '' AND sku IN ({marks})"
            " ORDER BY location",
            part,
        ):
            out.setdefault(sku, supplier)
    return out


def reserve(conn: sqlite3.Connection, location: str, sku: str, qty: int, *, ref: str, now: int) -> int:
    """Hold ``qty`` units at a location for ``ref`` (not an order); return the reservation id."""
    if qty <= 0:
        raise InventoryError(location, sku, f"reservation quantity {qty} must be positive")
    bump(conn, {(location, sku): qty})  # first: a refused bump leaves nothing behind
    cur = conn.execute(
        "INSERT INTO allocations (location, sku, qty, kind, ref, created_at)"
        " VALUES (?, ?, ?, 'reservation', ?, ?)",
        (location, sku, qty, ref, now),
    )
    rid = cur.lastrowid
    assert rid is not None
    return rid


def release_reservation(conn: sqlite3.Connection, reservation_id: int) -> None:
    row = conn.execute(
        "SELECT location, sku, qty FROM allocations WHERE alloc_id = ? AND kind = 'reservation'"
        " AND status = 'allocated'",
        (reservation_id,),
    ).fetchone()
    # only from allocated: a second writer releasing it at once (another worker on PostgreSQL)
    # waits for the first's commit, then matches nothing and gives nothing back twice
    if (
        row is None
        or conn.execute(
            "UPDATE allocations SET status = 'released' WHERE alloc_id = ? AND status = 'allocated'",
            (reservation_id,),
        ).rowcount
        != 1
    ):
        raise InventoryError("?", "?", f"no open reservation {reservation_id}")
    bump(conn, {(row[0], row[1]): -row[2]})


def order_allocations(conn: sqlite3.Connection, order_id: int) -> list[dict[str, Any]]:
    cols = ("alloc_id", "line_no", "location", "sku", "qty", "status", "rule", "run_id", "wave_id")
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM allocations WHERE order_id = ? ORDER BY line_no, alloc_id",
        (order_id,),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


# -- expected receipts and ATP --------------------------------------------------------------


def expect_receipt(
    conn: sqlite3.Connection,
    location: str,
    sku: str,
    qty: int,
    expected: dt.date,
    *,
    supplier: str = "",
    ref: str = "",
) -> int:
    if qty <= 0:
        raise InventoryError(location, sku, f"receipt quantity {qty} must be positive")
    cur = conn.execute(
        "INSERT INTO receipts (location, sku, qty, expected_date, supplier, ref) VALUES (?, ?, ?, ?, ?, ?)",
        (location, sku, qty, expected.isoformat(), supplier, ref),
    )
    conn.execute(
        "INSERT INTO inventory (location, sku, supplier) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (location, sku, supplier),
    )
    rid = cur.lastrowid
    assert rid is not None
    return rid


def mark_received(
    conn: sqlite3.Connection, receipt_id: int, *, now: int, qty: int | None = None
) -> tuple[str, str, int]:
    """Book an expected receipt into on hand; return ``(location, sku, qty)``. Use
    :func:`central.allocate.shortage.receive` to also release back orders."""
    row = conn.execute(
        "SELECT location, sku, qty FROM receipts WHERE receipt_id = ? AND status = 'expected'", (receipt_id,)
    ).fetchone()
    if row is None:
        raise InventoryError("?", "?", f"no expected receipt {receipt_id}")
    loc, sku, expected_qty = row
    got = expected_qty if qty is None else qty
    conn.execute(
        "UPDATE receipts SET status = 'received', received_at = ?, qty = ? WHERE receipt_id = ?",
        (now, got, receipt_id),
    )
    add_stock(conn, loc, sku, got)
    return loc, sku, got


def receipts(
    conn: sqlite3.Connection, *, sku: str | None = None, location: str | None = None
) -> list[dict[str, Any]]:
    cols = ("receipt_id", "location", "sku", "qty", "expected_date", "supplier", "ref", "status")
    sql = f"SELECT {', '.join(cols)} FROM receipts WHERE 1=1"
    args: list[Any] = []
    if sku is not None:
        sql += " AND sku = ?"
        args.append(sku)
    if location is not None:
        sql += " AND location = ?"
        args.append(location)
    return [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(sql + " ORDER BY expected_date, receipt_id", args)
    ]


def atp(
    conn: sqlite3.Connection,
    sku: str,
    dates: Iterable[dt.date],
    *,
    location: str | None = None,
    within: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Available-to-promise by date: available now + expected receipts due on or before the
    date - open back orders already owed for the sku (network view only, since back orders
    are not tied to a location). Cumulative, never negative. ``within``: only these
    locations (a scoped user's view; back orders are then not netted, as for one location)."""
    rows = [r for r in stock(conn, sku=sku, location=location) if within is None or r.location in within]
    now_avail = sum(r.available for r in rows)
    sql = "SELECT expected_date, qty, location FROM receipts WHERE sku = ? AND status = 'expected'"
    args: list[Any] = [sku]
    if location is not None:
        sql += " AND location = ?"
        args.append(location)
    incoming = [
        (ed, q) for ed, q, loc in conn.execute(sql, args).fetchall() if within is None or loc in within
    ]
    owed = 0
    if location is None and within is None:
        owed = conn.execute(
            "SELECT coalesce(sum(qty), 0) FROM shortages WHERE sku = ? AND status = 'open'", (sku,)
        ).fetchone()[0]
    out = []
    for d in sorted(dates):
        due = sum(q for ed, q in incoming if ed <= d.isoformat())
        out.append({"date": d.isoformat(), "atp": max(0, now_avail + due - owed)})
    return out


def item_view(conn: sqlite3.Connection, sku: str) -> dict[str, Any]:
    """One item across every location (inventory visibility)."""
    rows = stock(conn, sku=sku)
    return {
        "sku": sku,
        "locations": [
            {
                "location": r.location,
                "on_hand": r.on_hand,
                "allocated": r.allocated,
                "available": r.available,
                "bin": r.bin,
            }
            for r in rows
        ],
        "on_hand": sum(r.on_hand for r in rows),
        "allocated": sum(r.allocated for r in rows),
        "available": sum(r.available for r in rows),
        "expected": [r for r in receipts(conn, sku=sku) if r["status"] == "expected"],
    }


def location_view(conn: sqlite3.Connection, location: str) -> dict[str, Any]:
    rows = stock(conn, location=location)
    return {
        "location": location,
        "items": [
            {
                "sku": r.sku,
                "on_hand": r.on_hand,
                "allocated": r.allocated,
                "available": r.available,
                "bin": r.bin,
            }
            for r in rows
        ],
    }


def replay_run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    """Re-run a stored allocation from its stored inputs; report whether the trace matches."""
    row = conn.execute("SELECT inputs, trace, digest FROM alloc_runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise InventoryError("?", "?", f"no allocation run {run_id}")
    result = decode_inputs(unpack_inputs(row[0])).run()
    digest = trace_digest(result.trace)
    return {"run_id": run_id, "stored_digest": row[2], "replay_digest": digest, "identical": digest == row[2]}


def run_trace(conn: sqlite3.Connection, run_id: int) -> str | None:
    row = conn.execute("SELECT trace FROM alloc_runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else str(row[0])
