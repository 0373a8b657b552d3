"""The validation pipeline: pure checks over an order, the master snapshot and the
customer's exposure. No I/O - every input is passed in, so each rule is testable alone.

Each check gives a :class:`Check` a person can read: ``pass``, ``warn`` (recorded, no
effect), ``hold`` (the order waits for a supervisor, who may approve it: credit, price) or
``fail`` (the order cannot go on until fixed - unknown customer or item, a quantity or
requested date out of range, a voucher already used; a supervisor cannot approve it past
that, only reject it, or the sender fixes it with an order change).

Checks, in order: ``completeness``, ``price``, ``credit``, ``packaging``, then the order
type's own check (``central.orders.ordertypes``).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from central.orders.masters import Item, Snapshot
from central.orders.valuation import line_amount
from protocols.frozen import quick_init

# Requested delivery date window, relative to today (module level so tests set them).
DATE_PAST_DAYS = 0
DATE_FUTURE_DAYS = 365
CREDIT_WARN_PCT = 90  # warn when exposure after this order passes this share of the limit


class Outcome(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    HOLD = "hold"
    FAIL = "fail"


@quick_init
@dataclass(frozen=True, slots=True)
class Check:
    name: str
    outcome: Outcome
    detail: str

    def text(self) -> str:
        return f"{self.name}: {self.outcome.value}" + (f" ({self.detail})" if self.detail else "")


@quick_init
@dataclass(frozen=True, slots=True)
class LineIn:
    line_no: int
    qty: int
    gtin: str | None = None
    sku: str | None = None
    price: int | None = None  # quoted unit price


@quick_init
@dataclass(frozen=True, slots=True)
class OrderIn:
    customer: str
    order_type: str
    requested_date: dt.date
    lines: tuple[LineIn, ...]
    note: str = ""
    source_ref: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class PricedLine:
    line_no: int
    sku: str | None  # resolved from the GTIN when the line gave only a GTIN
    unit_price: int | None  # the validated unit price (list price; the type's fixed price)
    amount: int = 0  # what the line is worth: ``central.orders.valuation.line_amount`` (net of discount)


@quick_init
@dataclass(frozen=True, slots=True)
class Exposure:
    receivables: int = 0
    open_value: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class Result:
    checks: tuple[Check, ...]
    lines: tuple[PricedLine, ...]
    value: int
    requirements: str

    @property
    def passed(self) -> bool:
        return all(c.outcome in (Outcome.PASS, Outcome.WARN) for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """Problems a supervisor cannot approve past."""
        return tuple(c for c in self.checks if c.outcome is Outcome.FAIL)

    @property
    def holds(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome in (Outcome.HOLD, Outcome.FAIL))

    def summary(self) -> str:
        return "; ".join(c.text() for c in self.checks)


def _verdict(name: str, problems: list[str], outcome: Outcome, ok: str = "") -> Check:
    if problems:
        return Check(name, outcome, "; ".join(problems))
    return Check(name, Outcome.PASS, ok)


def check_completeness(order: OrderIn, snap: Snapshot, *, today: dt.date) -> tuple[Check, dict[int, Item]]:
    problems: list[str] = []
    cust = snap.customers.get(order.customer)
    if cust is None:
        problems.append(f"unknown customer {order.customer!r}")
    elif not cust.active:
        problems.append(f"customer {order.customer!r} is inactive")
    earliest = today - dt.timedelta(days=DATE_PAST_DAYS)
    latest = today + dt.timedelta(days=DATE_FUTURE_DAYS)
    if not earliest <= order.requested_date <= latest:
        problems.append(
            f"requested date {order.requested_date.isoformat()} outside {earliest.isoformat()}"
            f"..{latest.isoformat()}"
        )
    items: dict[int, Item] = {}
    for ln in order.lines:
        item = snap.resolve(ln.gtin, ln.sku)
        if item is None:
            code = f"sku {ln.sku!r}" if ln.sku is not None else f"GTIN {ln.gtin}"
            problems.append(f"line {ln.line_no}: unknown item {code}")
            continue
        if ln.gtin is not None and ln.sku is not None and snap.sku_by_gtin.get(ln.gtin.zfill(14)) != ln.sku:
            problems.append(f"line {ln.line_no}: GTIN {ln.gtin} is not sku {ln.sku!r}")
            continue
        if not item.active:
            problems.append(f"line {ln.line_no}: item {item.sku!r} is inactive")
        if ln.qty <= 0:
            problems.append(f"line {ln.line_no}: quantity {ln.qty} is not positive")
        elif item.max_order_qty and ln.qty > item.max_order_qty:
            problems.append(
                f"line {ln.line_no}: quantity {ln.qty} > {item.max_order_qty} allowed for {item.sku!r}"
            )
        items[ln.line_no] = item
    if not order.lines:
        problems.append("no open lines")
    return _verdict("completeness", problems, Outcome.FAIL, f"{len(order.lines)} lines"), items


def outside_tolerance(quoted: int, listed: int, tolerance_pct: float) -> bool:
    """True when a quoted unit price differs from the list price by more than the tolerance."""
    return abs(quoted - listed) * 100 > listed * tolerance_pct


def check_price(
    order: OrderIn,
    snap: Snapshot,
    items: dict[int, Item],
    *,
    fixed_prices: dict[int, int] | None = None,
    fixed_amounts: dict[int, int] | None = None,
) -> tuple[Check, list[PricedLine]]:
    """Price each line from the customer's price list; a quote outside tolerance holds.
    Each line is valued at its validated unit price less the customer's discount
    (:func:`central.orders.valuation.line_amount`); a price the order type fixes is taken as it is."""
    cust = snap.customers.get(order.customer)
    cls = cust.price_class if cust else ""
    discount = cust.discount_pct if cust else 0.0
    tol = snap.tolerance_pct.get(cls, 0.0)
    problems: list[str] = []
    priced: list[PricedLine] = []
    for ln in order.lines:
        item = items.get(ln.line_no)
        if fixed_prices is not None and ln.line_no in fixed_prices:
            fixed = fixed_prices[ln.line_no]
            amount = (fixed_amounts or {}).get(ln.line_no)
            priced.append(
                PricedLine(
                    ln.line_no,
                    item.sku if item else ln.sku,
                    fixed,
                    amount if amount is not None else line_amount(ln.qty, fixed),
                )
            )
            continue
        if item is None:
            priced.append(PricedLine(ln.line_no, ln.sku, ln.price, line_amount(ln.qty, ln.price, discount)))
            continue
        listed = snap.unit_price(cls, item, ln.qty)
        if listed is None:
            if ln.price is None:
                problems.append(f"line {ln.line_no}: no list price for {item.sku!r} and no quoted price")
            priced.append(PricedLine(ln.line_no, item.sku, ln.price, line_amount(ln.qty, ln.price, discount)))
            continue
        if ln.price is not None and outside_tolerance(ln.price, listed, tol):
            problems.append(
                f"line {ln.line_no}: quoted {ln.price} vs list {listed} for {item.sku!r}"
                f" x{ln.qty} is outside {tol:g}% tolerance"
            )
        priced.append(PricedLine(ln.line_no, item.sku, listed, line_amount(ln.qty, listed, discount)))
    ok = f"price class {cls!r}" + (f", discount {discount:g}%" if discount else "")
    return _verdict("price", problems, Outcome.HOLD, ok), priced


def order_value(priced: Sequence[PricedLine]) -> int:
    """The order's value: the sum of its lines' amounts."""
    return sum(p.amount for p in priced)


def check_credit(limit: int | None, exposure: Exposure, value: int) -> Check:
    """Warn when near the limit; hold when receivables + open orders + this order > limit."""
    if limit is None:
        return Check("credit", Outcome.PASS, "no credit limit set")
    total = exposure.receivables + exposure.open_value + value
    detail = (
        f"receivables {exposure.receivables} + open orders {exposure.open_value} + this order {value}"
        f" = {total} vs limit {limit}"
    )
    if total > limit:
        return Check("credit", Outcome.HOLD, detail)
    if total * 100 > limit * CREDIT_WARN_PCT or exposure.receivables > limit:
        return Check("credit", Outcome.WARN, detail)
    return Check("credit", Outcome.PASS, detail)


def check_packaging(order: OrderIn, snap: Snapshot, items: dict[int, Item]) -> tuple[Check, str]:
    """Record the customer's packaging/labelling/delivery requirements; flag split packs."""
    cust = snap.customers.get(order.customer)
    reqs = []
    if cust is not None:
        for label, text in (
            ("requirements", cust.delivery_requirements),
            ("window", cust.delivery_window),
            ("unloading", cust.unloading),
        ):
            if text:
                reqs.append(f"{label}: {text}")
    notes = []
    for ln in order.lines:
        item = items.get(ln.line_no)
        if item is not None and item.pack_size > 1 and ln.qty % item.pack_size:
            notes.append(
                f"line {ln.line_no}: {ln.qty} is not a multiple of pack size {item.pack_size} (split pack)"
            )
    requirements = "; ".join(reqs)
    detail = "; ".join([*(f"recorded {r}" for r in reqs), *notes]) or "no special requirements"
    return Check("packaging", Outcome.WARN if notes else Outcome.PASS, detail), requirements


def validate(
    order: OrderIn,
    snap: Snapshot,
    *,
    today: dt.date,
    exposure: Exposure,
    type_check: Check | None = None,
    fixed_prices: dict[int, int] | None = None,
    fixed_amounts: dict[int, int] | None = None,
) -> Result:
    completeness, items = check_completeness(order, snap, today=today)
    price, priced = check_price(order, snap, items, fixed_prices=fixed_prices, fixed_amounts=fixed_amounts)
    value = order_value(priced)
    cust = snap.customers.get(order.customer)
    credit = check_credit(cust.credit_limit if cust else None, exposure, value)
    packaging, requirements = check_packaging(order, snap, items)
    checks = [completeness, price, credit, packaging]
    if type_check is not None:
        checks.append(type_check)
    return Result(checks=tuple(checks), lines=tuple(priced), value=value, requirements=requirements)
