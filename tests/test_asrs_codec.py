"""AS/RS telegram codec and link state machine, without I/O."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.asrs import (
    MAX_BUFFER,
    MAX_SEQ,
    TELEGRAM_LEN,
    Acked,
    AsrsDecoder,
    AsrsLink,
    BadTelegram,
    DuplicateReceived,
    ErrorCode,
    ErrorReport,
    FieldError,
    FrameError,
    Life,
    LinkFailed,
    LinkState,
    LocalProtocolError,
    LocationUpdate,
    Received,
    Resent,
    Response,
    Telegram,
    TransportRequest,
    UnknownTelegram,
    encode,
    next_seq,
)

TS = datetime(2026, 11, 22, 9, 30, 5)
DOC = Path(__file__).resolve().parents[1] / "protocols" / "ASRS.md"


def test_transport_request_bytes() -> None:
    raw = encode(Telegram("GW001", "ASRS1", 42, TransportRequest("T000123", "A01-03-07", "PS01", TS)))
    assert raw == (
        b"###00078GW001ASRS100042REQ_"
        b"T000123_____________"
        b"A01-03-07___________"
        b"PS01________________"
        b"20261122093005"
    )
    assert len(raw) == TELEGRAM_LEN["REQ_"] == 101


def test_fixed_lengths_and_field_bytes() -> None:
    res = encode(Telegram("ASRS1", "GW001", 42, Response(ErrorCode.LOCATION_EMPTY, TS)))
    assert res == b"###00026ASRS1GW00100042RES_0000002020261122093005"
    err = encode(Telegram("ASRS1", "GW001", 8, ErrorReport("T1", None, 22, TS)))
    assert err[47:67] == b"*" * 20
    assert len(err) == TELEGRAM_LEN["ERR_"]
    life = encode(Telegram("GW1", "A", 0, Life(TS)))
    assert life == b"###00018GW1__A____00000LIFE20261122093005"


def test_doc_examples_decode_and_reencode() -> None:
    blocks = re.findall(r"```asrs\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if ln.strip()]
    assert len(lines) >= 6
    types = set()
    for line in lines:
        raw = line.encode("ascii")
        events = AsrsDecoder().feed(raw)
        assert len(events) == 1 and isinstance(events[0], Telegram), (line, events)
        assert encode(events[0]) == raw
        types.add(events[0].type)
    assert types == {"REQ_", "RES_", "LOCU", "ERR_", "LIFE"}


@pytest.mark.parametrize(
    ("telegram", "field"),
    [
        (Telegram("GW001", "ASRS1", 1, TransportRequest("T_1", "A", "B", TS)), "tote"),
        (Telegram("GW001", "ASRS1", 1, TransportRequest("T" * 21, "A", "B", TS)), "tote"),
        (Telegram("gw", "ASRS1", 1, LocationUpdate("T", "A", TS)), "sender"),
        (Telegram("GW001", "ASRS1", 0, LocationUpdate("T", "A", TS)), "seq"),
        (Telegram("GW001", "ASRS1", 5, Life(TS)), "seq"),
        (Telegram("GW001", "ASRS1", MAX_SEQ + 1, LocationUpdate("T", "A", TS)), "seq"),
        (Telegram("GW001", "ASRS1", 1, Response(10**8, TS)), "code"),
    ],
)
def test_encode_refuses_bad_fields(telegram: Telegram, field: str) -> None:
    with pytest.raises(FieldError) as exc:
        encode(telegram)
    assert exc.value.field == field


def test_sequence_wraps_at_99999_to_1() -> None:
    assert next_seq(1) == 2
    assert next_seq(MAX_SEQ) == 1


def test_byte_by_byte_and_garbage_resync() -> None:
    a = encode(Telegram("ASRS1", "GW001", 7, LocationUpdate("T000123", "PS01", TS)))
    b = encode(Telegram("ASRS1", "GW001", 0, Life(TS)))
    stream = b"\x00\xffnoise#" + a + b"##" + a[:30] + b + b"#"
    dec = AsrsDecoder()
    events = [ev for byte in stream for ev in dec.feed(bytes([byte]))]
    telegrams = [e for e in events if isinstance(e, Telegram)]
    assert [t.type for t in telegrams] == ["LOCU", "LIFE"]
    assert all(isinstance(e, FrameError) for e in events if not isinstance(e, Telegram))
    assert dec.buffered <= 2


def test_unknown_type_and_bad_field() -> None:
    dec = AsrsDecoder()
    unknown = b"###00008ASRS1GW00100003SYNQ1234"
    bad_date = b"###00018GW001ASRS100000LIFE20261399093005"
    assert dec.feed(unknown + bad_date) == [
        UnknownTelegram("ASRS1", "GW001", 3, "SYNQ"),
        BadTelegram("GW001", "ASRS1", 0, "LIFE", "month must be in 1..12"),
    ]


def test_wrong_length_for_known_type_is_resynced() -> None:
    good = encode(Telegram("ASRS1", "GW001", 0, Life(TS)))
    events = AsrsDecoder().feed(b"###00019ASRS1GW00100000LIFE" + good)
    assert isinstance(events[0], FrameError)
    assert events[1] == Telegram("ASRS1", "GW001", 0, Life(TS))


# --- Hypothesis -------------------------------------------------------------------------------

_text = st.from_regex(r"[A-Za-z0-9\-./:]{1,20}", fullmatch=True)
_partner = st.from_regex(r"[A-Z0-9]{1,5}", fullmatch=True)
_ts = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
_code = st.integers(0, 99_999_999)
_data_body = st.one_of(
    st.builds(TransportRequest, _text, _text, _text, _ts),
    st.builds(LocationUpdate, _text, _text, _ts),
    st.builds(ErrorReport, st.none() | _text, st.none() | _text, _code, _ts),
)
_seq = st.integers(1, MAX_SEQ)
_telegram = st.one_of(
    st.builds(Telegram, _partner, _partner, _seq, _data_body),
    st.builds(Telegram, _partner, _partner, _seq, st.builds(Response, _code, _ts)),
    st.builds(Telegram, _partner, _partner, st.just(0), st.builds(Life, _ts)),
)


@given(st.lists(_telegram, min_size=1, max_size=5), st.data())
@settings(max_examples=150, deadline=None)
def test_round_trip_with_random_splits(telegrams: list[Telegram], data: st.DataObject) -> None:
    stream = b"".join(encode(t) for t in telegrams)
    for t in telegrams:
        assert len(encode(t)) == TELEGRAM_LEN[t.type]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = AsrsDecoder()
    out = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == telegrams
    assert dec.buffered == 0


@given(st.binary(max_size=600), st.lists(_telegram, max_size=2))
@settings(max_examples=200, deadline=None)
def test_garbage_never_crashes_and_buffer_stays_bounded(garbage: bytes, telegrams: list[Telegram]) -> None:
    dec = AsrsDecoder()
    for i in range(0, len(garbage), 37):
        dec.feed(garbage[i : i + 37])
        assert dec.buffered <= MAX_BUFFER
    # After garbage (possibly ending in a partial header) a resync finds the following telegrams
    # once a LIFE flushes any half-telegram the garbage left behind.
    life = Telegram("ZZ", "ZZ", 0, Life(TS))
    tail = b"".join(encode(t) for t in telegrams)
    events = dec.feed(b"!" * MAX_BUFFER + tail + encode(life))
    got = [e for e in events if isinstance(e, Telegram)]
    assert got == [*telegrams, life]


# --- link state machines joined in memory ----------------------------------------------------


class Pair:
    """Host and AS/RS links joined by an in-memory 'wire' that the test can cut or make lossy."""

    def __init__(self, **timing: float) -> None:
        kw = {"ack_timeout": 1.0, "max_resends": 2, "life_interval": 5.0, "life_misses": 3, **timing}
        self.host = AsrsLink(local="GW001", remote="ASRS1", **kw)  # type: ignore[arg-type]
        self.asrs = AsrsLink(local="ASRS1", remote="GW001", **kw)  # type: ignore[arg-type]
        self.now = 1_700_000_000.0
        self.host_events: list[object] = []
        self.asrs_events: list[object] = []
        self.host.connected(self.now)
        self.asrs.connected(self.now)
        self.pump()

    def pump(self, *, drop_to_host: bool = False) -> None:
        for _ in range(10):
            a, b = self.host.data_to_send(), self.asrs.data_to_send()
            if not a and not b:
                return
            self.asrs_events += self.asrs.receive_data(a, self.now)
            if not drop_to_host:
                self.host_events += self.host.receive_data(b, self.now)

    def advance(self, dt: float, **kw: bool) -> None:
        self.now += dt
        self.host_events += self.host.tick(self.now)
        self.asrs_events += self.asrs.tick(self.now)
        self.pump(**kw)


def _req(tote: str = "T1") -> TransportRequest:
    return TransportRequest(tote, "A01", "PS01", TS)


def test_link_ack_carries_code_and_next_telegram_follows() -> None:
    p = Pair()
    s1 = p.host.send(_req("T1"), p.now)
    s2 = p.host.send(_req("T2"), p.now)
    assert p.host.state is LinkState.AWAIT_ACK
    p.pump()
    rx = [e for e in p.asrs_events if isinstance(e, Received)]
    assert [e.seq for e in rx] == [s1]  # stop-and-wait: T2 waits for T1's ack
    p.asrs.ack(s1, ErrorCode.LOCATION_EMPTY, p.now)
    p.pump()
    assert Acked(s1, _req("T1"), ErrorCode.LOCATION_EMPTY) in p.host_events
    assert [e.seq for e in p.asrs_events if isinstance(e, Received)] == [s1, s2]
    p.asrs.ack(s2, 0, p.now)
    p.pump()
    assert p.host.state is LinkState.IDLE and p.host.pending == 0


def test_lost_ack_is_resent_and_delivered_once() -> None:
    p = Pair()
    seq = p.host.send(_req(), p.now)
    p.pump()
    p.asrs.ack(seq, 0, p.now)
    p.pump(drop_to_host=True)  # the ack is lost
    assert p.host.state is LinkState.AWAIT_ACK
    p.advance(1.0)
    assert Resent(seq, 1) in p.host_events
    assert DuplicateReceived(seq) in p.asrs_events
    assert [e for e in p.asrs_events if isinstance(e, Received)] == [Received(seq, _req())]
    assert Acked(seq, _req(), 0) in p.host_events


def test_repeat_before_app_acks_is_not_delivered_twice() -> None:
    p = Pair()
    seq = p.host.send(_req(), p.now)
    p.pump()
    p.advance(1.0)  # host resends; AS/RS has not acked yet
    assert [e for e in p.asrs_events if isinstance(e, Received)] == [Received(seq, _req())]
    assert DuplicateReceived(seq) in p.asrs_events
    p.asrs.ack(seq, 0, p.now)
    p.pump()
    assert p.host.state is LinkState.IDLE


def test_resends_exhausted_fail_the_link_and_reconnect_resends_same_seq() -> None:
    p = Pair()
    seq = p.host.send(_req(), p.now)
    p.pump()
    p.asrs.ack(seq, 0, p.now)
    for _ in range(3):
        p.advance(1.0, drop_to_host=True)
    assert p.host.state is LinkState.FAILED
    assert any(isinstance(e, LinkFailed) for e in p.host_events)
    # Reconnect: both ends go down and up; the in-flight telegram goes out again with its seq.
    p.host.disconnected("failed")
    p.asrs.disconnected("peer closed")
    p.host.connected(p.now)
    p.asrs.connected(p.now)
    p.pump()
    assert Acked(seq, _req(), 0) in p.host_events
    assert len([e for e in p.asrs_events if isinstance(e, Received)]) == 1


def test_watchdog_declares_link_failed_after_missed_life() -> None:
    p = Pair(life_interval=1.0, life_misses=3)
    for _ in range(5):
        p.advance(1.0)  # life telegrams flow both ways: link stays up
    assert p.host.state is LinkState.IDLE
    for _ in range(3):
        p.advance(1.0, drop_to_host=True)  # AS/RS goes silent
    assert p.host.state is LinkState.FAILED
    assert next(e for e in p.host_events if isinstance(e, LinkFailed)).reason.startswith("no telegram")
    assert p.host.next_deadline() is None


def test_unknown_type_is_acked_with_code_10() -> None:
    p = Pair()
    p.host.receive_data(b"###00008ASRS1GW00100009SYNQ1234", p.now)
    out = AsrsDecoder().feed(p.host.data_to_send())
    acks = [(t.seq, t.body.code) for t in out if isinstance(t, Telegram) and isinstance(t.body, Response)]
    assert acks == [(9, ErrorCode.UNKNOWN_TYPE)]


def test_transition_table_refuses_double_connect() -> None:
    link = AsrsLink(local="GW001", remote="ASRS1")
    link.connected(0.0)
    with pytest.raises(LocalProtocolError):
        link.connected(0.0)


def test_bad_field_in_data_telegram_is_acked_malformed_and_not_delivered() -> None:
    p = Pair()
    good = encode(Telegram("ASRS1", "GW001", 5, LocationUpdate("T1", "PS01", TS)))
    bad = good[:27] + b"T*1" + good[30:]
    events = p.host.receive_data(bad, p.now)
    assert not any(isinstance(e, Received) for e in events)
    out = AsrsDecoder().feed(p.host.data_to_send())
    acks = [(t.seq, t.body.code) for t in out if isinstance(t, Telegram) and isinstance(t.body, Response)]
    assert acks == [(5, ErrorCode.MALFORMED)]
