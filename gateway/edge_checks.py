"""The checks every order entry at the edge applies from the cached masters, so an order taken
while central is away keeps the same rules as one taken online (``central/ORDERS.md``, "Edge
checks at the gateway").

One function, :func:`check_order`, is called by every entry: the HTTP order entry
(``POST /api/orders``), the handheld terminal's batch commit, the scanner session (each scan
as the line it would make, and the whole order when the session closes) and the POS
safety-stock reorder. It refuses, per line:

- an item the gateway's item cache does not know (GTIN or SKU) or an inactive one (central
  sends only active items);
- a quantity above :data:`EDGE_MAX_QTY` (what a scanner's quantity card and the handheld
  terminal accept) or above the item's ``max_order_qty``;

and the order as a whole when its customer is not this store's: the gateway's own
``customer`` and the customers central has mapped to this gateway (``customer_standing``);
a mapped customer central reports inactive is refused too.

Until central's item master has reached the gateway (an empty cache) item checks pass and
central decides; the customer check needs only the gateway's own config.

The credit check follows the textbook: warn at entry when the customer's receivables are
already over the limit (or the order takes the exposure past :data:`CREDIT_WARN_PCT` of it),
hold when receivables + open orders + this order exceed the limit. Exposure at the edge is
central's last ``customer_standing`` plus the orders entered here that it does not include:
an order counts at the edge until central's ``order_status`` for it says central counted it
before the standing was read (validated ... delivered at or before ``as_of``) or does not
count it (held, cancelled, returned, refused in processing). A held order is still
sent: central re-checks with its own ledger, holds it for a supervisor or passes it, and its
``order_status`` replaces the edge's answer.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from gateway import items
from gateway.items import Item
from gateway.outbox import Outbox
from protocols.barcode import MAX_CONTROL_QTY
from protocols.envelope import Record
from protocols.records import OrderBody, OrderLine
from runtime.clock import now_ms

log = logging.getLogger(__name__)

EDGE_MAX_QTY = MAX_CONTROL_QTY  # 9999 a line: a scanner's quantity card and the HT take no more
CREDIT_WARN_PCT = 90  # as central's validation.CREDIT_WARN_PCT


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an order line (``line`` 1-based) or the whole order (``line`` None) is refused."""

    line: int | None
    field: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


class Credit(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Verdict:
    refusals: tuple[Refusal, ...]
    credit: Credit = Credit.PASS
    credit_detail: str = ""
    value: int = 0  # at the cached prices (lines without a price count 0)

    @property
    def accepted(self) -> bool:
        return not self.refusals

    def to_json(self) -> dict[str, Any]:
        """What the answer to the clerk adds: the credit warning or hold, if any."""
        if self.credit is Credit.PASS:
            return {}
        return {"credit": self.credit.value, "credit_detail": self.credit_detail}


def line_limit(item: Item | None) -> int:
    """The largest quantity one order line of this item may have at the edge."""
    if item is not None and 0 < item.max_order_qty < EDGE_MAX_QTY:
        return item.max_order_qty
    return EDGE_MAX_QTY


def _check_line(conn: sqlite3.Connection, n: int, ln: OrderLine, catalogue: bool) -> Refusal | Item | None:
    item = None
    if ln.gtin is not None:
        item = items.lookup_gtin(conn, ln.gtin)
        if item is None and catalogue:
            return Refusal(n, "gtin", f"unknown GTIN {ln.gtin}: not in the item master")
        if item is not None and ln.sku is not None and item.sku != ln.sku:
            return Refusal(n, "sku", f"GTIN {ln.gtin} is {item.sku!r}, not {ln.sku!r}")
    elif ln.sku is not None:
        item = items.lookup_sku(conn, ln.sku)
        if item is None and catalogue:
            return Refusal(n, "sku", f"unknown SKU {ln.sku!r}: not in the item master")
    limit = line_limit(item)
    if ln.qty > limit:
        whose = f"for {item.sku!r}" if item is not None and limit == item.max_order_qty else "on a line"
        return Refusal(n, "qty", f"quantity {ln.qty} > {limit} allowed {whose}")
    return item


def check_customer(conn: sqlite3.Connection, customer: str, *, store_customer: str) -> Refusal | None:
    """Whether this gateway takes orders for ``customer`` (None: it does)."""
    mine = items.known_customers(conn) | ({store_customer} if store_customer else set())
    if mine and customer not in mine:
        return Refusal(
            None, "customer", f"customer {customer!r} is not this store's ({', '.join(sorted(mine))})"
        )
    st = items.standing(conn, customer)
    if st is not None and not st.active:
        return Refusal(None, "customer", f"customer {customer!r} is inactive in the customer master")
    return None


# central's order statuses whose value its standing counts (open orders and receivables)
COUNTED = ("validated", "allocated", "released", "picked", "shipped", "delivered")
NOT_COUNTED = ("held", "cancelled", "returned")  # held: counted again once approved (validated)


def edge_exposure(conn: sqlite3.Connection, st: items.Standing) -> int:
    """Receivables + open orders: central's last figures plus this gateway's orders they do
    not include yet - an order counts here until central's status for it says it is not
    counted (held, cancelled, refused) or was counted before the standing was read."""
    (uncounted,) = conn.execute(
        "SELECT coalesce(sum(e.value), 0) FROM edge_orders e"
        " LEFT JOIN order_status s ON s.record_id = e.record_id"
        " LEFT JOIN record_results r ON r.id = e.record_id"
        " WHERE e.customer = ? AND coalesce(r.status, '') != 'rejected'"
        f" AND coalesce(s.status, '') NOT IN ({', '.join('?' * len(NOT_COUNTED))})"
        f" AND NOT (coalesce(s.status, '') IN ({', '.join('?' * len(COUNTED))}) AND s.at <= ?)",
        (st.code, *NOT_COUNTED, *COUNTED, st.as_of),
    ).fetchone()
    return int(st.receivables + st.open_value + uncounted)


def prune_entries(conn: sqlite3.Connection, customer: str, as_of: int) -> None:
    """Forget the orders central's standing (read at ``as_of``) includes or never counts."""
    conn.execute(
        "DELETE FROM edge_orders WHERE customer = ? AND record_id IN (SELECT record_id FROM order_status"
        f" WHERE status IN ({', '.join('?' * len(NOT_COUNTED))})"
        f" OR (status IN ({', '.join('?' * len(COUNTED))}) AND at <= ?))",
        (customer, *NOT_COUNTED, *COUNTED, as_of),
    )


def credit_check(conn: sqlite3.Connection, customer: str, value: int) -> tuple[Credit, str]:
    st = items.standing(conn, customer)
    if st is None or st.credit_limit is None:
        return Credit.PASS, "no credit limit known at this gateway"
    limit = st.credit_limit
    exposure = edge_exposure(conn, st)
    total = exposure + value
    detail = (
        f"receivables + open orders {exposure} (receivables {st.receivables}) + this order {value}"
        f" = {total} vs limit {limit}"
    )
    if total > limit:
        return Credit.HOLD, "held for a supervisor: " + detail
    if st.receivables > limit or total * 100 > limit * CREDIT_WARN_PCT:
        return Credit.WARN, detail
    return Credit.PASS, detail


def check_order(
    conn: sqlite3.Connection, order: OrderBody, *, store_customer: str, credit: bool = True
) -> Verdict:
    """Every edge check on one order (inside the caller's database job); nothing is written."""
    refusals: list[Refusal] = []
    if (r := check_customer(conn, order.customer, store_customer=store_customer)) is not None:
        refusals.append(r)
    catalogue = items.has_items(conn)
    value = 0
    for n, ln in enumerate(order.lines, start=1):
        got = _check_line(conn, n, ln, catalogue)
        if isinstance(got, Refusal):
            refusals.append(got)
            continue
        price = ln.price if ln.price is not None else got.price if got is not None else None
        value += ln.qty * (price or 0)
    if refusals:
        return Verdict(tuple(refusals), value=value)
    if not credit:
        return Verdict((), value=value)
    outcome, detail = credit_check(conn, order.customer, value)
    return Verdict((), outcome, detail, value)


def record_entry(conn: sqlite3.Connection, rec: Record, customer: str, verdict: Verdict) -> None:
    """Remember an order taken here (its value counts against the customer's credit at the
    edge until central's standing includes it) with the edge's credit answer."""
    conn.execute(
        "INSERT OR REPLACE INTO edge_orders (record_id, customer, value, entered_at, credit, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (rec.id, customer, verdict.value, rec.ts or now_ms(), verdict.credit.value, verdict.credit_detail),
    )


def enter_order(
    conn: sqlite3.Connection,
    outbox: Outbox,
    order: OrderBody,
    *,
    store_customer: str,
    record_id: str | None = None,
) -> tuple[Record | None, Verdict]:
    """Check an order and, if no line is refused, put it in the outbox with its edge record -
    one database job, so two entries cannot both pass the same credit headroom."""
    verdict = check_order(conn, order, store_customer=store_customer)
    if not verdict.accepted:
        return None, verdict
    rec = outbox.add(conn, "order", order.to_wire(), record_id=record_id)
    record_entry(conn, rec, order.customer, verdict)
    if verdict.credit is not Credit.PASS:
        log.warning(
            "order %s for %s: credit %s: %s", rec.id, order.customer, verdict.credit, verdict.credit_detail
        )
    return rec, verdict


async def submit_order(
    outbox: Outbox, order: OrderBody, *, store_customer: str, record_id: str | None = None
) -> tuple[Record | None, Verdict]:
    """:func:`enter_order` as a durable job: returns after the commit (or with the refusals)."""
    rec, verdict = await outbox.db.write(
        lambda conn: enter_order(conn, outbox, order, store_customer=store_customer, record_id=record_id)
    )
    if rec is not None:
        outbox.notify()
    return rec, verdict


def entry(conn: sqlite3.Connection, record_id: str) -> dict[str, Any] | None:
    """The edge's credit answer for an order taken here (None: not taken here or forgotten)."""
    row = conn.execute(
        "SELECT customer, value, credit, detail FROM edge_orders WHERE record_id = ?", (record_id,)
    ).fetchone()
    if row is None:
        return None
    return {"customer": row[0], "value": row[1], "credit": row[2], "credit_detail": row[3]}
