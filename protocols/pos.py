"""POS transactions as the store's tills send them to the gateway: a JSON shape modelled on
NRF ARTS POSLog (``Transaction`` / ``RetailTransaction`` / ``LineItem``). Sans-IO.

:func:`decode` takes the request body (bytes), :func:`parse_transaction` the decoded JSON
value; both return a frozen :class:`PosTransaction` or raise :class:`PosFormatError` naming
the offending field by its path (``Transaction.RetailTransaction.LineItem[2].Sale.Quantity``)
and saying what is wrong with it. :func:`encode` / :func:`to_wire` are the inverse, used by the
POS simulator. The shape, with examples, is documented in ``protocols/POS.md``.

Rules kept here (not at the gateway) because they are about the message, not the store:

- a ``LineItem`` holds exactly one of ``Sale``, ``Return``, ``Void`` (merchandise lines), or
  one of the non-merchandise kinds in :data:`IGNORED_LINE_KINDS` (tender, tax, ...), which are
  accepted and dropped - they do not move stock;
- line ``SequenceNumber`` values are unique within the transaction;
- a ``Void`` names an EARLIER ``Sale`` or ``Return`` line of the same transaction, and a line
  is voided at most once;
- ``ItemID`` of 8, 12, 13 or 14 digits is a GTIN and must carry a valid check digit; any
  other text is a SKU;
- quantities are whole units 1..:data:`MAX_QTY`; money is integer minor units (cents).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biip import ParseError
from biip.gtin import Gtin

from protocols import ProtocolError
from protocols.bounded import MAX_VALUE_REPR, JsonError, bounded_reason, json_loads

MAX_BODY = 256 * 1024
MAX_LINES = 500
MAX_QTY = 9_999  # more units of one item on one till line is a keying error, not a sale
MAX_CODE = 64
MAX_RECEIPT_QTY = 100_000
MAX_TEXT = 200
MAX_SEQUENCE = 2**53 - 1  # JSON-safe integer
MAX_FIELD_PATH = 2 * MAX_VALUE_REPR  # characters of a field path in an error
MAX_PRICE = 10**9
GTIN_LENGTHS = (8, 12, 13, 14)
IGNORED_LINE_KINDS = frozenset({"Tender", "Tax", "Discount", "LoyaltyReward", "Customer"})

_TX = "Transaction"
_LINE_KINDS = frozenset({"Sale", "Return", "Void"})
_RT = f"{_TX}.RetailTransaction"


class PosFormatError(ProtocolError):
    """The POS sent something that is not a valid transaction; ``field`` is its path (both
    cut to a bounded length: a field path holds the POS's own keys)."""

    def __init__(self, field: str, reason: str) -> None:
        field, reason = bounded_reason(field, MAX_FIELD_PATH), bounded_reason(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class LineKind(enum.StrEnum):
    SALE = "Sale"
    RETURN = "Return"
    VOID = "Void"


@dataclass(frozen=True, slots=True)
class SaleLine:
    """Goods leave the store: on-hand goes down by ``quantity``."""

    sequence_number: int
    item_id: str
    quantity: int
    unit_price: int | None = None
    description: str = ""

    kind = LineKind.SALE

    @property
    def stock_delta(self) -> int:
        return -self.quantity


@dataclass(frozen=True, slots=True)
class ReturnLine:
    """A customer brings goods back: on-hand goes up by ``quantity``."""

    sequence_number: int
    item_id: str
    quantity: int
    unit_price: int | None = None
    reason_code: str = ""

    kind = LineKind.RETURN

    @property
    def stock_delta(self) -> int:
        return self.quantity


@dataclass(frozen=True, slots=True)
class VoidLine:
    """Cancels an earlier line of the same transaction (the cashier's "line void")."""

    sequence_number: int
    voided_sequence_number: int

    kind = LineKind.VOID


MerchandiseLine = SaleLine | ReturnLine
LineItem = SaleLine | ReturnLine | VoidLine


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies one till transaction; a repeat of the same key is the same sale."""

    retail_store_id: str
    workstation_id: str
    business_day_date: dt.date
    sequence_number: int

    def __str__(self) -> str:
        return (
            f"{self.retail_store_id}/{self.workstation_id}/"
            f"{self.business_day_date.isoformat()}/{self.sequence_number}"
        )


@dataclass(frozen=True, slots=True)
class PosTransaction:
    retail_store_id: str
    workstation_id: str
    sequence_number: int
    business_day_date: dt.date
    end_date_time: dt.datetime  # always timezone-aware
    lines: tuple[LineItem, ...]
    operator_id: str = ""
    currency_code: str = ""

    @property
    def key(self) -> TransactionKey:
        return TransactionKey(
            self.retail_store_id, self.workstation_id, self.business_day_date, self.sequence_number
        )

    def effective_lines(self) -> tuple[MerchandiseLine, ...]:
        """Sale and return lines that were not voided, in transaction order."""
        voided = {ln.voided_sequence_number for ln in self.lines if isinstance(ln, VoidLine)}
        return tuple(
            ln for ln in self.lines if not isinstance(ln, VoidLine) and ln.sequence_number not in voided
        )

    def stock_deltas(self) -> dict[str, int]:
        """Net on-hand change per ``ItemID`` (sales negative, returns positive, voids undone).

        An item whose lines cancel out is still listed, with 0."""
        out: dict[str, int] = {}
        for ln in self.lines:
            if not isinstance(ln, VoidLine):
                out[ln.item_id] = out.get(ln.item_id, 0)
        for ln in self.effective_lines():
            out[ln.item_id] += ln.stock_delta
        return out


def is_gtin(item_id: str) -> bool:
    """Whether an ``ItemID`` is read as a GTIN (else it is a SKU)."""
    return item_id.isascii() and item_id.isdigit() and len(item_id) in GTIN_LENGTHS


# -- parsing ------------------------------------------------------------------------------


def decode(data: bytes) -> PosTransaction:
    """Parse a request body. Raises :class:`PosFormatError` (field ``body`` for bad JSON)."""
    return parse_transaction(json_object(data))


def json_object(data: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object (field ``body`` in errors)."""
    try:
        obj = json_loads(data, max_bytes=MAX_BODY)
    except JsonError as e:
        raise PosFormatError("body", e.reason) from None
    return _map(obj, "body")


def parse_transaction(obj: object) -> PosTransaction:
    root = _map(obj, "body")
    only_fields(root, "body", {_TX}, required={_TX})
    tx = _map(root[_TX], _TX)
    only_fields(
        tx,
        _TX,
        {
            "RetailStoreID",
            "WorkstationID",
            "SequenceNumber",
            "BusinessDayDate",
            "EndDateTime",
            "OperatorID",
            "CurrencyCode",
            "RetailTransaction",
        },
        required={
            "RetailStoreID",
            "WorkstationID",
            "SequenceNumber",
            "BusinessDayDate",
            "EndDateTime",
            "RetailTransaction",
        },
    )
    rt = _map(tx["RetailTransaction"], _RT)
    only_fields(rt, _RT, {"LineItem"}, required={"LineItem"})
    raw_lines = rt["LineItem"]
    where = f"{_RT}.LineItem"
    if not isinstance(raw_lines, list):
        raise PosFormatError(where, f"expected an array, got {_jtype(raw_lines)}")
    if len(raw_lines) > MAX_LINES:
        raise PosFormatError(where, f"{len(raw_lines)} lines, at most {MAX_LINES}")
    lines: list[LineItem] = []
    by_seq: dict[int, LineItem] = {}
    voided: set[int] = set()
    for i, raw in enumerate(raw_lines):
        line = _parse_line(raw, f"{where}[{i}]", by_seq, voided)
        if line is None:
            continue
        by_seq[line.sequence_number] = line
        lines.append(line)
    if not any(not isinstance(ln, VoidLine) for ln in lines):
        raise PosFormatError(where, "no Sale or Return line")
    return PosTransaction(
        retail_store_id=_code(tx["RetailStoreID"], f"{_TX}.RetailStoreID"),
        workstation_id=_code(tx["WorkstationID"], f"{_TX}.WorkstationID"),
        sequence_number=integer(tx["SequenceNumber"], f"{_TX}.SequenceNumber", lo=0, hi=MAX_SEQUENCE),
        business_day_date=_date(tx["BusinessDayDate"], f"{_TX}.BusinessDayDate"),
        end_date_time=_datetime(tx["EndDateTime"], f"{_TX}.EndDateTime"),
        lines=tuple(lines),
        operator_id=_code(tx["OperatorID"], f"{_TX}.OperatorID") if "OperatorID" in tx else "",
        currency_code=_currency(tx["CurrencyCode"], f"{_TX}.CurrencyCode") if "CurrencyCode" in tx else "",
    )


def _parse_line(raw: object, where: str, by_seq: Mapping[int, LineItem], voided: set[int]) -> LineItem | None:
    li = _map(raw, where)
    kinds = [k for k in li if k in _LINE_KINDS or k in IGNORED_LINE_KINDS]
    only_fields(li, where, {"SequenceNumber", *kinds}, required={"SequenceNumber"})
    if len(kinds) != 1:
        expected = "one of Sale, Return, Void"
        raise PosFormatError(where, f"expected {expected}, got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    seq = integer(li["SequenceNumber"], f"{where}.SequenceNumber", lo=0, hi=MAX_SEQUENCE)
    if kind in IGNORED_LINE_KINDS:
        _map(li[kind], f"{where}.{kind}")
        return None
    if seq in by_seq:
        raise PosFormatError(f"{where}.SequenceNumber", f"{seq} is used by an earlier line")
    body_where = f"{where}.{kind}"
    body = _map(li[kind], body_where)
    if kind == LineKind.VOID:
        only_fields(body, body_where, {"LineSequenceNumber"}, required={"LineSequenceNumber"})
        fw = f"{body_where}.LineSequenceNumber"
        target = integer(body["LineSequenceNumber"], fw, lo=0, hi=MAX_SEQUENCE)
        line = by_seq.get(target)
        if line is None:
            raise PosFormatError(fw, f"no earlier line {target} in this transaction")
        if isinstance(line, VoidLine):
            raise PosFormatError(fw, f"line {target} is a Void; only Sale and Return lines can be voided")
        if target in voided:
            raise PosFormatError(fw, f"line {target} is already voided")
        voided.add(target)
        return VoidLine(sequence_number=seq, voided_sequence_number=target)
    extra = "Description" if kind == LineKind.SALE else "ReasonCode"
    only_fields(body, body_where, {"ItemID", "Quantity", "UnitPrice", extra}, required={"ItemID", "Quantity"})
    item_id = _item_id(body["ItemID"], f"{body_where}.ItemID")
    qty = integer(body["Quantity"], f"{body_where}.Quantity", lo=1, hi=MAX_QTY)
    price = (
        integer(body["UnitPrice"], f"{body_where}.UnitPrice", lo=0, hi=MAX_PRICE)
        if "UnitPrice" in body
        else None
    )
    text = _text(body[extra], f"{body_where}.{extra}") if extra in body else ""
    if kind == LineKind.SALE:
        return SaleLine(seq, item_id, qty, price, description=text)
    return ReturnLine(seq, item_id, qty, price, reason_code=text)


def _jtype(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _map(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise PosFormatError(where, f"expected an object, got {_jtype(v)}")
    return v


def only_fields(obj: Mapping[str, Any], where: str, allowed: set[str], *, required: set[str]) -> None:
    for k in obj:
        if k not in allowed:
            raise PosFormatError(f"{where}.{k}", "unknown field")
    for k in sorted(required):
        if k not in obj:
            raise PosFormatError(f"{where}.{k}", "missing")


def integer(v: object, where: str, *, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        raise PosFormatError(where, f"expected a whole number without a decimal point, got {v!r}")
    if not isinstance(v, int) or isinstance(v, bool):
        raise PosFormatError(where, f"expected an integer, got {_jtype(v)}")
    if not lo <= v <= hi:
        raise PosFormatError(where, f"{v} is not in {lo}..{hi}")
    return v


def _text(v: object, where: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        raise PosFormatError(where, f"expected a string, got {_jtype(v)}")
    if len(v) > max_len:
        raise PosFormatError(where, f"longer than {max_len} characters")
    return v


def _code(v: object, where: str) -> str:
    s = _text(v, where, MAX_CODE)
    if not s.strip() or s != s.strip() or not s.isprintable():
        raise PosFormatError(where, f"{s!r} is not a code (printable, no surrounding spaces)")
    return s


def _currency(v: object, where: str) -> str:
    s = _text(v, where, 3)
    if len(s) != 3 or not (s.isascii() and s.isalpha() and s.isupper()):
        raise PosFormatError(where, f"{s!r} is not an ISO 4217 code like EUR")
    return s


def _item_id(v: object, where: str) -> str:
    s = _code(v, where)
    if is_gtin(s):
        try:
            Gtin.parse(s)
        except ParseError as e:
            raise PosFormatError(where, f"{s} is not a valid GTIN: {e}") from None
    return s


def _date(v: object, where: str) -> dt.date:
    s = _text(v, where, 10)
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise PosFormatError(where, f"{s!r} is not a YYYY-MM-DD date") from None


def _datetime(v: object, where: str) -> dt.datetime:
    s = _text(v, where, 40)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise PosFormatError(where, f"{s!r} is not an ISO 8601 date-time") from None
    if t.tzinfo is None:
        raise PosFormatError(where, f"{s!r} has no UTC offset (add Z or +01:00)")
    return t


# -- goods receipt ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    item_id: str  # GTIN or SKU, as in a POS ``ItemID``
    quantity: int


@dataclass(frozen=True, slots=True)
class GoodsReceipt:
    """Goods scanned in at delivery. ``receipt_id`` (delivery note number or SSCC of the
    pallet) makes a rescanned delivery recognisable."""

    receipt_id: str
    lines: tuple[ReceiptLine, ...]


def decode_receipt(data: bytes) -> GoodsReceipt:
    return parse_receipt(json_object(data))


def parse_receipt(obj: object) -> GoodsReceipt:
    root = _map(obj, "body")
    only_fields(root, "body", {"receipt_id", "lines"}, required={"receipt_id", "lines"})
    rid = _code(root["receipt_id"], "receipt_id")
    raw_lines = root["lines"]
    if not isinstance(raw_lines, list):
        raise PosFormatError("lines", f"expected an array, got {_jtype(raw_lines)}")
    if not raw_lines or len(raw_lines) > MAX_LINES:
        raise PosFormatError("lines", f"{len(raw_lines)} lines, expected 1..{MAX_LINES}")
    lines = []
    for i, raw in enumerate(raw_lines):
        where = f"lines[{i}]"
        ln = _map(raw, where)
        only_fields(ln, where, {"gtin", "sku", "qty"}, required={"qty"})
        if ("gtin" in ln) == ("sku" in ln):
            raise PosFormatError(where, "needs exactly one of gtin, sku")
        if "gtin" in ln:
            item = _item_id(ln["gtin"], f"{where}.gtin")
            if not is_gtin(item):
                raise PosFormatError(f"{where}.gtin", f"{item!r} is not 8, 12, 13 or 14 digits")
        else:
            item = _code(ln["sku"], f"{where}.sku")
        lines.append(ReceiptLine(item, integer(ln["qty"], f"{where}.qty", lo=1, hi=MAX_RECEIPT_QTY)))
    return GoodsReceipt(rid, tuple(lines))


def receipt_to_wire(r: GoodsReceipt) -> dict[str, Any]:
    return {
        "receipt_id": r.receipt_id,
        "lines": [
            {"gtin" if is_gtin(ln.item_id) else "sku": ln.item_id, "qty": ln.quantity} for ln in r.lines
        ],
    }


# -- encoding (the simulator's side) ------------------------------------------------------


def line_to_wire(line: LineItem) -> dict[str, Any]:
    if isinstance(line, VoidLine):
        return {
            "SequenceNumber": line.sequence_number,
            "Void": {"LineSequenceNumber": line.voided_sequence_number},
        }
    body: dict[str, Any] = {"ItemID": line.item_id, "Quantity": line.quantity}
    if line.unit_price is not None:
        body["UnitPrice"] = line.unit_price
    if isinstance(line, SaleLine) and line.description:
        body["Description"] = line.description
    if isinstance(line, ReturnLine) and line.reason_code:
        body["ReasonCode"] = line.reason_code
    return {"SequenceNumber": line.sequence_number, line.kind.value: body}


def to_wire(tx: PosTransaction) -> dict[str, Any]:
    t: dict[str, Any] = {
        "RetailStoreID": tx.retail_store_id,
        "WorkstationID": tx.workstation_id,
        "SequenceNumber": tx.sequence_number,
        "BusinessDayDate": tx.business_day_date.isoformat(),
        "EndDateTime": tx.end_date_time.isoformat(),
    }
    if tx.operator_id:
        t["OperatorID"] = tx.operator_id
    if tx.currency_code:
        t["CurrencyCode"] = tx.currency_code
    t["RetailTransaction"] = {"LineItem": [line_to_wire(ln) for ln in tx.lines]}
    return {_TX: t}


def encode(tx: PosTransaction) -> bytes:
    return json.dumps(to_wire(tx), separators=(",", ":"), ensure_ascii=False).encode()
