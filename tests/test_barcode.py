"""Barcode content: the doc's examples, shelf-label round trip, control codes, garbage."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest
from biip.checksums import gs1_standard_check_digit
from biip.gtin import Gtin
from biip.rcn import Rcn
from hypothesis import given
from hypothesis import strategies as st

from protocols import barcode
from protocols.barcode import (
    BarcodeError,
    BarcodeErrorKind,
    ControlAction,
    ControlCode,
    ParseOptions,
    ScanResult,
    encode_control,
    encode_shelf_label,
    parse_scan,
)

DOC = Path(barcode.__file__).with_name("BARCODES.md")
GB = ParseOptions(rcn_region="gb")


def doc_examples() -> list[tuple[str, str]]:
    blocks = re.findall(r"```barcode-examples\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "no barcode-examples block in BARCODES.md"
    out = []
    for line in blocks[0].splitlines():
        if line.strip():
            text, expect = line.split(" => ")
            out.append((text.encode().decode("unicode_escape"), expect.strip()))
    return out


@pytest.mark.parametrize(("text", "expect"), doc_examples())
def test_doc_examples(text: str, expect: str) -> None:
    kind, *rest = expect.split()
    if kind == "error":
        with pytest.raises(BarcodeError) as ei:
            parse_scan(text, GB)
        assert ei.value.kind == BarcodeErrorKind(rest[0])
        assert ei.value.reason
        return
    r = parse_scan(text, GB)
    if kind == "control":
        assert isinstance(r, ControlCode)
        assert r.action == ControlAction(rest[0])
        assert r.qty == (int(rest[1]) if len(rest) > 1 else None)
        return
    assert isinstance(r, ScanResult)
    for pair in expect.split():
        k, v = pair.split("=")
        got = getattr(r, k)
        if isinstance(got, dt.date):
            got = got.isoformat()
        elif isinstance(got, Decimal | int):
            got = str(got)
        assert got == v, (k, got, v)


def with_check(payload: str) -> str:
    return payload + str(gs1_standard_check_digit(payload))


def plain_item(gtin: str) -> bool:
    """Not an RCN, coupon or refund code (those have their own rules)."""
    g = Gtin.parse(gtin)
    usage = (g.prefix.usage if g.prefix else "").lower()
    return not isinstance(g, Rcn) and "coupon" not in usage and "refund" not in usage


gtins = (
    st.sampled_from([7, 11, 12, 13])
    .flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
    .map(with_check)
    .filter(plain_item)
)


@given(
    gtin=gtins,
    location=st.none() | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=20),
    count=st.none() | st.integers(1, 99_999_999),
    sep=st.sampled_from(["\x1d", "~"]),
)
def test_shelf_label_round_trip(gtin: str, location: str | None, count: int | None, sep: str) -> None:
    opts = ParseOptions(separator_chars=("\x1d", "~"))
    text = encode_shelf_label(gtin, location=location, count=count, separator=sep)
    r = parse_scan(text, opts)
    assert isinstance(r, ScanResult)
    assert r.gtin == gtin.zfill(14)
    assert r.location == location
    assert r.count == count
    assert r.symbology == "]C1"


@given(gtin=gtins, bad=st.integers(1, 9))
def test_bad_check_digit_is_refused_with_reason(gtin: str, bad: int) -> None:
    wrong = gtin[:-1] + str((int(gtin[-1]) + bad) % 10)
    for text in (wrong, encode_shelf_label(wrong, location="A1")):
        with pytest.raises(BarcodeError) as ei:
            parse_scan(text)
        assert ei.value.kind is BarcodeErrorKind.BAD_CHECK_DIGIT
        assert "check digit" in ei.value.reason


@given(st.text(max_size=300))
def test_garbage_never_crashes(text: str) -> None:
    try:
        r = parse_scan(text, GB)
    except BarcodeError as e:
        assert e.reason
    else:
        assert isinstance(r, ScanResult | ControlCode)


@pytest.mark.parametrize("action", list(ControlAction))
def test_control_round_trip(action: ControlAction) -> None:
    qty = 7 if action in (ControlAction.QTY, ControlAction.SETLAST) else None
    assert parse_scan(encode_control(action, qty)) == ControlCode(action, qty, encode_control(action, qty))
    assert parse_scan("]C0" + encode_control(action, qty)).action is action  # type: ignore[union-attr]


def test_control_prefix_configurable() -> None:
    r = parse_scan("XX-END", ParseOptions(control_prefix="XX-"))
    assert r == ControlCode(ControlAction.END, None, "XX-END")


def test_geo_rcn_without_region_is_looked_up_as_is() -> None:
    r = parse_scan("]E02011122912346")
    assert isinstance(r, ScanResult)
    assert r.gtin == "02011122912346" and r.rcn == "geo" and r.variable_price is None


def test_sscc_pallet_label_refused() -> None:
    sscc = with_check("03765432100000000")
    with pytest.raises(BarcodeError, match="SSCC"):
        parse_scan("]C100" + sscc)


def test_too_long_refused() -> None:
    with pytest.raises(BarcodeError) as ei:
        parse_scan("1" * 1000)
    assert ei.value.kind is BarcodeErrorKind.TOO_LONG


def test_location_ai_must_be_internal() -> None:
    with pytest.raises(ValueError, match=r"91\.\.99"):
        ParseOptions(location_ai="10")
    r = parse_scan(
        encode_shelf_label("4006381333931", location="B7", location_ai="92"), ParseOptions(location_ai="92")
    )
    assert isinstance(r, ScanResult) and r.location == "B7"
