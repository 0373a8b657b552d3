"""A cancelled MQTT link stops, whatever its child tasks raise on the way out.

A TaskGroup that is cancelled while one of its tasks fails hands back that task's error
instead of the cancellation; taken for a lost link, it made central's consumer (or a
gateway's sync) reconnect and run on forever after being told to stop. Real broker; the
child task that fails is made to fail exactly when it is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from central.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from gateway.app import migrations as gateway_migrations
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from ops.sqlitedb import DurableDB

STOP_S = 10.0


FAILING = [True]  # the stand-in child fails when cancelled while this holds


def _fails_when_cancelled(*_: Any) -> Awaitable[None]:
    async def child() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if FAILING[0]:
                raise aiomqtt.MqttError("link lost while stopping") from None
            raise

    return child()


async def _stops_when_cancelled(run: Callable[[], Awaitable[None]], connected: asyncio.Event) -> None:
    FAILING[0] = True
    task = asyncio.ensure_future(run())
    try:
        async with asyncio.timeout(STOP_S):
            await connected.wait()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_S)
        assert task in done, "still running after cancel: it reconnected instead of stopping"
        assert task.cancelled()
    finally:
        FAILING[0] = False  # if it did not stop, the next cancel goes through: the test fails, not hangs
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)


async def test_central_consumer_stops_on_cancel_when_a_child_fails_on_the_way_out(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = DurableDB(tmp_path / "central.db", migrations=all_migrations())
    await db.open()
    try:
        consumer = Consumer(db=db, broker=BrokerSettings(port=broker.port, client_id="central-stop"))
        monkeypatch.setattr(consumer.downlink, "run", _fails_when_cancelled)
        await _stops_when_cancelled(consumer.run, consumer.connected)
    finally:
        await db.close()


async def test_gateway_sync_stops_on_cancel_when_a_child_fails_on_the_way_out(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = DurableDB(tmp_path / "gw.db", migrations=gateway_migrations())
    await db.open()
    try:
        sync = Sync(gateway_id="gw-stop", outbox=Outbox(db), mqtt=MqttSettings(port=broker.port))
        monkeypatch.setattr(sync, "_ack_watchdog", _fails_when_cancelled)
        await _stops_when_cancelled(sync.run, sync.connected)
    finally:
        await db.close()
