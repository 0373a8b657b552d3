"""Record bodies for changes to orders and the answers about them (see ``central/ORDERS.md``).

Uplink (gateway -> central):

- ``order_change``: ``{"order": <record id of the order>, "change_seq": 1, "action":
  "set_qty" | "add_line" | "cancel_line" | "cancel_order", "line_no": 2, "qty": 5,
  "gtin"/"sku", "price", "reason"}``. ``change_seq`` counts 1, 2, 3... per order; central
  applies them in that order and parks one that arrives early.
- ``supplier_confirmation`` (from a supplier's gateway, for drop-ship orders):
  ``{"order_no": "SO00000012", "state": "confirmed" | "shipped" | "refused", "ref": "...",
  "detail": "..."}``.

Downlink (central -> gateway): ``order_status`` (see :func:`parse_order_status`) and, to a
supplier's gateway, ``drop_ship`` (see :func:`parse_drop_ship`).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from protocols.bounded import names, value_repr
from protocols.records import (
    MAX_CODE,
    MAX_LINES,
    MAX_QTY,
    MAX_TEXT,
    RecordSchemaError,
    int_value,
    parse_date,
    parse_order_line,
    text_field,
)

MAX_CHANGE_SEQ = 2**31 - 1


class ChangeAction(enum.StrEnum):
    SET_QTY = "set_qty"
    ADD_LINE = "add_line"
    CANCEL_LINE = "cancel_line"
    CANCEL_ORDER = "cancel_order"


@dataclass(frozen=True, slots=True)
class OrderChange:
    order: str
    change_seq: int
    action: ChangeAction
    line_no: int | None = None
    qty: int | None = None
    gtin: str | None = None
    sku: str | None = None
    price: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SupplierConfirmation:
    order_no: str
    state: str
    ref: str = ""
    detail: str = ""


SUPPLIER_STATES = ("confirmed", "shipped", "refused", "delivered")


@dataclass(frozen=True, slots=True)
class DropShipLine:
    line_no: int
    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class DropShip:
    order_no: str
    supplier: str
    ship_to: str
    requested_date: dt.date
    lines: tuple[DropShipLine, ...]


@dataclass(frozen=True, slots=True)
class OrderStatus:
    record_id: str
    order_no: str
    status: str
    detail: str
    version: int
    at: int


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise RecordSchemaError(f"unknown field {names(unknown)}")


def parse_order_change(body: dict[str, Any]) -> OrderChange:
    _check_keys(body, {"order", "change_seq", "action", "line_no", "qty", "gtin", "sku", "price", "reason"})
    order = text_field(body, "order", required=True)
    seq = int_value(body.get("change_seq"), "change_seq", lo=1, hi=MAX_CHANGE_SEQ)
    try:
        action = ChangeAction(text_field(body, "action", required=True))
    except ValueError:
        actions = ", ".join(a.value for a in ChangeAction)
        raise RecordSchemaError(f"action: {value_repr(body.get('action'))} is not one of {actions}") from None
    reason = text_field(body, "reason", required=False, max_len=MAX_TEXT)
    if action is ChangeAction.CANCEL_ORDER:
        return OrderChange(order, seq, action, reason=reason)
    if action is ChangeAction.ADD_LINE:
        line = parse_order_line(0, {k: body[k] for k in ("qty", "gtin", "sku", "price") if k in body})
        return OrderChange(
            order, seq, action, qty=line.qty, gtin=line.gtin, sku=line.sku, price=line.price, reason=reason
        )
    line_no = int_value(body.get("line_no"), "line_no", lo=1, hi=10_000)
    if action is ChangeAction.CANCEL_LINE:
        return OrderChange(order, seq, action, line_no=line_no, reason=reason)
    qty = int_value(body.get("qty"), "qty", lo=1, hi=MAX_QTY)
    price = body.get("price")
    if price is not None:
        price = int_value(price, "price", lo=0, hi=10**12)
    return OrderChange(order, seq, action, line_no=line_no, qty=qty, price=price, reason=reason)


def parse_supplier_confirmation(body: dict[str, Any]) -> SupplierConfirmation:
    _check_keys(body, {"order_no", "state", "ref", "detail"})
    state = text_field(body, "state", required=True)
    if state not in SUPPLIER_STATES:
        raise RecordSchemaError(f"state: {value_repr(state)} is not one of {', '.join(SUPPLIER_STATES)}")
    return SupplierConfirmation(
        order_no=text_field(body, "order_no", required=True),
        state=state,
        ref=text_field(body, "ref", required=False),
        detail=text_field(body, "detail", required=False, max_len=MAX_TEXT),
    )


def parse_order_status(body: dict[str, Any]) -> OrderStatus:
    """``order_status`` (central -> gateway): ``{"record_id", "order_no", "status", "detail",
    "version", "at"}``; ``version`` grows with every event of the order."""
    _check_keys(body, {"record_id", "order_no", "status", "detail", "version", "at"})
    detail = body.get("detail", "")
    if not isinstance(detail, str):
        raise RecordSchemaError("detail: expected text")
    return OrderStatus(
        record_id=text_field(body, "record_id", required=True, max_len=200),
        order_no=text_field(body, "order_no", required=True),
        status=text_field(body, "status", required=True),
        detail=detail,
        version=int_value(body.get("version"), "version", lo=0, hi=2**63 - 1),
        at=int_value(body.get("at"), "at", lo=0, hi=2**63 - 1),
    )


def parse_drop_ship(body: dict[str, Any]) -> DropShip:
    """``drop_ship`` (central -> a supplier's gateway): ``{"order_no", "supplier", "ship_to",
    "requested_date": "YYYY-MM-DD", "lines": [{"line_no", "sku", "qty"}]}``."""
    _check_keys(body, {"order_no", "supplier", "ship_to", "requested_date", "lines"})
    raw = body.get("lines")
    if not isinstance(raw, list) or not raw:
        raise RecordSchemaError("lines: expected a non-empty array")
    if len(raw) > MAX_LINES:
        raise RecordSchemaError(f"lines: {len(raw)} lines > {MAX_LINES}")
    lines = []
    for i, ln in enumerate(raw):
        if not isinstance(ln, dict):
            raise RecordSchemaError(f"lines[{i}]: expected map, got {type(ln).__name__}")
        _check_keys(ln, {"line_no", "sku", "qty"})
        lines.append(
            DropShipLine(
                line_no=int_value(ln.get("line_no"), f"lines[{i}].line_no", lo=1, hi=10_000),
                sku=text_field(ln, "sku", required=True, max_len=MAX_CODE),
                qty=int_value(ln.get("qty"), f"lines[{i}].qty", lo=1, hi=MAX_QTY),
            )
        )
    return DropShip(
        order_no=text_field(body, "order_no", required=True),
        supplier=text_field(body, "supplier", required=True),
        ship_to=text_field(body, "ship_to", required=True),
        requested_date=parse_date(body.get("requested_date"), "requested_date"),
        lines=tuple(lines),
    )
