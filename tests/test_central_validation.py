"""The validation rules alone (pure functions), with Hypothesis where a rule has a formula."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from central.orders import lifecycle, validation
from central.orders.masters import Customer, Item, Snapshot
from central.orders.validation import Exposure, LineIn, OrderIn, Outcome

TODAY = dt.date(2026, 6, 1)


def snap(*, limit: int | None = None, tol: float = 5.0, max_qty: int = 0) -> Snapshot:
    s = Snapshot()
    s.customers["C"] = Customer("C", "c", "A", "A", limit, "labels", "", "", None, True)
    s.items["MILK"] = Item("MILK", "milk", 6, "SUP", 100, max_qty, True)
    s.sku_by_gtin["04012345678901"] = "MILK"
    s.breaks[("A", "MILK")] = [(1, 95), (60, 90)]
    s.tolerance_pct["A"] = tol
    return s


def order(qty: int = 6, price: int | None = None, date: dt.date = TODAY, **kw: object) -> OrderIn:
    return OrderIn(
        customer=str(kw.get("customer", "C")),
        order_type="normal",
        requested_date=date,
        lines=(LineIn(1, qty, gtin="4012345678901", price=price),),
    )


@given(quoted=st.integers(0, 10_000), listed=st.integers(1, 10_000), tol=st.floats(0, 50))
def test_price_hold_iff_outside_tolerance(quoted: int, listed: int, tol: float) -> None:
    s = snap(tol=tol)
    s.breaks[("A", "MILK")] = [(1, listed)]
    r = validation.validate(order(price=quoted), s, today=TODAY, exposure=Exposure())
    price = r.checks[1]
    assert price.name == "price"
    assert (price.outcome is Outcome.HOLD) == (abs(quoted - listed) * 100 > listed * tol)
    assert r.value == 6 * listed  # valued at the list price, whatever was quoted


@given(qty=st.integers(1, 500))
def test_quantity_break_picks_highest_break_not_above_qty(qty: int) -> None:
    r = validation.validate(order(qty=qty), snap(), today=TODAY, exposure=Exposure())
    assert r.lines[0].unit_price == (90 if qty >= 60 else 95) and r.lines[0].sku == "MILK"


@given(
    limit=st.integers(0, 100_000),
    recv=st.integers(0, 100_000),
    open_value=st.integers(0, 100_000),
    qty=st.integers(1, 100),
)
def test_credit_holds_iff_exposure_exceeds_limit(limit: int, recv: int, open_value: int, qty: int) -> None:
    r = validation.validate(
        order(qty=qty), snap(limit=limit), today=TODAY, exposure=Exposure(recv, open_value)
    )
    credit = r.checks[2]
    over = recv + open_value + r.value > limit
    assert (credit.outcome is Outcome.HOLD) == over
    assert r.passed == (not over)
    assert not r.failures  # credit is approvable, never a hard failure


@given(days=st.integers(-1000, 1000))
def test_requested_date_window(days: int) -> None:
    r = validation.validate(
        order(date=TODAY + dt.timedelta(days=days)), snap(), today=TODAY, exposure=Exposure()
    )
    inside = -validation.DATE_PAST_DAYS <= days <= validation.DATE_FUTURE_DAYS
    assert (r.checks[0].outcome is Outcome.PASS) == inside


@given(qty=st.integers(1, 5000), max_qty=st.integers(0, 3000))
def test_quantity_must_be_sensible(qty: int, max_qty: int) -> None:
    r = validation.validate(order(qty=qty), snap(max_qty=max_qty), today=TODAY, exposure=Exposure())
    assert (r.checks[0].outcome is Outcome.FAIL) == bool(max_qty and qty > max_qty)
    assert (r.checks[3].outcome is Outcome.WARN) == bool(qty % 6)  # split pack flagged


def test_unknown_customer_and_item_fail_with_reasons() -> None:
    o = OrderIn("X", "normal", TODAY, (LineIn(1, 1, sku="NOPE"),))
    r = validation.validate(o, snap(), today=TODAY, exposure=Exposure())
    assert [c.name for c in r.failures] == ["completeness"]
    assert (
        "unknown customer 'X'" in r.failures[0].detail and "unknown item sku 'NOPE'" in r.failures[0].detail
    )


def test_transition_table_is_closed_and_final_states_are_final() -> None:
    for (a, b), types in lifecycle.TRANSITIONS.items():
        assert a not in lifecycle.FINAL and a != b
        assert types is None or types <= {
            "normal",
            "cash-sale",
            "drop-ship",
            "contract",
            "consignment",
            "voucher",
        }
    assert lifecycle.allowed("received", "validated", "normal")
    assert not lifecycle.allowed("validated", "delivered", "normal")
    assert lifecycle.allowed("validated", "delivered", "cash-sale")
    assert not lifecycle.allowed("held", "allocated", "normal")
    assert not lifecycle.allowed("bogus", "held", "normal")
