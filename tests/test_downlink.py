"""The durable downlink: central keeps records for a gateway until the gateway's ack names
them; the gateway applies each record id once, after its own commit, and acks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

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
from protocols import envelope, topics
from protocols.envelope import Ack, Record
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.db_conn import open_database


async def test_unacked_downlink_is_resent_and_applied_once(
    broker: Mosquitto, tmp_path: Path, central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downlink, "RESEND_AFTER_S", 0.4)
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    cdb = open_database(central_backend, all_migrations())
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
    broker: Mosquitto, tmp_path: Path, central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks come on receipt (schema-checked); a refusal found later in processing goes down
    as a durable ``record_result`` and the gateway's record status becomes rejected."""
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    cdb = open_database(central_backend, all_migrations())
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


# -- the window: a slow or restarting gateway gets a bounded downlink ------------------------------

BACKLOG = 10_000


async def _no_status(gw: str, payload: bytes) -> None:
    """Central's consumer follows gateway status (reconnects) only with a status handler."""


class _Watch:
    """A plain MQTT client subscribed to a gateway's downlink topic: counts every downlink
    message with records the broker delivers, and the records in them (copies included)."""

    def __init__(self, port: int, gw: str) -> None:
        self.messages = 0
        self.records = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{gw}", protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topics.downlink(gw), qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, message: paho.MQTTMessage) -> None:
        env = envelope.decode(message.payload)
        if env.records:
            self.messages += 1
            self.records += len(env.records)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _enqueue_backlog(cdb: DurableDB, gw: str, n: int) -> set[str]:
    def put(conn: sqlite3.Connection) -> list[str]:
        return [downlink.enqueue(conn, gateway=gw, type="test_item", body={"n": i}) for i in range(n)]

    return set(await cdb.write(put))


async def _outbox_count(cdb: DurableDB) -> int:
    n: int = await cdb.read(lambda c: c.execute("SELECT count(*) FROM downlink_outbox").fetchone()[0])
    return n


async def test_a_slow_gateway_has_at_most_the_window_in_flight(
    broker: Mosquitto, tmp_path: Path, central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10k records for a gateway whose inbox is stalled: central sends no more than its window
    of messages until the gateway acks; once the inbox moves, each record is applied once."""
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    gw = "store-slow"
    cdb = open_database(central_backend, all_migrations())
    gdb = DurableDB(tmp_path / "g.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    gate = asyncio.Event()
    applied: list[str] = []

    def handler(conn: sqlite3.Connection, rec: Record) -> None:
        applied.append(rec.id)

    inbox = Inbox(gdb)
    inbox.register("test_item", handler)

    async def on_records(recs: tuple[Record, ...]) -> list[Ack]:
        await gate.wait()
        return await inbox.handle(recs)

    watch = _Watch(broker.port, gw)
    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-win"))
        sync = Sync(
            gateway_id=gw, outbox=Outbox(gdb), mqtt=MqttSettings(port=broker.port), on_records=on_records
        )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(consumer.run()), tg.create_task(sync.run())]
            await consumer.connected.wait()
            await sync.connected.wait()
            ids = await _enqueue_backlog(cdb, gw, BACKLOG)
            consumer.downlink.notify()
            window = downlink.WINDOW
            await wait_for(lambda: watch.messages >= window, timeout=30, what="the first downlink messages")
            # An unwindowed sender publishes all 20 messages within milliseconds; give it time to show.
            await asyncio.sleep(1.5)
            assert watch.messages == window, "more than the window in flight to a stalled gateway"
            gate.set()
            await wait_for(lambda: len(applied) >= BACKLOG, timeout=120, what="every downlink record applied")

            async def empty() -> bool:
                return await _outbox_count(cdb) == 0

            await wait_for(empty, timeout=60, what="central's downlink outbox emptied by the acks")
            for t in tasks:
                t.cancel()
    finally:
        watch.close()
        await gdb.close()
        await cdb.close()
    assert sorted(applied) == sorted(ids), "each record applied exactly once"


async def test_a_backlog_is_delivered_once_across_a_gateway_restart(
    broker: Mosquitto, tmp_path: Path, central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10k records queued at central while the gateway is away (its persistent session at the
    broker, its status ``offline``): central sends it one window and no more, ack timeouts
    passing; when it comes back they are all applied exactly once, and the broker delivers at
    most one window's worth of copies beyond them - central does not send again the whole
    backlog the broker already holds for the session."""
    monkeypatch.setattr(sync_mod, "BACKOFF_MAX_S", 0.3)
    monkeypatch.setattr(downlink, "RESEND_AFTER_S", 0.4)
    gw = "store-back"
    cdb = open_database(central_backend, all_migrations())
    gdb = DurableDB(tmp_path / "g.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    applied: list[str] = []

    def handler(conn: sqlite3.Connection, rec: Record) -> None:
        applied.append(rec.id)

    inbox = Inbox(gdb)
    inbox.register("test_item", handler)

    def new_sync() -> Sync:
        return Sync(
            gateway_id=gw, outbox=Outbox(gdb), mqtt=MqttSettings(port=broker.port), on_records=inbox.handle
        )

    watch = _Watch(broker.port, gw)
    consumer = Consumer(
        db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-back"), on_status=_no_status
    )
    central = asyncio.create_task(consumer.run())
    sync = new_sync()
    gateway = asyncio.create_task(sync.run())
    try:
        await consumer.connected.wait()
        await sync.connected.wait()  # the gateway's persistent session exists; then it goes away
        gateway.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gateway
        # a clean disconnect sends no Last Will: publish the broker's "offline" for it
        watch.client.publish(topics.status(gw), b'{"gw":"store-back","state":"offline","ts":1}', 1, True)
        await wait_for(lambda: consumer.downlink.is_offline(gw), timeout=30, what="central sees it offline")
        ids = await _enqueue_backlog(cdb, gw, BACKLOG)
        consumer.downlink.notify()
        window = downlink.WINDOW
        await wait_for(lambda: watch.messages >= window, timeout=30, what="central sends while it is away")
        await asyncio.sleep(2.0)  # five ack timeouts
        assert watch.messages == window, "an absent gateway gets one window, not resends"
        # Back online, an ack timeout would send the window again (by design): the bound below
        # is for a gateway that acks, so give it a timeout no busy box misses (the 0.4 s above
        # is five timeouts while it is away, not a time to ack 500 records in)
        monkeypatch.setattr(downlink, "RESEND_AFTER_S", 5.0)
        sync = new_sync()
        gateway = asyncio.create_task(sync.run())

        async def empty() -> bool:
            return await _outbox_count(cdb) == 0

        await wait_for(empty, timeout=120, what="every downlink record acked by the restarted gateway")
        await asyncio.sleep(0.5)  # copies still on their way would show in the count
    finally:
        for t in (central, gateway):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        watch.close()
        await gdb.close()
        await cdb.close()
    assert sorted(applied) == sorted(ids), "each record applied exactly once"
    copies = watch.records - BACKLOG
    assert copies <= downlink.WINDOW * downlink.BATCH_RECORDS, f"{copies} records delivered twice"
