"""A lost MQTT link comes back by itself, and health says so while it is away (issue 14, 1).

Real parts: a Mosquitto child process that is SIGKILLed and started again on the same port
and data dir (persistence on), or SIGSTOPped for longer than the gateway's keepalive (a
partition the gateway can only see through its keepalive); central and the gateway as real
``storegate`` processes; orders posted over HTTP while the link is down must each reach
central once.

The cause on Python 3.11: a child of a TaskGroup that fails after the group's body is done
(the link's receiver, when the broker goes away) makes the group cancel its own task and not
undo it, so the reconnect loop read the lost link as a shutdown and the gateway's sync ended
for good (``runtime.retry.TaskGroup``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from gateway.app import migrations as gateway_migrations
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto, free_port
from runtime import retry
from runtime.retry import TaskGroup, stopping
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.procs import Proc, central_db, central_proc, central_settled

KEEPALIVE_S = 2  # the gateway's MQTT keepalive in the partition test
# paho sends a PINGREQ after one keepalive of silence and gives up one keepalive later; its
# check runs once a second.
DETECT_S = 2 * KEEPALIVE_S + 3
DOWN_S = 10.0  # a broker that is gone (connection refused / reset) is seen within this
# After the broker is back: the reconnect backoff is capped at gateway.sync.BACKOFF_MAX_S
# (10 s) and central's at 5 s; the first attempt after the restart connects.
RECOVER_S = 20.0
DRAIN_S = 30.0
ORDERS_BEFORE = 20
ORDERS_DURING = 50


def order_body(ref: str) -> dict[str, object]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "SKU-1", "qty": 1}],
        "source_ref": ref,
    }


def gateway_proc(tmp: Path, broker_port: int, gw: str, *, keepalive: int = 30) -> Proc:
    port = free_port()
    cfg = tmp / f"{gw}.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{tmp / gw}"\n'
        f"[mqtt]\nport = {broker_port}\nkeepalive = {keepalive}\n[http]\nport = {port}\n"
        "[sync]\nack_timeout_s = 2.0\n"
    )
    return Proc("gateway", cfg, port, tmp / f"{gw}.log")


class Store:
    """A gateway process, its central, and the orders posted to it (each answered 201)."""

    def __init__(self, http: aiohttp.ClientSession, gw: Proc, central: Proc) -> None:
        self.http, self.gw, self.central = http, gw, central
        self.accepted: list[str] = []

    async def health(self) -> dict[str, Any]:
        async with self.http.get(f"{self.gw.url}/api/health") as r:
            assert r.status == 200, f"health answered {r.status}"
            doc: dict[str, Any] = await r.json()
            return doc

    async def link(self) -> str:
        h = await self.health()
        assert h["link"] in ("up", "down"), h
        assert h["connected"] is (h["link"] == "up"), h
        return str(h["link"])

    async def post(self, prefix: str, n: int) -> None:
        for i in range(n):
            ref = f"{prefix}-{i}"
            async with self.http.post(f"{self.gw.url}/api/orders", json=order_body(ref)) as r:
                assert r.status == 201, f"order {ref}: {r.status} {await r.text()}"
            self.accepted.append(ref)

    async def metric(self, name: str) -> float | None:
        """A sample of the gateway's Prometheus metrics (None: not exported)."""
        async with self.http.get(f"{self.gw.url}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def drained(self) -> bool:
        return (await self.health())["backlog"] == 0


@contextlib.asynccontextmanager
async def store_and_central(tmp: Path, broker: Mosquitto, *, keepalive: int = 30) -> AsyncIterator[Store]:
    central = central_proc(tmp, broker.port)
    gw = gateway_proc(tmp, broker.port, "store-link", keepalive=keepalive)
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)
        async with aiohttp.ClientSession() as http:
            store = Store(http, gw, central)
            await wait_for(lambda: _is(store.link(), "up"), timeout=DOWN_S, what="the gateway's link up")
            yield store
    finally:
        gw.kill()
        central.kill()


async def _is(link: Awaitable[str], want: str) -> bool:
    return await link == want


async def _at_least(health: Awaitable[dict[str, Any]], key: str, n: int) -> bool:
    return bool((await health)[key] >= n)


def central_counts(tmp: Path, accepted: list[str]) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected) of the orders a gateway answered 201, at central."""
    conn = central_db(tmp)
    try:
        refs = [r for (r,) in conn.execute("SELECT source_ref FROM orders")]
    finally:
        conn.close()
    lost = len(set(accepted) - set(refs))
    return lost, len(refs) - len(set(refs)), len(set(refs) - set(accepted))


async def settled(tmp: Path, store: Store) -> None:
    await wait_for(store.drained, timeout=DRAIN_S, what="the gateway's outbox drained")
    await wait_for(lambda: central_settled(tmp), timeout=DRAIN_S, what="central processed everything")


# 1 ---------------------------------------------------------------------------------------
async def test_gateway_reconnects_after_the_broker_is_killed_and_restarted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with store_and_central(tmp_path, broker) as store:
        await store.post("before", ORDERS_BEFORE)
        await settled(tmp_path, store)
        before = await store.health()

        broker.kill()
        await wait_for(lambda: _is(store.link(), "down"), timeout=DOWN_S, what="health: link down")
        await store.post("during", ORDERS_DURING)
        down = await store.health()
        assert down["backlog"] == ORDERS_DURING and down["oldest_age_s"] > 0, down
        assert down["last_ack_age_s"] >= before["last_ack_age_s"], (before, down)
        assert await store.metric("storegate_gateway_connected") == 0
        assert (await store.metric("storegate_gateway_last_ack_age_seconds") or 0) > 0

        await asyncio.to_thread(broker.start)
        t0 = time.monotonic()
        await wait_for(lambda: _is(store.link(), "up"), timeout=RECOVER_S, what="the gateway reconnected")
        print(f"gateway reconnected {time.monotonic() - t0:.2f}s after the broker came back")
        await settled(tmp_path, store)
        up = await store.health()
        assert up["oldest_age_s"] == 0 and up["last_ack_age_s"] < DRAIN_S, up
        assert up["reconnects"] >= 1 and up["sync_restarts"] == 0, up
        assert await store.metric("storegate_gateway_connected") == 1
    assert central_counts(tmp_path, store.accepted) == (0, 0, 0)


# 2 ---------------------------------------------------------------------------------------
async def test_central_resumes_and_drains_after_the_broker_is_killed_and_restarted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with store_and_central(tmp_path, broker) as store:

        async def central_link() -> str:
            async with store.http.get(f"{store.central.url}/api/health") as r:
                assert r.status == 200
                mqtt = (await r.json())["mqtt"]
                assert mqtt["connected"] is (mqtt["link"] == "up"), mqtt
                return str(mqtt["link"])

        await wait_for(lambda: _is(central_link(), "up"), timeout=DOWN_S, what="central's link up")
        await store.post("before", ORDERS_BEFORE)
        await settled(tmp_path, store)

        broker.kill()
        await wait_for(lambda: _is(central_link(), "down"), timeout=DOWN_S, what="central's health: down")
        await store.post("during", ORDERS_DURING)
        await asyncio.to_thread(broker.start)
        t0 = time.monotonic()
        await wait_for(lambda: _is(central_link(), "up"), timeout=RECOVER_S, what="central reconnected")
        print(f"central reconnected {time.monotonic() - t0:.2f}s after the broker came back")
        await settled(tmp_path, store)
    assert central_counts(tmp_path, store.accepted) == (0, 0, 0)


# 3 ---------------------------------------------------------------------------------------
async def test_gateway_sees_a_partition_through_its_keepalive_and_recovers(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """SIGSTOP: the broker's sockets stay open and silent, as behind a dropped network."""
    async with store_and_central(tmp_path, broker, keepalive=KEEPALIVE_S) as store:
        await store.post("before", ORDERS_BEFORE)
        await settled(tmp_path, store)
        assert broker.proc is not None
        pid = broker.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            await store.post("during", ORDERS_DURING)  # the gateway takes orders meanwhile
            await wait_for(
                lambda: _is(store.link(), "down"), timeout=DETECT_S, what="health: link down by keepalive"
            )
            detected = time.monotonic() - stopped
            print(f"partition detected {detected:.2f}s after SIGSTOP (keepalive {KEEPALIVE_S}s)")
            # It keeps trying meanwhile: a connect the broker accepts (the kernel does) and never
            # answers ends after a keepalive too, not after the client's 30 s timeout.
            tries = (await store.health())["reconnects"]
            await wait_for(
                lambda: _at_least(store.health(), "reconnects", tries + 2),
                timeout=3 * (KEEPALIVE_S + 2),
                what="two more connect attempts, each given up after a keepalive",
            )
            assert await store.link() == "down"
            assert time.monotonic() - stopped > 1.5 * KEEPALIVE_S  # past the broker's own limit too
        finally:
            os.kill(pid, signal.SIGCONT)
        t0 = time.monotonic()
        await wait_for(lambda: _is(store.link(), "up"), timeout=RECOVER_S, what="the gateway reconnected")
        print(f"gateway reconnected {time.monotonic() - t0:.2f}s after SIGCONT")
        await settled(tmp_path, store)
    assert central_counts(tmp_path, store.accepted) == (0, 0, 0)


# 4 ---------------------------------------------------------------------------------------
class LinkLost(Exception):
    pass


async def _fails_soon() -> None:
    await asyncio.sleep(0.01)
    raise LinkLost


async def _forever() -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize("body_done", [True, False], ids=["body-done", "body-waiting"])
async def test_a_failing_child_leaves_the_cancel_count_at_zero(body_done: bool) -> None:
    """The group's own cancel of its task is undone whether the child fails while the body
    still runs or after it is done (then ``asyncio.TaskGroup`` of 3.11 leaves 1)."""
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(ExceptionGroup) as caught:
        async with TaskGroup() as tg:
            tg.create_task(_fails_soon())
            tg.create_task(_forever())
            if not body_done:
                await _forever()
    assert caught.group_contains(LinkLost)
    assert task.cancelling() == 0 and not stopping()
    await asyncio.sleep(0)  # and no cancel is left pending either


async def test_asyncio_taskgroup_of_3_11_leaves_the_count_at_one() -> None:
    """What the helper is for (CPython gh-116720, changed in 3.13); asserted on 3.11, the
    project's interpreter, only."""
    if sys.version_info >= (3, 12):
        pytest.skip("asserted on Python 3.11 only")
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_fails_soon())
            tg.create_task(_forever())
    try:
        assert task.cancelling() == 1
    finally:
        task.uncancel()


@pytest.mark.parametrize("body_done", [True, False], ids=["body-done", "body-waiting"])
async def test_a_real_cancel_still_goes_through_the_group(body_done: bool) -> None:
    entered = asyncio.Event()

    async def run() -> None:
        async with TaskGroup() as tg:
            tg.create_task(_forever())
            entered.set()
            if not body_done:
                await _forever()

    task = asyncio.create_task(run())
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()


async def test_a_cancel_while_a_child_fails_on_the_way_out_is_still_a_stop() -> None:
    """The child's error comes back instead of the cancellation (a TaskGroup's rule); the
    task still counts the cancel, so a reconnect loop asking ``stopping()`` stops."""
    seen: list[bool] = []
    entered = asyncio.Event()

    async def fails_when_cancelled() -> None:
        try:
            await _forever()
        except asyncio.CancelledError:
            raise LinkLost from None

    async def run() -> None:
        try:
            async with TaskGroup() as tg:
                tg.create_task(fails_when_cancelled())
                entered.set()
        except* LinkLost:
            seen.append(stopping())
            raise asyncio.CancelledError from None

    task = asyncio.create_task(run())
    await entered.wait()
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled() and seen == [True]


# A loop that ends for another reason than a lost link ------------------------------------
def _crash_once(real: Callable[..., Awaitable[None]], crashed: list[bool]) -> Callable[..., Awaitable[None]]:
    async def run(*args: Any) -> None:
        if not crashed:
            crashed.append(True)
            raise RuntimeError("a bug in the loop")
        await real(*args)

    return run


async def _restarted(run: Callable[[], Awaitable[None]], connected: asyncio.Event, restarts: Any) -> None:
    task = asyncio.ensure_future(run())
    try:
        await wait_for(
            lambda: restarts() == 1 and not connected.is_set(), what="the crash counted, link down"
        )
        await wait_for(connected.is_set, timeout=RECOVER_S, what="connected again")
        assert not task.done() and restarts() == 1
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=RECOVER_S)
    assert task.cancelled(), "a real cancel still stops it"


async def test_central_mqtt_loop_that_crashes_is_counted_and_started_again(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Central does not stay up with its MQTT side gone."""
    async with DurableDB(tmp_path / "central.db", migrations=all_migrations()) as db:
        consumer = Consumer(db=db, broker=BrokerSettings(port=broker.port, client_id="central-crash"))
        monkeypatch.setattr(consumer.downlink, "run", _crash_once(consumer.downlink.run, []))
        monkeypatch.setattr(retry, "SUPERVISE_MIN_S", 0.5)  # link down meanwhile
        await _restarted(consumer.run, consumer.connected, lambda: consumer.stats.restarts)


async def test_gateway_sync_that_crashes_is_counted_and_started_again(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway does not stay up taking orders with its sync gone."""
    async with DurableDB(tmp_path / "gw.db", migrations=gateway_migrations()) as db:
        sync = Sync(gateway_id="gw-crash", outbox=Outbox(db), mqtt=MqttSettings(port=broker.port))
        monkeypatch.setattr(sync, "_ack_watchdog", _crash_once(sync._ack_watchdog, []))
        monkeypatch.setattr(retry, "SUPERVISE_MIN_S", 0.5)  # link down meanwhile
        await _restarted(sync.run, sync.connected, lambda: sync.stats.restarts)


def test_the_services_build_their_task_groups_from_ops_retry() -> None:
    """A bare ``asyncio.TaskGroup()`` in the services would bring back the stale cancel."""
    root = Path(__file__).resolve().parent.parent
    bare = [
        f"{path.relative_to(root)}:{n}"
        for pkg in ("gateway", "central", "ops")
        for path in sorted((root / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.TaskGroup(" in line
    ]
    assert bare == [], f"bare asyncio.TaskGroup: {bare}"
