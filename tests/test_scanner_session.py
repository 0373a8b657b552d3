"""Scan-to-order sessions on a real SQLite file: lines, quantity codes, close, refusals,
idle timeout and restart."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.scanner import ScannerCounters
from protocols.barcode import encode_shelf_label
from protocols.records import Channel, parse_order
from tests.conftest import wait_for
from tests.scanner_fixtures import (
    CUSTOMER,
    GTIN_A,
    GTIN_B,
    GTIN_UNKNOWN,
    Clock,
    Gw,
    gw,
    open_gw,
    outbox_orders,
    seeded_gw,
)

__all__ = ["gw"]
DEV = "scanner-1"


async def scan(g: Gw, text: str, dev: str = DEV, channel: Channel = Channel.SCANNER):  # type: ignore[no-untyped-def]
    return await g.sessions.scan(dev, channel, text)


async def test_scans_become_one_order(gw: Gw) -> None:
    assert (await scan(gw, "]E0" + GTIN_A)).qty == 1
    assert (await scan(gw, "SG-QTY-6")).action == "qty"
    assert (await scan(gw, encode_shelf_label(GTIN_B, location="A12-03"))).qty == 6
    assert (await scan(gw, encode_shelf_label(GTIN_A, count=12))).qty == 12  # label count hint
    assert (await scan(gw, "SG-QTY-2")).accepted
    assert (await scan(gw, encode_shelf_label(GTIN_A, count=12))).qty == 2  # pending code wins
    s = await gw.sessions.open_session(DEV)
    assert s is not None and [ln.qty for ln in s.lines] == [1, 6, 12, 2]
    assert s.lines[1].location == "A12-03"
    end = await scan(gw, "SG-END")
    assert end.accepted and end.record is not None and end.record.id == s.session_id
    (order,) = await outbox_orders(gw)
    assert order["type"] == "order"
    body = {k: v for k, v in order.items() if k not in ("id", "type")}
    parsed = parse_order(body)  # central's schema accepts it
    assert parsed.customer == CUSTOMER and parsed.channel is Channel.SCANNER
    assert parsed.requested_date.isoformat() == "2025-03-15"
    assert [(ln.gtin, ln.sku, ln.qty) for ln in parsed.lines] == [
        ("04006381333931", "SKU-A", 15),
        ("00000096385074", "SKU-B", 6),
    ]
    assert parsed.source_ref == DEV
    assert await gw.sessions.open_session(DEV) is None


async def test_refusals_change_nothing(gw: Gw) -> None:
    counters = ScannerCounters()
    for text, code in [
        ("]E0" + GTIN_UNKNOWN, "unknown-gtin"),
        ("]E04006381333932", "bad-check-digit"),
        ("garbage", "unparseable"),
        ("]Q1hello", "unsupported-symbology"),
        ("SG-END", "nothing-to-order"),
        ("SG-UNDO", "no-line"),
        ("SG-SETLAST-4", "no-line"),
        ("SG-CANCEL", "nothing-to-order"),
        ("SG-QTY-100000", "bad-control-code"),
    ]:
        out = await scan(gw, text)
        counters.count(out)
        assert not out.accepted and out.code == code and out.reason, text
    assert counters.refused["unknown-gtin"] == 1 and counters.accepted == 0
    assert await gw.sessions.open_session(DEV) is None
    assert await outbox_orders(gw) == []


async def test_undo_setlast_cancel_and_devices_independent(gw: Gw) -> None:
    await scan(gw, GTIN_A)
    await scan(gw, GTIN_B)
    await scan(gw, GTIN_B, dev="other", channel=Channel.HID_SCANNER)
    assert (await scan(gw, "SG-SETLAST-9")).qty == 9
    assert (await scan(gw, "SG-UNDO")).gtin == "00000096385074"
    s = await gw.sessions.open_session(DEV)
    assert s is not None and [(ln.gtin, ln.qty) for ln in s.lines] == [("04006381333931", 1)]
    assert (await scan(gw, "SG-CANCEL")).accepted
    assert await gw.sessions.open_session(DEV) is None
    other = await gw.sessions.open_session("other")
    assert other is not None and other.channel is Channel.HID_SCANNER and len(other.lines) == 1
    rec = (await scan(gw, "sg-end", dev="other")).record
    assert rec is not None and rec.body["channel"] == "hid-scanner"


async def test_qty_limit(gw: Gw) -> None:
    """A GTIN's line in the session may total the edge's line limit (9999), no more."""
    await scan(gw, "SG-QTY-9990")
    assert (await scan(gw, GTIN_A)).accepted
    await scan(gw, "SG-QTY-9")
    assert (await scan(gw, GTIN_A)).accepted
    out = await scan(gw, GTIN_A)
    assert not out.accepted and out.code == "qty-too-large" and "10000 > 9999" in out.reason
    assert (await scan(gw, "SG-SETLAST-10")).accepted is False


async def test_session_survives_restart_and_idle_timeout_closes_it(tmp_path: Path) -> None:
    gw = await seeded_gw(tmp_path / "gw.db")
    await scan(gw, "SG-QTY-3")
    await scan(gw, GTIN_A)
    await scan(gw, "SG-QTY-5")  # pending, survives too
    await gw.db.close()
    clock = Clock(gw.clock.t + 10)
    g2 = await open_gw(gw.path, clock, idle_timeout_s=60)
    try:
        s = await g2.sessions.open_session(DEV)
        assert s is not None and s.pending_qty == 5 and s.lines[0].qty == 3
        assert (await g2.sessions.scan(DEV, Channel.SCANNER, GTIN_B)).qty == 5
        assert await g2.sessions.close_idle() == []
        runner = asyncio.create_task(g2.sessions.run())
        try:
            clock.t += 61
            g2.sessions.wake()  # the fake clock jumped: re-evaluate the deadline
            await wait_for(lambda: outbox_orders(g2), what="idle order")
            (order,) = await outbox_orders(g2)
            assert [ln["qty"] for ln in order["lines"]] == [3, 5]
            assert await g2.sessions.open_session(DEV) is None
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    finally:
        await g2.db.close()
    conn = sqlite3.connect(gw.path)
    try:
        assert conn.execute("SELECT count(*) FROM scanner_lines").fetchone()[0] == 0
    finally:
        conn.close()


async def test_label_count_zero_is_no_quantity_hint(gw: Gw) -> None:
    """AI 37 (or 30) = 0 on a shelf label parses as count 0 and adds no 0-quantity line: the
    line gets the pending SG-QTY-n, else 1, as a label without a count (BARCODES.md)."""
    label = f"]C1010{GTIN_A}370\x1d91A12-03"
    assert (await scan(gw, label)).qty == 1
    assert (await scan(gw, "SG-QTY-4")).accepted
    assert (await scan(gw, label)).qty == 4
    assert (await scan(gw, f"]C1010{GTIN_A}3000")).qty == 1  # AI 30 = 00 alike
    s = await gw.sessions.open_session(DEV)
    assert s is not None and [(ln.qty, ln.location) for ln in s.lines] == [
        (1, "A12-03"),
        (4, "A12-03"),
        (1, None),
    ]
