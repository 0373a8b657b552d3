"""A cancelled MQTT link stops, whatever its child tasks raise on the way out.

A TaskGroup that is cancelled while one of its tasks fails hands back that task's error
instead of the cancellation; taken for a lost link, it made central's consumer (or a
gateway's sync) reconnect and run on forever after being told to stop. Real broker; the
child task that fails is made to fail exactly when it is cancelled.

And a cancel that lands as the broker's answer does is not lost (``runtime.mqtt.keep_cancel``,
through the services' ``runtime.mqtt.Client``): aiomqtt waits for the answer with
``asyncio.wait_for``, which in Python 3.11 then returns instead of raising; a gateway's sync
was seen parked forever on its next ``Queue.get`` after ``cancel()``."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from gateway.app import migrations as gateway_migrations
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from runtime.mqtt import Client, keep_cancel
from runtime.sqlitedb import DurableDB

STOP_S = 10.0
PARKED_S = 2.0  # the cancel races settle within a few loop steps: still running after this, parked


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
    async with DurableDB(tmp_path / "central.db", migrations=all_migrations()) as db:
        consumer = Consumer(db=db, broker=BrokerSettings(port=broker.port, client_id="central-stop"))
        monkeypatch.setattr(consumer.downlink, "run", _fails_when_cancelled)
        await _stops_when_cancelled(consumer.run, consumer.connected)


async def test_gateway_sync_stops_on_cancel_when_a_child_fails_on_the_way_out(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DurableDB(tmp_path / "gw.db", migrations=gateway_migrations()) as db:
        sync = Sync(gateway_id="gw-stop", outbox=Outbox(db), mqtt=MqttSettings(port=broker.port))
        monkeypatch.setattr(sync, "_ack_watchdog", _fails_when_cancelled)
        await _stops_when_cancelled(sync.run, sync.connected)


async def _publishing_loop(step: Callable[[], Awaitable[None]], steps: list[int]) -> None:
    while True:
        await step()
        steps.append(1)
        await asyncio.Event().wait()  # the loop's next await: parked for good if the cancel was spent


@pytest.mark.parametrize("guarded", [False, True])
async def test_a_cancel_that_arrives_with_the_brokers_answer_still_stops_the_loop(guarded: bool) -> None:
    """The answer (a PUBACK, a SUBACK) and the cancel in the same loop step, awaited the way
    aiomqtt awaits it (``asyncio.wait_for`` with its timeout). Unguarded, Python 3.11 hands
    back the answer and the loop goes on to wait forever with the cancel spent (fixed in
    3.12); through ``keep_cancel`` the task stops, cancelled, on every version."""
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def step() -> None:
        call = asyncio.wait_for(answer, timeout=30)
        await (keep_cancel(call) if guarded else call)

    steps: list[int] = []
    task = asyncio.create_task(_publishing_loop(step, steps))
    await asyncio.sleep(0)  # the task is now waiting for the answer
    answer.set_result(None)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=PARKED_S)
    try:
        if guarded:
            assert task in done and task.cancelled() and steps == []
        else:
            lost = sys.version_info < (3, 12)
            assert (task not in done) is lost, "asyncio.wait_for's cancel handling is not as documented here"
            assert task.cancelling() == 1 and steps == ([1] if lost else [])
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_S)
    assert task.cancelled()


async def _cancelled_as_answered(
    client: aiomqtt.Client, step: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """Run ``_publishing_loop(step)`` and cancel it from the client's own PUBACK callback,
    right after aiomqtt has woken the waiting publish: the answer and the cancel in one
    loop step, over a real broker."""
    task: asyncio.Task[None] | None = None
    paho = client._client
    answered = paho.on_publish  # aiomqtt's own callback

    def on_publish(*args: Any) -> None:
        answered(*args)
        assert task is not None
        task.cancel()

    paho.on_publish = on_publish
    task = asyncio.create_task(_publishing_loop(step, []))
    await asyncio.wait({task}, timeout=PARKED_S)
    return task


@pytest.mark.parametrize("cls", [aiomqtt.Client, Client], ids=["aiomqtt", "runtime.mqtt"])
async def test_a_publish_cancelled_as_its_puback_arrives(
    broker: Mosquitto, cls: type[aiomqtt.Client]
) -> None:
    """aiomqtt's own client hands back the PUBACK and the loop goes on (Python 3.11; 3.12
    fixed it); the services' client (``runtime.mqtt.Client``) raises the cancel."""
    async with cls("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=30) as client:

        async def step() -> None:
            await client.publish("sg/test/cancel-race", b"x", qos=1)

        task = await _cancelled_as_answered(client, step)
        try:
            lost = cls is aiomqtt.Client and sys.version_info < (3, 12)
            assert task.done() is not lost
            assert task.cancelling() == 1
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_S)
        assert task.cancelled()


async def test_the_services_make_their_mqtt_clients_from_ops_mqtt_client(tmp_path: Path) -> None:
    """Central's consumer and a gateway's sync get the client that keeps a cancel."""
    async with DurableDB(tmp_path / "gw.db", migrations=gateway_migrations()) as db:
        assert type(Consumer(db=db, broker=BrokerSettings())._client()) is Client
        assert (
            type(Sync(gateway_id="gw-kind", outbox=Outbox(db), mqtt=MqttSettings())._client_for_session())
            is Client
        )


def test_no_code_of_the_services_builds_a_bare_aiomqtt_client() -> None:
    """A new ``aiomqtt.Client(...)`` in the services would bring the lost cancel back."""
    root = Path(__file__).resolve().parent.parent
    bare = [
        f"{path.relative_to(root)}:{n}"
        for pkg in ("gateway", "central", "ops", "firmware_sim")
        for path in sorted((root / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"aiomqtt\.Client\(", line)
    ]
    assert bare == [], f"bare aiomqtt clients: {bare}"
