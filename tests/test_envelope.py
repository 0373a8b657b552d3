"""Strict envelope decoding: every way a payload can be wrong gives a specific reason,
and nothing but EnvelopeError ever escapes the decoder."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import envelope, topics
from protocols import records as records_schema
from protocols.envelope import Ack, AckStatus, EnvelopeError, Record

ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64) | st.text(min_size=1, max_size=64)
bodies = st.dictionaries(
    st.text(max_size=8), st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8)), max_size=4
)
records = st.builds(
    Record,
    id=ids,
    seq=st.integers(1, 2**63 - 1),
    type=st.sampled_from(["order", "sale"]),
    ts=st.integers(0, 2**50),
    body=bodies,
)
acks = st.builds(
    Ack,
    id=ids,
    status=st.sampled_from(list(AckStatus)),
    reason=st.none() | st.text(max_size=20),
    ref=st.none() | st.text(max_size=10),
)


def wire(**kw: Any) -> bytes:
    base: dict[str, Any] = {"v": 1, "gw": "store-1", "sent": 5}
    base.update(kw)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...})


@given(st.lists(records, max_size=20, unique_by=lambda r: r.id), st.lists(acks, max_size=20))
def test_round_trip(recs: list[Record], acks_: list[Ack]) -> None:
    payload = envelope.encode(gw="store-1", sent=9, records=recs, acks=acks_)
    env = envelope.decode(payload)
    assert env.records == tuple(recs) and env.acks == tuple(acks_) and env.bad_records == ()


@given(st.lists(records, min_size=1, max_size=20, unique_by=lambda r: r.id))
def test_raw_record_encoding_matches(recs: list[Record]) -> None:
    payload = envelope.encode_raw_records(
        gw="store-1", sent=3, raw_records=[envelope.pack_record(r) for r in recs]
    )
    assert envelope.decode(payload).records == tuple(recs)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        envelope.decode(data)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (wire(v=2), "envelope.v: unknown version 2"),
        (wire(gw=...), "envelope: missing field gw"),
        (wire(gw=7), "envelope.gw: expected str, got int"),
        (wire(gw="Store 1"), "is not a valid gateway id"),
        (wire(extra=1), "envelope: unknown field extra"),
        (wire(records={}), "envelope.records: expected array"),
        (wire(records=[{}] * (envelope.MAX_RECORDS + 1)), "records > MAX_RECORDS"),
        (wire(acks=[{"id": "a", "st": "maybe"}]), "acks[0].st: unknown status 'maybe'"),
        (msgpack.packb([1, 2]), "envelope: expected map, got list"),
        (b"\x00" * (envelope.MAX_PAYLOAD_BYTES + 1), "> MAX_PAYLOAD_BYTES"),
        (b"\x81", "not a msgpack document"),
    ],
)
def test_envelope_errors_name_the_problem(payload: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as ei:
        envelope.decode(payload)
    assert reason in ei.value.reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"id": "a", "type": "order", "ts": 1, "body": {}}, "records[0]: missing field seq"),
        (
            {"id": "a", "seq": "1", "type": "order", "ts": 1, "body": {}},
            "records[0].seq: expected int, got str",
        ),
        ({"id": "a", "seq": 0, "type": "order", "ts": 1, "body": {}}, "records[0].seq: 0 not in 1.."),
        ({"id": "a", "seq": 1, "type": "order", "ts": 1, "body": []}, "records[0].body: expected map"),
        ({"id": "a", "seq": 1, "type": "", "ts": 1, "body": {}}, "records[0].type: length 0"),
        ({"id": "a", "seq": 1, "type": "o", "ts": 1, "body": {}, "x": 1}, "records[0]: unknown field x"),
    ],
)
def test_bad_record_is_isolated_with_reason(record: dict[str, Any], reason: str) -> None:
    good = {"id": "b", "seq": 2, "type": "order", "ts": 1, "body": {}}
    env = envelope.decode(wire(records=[record, good]))
    assert [r.id for r in env.records] == ["b"]
    assert len(env.bad_records) == 1 and reason in env.bad_records[0].reason
    assert env.bad_records[0].id == "a"


def test_repeated_id_within_envelope_is_bad() -> None:
    rec = {"id": "a", "seq": 1, "type": "order", "ts": 1, "body": {}}
    env = envelope.decode(wire(records=[rec, {**rec, "seq": 2}]))
    assert len(env.records) == 1 and "repeated" in env.bad_records[0].reason


def test_encode_refuses_oversize() -> None:
    big = Record(id="a", seq=1, type="order", ts=1, body={"x": "y" * envelope.MAX_PAYLOAD_BYTES})
    with pytest.raises(EnvelopeError, match="MAX_PAYLOAD_BYTES"):
        envelope.encode(gw="g", sent=1, records=[big])


def test_topic_tree() -> None:
    assert topics.uplink("store-1") == "sg/v1/gw/store-1/up"
    assert topics.parse("sg/v1/gw/store-1/down") == ("store-1", "down")
    assert topics.central_uplink_subscription() == "$share/central/sg/v1/gw/+/up"
    for bad in ("sg/v1/gw/+/up", "sg/v1/gw/a/b/up", "x/v1/gw/a/up", "sg/v1/gw/A/up", "sg/v1/gw/a/left"):
        with pytest.raises(topics.TopicError):
            topics.parse(bad)


def test_unencodable_body_is_an_envelope_error() -> None:
    rec = Record(id="a", seq=1, type="order", ts=1, body={"n": 2**70})
    with pytest.raises(EnvelopeError, match="cannot encode"):
        envelope.encode(gw="g", sent=1, records=[rec])


# -- decode_uplink: central's receive decoder gives exactly the strict answer ----------------------

ORDER = {
    "customer": "S001",
    "channel": "manual",
    "order_type": "normal",
    "requested_date": "2026-12-01",
    "lines": [{"sku": "SKU-1", "qty": 1}, {"gtin": "04012345678901", "qty": 2}],
}
QUICK = {"order": records_schema.packed_order_certainly_valid}


def _same_answer(payload: bytes) -> envelope.Uplink | None:
    """decode_uplink(payload) agrees with decode_strict(payload): the same error, or the same
    records (with the bytes each arrived in, and a body wherever the quick check did not
    vouch for it), acks and bad records. Returns the uplink (None on an error)."""
    try:
        env = envelope.decode_strict(payload)
    except EnvelopeError as e:
        with pytest.raises(EnvelopeError) as ei:
            envelope.decode_uplink(payload, quick=QUICK)
        assert ei.value.reason == e.reason
        return None
    up = envelope.decode_uplink(payload, quick=QUICK)
    assert (up.gw, up.sent, up.acks, up.bad_records) == (env.gw, env.sent, env.acks, env.bad_records)
    assert len(up.records) == len(env.records)
    for got, want in zip(up.records, env.records, strict=True):
        assert (got.id, got.seq, got.type, got.ts) == (want.id, want.seq, want.type, want.ts)
        again = envelope.encode_raw_records(gw="g", sent=0, raw_records=[got.raw])
        assert envelope.decode(again).records == (want,)
        if got.body is None:
            assert got.type in QUICK and records_schema.parse_order(want.body)
        else:
            assert got.body == want.body
    return up


def _rec(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"r{i}", "seq": i + 1, "type": "order", "ts": 5, "body": ORDER, **kw}


def test_plain_orders_are_received_without_reading_their_bodies() -> None:
    recs = [Record(f"r{i}", i + 1, "order", 5, ORDER) for i in range(50)]
    raws = [envelope.pack_record(r) for r in recs]
    payload = envelope.encode_raw_records(gw="store-1", sent=9, raw_records=raws)
    up = _same_answer(payload)
    assert up is not None and [r.body for r in up.records] == [None] * 50
    assert [r.raw for r in up.records] == raws


@pytest.mark.parametrize(
    "payload",
    [
        wire(records=[_rec(0), _rec(1, body={**ORDER, "customer": " "})]),  # body the check refuses
        wire(records=[_rec(0), _rec(1, type="sale", body={"x": 1})]),  # a type with no quick check
        wire(records=[_rec(0), _rec(1, seq=0)]),  # a bad record among good ones
        wire(records=[_rec(0), _rec(1, id="r0")]),  # a repeated id
        wire(records=[_rec(0), _rec(1, body=[1])]),  # body not a map
        wire(records=[_rec(0)], acks=[{"id": "a", "st": "accepted"}]),  # records and acks
        wire(records=[]),
        wire(v=True, records=[_rec(0)]),
        wire(v=2, records=[_rec(0)]),
        wire(gw="Store 1", records=[_rec(0)]),
        wire(sent=-1, records=[_rec(0)]),
        wire(records=[_rec(0)]) + b"\x00",  # trailing bytes
        wire(records=[_rec(0, body={**ORDER, "note": msgpack.ExtType(1, b"x")})]),
        wire(records=[_rec(0, type="sale", body={"x": {1: 2}})]),  # a map key that is not text
        wire(records=[_rec(0, body={**ORDER, "lines": [{"sku": "A", "qty": True}]})]),
    ],
)
def test_unusual_messages_get_the_strict_answer(payload: bytes) -> None:
    _same_answer(payload)


def _repeated_keys(pairs: list[tuple[Any, Any]]) -> bytes:
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


def test_repeated_keys_get_the_strict_answer() -> None:
    rec = _repeated_keys([*_rec(0).items(), ("seq", 0)][1:])  # id left out, seq given twice
    head = msgpack.packb({"v": 1, "gw": "store-1", "sent": 1})
    body = _repeated_keys([("v", 1), ("v", 1), ("gw", "store-1"), ("sent", 1)])  # 4 pairs, records absent
    _same_answer(b"\x84" + head[1:] + msgpack.packb("records") + b"\x91" + rec)
    _same_answer(body)


_field = st.sampled_from(["id", "seq", "type", "ts", "body", "x"])
_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(["", "order", "sale", "r1", "x" * 65]),
    st.just(ORDER),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
    st.lists(st.integers(-5, 5), max_size=2),
)


@st.composite
def _messages(
    draw: st.DrawFn, key: str, item: Any, fields: st.SearchStrategy[str], values: st.SearchStrategy[Any]
) -> bytes:
    """A message of up to four plain ``item(i)`` maps under ``key``, each and the envelope
    with a few fields dropped or set to odd values."""
    items: list[dict[str, Any]] = [item(i) for i in range(draw(st.integers(0, 4)))]
    for it in items:
        for name in draw(st.lists(fields, max_size=2)):
            if draw(st.booleans()):
                it.pop(name, None)
            else:
                it[name] = draw(values)
    env: dict[str, Any] = {"v": 1, "gw": "store-1", "sent": 1, key: items}
    for name in draw(st.lists(st.sampled_from(["v", "gw", "sent", "records", "acks"]), max_size=2)):
        if draw(st.booleans()):
            env.pop(name, None)
        else:
            env[name] = draw(values)
    return msgpack.packb(env)


def _uplinks() -> st.SearchStrategy[bytes]:
    return _messages("records", _rec, _field, _value)


@settings(max_examples=400, deadline=None)
@given(_uplinks())
def test_decode_uplink_agrees_with_decode(payload: bytes) -> None:
    _same_answer(payload)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_uplink_garbage_only_ever_raises_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        envelope.decode_uplink(data, quick=QUICK)


@given(st.lists(records, max_size=5, unique_by=lambda r: r.id), st.lists(acks, max_size=30))
def test_acks_packed_by_hand_are_msgpacks_own_bytes(recs: list[Record], acks_: list[Ack]) -> None:
    wire: dict[str, Any] = {"v": 1, "gw": "store-1", "sent": 9}
    if recs:
        wire["records"] = [
            {"id": r.id, "seq": r.seq, "type": r.type, "ts": r.ts, "body": r.body} for r in recs
        ]
    if acks_:
        wire["acks"] = [{"id": a.id, "st": a.status.value, "reason": a.reason, "ref": a.ref} for a in acks_]
    assert envelope.encode(gw="store-1", sent=9, records=recs, acks=acks_) == msgpack.packb(wire)


# -- decode's quick paths give exactly the strict answer ----------------------------------------

_ack_field = st.sampled_from(["id", "st", "reason", "ref", "x"])
_ack_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(["", "a1", "accepted", "duplicate", "rejected", "maybe", "x" * 65]),
)


def _ack_messages() -> st.SearchStrategy[bytes]:
    plain = lambda i: {"id": f"a{i}", "st": "accepted", "reason": None, "ref": None}  # noqa: E731
    return _messages("acks", plain, _ack_field, _ack_value)


def _same_as_strict(payload: bytes) -> None:
    try:
        want = envelope.decode_strict(payload)
    except EnvelopeError as e:
        with pytest.raises(EnvelopeError) as ei:
            envelope.decode(payload)
        assert ei.value.reason == e.reason
        return
    assert envelope.decode(payload) == want


@settings(max_examples=400, deadline=None)
@given(_ack_messages())
def test_acks_messages_get_the_strict_answer(payload: bytes) -> None:
    _same_as_strict(payload)


@settings(max_examples=200, deadline=None)
@given(_uplinks())
def test_record_messages_get_the_strict_answer(payload: bytes) -> None:
    _same_as_strict(payload)


def test_acks_with_repeated_keys_get_the_strict_answer() -> None:
    head = msgpack.packb({"v": 1, "gw": "store-1", "sent": 1})
    for pairs in (
        [("id", "a"), ("st", "accepted"), ("st", "maybe")],
        [("id", "a"), ("st", "maybe"), ("st", "accepted")],
        [("id", "a"), ("st", "accepted"), ("id", "")],
        [("id", "a"), ("st", "accepted"), ("reason", "r"), ("reason", None), ("ref", "x")],
    ):
        _same_as_strict(b"\x84" + head[1:] + msgpack.packb("acks") + b"\x91" + _repeated_keys(pairs))
