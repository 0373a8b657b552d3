"""Order types, each with its own handling (see ``central/ORDERS.md``).

- ``normal``: validated, then allocated from stock (the hub's ``on_validated`` hooks).
- ``cash-sale``: goods handed over at once - no picking; validated -> delivered, the value
  goes onto the customer's receivables.
- ``drop-ship``: passed to each line's supplier (a ``drop_ship`` downlink record to the
  supplier's gateway when it has one); validated -> released; the supplier's confirmations
  are tracked per supplier and the order is shipped when every supplier shipped.
- ``contract``: ``source_ref`` names the customer's contract; its scheduled deliveries
  generate orders on their dates (:func:`run_contracts`).
- ``consignment``: a withdrawal of the customer's stock held at the DC; each line is checked
  against the balance and priced at the deposit price (oldest deposit first).
- ``voucher``: ``source_ref`` is the voucher code; checked, and consumed once.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from central import CentralError, downlink
from central.orders import lifecycle
from central.orders.masters import Snapshot
from central.orders.validation import Check, LineIn, OrderIn, Outcome
from central.process import tracker
from protocols.frozen import quick_init
from runtime.clock import now_ms

DROP_SHIP_RECORD = "drop_ship"
DROP_SHIP_STATES = ("sent", "confirmed", "shipped", "refused")


class OrderTypeError(CentralError):
    pass


@quick_init
@dataclass(frozen=True, slots=True)
class TypeCheck:
    check: Check | None
    fixed_prices: dict[int, int] | None = None
    fixed_amounts: dict[int, int] | None = None


def _sku(snap: Snapshot, ln: LineIn) -> str | None:
    item = snap.resolve(ln.gtin, ln.sku)
    return item.sku if item else None


def check(conn: sqlite3.Connection, order: OrderIn, snap: Snapshot, *, order_id: int | None) -> TypeCheck:
    """The order type's own check (and fixed prices for consignment and vouchers)."""
    fn = _CHECKS.get(order.order_type)
    return fn(conn, order, snap, order_id) if fn else TypeCheck(None)


def _check_drop_ship(conn: sqlite3.Connection, order: OrderIn, snap: Snapshot, _oid: int | None) -> TypeCheck:
    problems, suppliers = [], set()
    for ln in order.lines:
        item = snap.resolve(ln.gtin, ln.sku)
        if item is None:
            continue
        if not item.supplier:
            problems.append(f"line {ln.line_no}: item {item.sku!r} has no supplier")
        suppliers.add(item.supplier)
    if problems:
        return TypeCheck(Check("drop-ship", Outcome.FAIL, "; ".join(problems)))
    return TypeCheck(Check("drop-ship", Outcome.PASS, f"suppliers {', '.join(sorted(suppliers))}"))


def _check_contract(conn: sqlite3.Connection, order: OrderIn, snap: Snapshot, _oid: int | None) -> TypeCheck:
    row = conn.execute(
        "SELECT customer, active FROM contracts WHERE code = ?", (order.source_ref,)
    ).fetchone()
    if row is None:
        return TypeCheck(Check("contract", Outcome.FAIL, f"no contract {order.source_ref!r} (source_ref)"))
    if row[0] != order.customer or not row[1]:
        return TypeCheck(
            Check(
                "contract",
                Outcome.FAIL,
                f"contract {order.source_ref!r} is not an active contract of {order.customer!r}",
            )
        )
    agreed = dict(conn.execute("SELECT sku, qty FROM contract_lines WHERE contract = ?", (order.source_ref,)))
    problems = []
    for ln in order.lines:
        sku = _sku(snap, ln)
        if sku is not None and sku not in agreed:
            problems.append(f"line {ln.line_no}: {sku!r} is not in contract {order.source_ref!r}")
    if problems:
        return TypeCheck(Check("contract", Outcome.FAIL, "; ".join(problems)))
    return TypeCheck(Check("contract", Outcome.PASS, f"contract {order.source_ref}"))


def consignment_balance(conn: sqlite3.Connection, customer: str, sku: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(remaining), 0) FROM consignment_lots WHERE customer = ? AND sku = ?",
        (customer, sku),
    ).fetchone()
    return int(row[0])


def _lots(conn: sqlite3.Connection, customer: str, sku: str) -> list[tuple[int, int, int]]:
    return conn.execute(
        "SELECT id, remaining, price FROM consignment_lots WHERE customer = ? AND sku = ? AND remaining > 0"
        " ORDER BY id",
        (customer, sku),
    ).fetchall()


def _fifo(lots: list[tuple[int, int, int]], qty: int) -> list[tuple[int, int, int]]:
    """Take ``qty`` from lots oldest first: [(lot id, qty, price)]."""
    out = []
    for lot_id, remaining, price in lots:
        if qty <= 0:
            break
        take = min(remaining, qty)
        out.append((lot_id, take, price))
        qty -= take
    return out


def _check_consignment(
    conn: sqlite3.Connection, order: OrderIn, snap: Snapshot, _oid: int | None
) -> TypeCheck:
    left: dict[str, list[tuple[int, int, int]]] = {}  # sku -> lots not yet taken by earlier lines
    problems, prices, amounts = [], {}, {}
    for ln in order.lines:
        sku = _sku(snap, ln)
        if sku is None:
            continue
        lots = left.setdefault(sku, _lots(conn, order.customer, sku))
        available = sum(remaining for _lid, remaining, _p in lots)
        if available < ln.qty:
            problems.append(f"line {ln.line_no}: consignment balance of {sku!r} is {available} < {ln.qty}")
            continue
        taken = _fifo(lots, ln.qty)
        used = {lid: q for lid, q, _p in taken}
        left[sku] = [(lid, rem - used.get(lid, 0), p) for lid, rem, p in lots if rem - used.get(lid, 0) > 0]
        amounts[ln.line_no] = sum(q * p for _lid, q, p in taken)
        prices[ln.line_no] = (amounts[ln.line_no] + ln.qty // 2) // ln.qty
    detail = "; ".join(problems) or "withdrawal within balance, at deposit price"
    return TypeCheck(
        Check("consignment", Outcome.FAIL if problems else Outcome.PASS, detail), prices, amounts
    )


def _check_voucher(conn: sqlite3.Connection, order: OrderIn, snap: Snapshot, oid: int | None) -> TypeCheck:
    code = order.source_ref
    row = conn.execute(
        "SELECT customer, sku, qty, status, order_id FROM vouchers WHERE code = ?", (code,)
    ).fetchone()
    free = {ln.line_no: 0 for ln in order.lines}
    if row is None:
        return TypeCheck(Check("voucher", Outcome.FAIL, f"no voucher {code!r} (source_ref)"), free)
    customer, sku, qty, status, used_by = row
    if status != "issued" and used_by != oid:
        number = conn.execute("SELECT order_no FROM orders WHERE order_id = ?", (used_by,)).fetchone()
        by = number[0] if number else "?"
        return TypeCheck(Check("voucher", Outcome.FAIL, f"voucher {code!r} already consumed by {by}"), free)
    problems = []
    if customer and customer != order.customer:
        problems.append(f"voucher {code!r} belongs to {customer!r}")
    total = 0
    for ln in order.lines:
        line_sku = _sku(snap, ln)
        if line_sku is not None and line_sku != sku:
            problems.append(f"line {ln.line_no}: voucher {code!r} is for {sku!r}, not {line_sku!r}")
        total += ln.qty
    if total > qty:
        problems.append(f"voucher {code!r} covers {qty}, order asks {total}")
    if problems:
        return TypeCheck(Check("voucher", Outcome.FAIL, "; ".join(problems)), free)
    return TypeCheck(Check("voucher", Outcome.PASS, f"voucher {code} for {qty} x {sku}"), free)


_CHECKS = {
    "drop-ship": _check_drop_ship,
    "contract": _check_contract,
    "consignment": _check_consignment,
    "voucher": _check_voucher,
}


# -- effects when an order becomes validated, undone when it is cancelled or changed ------


def apply_effects(conn: sqlite3.Connection, order_id: int, order: OrderIn, snap: Snapshot, now: int) -> None:
    """Consume what the order type uses up (consignment stock, the voucher)."""
    if order.order_type == "consignment":
        for ln in order.lines:
            sku = _sku(snap, ln)
            assert sku is not None
            for lot_id, q, _price in _fifo(_lots(conn, order.customer, sku), ln.qty):
                conn.execute(
                    "UPDATE consignment_lots SET remaining = remaining - ? WHERE id = ?", (q, lot_id)
                )
                conn.execute(
                    "INSERT INTO consignment_moves (lot_id, order_id, line_no, qty, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (lot_id, order_id, ln.line_no, -q, now),
                )
    elif order.order_type == "voucher":
        conn.execute(
            "UPDATE vouchers SET status = 'consumed', order_id = ?, consumed_at = ? WHERE code = ?",
            (order_id, now, order.source_ref),
        )


def undo_effects(conn: sqlite3.Connection, order_id: int) -> None:
    """Give back what :func:`apply_effects` took (a cancelled or changed order)."""
    otype = conn.execute("SELECT order_type FROM orders WHERE order_id = ?", (order_id,)).fetchone()[0]
    now = now_ms()
    if otype == "consignment":
        moves = conn.execute(
            "SELECT lot_id, line_no, sum(qty) FROM consignment_moves WHERE order_id = ?"
            " GROUP BY lot_id, line_no"
            " HAVING sum(qty) != 0",
            (order_id,),
        ).fetchall()
        for lot_id, line_no, q in moves:
            conn.execute("UPDATE consignment_lots SET remaining = remaining - ? WHERE id = ?", (q, lot_id))
            conn.execute(
                "INSERT INTO consignment_moves (lot_id, order_id, line_no, qty, at) VALUES (?, ?, ?, ?, ?)",
                (lot_id, order_id, line_no, -q, now),
            )
    elif otype == "voucher":
        conn.execute(
            "UPDATE vouchers SET status = 'issued', order_id = NULL, consumed_at = NULL WHERE order_id = ?",
            (order_id,),
        )


def on_cancelled(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_cancelled`` hook (``central.wiring``): undo what the order's type did."""
    undo_effects(conn, order_id)


def route(
    conn: sqlite3.Connection, order_id: int, order: OrderIn, snap: Snapshot, *, value: int, now: int
) -> None:
    """After an order became validated: what its type does next."""
    if order.order_type == "cash-sale":
        lifecycle.transition(
            conn,
            order_id,
            lifecycle.Status.DELIVERED,
            actor="system",
            detail=f"cash sale: goods handed over, no picking; receivable +{value}",
            now=now,
        )
    elif order.order_type == "drop-ship":
        _pass_to_suppliers(conn, order_id, order, snap, now)


def _pass_to_suppliers(
    conn: sqlite3.Connection, order_id: int, order: OrderIn, snap: Snapshot, now: int
) -> None:
    by_supplier: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ln in order.lines:
        item = snap.resolve(ln.gtin, ln.sku)
        assert item is not None
        by_supplier[item.supplier].append({"line_no": ln.line_no, "sku": item.sku, "qty": ln.qty})
    order_no = conn.execute("SELECT order_no FROM orders WHERE order_id = ?", (order_id,)).fetchone()[0]
    sent_to = []
    for supplier, lines in sorted(by_supplier.items()):
        conn.execute(
            "INSERT INTO drop_ships (order_id, supplier, status, updated_at) VALUES (?, ?, 'sent', ?)"
            " ON CONFLICT (order_id, supplier) DO UPDATE SET status = excluded.status,"
            " updated_at = excluded.updated_at",
            (order_id, supplier, now),
        )
        gw = conn.execute("SELECT gateway FROM locations WHERE code = ?", (supplier,)).fetchone()
        if gw and gw[0]:
            downlink.enqueue(
                conn,
                gateway=gw[0],
                type=DROP_SHIP_RECORD,
                body={
                    "order_no": order_no,
                    "supplier": supplier,
                    "ship_to": order.customer,
                    "requested_date": order.requested_date.isoformat(),
                    "lines": lines,
                },
            )
            sent_to.append(f"{supplier} via gateway {gw[0]}")
        else:
            sent_to.append(f"{supplier} (no gateway: by hand)")
    lifecycle.transition(
        conn,
        order_id,
        lifecycle.Status.RELEASED,
        actor="system",
        detail=f"drop-ship: passed to supplier {', '.join(sent_to)}",
        now=now,
    )


def supplier_confirmation(
    conn: sqlite3.Connection,
    order_id: int,
    *,
    supplier: str,
    state: str,
    ref: str,
    detail: str,
    actor: str,
    now: int,
) -> str:
    """Track a supplier's answer for a drop-ship order; returns the order's status after it."""
    if state not in DROP_SHIP_STATES[1:]:
        raise OrderTypeError(f"state: {state!r} is not one of {', '.join(DROP_SHIP_STATES[1:])}")
    row = conn.execute(
        "SELECT status FROM drop_ships WHERE order_id = ? AND supplier = ?", (order_id, supplier)
    ).fetchone()
    if row is None:
        raise OrderTypeError(f"order was not passed to supplier {supplier!r}")
    conn.execute(
        "UPDATE drop_ships SET status = ?, supplier_ref = ?, detail = ?, updated_at = ?"
        " WHERE order_id = ? AND supplier = ?",
        (state, ref, detail, now, order_id, supplier),
    )
    text = f"supplier {supplier} {state}" + (f" ref {ref}" if ref else "") + (f": {detail}" if detail else "")
    lifecycle.record_event(conn, order_id, "supplier", detail=text, actor=actor, now=now)
    if state in ("confirmed", "shipped"):  # the supplier's lines' work units (central/PROCESS.md)
        step = "partner_confirm" if state == "confirmed" else "ship"
        tracker.record_done(conn, order_id, step, partner=supplier, actor=actor, now=now, detail=text)
    status = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()[0]
    if status != lifecycle.Status.RELEASED:
        return str(status)
    if state == "refused":
        lifecycle.transition(conn, order_id, lifecycle.Status.CANCELLED, actor=actor, detail=text, now=now)
        return lifecycle.Status.CANCELLED.value
    states = {s for (s,) in conn.execute("SELECT status FROM drop_ships WHERE order_id = ?", (order_id,))}
    if states == {"shipped"}:
        lifecycle.transition(
            conn, order_id, lifecycle.Status.SHIPPED, actor=actor, detail="every supplier shipped", now=now
        )
        return lifecycle.Status.SHIPPED.value
    return str(status)


# -- contract, voucher and consignment masters ------------------------------------------


def add_contract(
    conn: sqlite3.Connection,
    *,
    code: str,
    customer: str,
    lines: dict[str, int],
    dates: list[str],
    note: str = "",
) -> None:
    if conn.execute("SELECT 1 FROM customers WHERE code = ?", (customer,)).fetchone() is None:
        raise OrderTypeError(f"customer: unknown customer {customer!r}")
    if not lines or any(q <= 0 for q in lines.values()):
        raise OrderTypeError("lines: needs at least one sku with a positive quantity")
    conn.execute(
        "INSERT INTO contracts (code, customer, active, note) VALUES (?, ?, 1, ?)"
        " ON CONFLICT(code) DO UPDATE SET customer = excluded.customer, active = 1, note = excluded.note",
        (code, customer, note),
    )
    conn.execute("DELETE FROM contract_lines WHERE contract = ?", (code,))
    conn.executemany(
        "INSERT INTO contract_lines (contract, sku, qty) VALUES (?, ?, ?)",
        [(code, s, q) for s, q in lines.items()],
    )
    conn.executemany(
        "INSERT INTO contract_deliveries (contract, date) VALUES (?, ?)"
        " ON CONFLICT (contract, date) DO NOTHING",
        [(code, d) for d in dates],
    )


def add_voucher(conn: sqlite3.Connection, *, code: str, customer: str | None, sku: str, qty: int) -> None:
    if conn.execute("SELECT 1 FROM vouchers WHERE code = ?", (code,)).fetchone():
        raise OrderTypeError(f"code: voucher {code!r} already exists")
    if qty <= 0:
        raise OrderTypeError(f"qty: {qty} is not positive")
    conn.execute(
        "INSERT INTO vouchers (code, customer, sku, qty, status, issued_at) VALUES (?, ?, ?, ?, 'issued', ?)",
        (code, customer, sku, qty, now_ms()),
    )


def deposit(conn: sqlite3.Connection, *, customer: str, sku: str, qty: int, price: int, ref: str = "") -> int:
    """Customer stock put on consignment at the DC at ``price``; returns the lot id."""
    if conn.execute("SELECT 1 FROM customers WHERE code = ?", (customer,)).fetchone() is None:
        raise OrderTypeError(f"customer: unknown customer {customer!r}")
    if conn.execute("SELECT 1 FROM items WHERE sku = ?", (sku,)).fetchone() is None:
        raise OrderTypeError(f"sku: unknown item {sku!r}")
    if qty <= 0 or price < 0:
        raise OrderTypeError("qty must be positive and price not negative")
    cur = conn.execute(
        "INSERT INTO consignment_lots (customer, sku, qty, remaining, price, deposited_at, ref)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (customer, sku, qty, qty, price, now_ms(), ref),
    )
    assert cur.lastrowid is not None
    conn.execute(
        "INSERT INTO consignment_moves (lot_id, qty, at) VALUES (?, ?, ?)",
        (cur.lastrowid, qty, now_ms()),
    )
    return cur.lastrowid


def consignment_stock(conn: sqlite3.Connection, customer: str) -> list[dict[str, Any]]:
    cols = ("lot", "sku", "qty", "remaining", "price", "ref")
    return [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(
            "SELECT id, sku, qty, remaining, price, ref FROM consignment_lots WHERE customer = ? ORDER BY id",
            (customer,),
        )
    ]
