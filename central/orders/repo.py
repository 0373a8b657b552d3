"""Read side of the order repository (queries used by the REST API and tests)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from central.process import tracker

ORDER_COLS = (
    "order_id",
    "order_no",
    "record_id",
    "gateway",
    "seq",
    "customer",
    "channel",
    "order_type",
    "requested_date",
    "status",
    "note",
    "source_ref",
    "created_at",
    "received_at",
    "updated_at",
    "value",
    "requirements",
    "hold_reason",
    "change_seq",
)
FILTERS = ("order_no", "gateway", "customer", "status", "channel", "order_type", "source_ref")


def list_orders(
    conn: sqlite3.Connection,
    *,
    filters: dict[str, str],
    limit: int = 100,
    after_id: int = 0,
    customers: Collection[str] | None = None,
    supplier: str | None = None,
) -> list[dict[str, Any]]:
    """Orders by the ``filters``; ``customers``: only theirs (a store user's scope);
    ``supplier``: only orders with a line of an item it supplies (a supplier user's)."""
    where = ["order_id > ?"]
    args: list[Any] = [after_id]
    for key in FILTERS:
        if key in filters:
            where.append(f"{key} = ?")
            args.append(filters[key])
    conds, cargs = scope_sql("orders", customers=customers, supplier=supplier)
    where += conds
    args += cargs
    sql = f"SELECT {', '.join(ORDER_COLS)} FROM orders WHERE {' AND '.join(where)} ORDER BY order_id LIMIT ?"
    rows = conn.execute(sql, [*args, limit]).fetchall()
    return [dict(zip(ORDER_COLS, r, strict=True)) for r in rows]


def scope_sql(
    table: str, *, customers: Collection[str] | None = None, supplier: str | None = None
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their arguments) on the orders table named ``table``: only
    ``customers``' orders (a store user's scope; none given: no order), only orders with a line
    of an item ``supplier`` supplies (a supplier user's); both None: every order."""
    conds: list[str] = []
    args: list[Any] = []
    if customers is not None:
        conds.append(f"{table}.customer IN ({','.join('?' * len(customers))})" if customers else "0 = 1")
        args += sorted(customers)
    if supplier is not None:
        conds.append(
            "EXISTS (SELECT 1 FROM order_lines l JOIN items i ON i.sku = l.sku"
            f" WHERE l.order_id = {table}.order_id AND i.supplier = ?)"
        )
        args.append(supplier)
    return conds, args


def get_order(conn: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    """An order with its lines and history, by order number or by its record id."""
    row = conn.execute(
        f"SELECT {', '.join(ORDER_COLS)} FROM orders WHERE order_no = ? OR record_id = ?", (key, key)
    ).fetchone()
    if row is None:
        return None
    order = dict(zip(ORDER_COLS, row, strict=True))
    oid = order["order_id"]
    line_cols = ("line_no", "gtin", "sku", "qty", "price", "unit_price", "amount", "cancelled")
    order["lines"] = [
        dict(zip(line_cols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(line_cols)} FROM order_lines WHERE order_id = ? ORDER BY line_no", (oid,)
        )
    ]
    steps = tracker.line_view(conn, oid)  # each line's process definition, version and step
    for ln in order["lines"]:
        ln["cancelled"] = bool(ln["cancelled"])
        ln["process"] = steps.get(ln["line_no"])
    order["work_units"] = tracker.work_units(conn, oid)
    order["events"] = [
        dict(zip(("at", "event", "status", "detail", "actor"), r, strict=True))
        for r in conn.execute(
            "SELECT at, event, status, detail, actor FROM order_events WHERE order_id = ? ORDER BY id", (oid,)
        )
    ]
    order["checks"] = [
        dict(zip(("run", "name", "outcome", "detail", "at"), r, strict=True))
        for r in conn.execute(
            "SELECT run, name, outcome, detail, at FROM order_checks WHERE order_id = ? ORDER BY run, pos",
            (oid,),
        )
    ]
    order["parked_changes"] = [
        dict(zip(("change_seq", "record_id", "parked_at"), r, strict=True))
        for r in conn.execute(
            "SELECT change_seq, record_id, parked_at FROM parked_changes WHERE order_ref = ?"
            " ORDER BY change_seq",
            (order["record_id"],),
        )
    ]
    order["drop_ship"] = [
        dict(zip(("supplier", "status", "supplier_ref", "detail", "updated_at"), r, strict=True))
        for r in conn.execute(
            "SELECT supplier, status, supplier_ref, detail, updated_at FROM drop_ships WHERE order_id = ?"
            " ORDER BY supplier",
            (oid,),
        )
    ]
    return order


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        "orders": conn.execute("SELECT count(*) FROM orders").fetchone()[0],
        "processed": conn.execute("SELECT count(*) FROM processed").fetchone()[0],
        "quarantined": conn.execute("SELECT count(*) FROM quarantine").fetchone()[0],
    }


def list_quarantine(
    conn: sqlite3.Connection, *, limit: int = 100, gateways: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Quarantined records, newest first; ``gateways``: only those that came from them."""
    cols = ("id", "gateway", "topic", "record_id", "seq", "type", "reason", "at")
    where, args = "", []
    if gateways is not None:
        where = f"WHERE gateway IN ({','.join('?' * len(gateways))})" if gateways else "WHERE 0 = 1"
        args = sorted(gateways)
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM quarantine {where} ORDER BY id DESC LIMIT ?", (*args, limit)
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]
