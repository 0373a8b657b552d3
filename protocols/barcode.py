"""Barcode content: shelf labels, in-store (RCN) codes and the staff control card.

Sans-IO and pure: :func:`parse_scan` takes the text a scanner produced (with or without an AIM
symbology identifier such as ``]E0`` / ``]C1`` / ``]d2``) and returns a :class:`ScanResult`
(a shelf label: GTIN plus optional store location, count, batch, expiry ...) or a
:class:`ControlCode` (quantity / end order / cancel / undo, from the laminated card), or raises
:class:`BarcodeError` with a reason a clerk can act on. All GS1 work (check digits, element
strings, AI tables, RCN rules) is done by biip; this module only decides what a scan *means*
for ordering. The content is specified in ``protocols/BARCODES.md``.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from biip import ParseConfig, ParseError
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.rcn import Rcn, RcnUsage
from biip.symbology import GS1Symbology

from protocols import ProtocolError

__all__ = [
    "DEFAULT_OPTIONS",
    "GS",
    "BarcodeError",
    "BarcodeErrorKind",
    "ControlAction",
    "ControlCode",
    "ParseOptions",
    "ScanResult",
    "encode_control",
    "encode_shelf_label",
    "parse_scan",
]

GS = "\x1d"  # GS1 FNC1-as-separator, as scanners transmit it
MAX_SCAN_LEN = 256  # longer text is refused outright (a DataMatrix shelf label is < 100)
MAX_CONTROL_QTY = 9999
DEFAULT_LOCATION_AI = "91"

# Symbologies whose content we interpret. Everything else (plain Code 128 ``]C0``, Code 39
# ``]A0``, QR ``]Q1`` ...) can only carry a control code.
_GTIN_SYMBOLOGIES = {GS1Symbology.EAN_13, GS1Symbology.EAN_8, GS1Symbology.ITF_14}
_MESSAGE_SYMBOLOGIES = {
    GS1Symbology.GS1_128,
    GS1Symbology.GS1_DATAMATRIX,
    GS1Symbology.GS1_DATABAR,
    GS1Symbology.GS1_QR_CODE,
    GS1Symbology.GS1_DOTCODE,
}
_GTIN_LENGTHS = (8, 12, 13, 14)
_SYMBOLOGY_RE = re.compile(r"\][A-Za-z][0-9A-Za-z]")


class BarcodeErrorKind(enum.StrEnum):
    EMPTY = "empty"
    TOO_LONG = "too-long"
    BAD_CHECK_DIGIT = "bad-check-digit"
    UNPARSEABLE = "unparseable"
    UNSUPPORTED_SYMBOLOGY = "unsupported-symbology"
    NOT_A_SHELF_LABEL = "not-a-shelf-label"
    BAD_CONTROL_CODE = "bad-control-code"


class BarcodeError(ProtocolError):
    """A scan that is not an orderable shelf label or a valid control code."""

    def __init__(self, kind: BarcodeErrorKind, reason: str, raw: str) -> None:
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason
        self.raw = raw


class ControlAction(enum.StrEnum):
    QTY = "QTY"  # quantity for the NEXT shelf label
    SETLAST = "SETLAST"  # correct the quantity of the last line scanned
    UNDO = "UNDO"  # remove the last line scanned
    END = "END"  # close the order
    CANCEL = "CANCEL"  # drop the whole open order


_QTY_ACTIONS = {ControlAction.QTY, ControlAction.SETLAST}


@dataclass(frozen=True, slots=True)
class ControlCode:
    action: ControlAction
    qty: int | None = None
    raw: str = ""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """An orderable shelf label (or product code) as read."""

    gtin: str  # always 14 digits (GTIN-8/12/13 zero-padded); the item-master key
    raw: str = ""
    symbology: str | None = None  # e.g. "]E0", None when the scanner sends no identifier
    location: str | None = None  # in-store location from the location AI (default 91)
    count: int | None = None  # AI 30/37: quantity hint printed on the label
    batch: str | None = None  # AI 10
    serial: str | None = None  # AI 21
    expiry: dt.date | None = None  # AI 17
    net_weight_kg: Decimal | None = None  # AI 310n
    rcn: str | None = None  # "geo" / "company" for restricted circulation numbers
    variable_weight_kg: Decimal | None = None  # from a geographic RCN (region configured)
    variable_price: Decimal | None = None  # likewise

    @property
    def qty_hint(self) -> int | None:
        return self.count


Scan = ScanResult | ControlCode


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """How this store's scanners and labels are set up.

    ``separator_chars``: characters treated as the GS1 separator (FNC1). Scanners that cannot
    transmit GS (0x1D) are configured to send a substitute, e.g. ``"~"``; list it here.
    ``rcn_region``: biip region code (``"gb"``, ``"se"``, ``"dk"`` ...) for geographic in-store
    codes with weight/price; without it such codes are looked up as they are.
    """

    separator_chars: tuple[str, ...] = (GS,)
    location_ai: str = DEFAULT_LOCATION_AI
    rcn_region: str | None = None
    control_prefix: str = "SG-"
    max_len: int = MAX_SCAN_LEN

    def __post_init__(self) -> None:
        if not (len(self.location_ai) == 2 and "91" <= self.location_ai <= "99"):
            raise ValueError(f"location_ai {self.location_ai!r}: must be an internal AI 91..99")
        if not self.separator_chars or any(len(c) != 1 for c in self.separator_chars):
            raise ValueError("separator_chars: need one or more single characters")

    def biip_config(self) -> ParseConfig:
        return ParseConfig(separator_chars=self.separator_chars, rcn_region=self.rcn_region)


DEFAULT_OPTIONS = ParseOptions()


def parse_scan(text: str, options: ParseOptions = DEFAULT_OPTIONS) -> Scan:
    """Interpret one scan. Raises :class:`BarcodeError` (never anything else) on bad input."""
    raw = text
    if len(text) > options.max_len:
        raise BarcodeError(BarcodeErrorKind.TOO_LONG, f"{len(text)} characters > {options.max_len}", raw[:64])
    text = text.strip(" \t\r\n")
    if not text:
        raise BarcodeError(BarcodeErrorKind.EMPTY, "empty scan", raw)
    symbology: str | None = None
    body = text
    if text.startswith("]"):
        if not _SYMBOLOGY_RE.match(text):
            raise BarcodeError(BarcodeErrorKind.UNPARSEABLE, f"bad symbology identifier {text[:3]!r}", raw)
        symbology, body = text[:3], text[3:]
    if body.upper().startswith(options.control_prefix.upper()):
        return _parse_control(body, options, raw)
    try:
        return _parse_product(body, symbology, options, raw)
    except BarcodeError:
        raise
    except ParseError as e:  # biip's own reason is specific; keep it
        msg = str(e)
        kind = (
            BarcodeErrorKind.BAD_CHECK_DIGIT if "check digit" in msg.lower() else BarcodeErrorKind.UNPARSEABLE
        )
        raise BarcodeError(kind, msg, raw) from None
    except (ValueError, ArithmeticError) as e:  # defensive: biip on very odd input
        raise BarcodeError(BarcodeErrorKind.UNPARSEABLE, str(e), raw) from None


def _parse_control(body: str, options: ParseOptions, raw: str) -> ControlCode:
    words = body[len(options.control_prefix) :].upper().split("-")
    try:
        action = ControlAction(words[0])
    except ValueError:
        known = ", ".join(a.value for a in ControlAction)
        raise BarcodeError(
            BarcodeErrorKind.BAD_CONTROL_CODE,
            f"unknown control code {body!r} (known: {known})",
            raw,
        ) from None
    if action in _QTY_ACTIONS:
        if len(words) != 2 or not words[1].isascii() or not words[1].isdigit():
            raise BarcodeError(
                BarcodeErrorKind.BAD_CONTROL_CODE, f"{body!r}: expected {action}-<quantity>", raw
            )
        qty = int(words[1])
        if not 1 <= qty <= MAX_CONTROL_QTY:
            raise BarcodeError(
                BarcodeErrorKind.BAD_CONTROL_CODE,
                f"{body!r}: quantity {qty} not in 1..{MAX_CONTROL_QTY}",
                raw,
            )
        return ControlCode(action, qty, raw)
    if len(words) != 1:
        raise BarcodeError(BarcodeErrorKind.BAD_CONTROL_CODE, f"{body!r}: {action} takes no argument", raw)
    return ControlCode(action, None, raw)


def _parse_product(body: str, symbology: str | None, options: ParseOptions, raw: str) -> ScanResult:
    config = options.biip_config()
    if symbology is not None:
        try:
            gs1 = GS1Symbology(symbology[1:])
        except ValueError:
            gs1 = None
        if gs1 in _GTIN_SYMBOLOGIES:
            return _from_gtin(Gtin.parse(body, config=config), symbology, raw)
        if gs1 in _MESSAGE_SYMBOLOGIES:
            return _from_message(GS1Message.parse(body, config=config), symbology, options, raw)
        raise BarcodeError(
            BarcodeErrorKind.UNSUPPORTED_SYMBOLOGY,
            f"symbology {symbology} is not a GS1 product code (EAN/UPC, ITF-14, GS1-128, "
            "GS1 DataMatrix, DataBar, GS1 QR) nor a control code",
            raw,
        )
    # No identifier: a bare 8/12/13/14-digit string is a GTIN, anything else a GS1 message.
    if body.isascii() and body.isdigit() and len(body) in _GTIN_LENGTHS:
        return _from_gtin(Gtin.parse(body, config=config), None, raw)
    if body.isascii() and body[:2].isdigit():
        return _from_message(GS1Message.parse(body, config=config), None, options, raw)
    raise BarcodeError(
        BarcodeErrorKind.UNPARSEABLE,
        f"{body[:32]!r} is neither a GTIN, a GS1 element string nor a control code",
        raw,
    )


def _from_gtin(gtin: Gtin, symbology: str | None, raw: str, **extra: object) -> ScanResult:
    prefix_usage = (gtin.prefix.usage if gtin.prefix else "") or ""
    if "coupon" in prefix_usage.lower() or "refund" in prefix_usage.lower():
        raise BarcodeError(
            BarcodeErrorKind.NOT_A_SHELF_LABEL,
            f"{gtin.value} is a coupon/refund code ({prefix_usage}), not an item",
            raw,
        )
    rcn: str | None = None
    weight: Decimal | None = None
    price: Decimal | None = None
    key = gtin
    if isinstance(gtin, Rcn):
        rcn = "company" if gtin.usage is RcnUsage.COMPANY else "geo"
        weight, price = gtin.weight, gtin.price
        if gtin.usage is RcnUsage.GEOGRAPHICAL and gtin.region is not None:
            key = gtin.without_variable_measure()  # the item, whatever it weighed
    return ScanResult(
        gtin=key.as_gtin_14(),
        raw=raw,
        symbology=symbology,
        rcn=rcn,
        variable_weight_kg=weight,
        variable_price=price,
        **extra,  # type: ignore[arg-type]
    )


def _from_message(msg: GS1Message, symbology: str | None, options: ParseOptions, raw: str) -> ScanResult:
    es = msg.element_strings
    gtin_es = es.get(ai="01")
    if gtin_es is None:
        what = "an SSCC pallet label" if es.get(ai="00") else "a GS1 code without a GTIN (AI 01)"
        raise BarcodeError(BarcodeErrorKind.NOT_A_SHELF_LABEL, f"{what}, not a shelf label", raw)
    if gtin_es.gtin is None:
        reason = gtin_es.gtin_error or f"bad GTIN {gtin_es.value!r}"
        kind = (
            BarcodeErrorKind.BAD_CHECK_DIGIT
            if "check digit" in reason.lower()
            else BarcodeErrorKind.UNPARSEABLE
        )
        raise BarcodeError(kind, reason, raw)
    count: int | None = None
    for ai in ("30", "37"):
        c = es.get(ai=ai)
        if c is not None:
            count = int(c.value)
            break
    loc = es.get(ai=options.location_ai)
    batch = es.get(ai="10")
    serial = es.get(ai="21")
    expiry = es.get(ai="17")
    weight = es.get(ai="310")
    return _from_gtin(
        gtin_es.gtin,
        symbology,
        raw,
        location=loc.value if loc else None,
        count=count,
        batch=batch.value if batch else None,
        serial=serial.value if serial else None,
        expiry=expiry.date if expiry else None,
        net_weight_kg=weight.decimal if weight else None,
    )


# -- encoding (label printing, simulators, tests) --------------------------------------------


def encode_control(action: ControlAction, qty: int | None = None, *, prefix: str = "SG-") -> str:
    """The text printed (as Code 128 or Code 39) on the staff control card."""
    if action in _QTY_ACTIONS:
        if qty is None or not 1 <= qty <= MAX_CONTROL_QTY:
            raise ValueError(f"{action}: quantity 1..{MAX_CONTROL_QTY} required")
        return f"{prefix}{action.value}-{qty}"
    if qty is not None:
        raise ValueError(f"{action} takes no quantity")
    return f"{prefix}{action.value}"


def encode_shelf_label(
    gtin: str,
    *,
    location: str | None = None,
    count: int | None = None,
    symbology: str | None = "]C1",
    location_ai: str = DEFAULT_LOCATION_AI,
    separator: str = GS,
) -> str:
    """What a scanner transmits for a Storegate shelf label.

    With ``location`` or ``count`` (or a GS1 symbology) this is a GS1 element string:
    ``01`` + GTIN-14, then ``37`` + count (variable length, ended by the separator unless
    last), then the location AI + location (variable, last). Otherwise the plain GTIN.
    """
    if not (gtin.isascii() and gtin.isdigit() and len(gtin) in _GTIN_LENGTHS):
        raise ValueError(f"gtin {gtin!r}: 8, 12, 13 or 14 digits")
    if symbology in ("]E0", "]E4", None) and location is None and count is None:
        return (symbology or "") + gtin
    out = "01" + gtin.zfill(14)  # fixed length: no separator needed after it
    if count is not None:
        out += f"37{count}" + (separator if location is not None else "")
    if location is not None:
        out += location_ai + location
    return (symbology or "") + out


def order_texts(orders: Iterable[str], *, end: bool, location: str | None = None) -> list[str]:
    """What a clerk scans for ``GTIN[:QTY]`` specs: [a quantity control code,] the shelf
    label, ... and the "end order" code if ``end``. Used by the scanner simulators."""
    out = []
    for spec in orders:
        gtin, _, qty = spec.partition(":")
        if qty and int(qty) != 1:
            out.append(encode_control(ControlAction.QTY, int(qty)))
        out.append(encode_shelf_label(gtin, location=location))
    if end:
        out.append(encode_control(ControlAction.END))
    return out
