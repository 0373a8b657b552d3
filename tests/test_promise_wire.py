"""The order record's optional line ``service`` (``protocols/WIRE.md``): parsed and written
back as it came, old records (no service) unchanged on the wire, the receive quick checks
leave a service line to ``parse_order``, and a bad one is refused with its reason."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgpack
import pytest

from protocols.records import (
    LineService,
    RecordSchemaError,
    order_certainly_valid,
    packed_order_certainly_valid,
    parse_order,
)


def body(**line: Any) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-07",
        "lines": [{"sku": "WASHER", "qty": 1, **line}],
    }


def test_a_service_line_round_trips() -> None:
    b = body(service={"code": "INSTALL", "date": "2026-12-07", "slot": "AM"})
    order = parse_order(b)
    assert order.lines[0].service == LineService("INSTALL", dt.date(2026, 12, 7), "AM")
    wire = order.to_wire()
    assert wire["lines"] == b["lines"]
    assert parse_order(wire) == order


def test_old_records_are_unchanged() -> None:
    b = body(price=100)
    wire = parse_order(b).to_wire()
    assert wire["lines"] == [{"qty": 1, "sku": "WASHER", "price": 100}]
    assert order_certainly_valid(b) and packed_order_certainly_valid(msgpack.packb(b))


def test_the_quick_checks_leave_a_service_line_to_parse_order() -> None:
    b = body(service={"code": "INSTALL", "date": "2026-12-07", "slot": "AM"})
    assert not order_certainly_valid(b)
    assert not packed_order_certainly_valid(msgpack.packb(b))
    parse_order(b)  # and parse_order takes it


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        ("INSTALL", "lines[0].service: expected map {code, date, slot}, got str"),
        (
            {"code": "INSTALL", "date": "2026-12-07"},
            "lines[0].service.slot: expected text of 1..64 characters",
        ),
        (
            {"code": "", "date": "2026-12-07", "slot": "AM"},
            "lines[0].service.code: expected text of 1..64 characters",
        ),
        (
            {"code": "I", "date": "soon", "slot": "AM"},
            "lines[0].service.date: 'soon' is not a YYYY-MM-DD date",
        ),
        ({"code": "I", "date": "2026-12-07", "slot": "AM", "x": 1}, "lines[0].service: unknown field x"),
    ],
)
def test_a_bad_service_is_refused_with_its_reason(service: object, reason: str) -> None:
    with pytest.raises(RecordSchemaError) as e:
        parse_order(body(service=service))
    assert e.value.reason == reason
