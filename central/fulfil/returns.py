"""Returns (reverse logistics): an RMA linked to its order line, routed by rule.

:func:`create_rma` checks the order has been shipped or delivered (:data:`RETURNABLE`; else
:class:`NotReturnable`), the line exists and that no more comes back than was ordered
(less what earlier RMAs returned), picks a disposition by the reason (:data:`DISPOSITION`),
and applies it in the caller's transaction:

- ``restock``: units go back on hand at a location chosen by rule - the location the line
  was shipped from, else the customer zone's preferred DC, else the first location stocking
  the sku - kept in ``stock_audit`` (action ``return``, the ``actor`` who booked it, the RMA);
- ``repair``, ``scrap``, ``return_to_supplier``: no stock change (the unit is not sellable);
  for return to supplier the RMA's ``location`` is the item master's supplier (else the
  supplier noted on the item's inventory row).

Every RMA credits the customer with what the returned units were sold for - their share of
the line's amount, net of the customer's discount (:func:`central.orders.valuation.return_credit`) -
in the same transaction: a ``credit_note`` entry in the ``receivables`` ledger and the
customer master's ``receivables`` (the figure the credit check reads). The rule that chose
the location is stored with the RMA.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from central import CentralError
from central.allocate import demand, inventory
from central.orders import masters, valuation

DISPOSITION = {
    "wrong_item": "restock",
    "unwanted": "restock",
    "overstock": "restock",
    "defective": "return_to_supplier",
    "repairable": "repair",
    "damaged": "scrap",
    "expired": "scrap",
}
RMA_COLS = (
    "rma_id",
    "order_id",
    "line_no",
    "sku",
    "qty",
    "reason",
    "disposition",
    "location",
    "rule",
    "credit",
    "created_at",
)


class ReturnError(CentralError):
    def __init__(self, order_id: int, line_no: int, reason: str) -> None:
        super().__init__(f"order {order_id} line {line_no}: {reason}")
        self.order_id = order_id
        self.line_no = line_no
        self.reason = reason


class NotReturnable(ReturnError):
    """The order has not reached the customer (or is closed): nothing of it can come back."""

    def __init__(self, order_id: int, line_no: int, order_no: str, status: str) -> None:
        super().__init__(
            order_id,
            line_no,
            f"order {order_no} is {status}; returns are taken only on {' or '.join(RETURNABLE)} orders",
        )
        self.status = status


# Only goods the customer has had can come back: a picked order is still at the DC.
RETURNABLE = ("shipped", "delivered")


@dataclass(frozen=True, slots=True)
class Rma:
    rma_id: int
    disposition: str
    location: str
    rule: str
    credit: int


def create_rma(
    conn: sqlite3.Connection,
    *,
    order_id: int,
    line_no: int,
    qty: int,
    reason: str,
    now: int,
    actor: str = "returns",
) -> Rma:
    if reason not in DISPOSITION:
        raise ReturnError(order_id, line_no, f"unknown reason {reason!r}; one of {', '.join(DISPOSITION)}")
    head = conn.execute("SELECT order_no, status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if head is None:
        raise ReturnError(order_id, line_no, "no such order")
    if head[1] not in RETURNABLE:
        raise NotReturnable(order_id, line_no, head[0], head[1])
    line = conn.execute(
        "SELECT l.sku, l.gtin, l.qty, o.customer FROM order_lines l"
        " JOIN orders o ON o.order_id = l.order_id"
        " WHERE l.order_id = ? AND l.line_no = ? AND l.cancelled = 0",
        (order_id, line_no),
    ).fetchone()
    if line is None:
        raise ReturnError(order_id, line_no, "no such order line")
    sku, gtin, ordered, customer = line
    sku = sku or gtin or ""
    before = conn.execute(
        "SELECT coalesce(sum(qty), 0) FROM rmas WHERE order_id = ? AND line_no = ?", (order_id, line_no)
    ).fetchone()[0]
    if qty <= 0 or qty + before > ordered:
        raise ReturnError(
            order_id, line_no, f"return of {qty} with {before} already returned of {ordered} ordered"
        )
    disposition = DISPOSITION[reason]
    location, rule = "", f"reason {reason} -> {disposition}"
    restocked: tuple[int | None, int] | None = None  # on hand before and after
    if disposition == "restock":
        location, why = _restock_location(conn, order_id, line_no, sku, customer)
        rule += f"; restock at {location} ({why})"
        on_hand = inventory.on_hand(conn, location, sku)
        inventory.add_stock(conn, location, sku, qty)
        restocked = (on_hand, (on_hand or 0) + qty)
    elif disposition == "return_to_supplier":  # the item master's supplier
        location = inventory.suppliers(conn, [sku]).get(sku, "")
        rule += f"; supplier {location or 'unknown'}"
    credit = valuation.return_credit(conn, order_id, line_no, qty)
    cur = conn.execute(
        "INSERT INTO rmas (order_id, line_no, sku, qty, reason, disposition, location, rule, credit,"
        " created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order_id, line_no, sku, qty, reason, disposition, location, rule, credit, now),
    )
    rma_id = cur.lastrowid
    assert rma_id is not None
    if restocked is not None:
        inventory.audit_stock(
            conn,
            actor=actor,
            action="return",
            location=location,
            sku=sku,
            before=restocked[0],
            after=restocked[1],
            now=now,
            detail=f"RMA{rma_id:08d} order {head[0]} line {line_no}: +{qty} ({reason})",
        )
    conn.execute(
        "INSERT INTO receivables (customer, order_id, amount, kind, ref, at)"
        " VALUES (?, ?, ?, 'credit_note', ?, ?)",
        (customer, order_id, -credit, f"RMA{rma_id:08d}", now),
    )
    masters.adjust_receivables(conn, customer, -credit)
    conn.execute(
        "INSERT INTO order_events (order_id, at, event, detail, actor) VALUES (?, ?, 'return', ?, 'returns')",
        (order_id, now, f"RMA{rma_id:08d}: {qty} x {sku} line {line_no}: {rule}"),
    )
    return Rma(rma_id, disposition, location, rule, credit)


def _restock_location(
    conn: sqlite3.Connection, order_id: int, line_no: int, sku: str, customer: str
) -> tuple[str, str]:
    row = conn.execute(
        "SELECT location FROM allocations WHERE order_id = ? AND line_no = ? AND kind = 'order'"
        " ORDER BY qty DESC, alloc_id LIMIT 1",
        (order_id, line_no),
    ).fetchone()
    if row is not None:
        return row[0], "shipped from there"
    zone = demand.load_profiles(conn, [customer]).get(customer, demand.DEFAULT_PROFILE).zone
    normal, _ = inventory.load_network(conn).candidates(zone)
    if normal:
        return normal[0][0], f"first source for zone {zone or '-'}"
    row = conn.execute(
        "SELECT location FROM inventory WHERE sku = ? ORDER BY location LIMIT 1", (sku,)
    ).fetchone()
    if row is None:
        raise ReturnError(order_id, line_no, f"no location to restock {sku}")
    return row[0], "first location stocking the item"


def get_rma(conn: sqlite3.Connection, rma_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(RMA_COLS)} FROM rmas WHERE rma_id = ?", (rma_id,)).fetchone()
    return None if row is None else dict(zip(RMA_COLS, row, strict=True))


def receivable_balance(conn: sqlite3.Connection, customer: str) -> int:
    return int(
        conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM receivables WHERE customer = ?", (customer,)
        ).fetchone()[0]
    )
