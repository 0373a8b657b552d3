"""Record body schemas: what ``Record.body`` holds for each record type.

Each ``parse_*`` takes the decoded msgpack map and returns a frozen dataclass or raises
:class:`RecordSchemaError` with a reason a person can act on (it goes back to the device
or gateway in a ``rejected`` ack). Money is integer minor units (cents) - never floats.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from protocols import ProtocolError
from protocols.bounded import bounded_reason, names, value_repr

MAX_LINES = 500
MAX_QTY = 100_000
MAX_TEXT = 500
MAX_CODE = 64


class RecordSchemaError(ProtocolError):
    """A record body refused; ``reason`` says why, for a person (at most
    :data:`protocols.bounded.MAX_REASON` characters: it travels in an ack)."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


class Channel(enum.StrEnum):
    SCANNER = "scanner"
    HID_SCANNER = "hid-scanner"
    HANDHELD = "handheld"
    POS_AUTO = "pos-auto"
    MANUAL = "manual"
    REST = "rest"
    EDI = "edi"


class OrderType(enum.StrEnum):
    NORMAL = "normal"
    CASH_SALE = "cash-sale"
    DROP_SHIP = "drop-ship"
    CONTRACT = "contract"
    CONSIGNMENT = "consignment"
    VOUCHER = "voucher"


@dataclass(frozen=True, slots=True)
class LineService:
    """A field service sold with the line (installation, testing, assembly), asked for in a
    delivery slot; central books it with the order (``central/PROMISE.md``)."""

    code: str
    date: dt.date
    slot: str

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "date": self.date.isoformat(), "slot": self.slot}


@dataclass(frozen=True, slots=True)
class OrderLine:
    qty: int
    gtin: str | None = None
    sku: str | None = None
    price: int | None = None  # quoted unit price, minor units
    service: LineService | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"qty": self.qty}
        for k in ("gtin", "sku", "price"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.service is not None:
            out["service"] = self.service.to_wire()
        return out


@dataclass(frozen=True, slots=True)
class OrderBody:
    customer: str
    channel: Channel
    order_type: OrderType
    requested_date: dt.date
    lines: tuple[OrderLine, ...]
    note: str = ""
    source_ref: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "channel": self.channel.value,
            "order_type": self.order_type.value,
            "requested_date": self.requested_date.isoformat(),
            "lines": [ln.to_wire() for ln in self.lines],
            "note": self.note,
            "source_ref": self.source_ref,
        }


def text_field(body: dict[str, Any], key: str, *, required: bool = True, max_len: int = MAX_CODE) -> str:
    """``body[key]`` as text: missing / not text / empty (when required) / too long -> a reason."""
    v = body.get(key)
    if v is None:
        if required:
            raise RecordSchemaError(f"{key}: missing")
        return ""
    if not isinstance(v, str):
        raise RecordSchemaError(f"{key}: expected text, got {type(v).__name__}")
    if required and not v.strip():
        raise RecordSchemaError(f"{key}: empty")
    if len(v) > max_len:
        raise RecordSchemaError(f"{key}: longer than {max_len} characters")
    return v


def int_value(v: object, where: str, *, lo: int, hi: int) -> int:
    """``v`` as an integer in ``lo..hi`` (bool refused); else a reason naming ``where``."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordSchemaError(f"{where}: expected integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise RecordSchemaError(f"{where}: {value_repr(v)} not in {lo}..{hi}")
    return v


def parse_date(v: object, where: str) -> dt.date:
    if not isinstance(v, str):
        raise RecordSchemaError(f"{where}: expected YYYY-MM-DD text, got {type(v).__name__}")
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise RecordSchemaError(f"{where}: {value_repr(v)} is not a YYYY-MM-DD date") from None


_PLAIN_LINE_KEYS = frozenset({"qty", "gtin", "sku", "price"})  # what the quick checks take
_LINE_KEYS = _PLAIN_LINE_KEYS | {"service"}
_SERVICE_KEYS = frozenset({"code", "date", "slot"})
_ORDER_KEYS = frozenset(
    {"customer", "channel", "order_type", "requested_date", "lines", "note", "source_ref"}
)
# Value -> member tables: a dict lookup is several times cheaper than Enum(value) on the hot path.
_CHANNELS: dict[object, Channel] = {c.value: c for c in Channel}
_ORDER_TYPES: dict[object, OrderType] = {t.value: t for t in OrderType}


def parse_order_line(i: int, raw: object) -> OrderLine:
    if not isinstance(raw, dict):
        raise RecordSchemaError(f"lines[{i}]: expected map, got {type(raw).__name__}")
    where = f"lines[{i}]"
    unknown = raw.keys() - _LINE_KEYS
    if unknown:
        raise RecordSchemaError(f"{where}: unknown field {names(unknown)}")
    gtin = raw.get("gtin")
    sku = raw.get("sku")
    if gtin is None and sku is None:
        raise RecordSchemaError(f"{where}: needs gtin or sku")
    if gtin is not None and (
        not isinstance(gtin, str) or not gtin.isdigit() or len(gtin) not in (8, 12, 13, 14)
    ):
        raise RecordSchemaError(f"{where}.gtin: {value_repr(gtin)} is not 8, 12, 13 or 14 digits")
    if sku is not None and (not isinstance(sku, str) or not 0 < len(sku) <= MAX_CODE):
        raise RecordSchemaError(f"{where}.sku: {value_repr(sku)} is not a code of 1..{MAX_CODE} characters")
    qty = raw.get("qty")
    if type(qty) is not int or not 1 <= qty <= MAX_QTY:  # exact int: bool is refused too
        qty = int_value(qty, f"{where}.qty", lo=1, hi=MAX_QTY)
    price = raw.get("price")
    if price is not None:
        price = int_value(price, f"{where}.price", lo=0, hi=10**12)
    service = raw.get("service")
    return OrderLine(
        qty=qty,
        gtin=gtin,
        sku=sku,
        price=price,
        service=None if service is None else parse_line_service(f"{where}.service", service),
    )


def parse_line_service(where: str, raw: object) -> LineService:
    """A line's ``service``: ``{"code", "date": "YYYY-MM-DD", "slot"}``."""
    if not isinstance(raw, dict):
        raise RecordSchemaError(f"{where}: expected map {{code, date, slot}}, got {type(raw).__name__}")
    unknown = raw.keys() - _SERVICE_KEYS
    if unknown:
        raise RecordSchemaError(f"{where}: unknown field {names(unknown)}")
    for key in ("code", "slot"):
        v = raw.get(key)
        if not isinstance(v, str) or not 0 < len(v) <= MAX_CODE:
            raise RecordSchemaError(f"{where}.{key}: expected text of 1..{MAX_CODE} characters")
    return LineService(code=raw["code"], date=parse_date(raw.get("date"), f"{where}.date"), slot=raw["slot"])


def parse_order(body: dict[str, Any]) -> OrderBody:
    unknown = body.keys() - _ORDER_KEYS
    if unknown:
        raise RecordSchemaError(f"unknown field {names(unknown)}")
    customer = text_field(body, "customer")
    ch, ot = body.get("channel"), body.get("order_type")
    channel = _CHANNELS.get(ch) if isinstance(ch, str) else None
    if channel is None:
        text_field(body, "channel")  # missing / not text / empty: its own reason
        raise RecordSchemaError(f"channel: unknown channel {value_repr(body.get('channel'))}")
    order_type = _ORDER_TYPES.get(ot) if isinstance(ot, str) else None
    if order_type is None:
        text_field(body, "order_type")
        raise RecordSchemaError(f"order_type: unknown order type {value_repr(body.get('order_type'))}")
    requested = parse_date(body.get("requested_date"), "requested_date")
    lines_raw = body.get("lines")
    if not isinstance(lines_raw, list) or not lines_raw:
        raise RecordSchemaError("lines: expected a non-empty array")
    if len(lines_raw) > MAX_LINES:
        raise RecordSchemaError(f"lines: {len(lines_raw)} lines > {MAX_LINES}")
    lines = tuple(parse_order_line(i, ln) for i, ln in enumerate(lines_raw))
    return OrderBody(
        customer=customer,
        channel=channel,
        order_type=order_type,
        requested_date=requested,
        lines=lines,
        note=text_field(body, "note", required=False, max_len=MAX_TEXT),
        source_ref=text_field(body, "source_ref", required=False, max_len=MAX_CODE),
    )


# A quick yes for the common case of the receive check: a body that plainly meets every rule
# of ``parse_order`` (exact types, nothing unusual) is known valid without building the parsed
# order (its dataclasses cost most of the check). Anything else - including anything this
# does not recognise - goes to ``parse_order`` itself, which decides and names the reason; so
# this may only ever say yes where ``parse_order`` accepts (tests/test_ingest_fastcheck.py):
# change both together.
_GTIN_LENS = (8, 12, 13, 14)
_MAX_PRICE = 10**12


def order_certainly_valid(body: dict[str, Any]) -> bool:
    """True only if ``parse_order(body)`` accepts ``body``; False means "ask parse_order"."""
    if not body.keys() <= _ORDER_KEYS:
        return False
    customer, channel, otype = body.get("customer"), body.get("channel"), body.get("order_type")
    if not (
        type(customer) is str
        and 0 < len(customer) <= MAX_CODE
        and not customer.isspace()
        and type(channel) is str
        and channel in _CHANNELS
        and type(otype) is str
        and otype in _ORDER_TYPES
    ):
        return False
    note, ref = body.get("note"), body.get("source_ref")
    if note is not None and not (type(note) is str and len(note) <= MAX_TEXT):
        return False
    if ref is not None and not (type(ref) is str and len(ref) <= MAX_CODE):
        return False
    date = body.get("requested_date")
    if type(date) is not str:
        return False
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        return False
    lines = body.get("lines")
    if type(lines) is not list or not 0 < len(lines) <= MAX_LINES:
        return False
    for ln in lines:
        if type(ln) is not dict or not ln.keys() <= _PLAIN_LINE_KEYS:  # a service: parse_order decides
            return False
        gtin, sku, qty, price = ln.get("gtin"), ln.get("sku"), ln.get("qty"), ln.get("price")
        if gtin is None:
            if sku is None:
                return False
        elif not (type(gtin) is str and len(gtin) in _GTIN_LENS and gtin.isdigit()):
            return False
        if sku is not None and not (type(sku) is str and 0 < len(sku) <= MAX_CODE):
            return False
        if type(qty) is not int or not 1 <= qty <= MAX_QTY:
            return False
        if price is not None and not (type(price) is int and 0 <= price <= _MAX_PRICE):
            return False
    return True


class _QuickLine(msgspec.Struct, forbid_unknown_fields=True):
    qty: Annotated[int, Meta(ge=1, le=MAX_QTY)]
    gtin: str | None = None
    sku: Annotated[str, Meta(min_length=1, max_length=MAX_CODE)] | None = None
    price: Annotated[int, Meta(ge=0, le=_MAX_PRICE)] | None = None


class _QuickOrder(msgspec.Struct, forbid_unknown_fields=True):
    customer: Annotated[str, Meta(min_length=1, max_length=MAX_CODE)]
    channel: str
    order_type: str
    requested_date: str
    lines: Annotated[list[_QuickLine], Meta(min_length=1, max_length=MAX_LINES)]
    note: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None
    source_ref: Annotated[str, Meta(max_length=MAX_CODE)] | None = None


_quick_order = msgspec.msgpack.Decoder(_QuickOrder).decode


def packed_order_certainly_valid(packed: bytes | memoryview | msgspec.Raw) -> bool:
    """:func:`order_certainly_valid` on the body's msgpack bytes, without building the map:
    msgspec reads the bytes straight into typed fields (exact types: a bool is not an int,
    bytes are not text, every map key is a known text key, no extension types), and the few
    rules a type cannot say are checked here. True only if unpacking ``packed`` gives a body
    that ``parse_order`` accepts; False means "unpack it and ask parse_order"."""
    try:
        o = _quick_order(packed)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    if o.customer.isspace() or o.channel not in _CHANNELS or o.order_type not in _ORDER_TYPES:
        return False
    try:
        dt.date.fromisoformat(o.requested_date)
    except ValueError:
        return False
    for ln in o.lines:
        gtin = ln.gtin
        if gtin is None:
            if ln.sku is None:
                return False
        elif not (len(gtin) in _GTIN_LENS and gtin.isdigit()):
            return False
    return True


# schema function -> its quick yes (used only while that function is the registered schema)
