"""Every store channel end to end through the real gateway process: a serial scanner on a
PTY, a USB-HID scanner's input_event stream on a FIFO and a handheld terminal's BHT upload on
a PTY, each configured in the gateway's TOML, reach central through a real Mosquitto as
orders that carry their channel - and the gateway reports the devices in its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from firmware_sim import hid_scanner as hid_sim
from firmware_sim import serial_scanner as ser_sim
from firmware_sim.handheld import Pty, Terminal, make_batch
from gateway.app import migrations as gateway_migrations
from gateway.items import Item, upsert_items
from ops.broker import Mosquitto, free_port
from protocols.bht import OrderRecord
from protocols.serial_scanner import GoodBeep
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.procs import Proc

GTIN_A, GTIN_B = "4006381333931", "5901234123457"
DAY = dt.date.today() + dt.timedelta(days=2)


@contextlib.asynccontextmanager
async def central(tmp: Path, port: int) -> AsyncIterator[DurableDB]:
    db = DurableDB(tmp / "central.db", migrations=all_migrations())
    await db.open()
    consumer = Consumer(db=db, broker=BrokerSettings(port=port, client_id="central-e2e"))
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.connected.wait()
        yield db
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.slow
async def test_scanner_hid_and_handheld_orders_reach_central(broker: Mosquitto, tmp_path: Path) -> None:
    # the gateway's item cache, as central's master_items would have filled it
    gw_dir = tmp_path / "store-4"
    gdb = DurableDB(gw_dir / "store-4.db", migrations=gateway_migrations())
    await gdb.open()
    await gdb.write(lambda c: upsert_items(c, [Item(GTIN_A, "SKU-PEN"), Item(GTIN_B, "SKU-TEA")]))
    await gdb.close()

    ser_master, ser_slave, ser_name = ser_sim.open_pty()
    ht = Pty()
    fifo = tmp_path / "hid.fifo"
    os.mkfifo(fifo)
    http = free_port()
    cfg = tmp_path / "store-4.toml"
    cfg.write_text(
        f'gateway_id = "store-4"\ncustomer = "S004"\ndata_dir = "{gw_dir}"\n'
        f"[mqtt]\nport = {broker.port}\n[http]\nport = {http}\n"
        f'[[serial_scanners]]\ndevice_id = "ser-1"\nport = "{ser_name}"\nack_mode = true\n'
        f'[[hid_scanners]]\ndevice_id = "hid-1"\npath = "{fifo}"\ngrab = false\n'
        f'[[handhelds]]\ndevice_id = "ht-1"\nport = "{ht.name}"\n'
    )
    gw = Proc("gateway", cfg, http, tmp_path / "store-4.log")
    try:
        async with central(tmp_path, broker.port) as cdb:
            await asyncio.to_thread(gw.start)

            async def devices_up() -> bool:
                text = await asyncio.to_thread(fetch, f"{gw.url}/metrics")
                return all(
                    f'storegate_device_online{{device="{d}",kind="{k}"}} 1.0' in text
                    for d, k in (("ser-1", "serial-scanner"), ("hid-1", "hid-scanner"), ("ht-1", "handheld"))
                )

            await wait_for(devices_up, timeout=15, what="all three devices online at the gateway")
            # serial scanner: 3 x pen, 1 x tea, end; each scan good-beeped after its commit
            async with ser_sim.SerialScannerSim(ser_master, ack_mode=True) as scanner:
                for text in ser_sim.order_texts([f"{GTIN_A}:3", GTIN_B], end=True):
                    beep = await asyncio.wait_for(scanner.scan(text), 10)
                    assert isinstance(beep, GoodBeep), (text, beep)
            # HID scanner: keyboard events into the FIFO
            await asyncio.to_thread(hid_sim.write_scans, fifo, hid_sim.order_texts([f"{GTIN_B}:2"], end=True))
            # handheld terminal: one batch of two lines
            term = Terminal(ht.master, enq_interval=0.2)
            batch = make_batch("HT07", 5, [OrderRecord(GTIN_A, 12, DAY), OrderRecord(GTIN_B, 4, DAY)])
            await asyncio.wait_for(term.upload(batch), 20)

            async def three_channels() -> bool:
                rows = await cdb.read(lambda c: c.execute("SELECT DISTINCT channel FROM orders").fetchall())
                return {r[0] for r in rows} == {"scanner", "hid-scanner", "handheld"}

            await wait_for(three_channels, timeout=20, what="orders from all three channels at central")
            lines = await cdb.read(
                lambda c: c.execute(
                    "SELECT o.channel, l.gtin, l.qty FROM orders o JOIN order_lines l USING (order_id)"
                    " ORDER BY o.channel, l.gtin"
                ).fetchall()
            )
    finally:
        gw.kill()
        for fd in (ser_master, ser_slave):
            os.close(fd)
        ht.close()
    got = {(ch, gtin.lstrip("0"), qty) for ch, gtin, qty in lines}
    assert got == {
        ("scanner", GTIN_A.lstrip("0"), 3),
        ("scanner", GTIN_B.lstrip("0"), 1),
        ("hid-scanner", GTIN_B.lstrip("0"), 2),
        ("handheld", GTIN_A.lstrip("0"), 12),
        ("handheld", GTIN_B.lstrip("0"), 4),
    }
