"""Central's quick yes for order bodies on receipt (from the map, and from its msgpack bytes)
may only say yes where ``parse_order`` accepts."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.intake import ingest
from protocols.records import (
    RecordSchemaError,
    order_certainly_valid,
    packed_order_certainly_valid,
    parse_order,
)


def _valid() -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "SKU-1", "qty": 1}, {"gtin": "04012345678901", "qty": 2, "price": 199}],
        "note": "",
        "source_ref": "HT07-0042",
    }


def _accepts(body: dict[str, Any]) -> bool:
    try:
        parse_order(body)
    except RecordSchemaError:
        return False
    return True


def test_plain_orders_take_the_quick_yes() -> None:
    body = _valid()
    assert order_certainly_valid(body) and _accepts(body)
    del body["note"], body["source_ref"]
    assert order_certainly_valid(body) and _accepts(body)


_any = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.sampled_from(["", " ", "\t", "S001", "x" * 64, "x" * 65, "x" * 501, "12345678", "04012345678901"]),
    st.sampled_from(["2026-12-01", "20261201", "2026-02-30", "2026-W01-1", "manual", "normal", "١٢٣٤٥٦٧٨"]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_line_key = st.sampled_from(["qty", "gtin", "sku", "price", "extra"])
_line = st.one_of(_any, st.dictionaries(_line_key, _any, max_size=5))
_order_key = st.sampled_from(
    ["customer", "channel", "order_type", "requested_date", "lines", "note", "source_ref", "other"]
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = _valid()
    for key in draw(st.lists(_order_key, max_size=4)):
        if draw(st.booleans()):
            body.pop(key, None)
        elif key == "lines" and draw(st.booleans()):
            body["lines"] = draw(st.lists(_line, max_size=4))
        else:
            body[key] = draw(_any)
    return body


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_quick_yes_only_where_parse_order_accepts(body: dict[str, Any]) -> None:
    if order_certainly_valid(body):
        assert _accepts(body)


def test_plain_orders_take_the_quick_yes_from_their_bytes() -> None:
    body = _valid()
    assert packed_order_certainly_valid(msgpack.packb(body))
    del body["note"], body["source_ref"]
    assert packed_order_certainly_valid(msgpack.packb(body))


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_quick_yes_from_bytes_only_where_parse_order_accepts(body: dict[str, Any]) -> None:
    """Said from the bytes: the body also unpacks under the envelope's strict rules."""
    try:
        packed = msgpack.packb(body)
    except (TypeError, ValueError, OverflowError):
        return
    if packed_order_certainly_valid(packed):
        assert _accepts(msgpack.unpackb(packed, raw=False, strict_map_key=True, max_ext_len=0))


@pytest.mark.parametrize(
    "packed",
    [
        msgpack.packb({**_valid(), "customer": b"S001"}, use_bin_type=True),  # bytes, not text
        msgpack.packb({**_valid(), "note": msgpack.ExtType(1, b"x")}),
        msgpack.packb({**_valid(), 1: 2}, strict_types=False),
        msgpack.packb(_valid()) + b"\x00",
        msgpack.packb([_valid()]),
    ],
)
def test_no_quick_yes_for_what_strict_unpacking_refuses(packed: bytes) -> None:
    assert not packed_order_certainly_valid(packed)


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_quick_order_in_is_the_parsed_one(body: dict[str, Any]) -> None:
    """Processing builds the order straight from a body the quick check accepts: the same
    ``OrderIn`` (and channel) as parsing it first."""
    if order_certainly_valid(body):
        parsed = parse_order(body)
        assert ingest._plain_order_in(body) == ingest._order_in(parsed)
        assert body["channel"] == parsed.channel.value
