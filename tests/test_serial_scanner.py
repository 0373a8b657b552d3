"""Serial scanner: framing and ACK/NAK codec (doc examples, splits, garbage), then the
gateway adapter against the simulator over a real PTY."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.serial_scanner import Faults, SerialScannerSim, open_pty
from gateway.serial_scanner import SerialScannerAdapter
from protocols import serial_scanner
from protocols.barcode import encode_shelf_label
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
from tests.conftest import wait_for
from tests.scanner_fixtures import CUSTOMER, GTIN_A, GTIN_B, GTIN_UNKNOWN, Gw, gw, outbox_orders

__all__ = ["gw"]
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


# -- adapter <-> simulator over a real PTY ------------------------------------------------------


@contextlib.asynccontextmanager
async def rig(
    g: Gw, *, ack_mode: bool = True, faults: Faults | None = None, **kw: Any
) -> AsyncIterator[tuple[SerialScannerAdapter, SerialScannerSim]]:
    master, slave, name = open_pty()
    adapter = SerialScannerAdapter(device_id="ser-1", port=name, sessions=g.sessions, ack_mode=ack_mode, **kw)
    task = asyncio.create_task(adapter.run(), name="serial-adapter")
    try:
        async with asyncio.timeout(5):
            await adapter.opened.wait()
        async with SerialScannerSim(
            master, framing=adapter.framing, ack_mode=ack_mode, ack_timeout_s=1.0, faults=faults
        ) as sim:
            yield adapter, sim
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(master)
        os.close(slave)


async def test_scans_to_order_acked_only_after_commit(gw: Gw) -> None:
    def committed_lines() -> int:
        conn = sqlite3.connect(gw.path)  # a separate connection sees only committed data
        try:
            return int(conn.execute("SELECT count(*) FROM scanner_lines").fetchone()[0])
        finally:
            conn.close()

    async with rig(gw, prefix=b"\x02", suffix=b"\x03", terminator="CRLF") as (adapter, sim):
        assert await sim.scan("SG-QTY-4") == GoodBeep("SG-QTY-4")
        assert await sim.scan("]E0" + GTIN_A) == GoodBeep("]E0" + GTIN_A)
        assert committed_lines() == 1  # the ACK came after the commit
        assert await sim.scan(encode_shelf_label(GTIN_B, location="B2")) is not None
        assert committed_lines() == 2
        assert await sim.scan("SG-END") == GoodBeep("SG-END")
        (order,) = await outbox_orders(gw)  # committed before the END was acked
        assert committed_lines() == 0
    assert order["channel"] == "scanner" and order["customer"] == CUSTOMER
    assert [(ln["gtin"], ln["qty"]) for ln in order["lines"]] == [
        ("04006381333931", 4),
        ("00000096385074", 1),
    ]
    assert adapter.counters.accepted == 4 and adapter.counters.orders == 1
    assert sim.transmissions == 4 and adapter.acks_sent == 4


async def test_refused_scan_naks_three_times_then_error_beep(gw: Gw) -> None:
    async with rig(gw) as (adapter, sim):
        beep = await sim.scan("]E0" + GTIN_UNKNOWN)
        assert beep == ErrorBeep("]E0" + GTIN_UNKNOWN, "NAK 3 times")
        assert sim.transmissions == 3 and adapter.naks_sent == 3
        assert await sim.scan("]E0" + GTIN_A) == GoodBeep("]E0" + GTIN_A)
    assert adapter.counters.refused == {"unknown-gtin": 1}  # the resends are not new refusals
    assert adapter.counters.retries == 2


async def test_garbled_frame_is_naked_and_resend_accepted(gw: Gw) -> None:
    async with rig(gw, prefix=b"\x02", faults=Faults(garble=1)) as (adapter, sim):
        assert await sim.scan("]E0" + GTIN_A) == GoodBeep("]E0" + GTIN_A)
        assert sim.transmissions == 2
    assert adapter.counters.decode_errors == {"bad-prefix": 1}
    s = await gw.sessions.open_session("ser-1")
    assert s is not None and len(s.lines) == 1


async def test_lost_ack_scanner_discards_without_duplicate(gw: Gw) -> None:
    async with rig(gw, faults=Faults(drop_acks=1)) as (_, sim):
        beep = await sim.scan("]E0" + GTIN_A)
        assert beep == ErrorBeep("]E0" + GTIN_A, "no ACK/NAK from host")
        assert sim.verdicts == [ACK]  # the gateway did ack (after commit); the line lost it
        assert await sim.scan("]E0" + GTIN_B) == GoodBeep("]E0" + GTIN_B)
    s = await gw.sessions.open_session("ser-1")
    assert s is not None and len(s.lines) == 2  # committed once each, never resent


async def test_without_host_mode_refusals_only_counted(gw: Gw) -> None:
    async with rig(gw, ack_mode=False) as (adapter, sim):
        assert await sim.scan("]E0" + GTIN_UNKNOWN) is None
        assert await sim.scan("]E0" + GTIN_A) is None
        await wait_for(lambda: adapter.counters.reads == 2, timeout=5, what="two reads")
    assert adapter.counters.refused == {"unknown-gtin": 1} and adapter.counters.accepted == 1
    assert sim.verdicts == []
