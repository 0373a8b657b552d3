"""HID keyboard-wedge decoder: the doc's records, byte-by-byte feeding, modifiers, errors."""

from __future__ import annotations

import asyncio
import os
import re
import struct
from pathlib import Path

import evdev.ecodes as ec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.hid_scanner import main as hid_sim_main
from firmware_sim.hid_scanner import order_texts, write_scans
from gateway.hid_scanner import HidScannerAdapter
from protocols import hid
from protocols.hid import (
    EV_KEY,
    EVENT,
    HidDecoder,
    HidError,
    HidErrorKind,
    ScanLine,
    encode_text,
    pack_event,
)
from tests.conftest import wait_for
from tests.scanner_fixtures import CUSTOMER, GTIN_A, GTIN_B, GTIN_UNKNOWN, Gw, gw, outbox_orders

__all__ = ["gw"]
DOC = Path(hid.__file__).with_name("HID-SCANNER.md")
US_TYPEABLE = "".join(sorted({c for pair in hid.LAYOUTS["us"].values() for c in pair}))


def decode_all(data: bytes, **kw: object) -> list[ScanLine | HidError]:
    return HidDecoder(**kw).feed(data)  # type: ignore[arg-type]


def texts(events: list[ScanLine | HidError]) -> list[str]:
    return [e.text if isinstance(e, ScanLine) else f"!{e.kind}" for e in events]


def key(code: int, value: int) -> bytes:
    return pack_event(0, 0, EV_KEY, code, value)


def tap(code: int) -> bytes:
    return key(code, 1) + key(code, 0)


def test_event_layout_is_64_bit_input_event() -> None:
    assert EVENT.size == 24
    assert pack_event(1, 2, 1, 30, 1) == struct.pack("<qqHHi", 1, 2, 1, 30, 1)


def test_key_codes_match_kernel_headers() -> None:
    # protocols/hid.py copies the numbers; evdev (tests only) holds the kernel's.
    assert hid.KEY_LEFTSHIFT == ec.KEY_LEFTSHIFT and hid.KEY_RIGHTSHIFT == ec.KEY_RIGHTSHIFT
    assert hid.KEY_ENTER == ec.KEY_ENTER and hid.KEY_KPENTER == ec.KEY_KPENTER
    assert hid.KEY_TAB == ec.KEY_TAB and hid.KEY_LEFTALT == ec.KEY_LEFTALT
    assert hid.SYN_DROPPED == ec.SYN_DROPPED and hid.EV_KEY == ec.EV_KEY
    for name, code in [("A", 30), ("Q", 16), ("Z", 44), ("M", 50), ("1", 2), ("0", 11)]:
        assert ec.ecodes[f"KEY_{name}"] == code
        assert hid.LAYOUTS["us"][code][0] == name.lower()
    for d in range(10):
        assert hid._KEYPAD_DIGITS[ec.ecodes[f"KEY_KP{d}"]] == d
    assert hid.LAYOUTS["us"][ec.KEY_SEMICOLON] == (";", ":")
    assert hid.LAYOUTS["us"][ec.KEY_GRAVE] == ("`", "~")


def doc_examples() -> list[tuple[str, bytes]]:
    out = []
    for expect, body in re.findall(r"```hid-example => (.*?)\n(.*?)```", DOC.read_text(), re.S):
        out.append((expect.encode().decode("unicode_escape"), bytes.fromhex(body)))
    assert len(out) >= 2
    return out


@pytest.mark.parametrize(("expect", "data"), doc_examples())
def test_doc_examples(expect: str, data: bytes) -> None:
    assert texts(decode_all(data)) == [expect]


def test_doc_example_matches_encoder() -> None:
    expect, data = doc_examples()[0]
    keys_only = b"".join(
        r
        for r in (encode_text(expect, start=1_700_000_000)[i : i + 24] for i in range(0, 10**4, 24))
        if r[16:18] == b"\x01\x00"
    )
    assert keys_only == data


@given(
    lines=st.lists(st.text(US_TYPEABLE + "\x1d", min_size=1, max_size=40), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
    terminator=st.sampled_from(["enter", "tab"]),
    sub=st.sampled_from([None, "\x1d"]),
)
def test_round_trip_any_split(lines: list[str], cuts: list[int], terminator: str, sub: str | None) -> None:
    lines = [ln for ln in lines if ln.strip("\t\n" if terminator == "tab" else "\n")]
    data = b"".join(
        encode_text(ln.replace("\t" if terminator == "tab" else "\n", " "), terminator=terminator)
        for ln in lines
    )
    dec = HidDecoder(terminator=terminator)
    out: list[ScanLine | HidError] = []
    prev = 0
    for c in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        out += dec.feed(data[prev:c])
        prev = c
    assert texts(out) == [ln.replace("\t" if terminator == "tab" else "\n", " ") for ln in lines]


def test_byte_by_byte() -> None:
    data = encode_text("]C10104006381333931\x1d91A-1")
    dec = HidDecoder()
    out = [e for i in range(len(data)) for e in dec.feed(data[i : i + 1])]
    assert texts(out) == ["]C10104006381333931\x1d91A-1"]


def test_right_shift_and_caps_lock() -> None:
    data = (
        key(54, 1)
        + tap(30)
        + key(54, 0)
        + tap(58)
        + tap(48)
        + key(42, 1)
        + tap(46)
        + key(42, 0)
        + tap(2)
        + tap(28)
    )
    assert texts(decode_all(data)) == ["ABc1"]


def test_keypad_digits_and_kp_enter() -> None:
    data = tap(79) + tap(80) + tap(81) + tap(83) + tap(96)
    assert texts(decode_all(data)) == ["123."]


def test_hold_is_ignored_and_key_up_types_nothing() -> None:
    data = key(30, 1) + key(30, 2) + key(30, 2) + key(30, 0) + tap(28)
    assert texts(decode_all(data)) == ["a"]


def test_ctrl_bracket_is_gs_and_substitute_maps_to_gs() -> None:
    data = tap(2) + key(29, 1) + tap(27) + key(29, 0) + tap(3) + tap(28)
    assert texts(decode_all(data)) == ["1\x1d2"]
    assert texts(decode_all(encode_text("1~2"), gs_substitute="~")) == ["1\x1d2"]
    assert encode_text("1\x1d2", gs_substitute="~") == encode_text("1~2")


def test_tab_terminator_and_enter_as_data() -> None:
    data = tap(2) + tap(28) + tap(3) + tap(15)
    assert texts(decode_all(data, terminator="tab")) == ["1\n2"]


def test_layout_mismatch_is_an_error_not_garbage() -> None:
    data = tap(2) + tap(86) + tap(28)  # KEY_102ND exists on DE, not on US
    (err,) = decode_all(data)
    assert isinstance(err, HidError) and err.kind is HidErrorKind.UNMAPPED_KEY and err.partial == "1"
    assert texts(decode_all(data, layout="de")) == ["1<"]
    assert texts(decode_all(encode_text("yz"), layout="de")) == ["zy"]


def test_too_long_line_discarded_and_next_line_fine() -> None:
    out = decode_all(encode_text("x" * 20) + encode_text("ok"), max_line=10)
    assert texts(out) == ["!too-long", "ok"]
    assert isinstance(out[0], HidError) and out[0].partial == "x" * 10


def test_syn_dropped_discards_line() -> None:
    data = tap(2) + pack_event(0, 0, 0, hid.SYN_DROPPED, 0) + tap(3) + tap(28) + encode_text("5")
    assert texts(decode_all(data)) == ["!events-dropped", "5"]


def test_empty_lines_ignored_and_partial_record_kept() -> None:
    dec = HidDecoder()
    data = tap(28) + encode_text("7")
    cut = len(data) - 3 * 24 - 5  # inside the Enter-down record
    assert dec.feed(data[:cut]) == []
    assert texts(dec.feed(data[cut:])) == ["7"]


def test_bad_config() -> None:
    with pytest.raises(hid.HidConfigError):
        HidDecoder(layout="xx")
    with pytest.raises(hid.HidConfigError, match="terminator"):
        HidDecoder(terminator="x")


@given(st.binary(max_size=2000))
def test_garbage_never_crashes_and_buffer_bounded(data: bytes) -> None:
    dec = HidDecoder(max_line=16)
    for e in dec.feed(data):
        assert isinstance(e, ScanLine | HidError)
        if isinstance(e, ScanLine):
            assert len(e.text) <= 16
    assert len(dec._raw) < 24


@given(st.lists(st.tuples(st.integers(0, 600), st.integers(-1, 3)), max_size=300))
def test_random_key_events_never_crash(events: list[tuple[int, int]]) -> None:
    dec = HidDecoder(max_line=32)
    out = dec.feed(b"".join(key(c, v) for c, v in events))
    assert all(isinstance(e, ScanLine | HidError) for e in out)


# -- adapter <-> simulator over a real FIFO and a file -------------------------------------------


async def test_fifo_scans_become_an_order(gw: Gw, tmp_path: Path) -> None:
    fifo = tmp_path / "hid0"
    os.mkfifo(fifo)
    adapter = HidScannerAdapter(device_id="hid-1", path=fifo, sessions=gw.sessions, gs_substitute="~")
    task = asyncio.create_task(adapter.run(), name="hid-adapter")
    try:
        async with asyncio.timeout(5):
            await adapter.opened.wait()
        texts = order_texts([f"{GTIN_A}:3", GTIN_B], end=False, location="C1-02")
        await asyncio.to_thread(write_scans, fifo, [*texts, "]E0" + GTIN_UNKNOWN], gs_substitute="~")
        await asyncio.to_thread(
            write_scans, fifo, ["x" * 300, "SG-END"]
        )  # a second writer; the overlong line is dropped
        await wait_for(lambda: adapter.counters.orders == 1, timeout=5, what="order")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (order,) = await outbox_orders(gw)
    assert order["channel"] == "hid-scanner" and order["customer"] == CUSTOMER
    assert [(ln["gtin"], ln["qty"]) for ln in order["lines"]] == [
        ("04006381333931", 3),
        ("00000096385074", 1),
    ]
    assert adapter.counters.refused == {"unknown-gtin": 1}
    assert adapter.counters.decode_errors == {"too-long": 1}


async def test_recorded_file_replayed(gw: Gw, tmp_path: Path) -> None:
    rec = tmp_path / "recorded.events"
    write_scans(rec, ["]E0" + GTIN_A, "SG-SETLAST-7"], layout="de", terminator="tab")
    adapter = HidScannerAdapter(
        device_id="hid-2", path=rec, sessions=gw.sessions, layout="de", terminator="tab"
    )
    async with asyncio.timeout(5):
        await adapter.run()  # returns at the end of the file
    s = await gw.sessions.open_session("hid-2")
    assert s is not None and [(ln.gtin, ln.qty) for ln in s.lines] == [("04006381333931", 7)]


def test_sim_main_writes_records(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert hid_sim_main(["--path", str(out), "--order", f"{GTIN_A}:2", "--end"]) == 0
    lines = HidDecoder().feed(out.read_bytes())
    assert texts(lines) == ["SG-QTY-2", "]C10104006381333931", "SG-END"]
