"""The durable downlink: central keeps records for a gateway until the gateway's ack names
them; the gateway applies each record id once, after its own commit, and acks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from central import downlink
from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from gateway import outbox as outbox_mod
from gateway import sync as sync_mod
from gateway.app import migrations as gateway_migrations
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from protocols.envelope import Record
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for


async def test_unacked_downlink_is_resent_and_applied_once(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downlink, "RESEND_AFTER_S", 0.4)
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    cdb = DurableDB(tmp_path / "c.db", migrations=all_migrations())
    gdb = DurableDB(tmp_path / "g.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    calls: list[str] = []

    def handler(conn: sqlite3.Connection, rec: Record) -> None:
        calls.append(rec.id)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")  # first delivery fails: left unacked, no effect
        conn.execute("INSERT INTO items (gtin, sku) VALUES (?, ?)", (rec.body["gtin"], rec.body["sku"]))

    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-dl"))
        inbox = Inbox(gdb)
        inbox.register("test_item", handler)
        sync = Sync(
            gateway_id="store-5",
            outbox=Outbox(gdb),
            mqtt=MqttSettings(port=broker.port),
            on_records=inbox.handle,
        )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(consumer.run()), tg.create_task(sync.run())]
            await consumer.connected.wait()
            await sync.connected.wait()
            rid = await cdb.write(
                lambda c: downlink.enqueue(
                    c, gateway="store-5", type="test_item", body={"gtin": "00000000000017", "sku": "A"}
                )
            )
            consumer.downlink.notify()

            async def acked() -> bool:
                n = await cdb.read(lambda c: c.execute("SELECT count(*) FROM downlink_outbox").fetchone()[0])
                return bool(n == 0)

            await wait_for(acked, timeout=15, what="gateway ack removes the record from central's downlink")
            for t in tasks:
                t.cancel()
        result = await cdb.read(
            lambda c: c.execute("SELECT status FROM downlink_results WHERE id = ?", (rid,)).fetchone()
        )
        items = await gdb.read(lambda c: c.execute("SELECT sku FROM items").fetchall())
    finally:
        await gdb.close()
        await cdb.close()
    assert calls == [rid, rid], "sent, failed unacked, sent again"
    assert consumer.downlink.resent >= 1
    assert result == ("accepted",)
    assert items == [("A",)], "applied exactly once"
    assert inbox.errors == 1


async def test_record_refused_in_processing_is_told_to_the_gateway(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks come on receipt (schema-checked); a refusal found later in processing goes down
    as a durable ``record_result`` and the gateway's record status becomes rejected."""
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    cdb = DurableDB(tmp_path / "c.db", migrations=all_migrations())
    gdb = DurableDB(tmp_path / "g.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-rr"))
        inbox = Inbox(gdb)
        inbox.register(outbox_mod.RECORD_RESULT, outbox_mod.apply_record_result)
        box = Outbox(gdb)
        sync = Sync(
            gateway_id="supplier-1", outbox=box, mqtt=MqttSettings(port=broker.port), on_records=inbox.handle
        )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(consumer.run()), tg.create_task(sync.run())]
            await consumer.connected.wait()
            rec = await box.submit("supplier_confirmation", {"order_no": "SO99999999", "state": "confirmed"})

            async def final() -> bool:
                res = await box.result(rec.id)
                return bool(res and res["status"] == "rejected")

            await wait_for(final, timeout=15, what="the late refusal reaches the gateway")
            for t in tasks:
                t.cancel()
        res = await box.result(rec.id)
        quarantined = await cdb.read(
            lambda c: c.execute("SELECT reason FROM quarantine WHERE record_id = ?", (rec.id,)).fetchone()
        )
    finally:
        await gdb.close()
        await cdb.close()
    assert res is not None and "was not passed to a supplier" in (res["reason"] or "")
    assert quarantined is not None and "SO99999999" in quarantined[0]
