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
from protocols.envelope import Ack, AckStatus, EnvelopeError, Record

ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)
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
