"""The pure allocation engine: rules, shortages, traces, and Hypothesis invariants."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.allocate.allocation import (
    AllocationInputError,
    CompanyPolicy,
    CustomerPref,
    DemandLine,
    Network,
    OrderDemand,
    PriorityRules,
    ShortageAction,
    SourcingRule,
    Special,
    allocate,
    decode_inputs,
    encode_inputs,
    trace_digest,
)

NET = Network(
    (
        SourcingRule("N", "DC-N", 1, preferred=True),
        SourcingRule("N", "DC-S", 5),
        SourcingRule("S", "DC-S", 1, preferred=True),
        SourcingRule("S", "DC-N", 5),
        SourcingRule("*", "DC-N", 9),
        SourcingRule("N", "ST-1", 20, transfer=True),
        SourcingRule("S", "ST-1", 20, transfer=True),
    )
)


def order(oid: int, *lines: tuple[str, int], **kw: object) -> OrderDemand:
    return OrderDemand(
        order_id=oid,
        customer=str(kw.pop("customer", f"C{oid}")),
        lines=tuple(DemandLine(i + 1, s, q) for i, (s, q) in enumerate(lines)),
        **kw,  # type: ignore[arg-type]
    )


def test_preferred_dc_first() -> None:
    r = allocate([order(1, ("A", 5), zone="N")], {("DC-N", "A"): 10, ("DC-S", "A"): 10}, network=NET)
    assert [(a.location, a.qty) for a in r.allocations] == [("DC-N", 5)]
    assert "preferred for zone N" in r.allocations[0].rule
    assert r.remaining[("DC-N", "A")] == 5


def test_whole_order_from_one_location_beats_preferred_split() -> None:
    stock = {("DC-N", "A"): 10, ("DC-N", "B"): 0, ("DC-S", "A"): 10, ("DC-S", "B"): 10}
    r = allocate([order(1, ("A", 5), ("B", 5), zone="N")], stock, network=NET)
    assert {a.location for a in r.allocations} == {"DC-S"}
    assert all("whole order" in a.rule for a in r.allocations)


def test_split_line_only_when_allowed() -> None:
    stock = {("DC-N", "A"): 3, ("DC-S", "A"): 4}
    no = allocate([order(1, ("A", 6), zone="N")], stock, network=NET)
    assert [(a.location, a.qty) for a in no.allocations] == [("DC-S", 4)]  # most stock, one location
    assert no.shortfalls[0].qty == 2
    yes = allocate([order(1, ("A", 6), zone="N", allow_split=True)], stock, network=NET)
    assert [(a.location, a.qty) for a in yes.allocations] == [("DC-N", 3), ("DC-S", 3)]
    assert not yes.shortfalls


def test_priority_special_then_grade_then_value_then_credit() -> None:
    stock = {("DC-N", "A"): 1}
    orders = [
        order(1, ("A", 1), zone="N", grade="A", value=900),
        order(2, ("A", 1), zone="N", grade="C", special=frozenset({Special.URGENT.value})),
        order(3, ("A", 1), zone="N", grade="A", value=1000),
    ]
    r = allocate(orders, stock, network=NET)
    assert [o.order_id for o in sorted(r.outcomes, key=lambda o: o.rank)] == [2, 3, 1]
    assert r.allocations[0].order_id == 2
    by_value = allocate(orders, stock, network=NET, rules=PriorityRules(("value", "grade")))
    assert by_value.allocations[0].order_id == 3
    with pytest.raises(AllocationInputError):
        PriorityRules(("grade", "colour"))


def test_ties_break_on_received_then_id() -> None:
    orders = [order(7, ("A", 1), zone="N", received_at=5), order(3, ("A", 1), zone="N", received_at=5)]
    r = allocate(orders, {("DC-N", "A"): 1}, network=NET)
    assert r.allocations[0].order_id == 3


@pytest.mark.parametrize(
    ("pref", "company", "action"),
    [
        (CustomerPref.BACKORDER, CompanyPolicy(), ShortageAction.BACKORDER),
        (CustomerPref.BACKORDER, CompanyPolicy(backorders=False), ShortageAction.CUT),
        (CustomerPref.SHIP_WITH_NEXT, CompanyPolicy(), ShortageAction.SHIP_WITH_NEXT),
        (CustomerPref.CUT, CompanyPolicy(reallocate=False), ShortageAction.CUT),
        (CustomerPref.DELAY, CompanyPolicy(), ShortageAction.DELAY),
        (CustomerPref.CANCEL, CompanyPolicy(reallocate=False), ShortageAction.CANCEL),
    ],
)
def test_shortage_policy(pref: CustomerPref, company: CompanyPolicy, action: ShortageAction) -> None:
    o = order(1, ("A", 5), ("B", 2), zone="N", pref=pref)
    r = allocate([o], {("DC-N", "A"): 3, ("DC-N", "B"): 2}, network=NET, company=company)
    assert {s.action for s in r.shortfalls} == {action}
    if action is ShortageAction.CANCEL:
        assert not r.allocations and r.remaining[("DC-N", "A")] == 3
        assert sum(s.qty for s in r.shortfalls) == 7
        assert r.outcomes[0].status == "cancelled"
    else:
        assert sum(s.qty for s in r.shortfalls) == 2
    if action is ShortageAction.DELAY:
        assert r.outcomes[0].status == "held"


def test_reallocate_from_transfer_source_before_cut() -> None:
    stock = {("DC-N", "A"): 3, ("ST-1", "A"): 10}
    r = allocate([order(1, ("A", 5), zone="N", pref=CustomerPref.CUT)], stock, network=NET)
    assert [(a.location, a.qty) for a in r.allocations] == [("DC-N", 3), ("ST-1", 2)]
    assert "reallocated" in r.allocations[1].rule and not r.shortfalls
    # a customer who takes back orders waits instead of pulling stock from a store
    r2 = allocate([order(1, ("A", 5), zone="N")], stock, network=NET)
    assert r2.shortfalls[0].action is ShortageAction.BACKORDER


def test_cancelled_order_gives_stock_to_the_next() -> None:
    orders = [
        order(1, ("A", 2), ("B", 5), zone="N", grade="A", pref=CustomerPref.CANCEL),
        order(2, ("A", 2), zone="N", grade="B"),
    ]
    r = allocate(
        orders, {("DC-N", "A"): 2, ("DC-N", "B"): 1}, network=NET, company=CompanyPolicy(reallocate=False)
    )
    assert [(a.order_id, a.qty) for a in r.allocations] == [(2, 2)]


def test_trace_reads_and_replays_exactly() -> None:
    orders = [order(1, ("A", 5), zone="N"), order(2, ("A", 9), zone="S", allow_split=True)]
    stock = {("DC-N", "A"): 6, ("DC-S", "A"): 4}
    r = allocate(orders, stock, network=NET, title="t")
    text = r.trace_text
    assert text.startswith("t: 2 orders; priority special > grade > value > credit")
    assert "#1 order 1" in text and "split allowed" in text and "=> short" in text
    data = json.loads(json.dumps(encode_inputs(orders, stock, network=NET, title="t")))
    again = decode_inputs(data).run()
    assert again.trace == r.trace and again.allocations == r.allocations
    assert trace_digest(again.trace) == trace_digest(r.trace)


# -- invariants ----------------------------------------------------------------------------

SKUS = ["A", "B", "C", "D"]
LOCS = ["DC-N", "DC-S", "ST-1"]

lines_st = st.lists(st.tuples(st.sampled_from(SKUS), st.integers(0, 12)), min_size=1, max_size=4)
order_st = st.builds(
    lambda lines, zone, grade, special, value, credit, split, pref, recv: (
        lines,
        {
            "zone": zone,
            "grade": grade,
            "special": frozenset(special),
            "value": value,
            "credit": credit,
            "allow_split": split,
            "pref": pref,
            "received_at": recv,
        },
    ),
    lines_st,
    st.sampled_from(["N", "S", "X"]),
    st.sampled_from(["A", "B", "C"]),
    st.sets(st.sampled_from([s.value for s in Special])),
    st.integers(0, 10_000),
    st.integers(0, 100),
    st.booleans(),
    st.sampled_from(list(CustomerPref)),
    st.integers(0, 50),
)
stock_st = st.dictionaries(st.tuples(st.sampled_from(LOCS), st.sampled_from(SKUS)), st.integers(0, 30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(order_st, max_size=12),
    stock=stock_st,
    company=st.builds(CompanyPolicy, st.booleans(), st.booleans()),
    rules=st.permutations(["special", "grade", "value", "credit"]),
)
def test_invariants(
    specs: list[tuple[list[tuple[str, int]], dict[str, object]]],
    stock: dict[tuple[str, str], int],
    company: CompanyPolicy,
    rules: list[str],
) -> None:
    orders = [order(i + 1, *lines, **kw) for i, (lines, kw) in enumerate(specs)]
    pr = PriorityRules(tuple(rules))
    r = allocate(orders, stock, network=NET, rules=pr, company=company)
    # never more allocated than there is, at any location
    used: dict[tuple[str, str], int] = {}
    for a in r.allocations:
        assert a.qty > 0
        used[(a.location, a.sku)] = used.get((a.location, a.sku), 0) + a.qty
    for key, q in used.items():
        assert q <= stock.get(key, 0)
        assert r.remaining[key] == stock.get(key, 0) - q >= 0
    # every unit of demand is allocated, owed or cancelled - with a reason
    for o in orders:
        for ln in o.lines:
            got = sum(a.qty for a in r.allocations if (a.order_id, a.line_no) == (o.order_id, ln.line_no))
            short = [s for s in r.shortfalls if (s.order_id, s.line_no) == (o.order_id, ln.line_no)]
            assert got + sum(s.qty for s in short) == ln.qty
            assert all(s.reason and s.qty > 0 for s in short)
    assert len(r.outcomes) == len(orders)
    # same inputs (in any order) -> same result and trace
    again = allocate(
        list(reversed(orders)), dict(reversed(list(stock.items()))), network=NET, rules=pr, company=company
    )
    assert again.trace == r.trace and again.allocations == r.allocations and again.shortfalls == r.shortfalls
    replay = decode_inputs(
        json.loads(json.dumps(encode_inputs(orders, stock, network=NET, rules=pr, company=company)))
    )
    assert replay.run().trace == r.trace


@settings(max_examples=60, deadline=None)
@given(
    waves=st.lists(st.tuples(st.lists(order_st, max_size=5), stock_st), min_size=1, max_size=5),
)
def test_invariants_across_successive_runs(
    waves: list[tuple[list[tuple[list[tuple[str, int]], dict[str, object]]], dict[tuple[str, str], int]]],
) -> None:
    """Receipts arrive between runs; the stock each run sees is what the last one left plus
    the receipt - allocated stays within what was ever on hand at every step."""
    on_hand: dict[tuple[str, str], int] = {}
    allocated: dict[tuple[str, str], int] = {}
    oid = 0
    for specs, receipt in waves:
        for k, q in receipt.items():
            on_hand[k] = on_hand.get(k, 0) + q
        avail = {k: on_hand[k] - allocated.get(k, 0) for k in on_hand}
        orders = []
        for lines, kw in specs:
            oid += 1
            orders.append(order(oid, *lines, **kw))
        r = allocate(orders, avail, network=NET)
        for a in r.allocations:
            allocated[(a.location, a.sku)] = allocated.get((a.location, a.sku), 0) + a.qty
        for k, q in allocated.items():
            assert 0 <= q <= on_hand.get(k, 0)
