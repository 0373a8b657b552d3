"""Serial scanner: framing and ACK/NAK codec (doc examples, splits, garbage), then the
gateway adapter against the simulator over a real PTY."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import serial_scanner
from protocols.serial_scanner import (
    ACK,
    NAK,
    ErrorBeep,
    FrameError,
    FrameErrorKind,
    Framing,
    GoodBeep,
    HostState,
    Resend,
    ScannerDevice,
    ScannerHost,
    ScanRead,
    SerialScannerError,
    Terminator,
)

DOC = Path(serial_scanner.__file__).with_name("SERIAL-SCANNER.md")


def show(events: list[ScanRead | FrameError]) -> str:
    return "|".join(e.text if isinstance(e, ScanRead) else f"!{e.kind}" for e in events)


def doc_examples() -> list[tuple[Framing, bytes, str]]:
    out = []
    pat = r"```serial-example prefix=(\S*) suffix=(\S*) terminator=(\S+)\n(.*?)\n=> (.*?)\n```"
    for pre, suf, term, hexes, expect in re.findall(pat, DOC.read_text(), re.S):
        framing = Framing(bytes.fromhex(pre), bytes.fromhex(suf), Terminator[term])
        out.append((framing, bytes.fromhex(hexes), expect.encode().decode("unicode_escape")))
    assert len(out) >= 3
    return out


@pytest.mark.parametrize(("framing", "data", "expect"), doc_examples())
def test_doc_examples(framing: Framing, data: bytes, expect: str) -> None:
    assert show(ScannerHost(framing).feed(data)) == expect
    host = ScannerHost(framing)
    assert show([e for i in range(len(data)) for e in host.feed(data[i : i + 1])]) == expect


def test_doc_example_bytes_are_what_the_device_sends() -> None:
    framing, data, expect = doc_examples()[1]
    dev = ScannerDevice(framing)
    assert b"".join(dev.read(t) for t in expect.split("|")) == data


texts = st.text(
    st.characters(min_codepoint=0x1D, max_codepoint=0xFF, exclude_characters="\r\n"), min_size=1, max_size=60
)
framings = st.builds(
    Framing,
    prefix=st.sampled_from([b"", b"\x02", b"SG>"]),
    suffix=st.sampled_from([b"", b"\x03", b"<"]),
    terminator=st.sampled_from(list(Terminator)),
)


@given(
    framing=framings,
    reads=st.lists(texts, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_round_trip_any_split(framing: Framing, reads: list[str], cuts: list[int]) -> None:
    dev, host = ScannerDevice(framing), ScannerHost(framing)
    data = b"".join(dev.read(t) for t in reads)
    out: list[ScanRead | FrameError] = []
    prev = 0
    for c in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        out += host.feed(data[prev:c])
        prev = c
    assert out == [ScanRead(t) for t in reads]


@given(framing=framings, data=st.binary(max_size=3000))
def test_garbage_never_crashes_and_buffer_bounded(framing: Framing, data: bytes) -> None:
    host = ScannerHost(framing)
    for ev in host.feed(data):
        assert isinstance(ev, ScanRead | FrameError)
    assert len(host._framer._buf) <= framing.max_frame + 2


def test_too_long_reported_once_then_resync() -> None:
    host = ScannerHost(Framing(max_frame=8))
    out = host.feed(b"x" * 30) + host.feed(b"y" * 30 + b"\rok\r")
    assert show(out) == "!too-long|ok"
    assert show(host.feed(b"123456789\r")) == "!too-long"


def test_cr_host_tolerates_crlf_scanner() -> None:
    assert show(ScannerHost().feed(b"a\r\nb\r\n")) == "a|b"


def test_host_mode_verdicts_and_resend_attempts() -> None:
    host = ScannerHost(ack_mode=True)
    assert host.feed(b"X\r") == [ScanRead("X", 1)]
    assert host.state is HostState.AWAITING_VERDICT
    assert host.nak() == bytes([NAK])
    assert host.feed(b"X\r") == [ScanRead("X", 2)]
    assert host.nak() == bytes([NAK])
    assert host.feed(b"X\r") == [ScanRead("X", 3)]
    assert host.nak() == bytes([NAK])
    assert host.feed(b"X\r") == [ScanRead("X", 1)]  # a new read of the same code, after the beep
    assert host.ack() == bytes([ACK])
    assert host.feed(b"X\r") == [ScanRead("X", 1)]
    with pytest.raises(SerialScannerError):
        ScannerHost().ack()


def test_host_reports_read_before_verdict() -> None:
    host = ScannerHost(ack_mode=True)
    (a, b) = host.feed(b"A\rB\r")
    assert a == ScanRead("A") and isinstance(b, FrameError) and b.kind is FrameErrorKind.UNEXPECTED
    host.ack()
    with pytest.raises(SerialScannerError):
        host.ack()


def test_device_nak_resend_then_error_beep() -> None:
    dev = ScannerDevice(ack_mode=True)
    frame = dev.read("123")
    assert dev.feed(bytes([NAK])) == [Resend(frame, 2)]
    assert dev.feed(bytes([NAK])) == [Resend(frame, 3)]
    assert dev.feed(bytes([NAK])) == [ErrorBeep("123", "NAK 3 times")]
    assert dev.feed(bytes([ACK])) == []  # stray now
    assert dev.stray_bytes == 1


def test_device_ack_and_timeout() -> None:
    dev = ScannerDevice(ack_mode=True)
    dev.read("1")
    with pytest.raises(SerialScannerError):
        dev.read("2")
    assert dev.feed(b"\x00" + bytes([ACK])) == [GoodBeep("1")]
    dev.read("2")
    assert dev.ack_timeout() == ErrorBeep("2", "no ACK/NAK from host")
    assert dev.ack_timeout() is None


def test_device_and_host_in_memory_pair() -> None:
    dev, host = ScannerDevice(ack_mode=True), ScannerHost(ack_mode=True)
    (r,) = host.feed(dev.read("good"))
    assert dev.feed(host.ack()) == [GoodBeep("good")]
    wire = dev.read("bad")
    beeps: list[object] = []
    while True:
        (r,) = host.feed(wire)
        assert isinstance(r, ScanRead)
        out = dev.feed(host.nak())
        if isinstance(out[0], Resend):
            wire = out[0].data
            continue
        beeps = out
        break
    assert beeps == [ErrorBeep("bad", "NAK 3 times")]
    assert r.attempt == 3


def test_framing_rejects_bad_config() -> None:
    with pytest.raises(SerialScannerError):
        Framing(prefix=b"\r")
    with pytest.raises(SerialScannerError):
        Framing().encode("a\rb")
