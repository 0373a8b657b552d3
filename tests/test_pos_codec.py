"""POS transaction codec (protocols/pos.py): the documented examples, refusals naming the
field, and Hypothesis round trips / garbage."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import pos
from protocols.pos import (
    GoodsReceipt,
    PosFormatError,
    PosTransaction,
    ReceiptLine,
    ReturnLine,
    SaleLine,
    VoidLine,
)

DOC = Path(__file__).resolve().parent.parent / "protocols" / "POS.md"
FENCE = re.compile(r"^```json (\w[\w-]*)(?: (\S+))?\n(.*?)^```", re.M | re.S)


def doc_blocks(kind: str) -> list[tuple[str | None, str]]:
    blocks = [(arg, body) for k, arg, body in FENCE.findall(DOC.read_text()) if k == kind]
    assert blocks, f"no `json {kind}` block in POS.md"
    return [(arg or None, body) for arg, body in blocks]


def tx_json(*lines: dict[str, object], **top: object) -> dict[str, object]:
    t: dict[str, object] = {
        "RetailStoreID": "store-001",
        "WorkstationID": "POS-01",
        "SequenceNumber": 7,
        "BusinessDayDate": "2026-03-14",
        "EndDateTime": "2026-03-14T10:15:02Z",
        "RetailTransaction": {"LineItem": list(lines)},
    }
    t.update(top)
    return {"Transaction": t}


def sale(seq: int, item: str = "SKU-1", qty: object = 1, **kw: object) -> dict[str, object]:
    return {"SequenceNumber": seq, "Sale": {"ItemID": item, "Quantity": qty, **kw}}


def refused(obj: object) -> PosFormatError:
    with pytest.raises(PosFormatError) as ei:
        pos.parse_transaction(obj)
    return ei.value


# -- the documentation ------------------------------------------------------------------------


def test_documented_transaction_parses_with_the_documented_effect() -> None:
    [(_, body)] = doc_blocks("transaction")
    tx = pos.decode(body.encode())
    assert tx.key == pos.TransactionKey("store-001", "POS-01", dt.date(2026, 3, 14), 1042)
    assert str(tx.key) == "store-001/POS-01/2026-03-14/1042"
    assert tx.end_date_time.utcoffset() == dt.timedelta(hours=1)
    assert [ln.kind for ln in tx.lines] == ["Sale", "Sale", "Return", "Void"]  # Tender dropped
    assert tx.stock_deltas() == {"4006381333931": -2, "SKU-MILK-1L": 0, "SKU-BREAD": 1}
    assert tx.lines[0] == SaleLine(1, "4006381333931", 2, 199, description="Pen, blue")
    assert tx.lines[2] == ReturnLine(3, "SKU-BREAD", 1, 249, reason_code="damaged")


def test_documented_refusals_name_their_field() -> None:
    for field, body in doc_blocks("invalid"):
        with pytest.raises(PosFormatError) as ei:
            if field is not None and field.startswith("lines"):
                pos.decode_receipt(body.encode())
            else:
                pos.decode(body.encode())
        assert ei.value.field == field, body
        assert ei.value.reason


def test_documented_receipt_parses() -> None:
    [(_, body)] = doc_blocks("receipt")
    r = pos.decode_receipt(body.encode())
    assert r == GoodsReceipt(
        "DN-2026-000815", (ReceiptLine("4006381333931", 24), ReceiptLine("SKU-MILK-1L", 12))
    )


def test_documented_answers_are_json() -> None:
    for _, body in doc_blocks("answer"):
        assert isinstance(json.loads(body), dict)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        ([], "body", "expected an object"),
        ({}, "body.Transaction", "missing"),
        (tx_json(sale(1), Extra=1), "Transaction.Extra", "unknown field"),
        (tx_json(sale(1), SequenceNumber="7"), "Transaction.SequenceNumber", "expected an integer"),
        (tx_json(sale(1), SequenceNumber=-1), "Transaction.SequenceNumber", "not in"),
        (tx_json(sale(1), BusinessDayDate="14.03.2026"), "Transaction.BusinessDayDate", "YYYY-MM-DD"),
        (tx_json(sale(1), EndDateTime="yesterday"), "Transaction.EndDateTime", "ISO 8601"),
        (tx_json(sale(1), RetailStoreID=" s1"), "Transaction.RetailStoreID", "not a code"),
        (tx_json(sale(1), CurrencyCode="eur"), "Transaction.CurrencyCode", "ISO 4217"),
        (tx_json(), "Transaction.RetailTransaction.LineItem", "no Sale or Return"),
        (tx_json(sale(1, qty=-3)), "Transaction.RetailTransaction.LineItem[0].Sale.Quantity", "not in"),
        (tx_json(sale(1, qty=10**6)), "Transaction.RetailTransaction.LineItem[0].Sale.Quantity", "not in"),
        (tx_json(sale(1, qty=2.0)), "Transaction.RetailTransaction.LineItem[0].Sale.Quantity", "whole"),
        (tx_json(sale(1, qty=True)), "Transaction.RetailTransaction.LineItem[0].Sale.Quantity", "integer"),
        (tx_json(sale(1, item="")), "Transaction.RetailTransaction.LineItem[0].Sale.ItemID", "not a code"),
        (tx_json(sale(1, Colour="red")), "Transaction.RetailTransaction.LineItem[0].Sale.Colour", "unknown"),
        (tx_json(sale(1), sale(1)), "Transaction.RetailTransaction.LineItem[1].SequenceNumber", "earlier"),
        (
            tx_json({"SequenceNumber": 1, "Sale": {"ItemID": "A", "Quantity": 1}, "Return": {}}),
            "Transaction.RetailTransaction.LineItem[0]",
            "one of",
        ),
        (tx_json({"SequenceNumber": 1}), "Transaction.RetailTransaction.LineItem[0]", "one of"),
        (
            tx_json(
                sale(1),
                {"SequenceNumber": 2, "Void": {"LineSequenceNumber": 1}},
                {
                    "SequenceNumber": 3,
                    "Void": {"LineSequenceNumber": 1},
                },
            ),
            "Transaction.RetailTransaction.LineItem[2].Void.LineSequenceNumber",
            "already voided",
        ),
        (
            tx_json(
                sale(1),
                {"SequenceNumber": 2, "Void": {"LineSequenceNumber": 1}},
                {
                    "SequenceNumber": 3,
                    "Void": {"LineSequenceNumber": 2},
                },
            ),
            "Transaction.RetailTransaction.LineItem[2].Void.LineSequenceNumber",
            "is a Void",
        ),
        (
            tx_json({"SequenceNumber": 2, "Void": {"LineSequenceNumber": 3}}, sale(3)),
            "Transaction.RetailTransaction.LineItem[0].Void.LineSequenceNumber",
            "no earlier line",
        ),
        (
            tx_json(sale(1), {"SequenceNumber": 2, "Tender": 5}),
            "Transaction.RetailTransaction.LineItem[1].Tender",
            "expected an object",
        ),
    ],
)
def test_refusal_names_the_field(obj: object, field: str, reason: str) -> None:
    e = refused(obj)
    assert e.field == field
    assert reason in e.reason
    assert str(e).startswith(field)


def test_body_errors() -> None:
    for data, reason in [
        (b"{", "not JSON"),
        (b"\xff\xfe\xfa", "not"),
        (b"[" * 100_000, "nested too deeply"),
        (b" " * (pos.MAX_BODY + 1), "larger than"),
    ]:
        with pytest.raises(PosFormatError) as ei:
            pos.decode(data)
        assert ei.value.field == "body"
        assert reason in ei.value.reason


def test_gtin_item_ids_are_checked_and_other_codes_are_skus() -> None:
    assert pos.is_gtin("4006381333931") and pos.is_gtin("96385074")
    assert not pos.is_gtin("SKU-1") and not pos.is_gtin("12345")
    tx = pos.parse_transaction(tx_json(sale(1, item="12345"), sale(2, item="96385074")))
    assert [ln.item_id for ln in tx.effective_lines()] == ["12345", "96385074"]  # type: ignore[union-attr]
    assert "GTIN" in refused(tx_json(sale(1, item="96385075"))).reason


def test_receipt_refusals() -> None:
    for obj, field in [
        ({"receipt_id": "R", "lines": []}, "lines"),
        ({"receipt_id": "R", "lines": [{"qty": 1}]}, "lines[0]"),
        ({"receipt_id": "R", "lines": [{"gtin": "SKU", "qty": 1}]}, "lines[0].gtin"),
        ({"receipt_id": "R", "lines": [{"sku": "A", "qty": 0}]}, "lines[0].qty"),
        ({"lines": [{"sku": "A", "qty": 1}]}, "body.receipt_id"),
    ]:
        with pytest.raises(PosFormatError) as ei:
            pos.parse_receipt(obj)
        assert ei.value.field == field


# -- Hypothesis ---------------------------------------------------------------------------------

codes = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).filter(
    lambda s: not pos.is_gtin(s)
)
gtins = st.sampled_from(["4006381333931", "96385074", "00012345600012", "5901234123457"])
money = st.none() | st.integers(0, pos.MAX_PRICE)


@st.composite
def transactions(draw: st.DrawFn) -> PosTransaction:
    n = draw(st.integers(1, 12))
    seqs = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    lines: list[pos.LineItem] = []
    voidable: list[int] = []
    for seq in seqs:
        choice = draw(st.sampled_from(["sale", "return", "void"] if voidable else ["sale", "return"]))
        item = draw(codes | gtins)
        qty = draw(st.integers(1, pos.MAX_QTY))
        if choice == "sale":
            lines.append(SaleLine(seq, item, qty, draw(money), draw(st.text(max_size=20))))
            voidable.append(seq)
        elif choice == "return":
            lines.append(ReturnLine(seq, item, qty, draw(money), draw(st.text(max_size=20))))
            voidable.append(seq)
        else:
            target = draw(st.sampled_from(voidable))
            voidable.remove(target)
            lines.append(VoidLine(seq, target))
    if all(isinstance(ln, VoidLine) for ln in lines):
        lines.append(SaleLine(10**7, "SKU-X", 1))
    tz = dt.timezone(dt.timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
    return PosTransaction(
        retail_store_id=draw(codes),
        workstation_id=draw(codes),
        sequence_number=draw(st.integers(0, pos.MAX_SEQUENCE)),
        business_day_date=draw(st.dates()),
        end_date_time=draw(st.datetimes(timezones=st.just(tz))),
        lines=tuple(lines),
        operator_id=draw(st.just("") | codes),
        currency_code=draw(st.sampled_from(["", "EUR", "JPY"])),
    )


@given(transactions())
def test_round_trip(tx: PosTransaction) -> None:
    assert pos.decode(pos.encode(tx)) == tx


@given(transactions())
def test_stock_deltas_are_sales_minus_returns_of_unvoided_lines(tx: PosTransaction) -> None:
    voided = {ln.voided_sequence_number for ln in tx.lines if isinstance(ln, VoidLine)}
    expected: dict[str, int] = {}
    for ln in tx.lines:
        if isinstance(ln, VoidLine):
            continue
        d = 0 if ln.sequence_number in voided else (-ln.quantity if isinstance(ln, SaleLine) else ln.quantity)
        expected[ln.item_id] = expected.get(ln.item_id, 0) + d
    assert tx.stock_deltas() == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_any_json_value_parses_or_is_refused_with_a_field(v: object) -> None:
    for fn in (pos.parse_transaction, pos.parse_receipt):
        try:
            fn(v)
        except PosFormatError as e:
            assert e.field and e.reason


@settings(max_examples=300)
@given(transactions(), st.data())
def test_mutated_transactions_never_crash(tx: PosTransaction, data: st.DataObject) -> None:
    wire = pos.to_wire(tx)
    lines = wire["Transaction"]["RetailTransaction"]["LineItem"]
    i = data.draw(st.integers(0, len(lines) - 1))
    body = next(v for k, v in lines[i].items() if k != "SequenceNumber")
    key = data.draw(st.sampled_from([*body.keys(), "Bogus"]))
    body[key] = data.draw(json_values)
    try:
        pos.parse_transaction(wire)
    except PosFormatError as e:
        assert e.field.startswith("Transaction.RetailTransaction.LineItem")


@given(st.binary(max_size=200))
def test_garbage_bytes_are_refused_not_crashed(data: bytes) -> None:
    try:
        pos.decode(data)
    except PosFormatError as e:
        assert e.field.startswith(("body", "Transaction"))
