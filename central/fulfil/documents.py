"""Documents from allocations: pick lists, delivery notes, shortage reports - CSV and HTML.

- Pick list (拣货单): per wave, lines in storage-location (bin) sequence so the picker walks
  the aisle once; per picker/cart: orders dealt to carts of ``cart_orders`` orders each
  (order id order), each cart's list again in bin sequence.
- Delivery note (送货单): ordered, shipped and short quantity per line, short lines marked
  with what happens to them (back order, cut, ...).
- Shortage report (缺货资料): :func:`central.allocate.shortage.report` by item/supplier or
  customer/salesperson.

Each builder returns rows (dicts); :func:`to_csv` and :func:`to_html` render any of them.
HTML is printable (plain table, print CSS), every value escaped.
"""

from __future__ import annotations

import csv
import html
import io
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any

from central.allocate import shortage

Keep = Callable[[dict[str, Any]], bool]  # which rows a document shows (a user's scope)
PICK_COLS = ("cart", "seq", "location", "bin", "sku", "qty", "order_id", "line_no")
NOTE_COLS = ("line_no", "sku", "ordered", "shipped", "short", "shortage")


def pick_rows(conn: sqlite3.Connection, wave_id: int, *, cart_orders: int = 0) -> list[dict[str, Any]]:
    """Pick lines of a wave in storage-location sequence; with ``cart_orders`` > 0 the
    orders are dealt to carts and each cart is sequenced on its own."""
    rows = conn.execute(
        "SELECT a.location, coalesce(i.bin, ''), a.sku, a.qty, a.order_id, a.line_no FROM allocations a"
        " LEFT JOIN inventory i ON i.location = a.location AND i.sku = a.sku"
        " WHERE a.wave_id = ? AND a.status = 'allocated' AND a.kind = 'order'",
        (wave_id,),
    ).fetchall()
    order_ids = sorted({r[4] for r in rows})
    cart_of = {oid: (i // cart_orders + 1 if cart_orders > 0 else 1) for i, oid in enumerate(order_ids)}
    rows.sort(key=lambda r: (cart_of[r[4]], r[0], r[1], r[2], r[4], r[5]))
    out = []
    seq = 0
    last_cart = None
    for loc, bin_, sku, qty, oid, ln in rows:
        cart = cart_of[oid]
        seq = 1 if cart != last_cart else seq + 1
        last_cart = cart
        out.append(
            {
                "cart": cart,
                "seq": seq,
                "location": loc,
                "bin": bin_,
                "sku": sku,
                "qty": qty,
                "order_id": oid,
                "line_no": ln,
            }
        )
    return out


def delivery_rows(conn: sqlite3.Connection, order_id: int) -> list[dict[str, Any]]:
    got: dict[int, int] = {}
    for ln, q in conn.execute(
        "SELECT line_no, sum(qty) FROM allocations WHERE order_id = ? AND status IN ('allocated', 'picked',"
        " 'shipped') GROUP BY line_no",
        (order_id,),
    ):
        got[ln] = q
    marks: dict[int, list[str]] = {}
    for ln, q, action, status in conn.execute(
        "SELECT line_no, qty - filled, action, status FROM shortages WHERE order_id = ? ORDER BY shortage_id",
        (order_id,),
    ):
        if q > 0:
            marks.setdefault(ln, []).append(f"{q} {action.replace('_', ' ')} ({status})")
    out = []
    for ln, sku, gtin, qty in conn.execute(
        "SELECT line_no, sku, gtin, qty FROM order_lines WHERE order_id = ? ORDER BY line_no", (order_id,)
    ):
        shipped = got.get(ln, 0)
        out.append(
            {
                "line_no": ln,
                "sku": sku or gtin or "",
                "ordered": qty,
                "shipped": shipped,
                "short": qty - shipped,
                "shortage": "; ".join(marks.get(ln, [])) if qty > shipped else "",
            }
        )
    return out


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([r.get(c, "") for c in columns])
    return buf.getvalue()


_CSS = (
    "body{font-family:sans-serif;font-size:11pt}table{border-collapse:collapse;width:100%}"
    "th,td{border:1px solid #444;padding:3px 6px;text-align:left}"
    "tr.short td{font-weight:bold;background:#fdd}"
    "h2{page-break-before:always}h2:first-of-type{page-break-before:auto}@media print{a{display:none}}"
)


def to_html(
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    group_by: str | None = None,
    mark: str | None = None,
) -> str:
    """A printable page; ``group_by`` starts a new table (and printed page) per value,
    rows whose ``mark`` column is truthy are highlighted."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get(group_by) if group_by else None, []).append(r)
    if not groups:
        parts.append("<p>nothing to show</p>")
    for key, grp in groups.items():
        if group_by:
            parts.append(f"<h2>{e(group_by)} {e(str(key))}</h2>")
        parts.append(
            "<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead><tbody>"
        )
        for r in grp:
            cls = " class='short'" if mark and r.get(mark) else ""
            parts.append(
                f"<tr{cls}>" + "".join(f"<td>{e(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)


def pick_list(
    conn: sqlite3.Connection, wave_id: int, *, fmt: str, cart_orders: int = 0, keep: Keep | None = None
) -> str:
    """``keep``: only the rows it accepts (a user's scope); carts stay as the DC deals them."""
    rows = [r for r in pick_rows(conn, wave_id, cart_orders=cart_orders) if keep is None or keep(r)]
    if fmt == "csv":
        return to_csv(rows, PICK_COLS)
    return to_html(f"Pick list - wave {wave_id}", rows, PICK_COLS, group_by="cart")


def delivery_note(conn: sqlite3.Connection, order_id: int, *, fmt: str, keep: Keep | None = None) -> str:
    """``keep``: only the lines it accepts (a supplier user's items)."""
    rows = [r for r in delivery_rows(conn, order_id) if keep is None or keep(r)]
    if fmt == "csv":
        return to_csv(rows, NOTE_COLS)
    head = conn.execute("SELECT order_no, customer FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    title = f"Delivery note {head[0]} - customer {head[1]}" if head else f"Delivery note - order {order_id}"
    return to_html(title, rows, NOTE_COLS, mark="short")


def shortage_report(
    conn: sqlite3.Connection,
    by: str,
    *,
    fmt: str,
    status: str | None = "open",
    customers: Collection[str] | None = None,
    skus: Collection[str] | None = None,
) -> str:
    """``customers``/``skus``: only their shortages (:func:`central.allocate.shortage.report`)."""
    rows = shortage.report(conn, by, status=status, customers=customers, skus=skus)
    other = "customers" if by in ("item", "supplier") else "items"
    for r in rows:
        r[other] = " ".join(r[other])
    cols = (by, "lines", "units", "orders", other)
    if fmt == "csv":
        return to_csv(rows, cols)
    return to_html(f"Shortages by {by}", rows, cols)
