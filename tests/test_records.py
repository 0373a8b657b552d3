"""Order body schema: whatever a peer sends, the parser answers with a value or a
RecordSchemaError naming the field - never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.records import RecordSchemaError, parse_order

GOOD: dict[str, Any] = {
    "customer": "S001",
    "channel": "handheld",
    "order_type": "normal",
    "requested_date": "2026-12-01",
    "lines": [{"gtin": "04012345678901", "qty": 6}, {"sku": "SKU-1", "qty": 1, "price": 250}],
}
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from([*GOOD, "x"]), values, max_size=8))
def test_any_body_parses_or_names_the_problem(body: dict[str, Any]) -> None:
    try:
        parse_order(body)
    except RecordSchemaError as e:
        assert e.reason


@given(st.sampled_from(list(GOOD)), values)
def test_one_bad_field_in_a_good_body(key: str, value: object) -> None:
    try:
        parse_order({**GOOD, key: value})
    except RecordSchemaError as e:
        assert e.reason


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"channel": "fax"}, "channel: unknown channel 'fax'"),
        ({"channel": ["manual"]}, "channel: expected text, got list"),
        ({"order_type": "gift"}, "order_type: unknown order type 'gift'"),
        ({"requested_date": "2026-13-01"}, "requested_date: '2026-13-01' is not a YYYY-MM-DD date"),
        ({"lines": []}, "lines: expected a non-empty array"),
        ({"lines": [{"sku": "A", "qty": 0}]}, "lines[0].qty: 0 not in 1..100000"),
        ({"lines": [{"sku": "A", "qty": True}]}, "lines[0].qty: expected integer, got bool"),
        ({"lines": [{"gtin": "12ab", "qty": 1}]}, "lines[0].gtin: '12ab' is not 8, 12, 13 or 14 digits"),
        ({"lines": [{"qty": 1}]}, "lines[0]: needs gtin or sku"),
        ({"colour": "red"}, "unknown field colour"),
    ],
)
def test_reasons(patch: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordSchemaError) as ei:
        parse_order({**GOOD, **patch})
    assert ei.value.reason == reason


def test_good_order_round_trips() -> None:
    order = parse_order(GOOD)
    assert parse_order(order.to_wire()) == order
