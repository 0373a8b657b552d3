"""What an order is worth: the one place that turns quantities and prices into money.

Money is integer minor units (cents). An order line is valued when it is priced
(``central.orders.validation.check_price``) at its validated ``unit_price`` - never the price the
sender quoted, which only decides a price hold - less the customer's ``discount_pct``:
:func:`line_amount`. The amount is stored with the line (``order_lines.amount``) and the
order's ``value`` is the sum of its open lines' amounts; everything after that reads those
two: allocation priority by value (``central.allocate.demand``), open orders and receivables
(``central.orders.lifecycle``) and the credit of a return (:func:`return_credit`).

A line whose price the order type fixes (a consignment deposit's price, a voucher's 0) is
valued at that price as it is: the deposit price is what the customer agreed when it
bought the goods, so the discount is not taken again.
"""

from __future__ import annotations

import sqlite3
from decimal import ROUND_HALF_UP, Decimal

from runtime.dbapi import has_table

_HUNDRED = Decimal(100)


def line_amount(qty: int, unit_price: int | None, discount_pct: float = 0.0) -> int:
    """qty x unit price less ``discount_pct`` percent, rounded half up to a minor unit
    (no price: 0)."""
    gross = qty * (unit_price or 0)
    if not discount_pct or not gross:
        return gross
    net = Decimal(gross) * (_HUNDRED - Decimal(str(discount_pct))) / _HUNDRED
    return int(net.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _share(amount: int, part: int, whole: int) -> int:
    """``amount * part / whole`` rounded half up (``whole`` > 0, ``amount`` >= 0)."""
    return (2 * amount * part + whole) // (2 * whole)


def return_credit(conn: sqlite3.Connection, order_id: int, line_no: int, qty: int) -> int:
    """What the customer is credited for ``qty`` more units of an order line coming back:
    the line's share of its amount, counted cumulatively over the line's earlier returns so
    that a line returned in full, in any number of returns, credits exactly its amount."""
    row = conn.execute(
        "SELECT l.qty, coalesce(l.amount, 0),"
        " (SELECT coalesce(sum(r.qty), 0) FROM rmas r"
        " WHERE r.order_id = l.order_id AND r.line_no = l.line_no)"
        " FROM order_lines l WHERE l.order_id = ? AND l.line_no = ?",
        (order_id, line_no),
    ).fetchone()
    if row is None or row[0] <= 0:
        return 0
    ordered, amount, before = row
    return _share(amount, before + qty, ordered) - _share(amount, before, ordered)


def credited(conn: sqlite3.Connection, order_id: int) -> int:
    """What the order's returns (RMAs) have credited the customer so far."""
    if not has_table(conn, "rmas"):
        return 0  # a database without the allocation tables has no returns
    return int(
        conn.execute("SELECT coalesce(sum(credit), 0) FROM rmas WHERE order_id = ?", (order_id,)).fetchone()[
            0
        ]
    )
