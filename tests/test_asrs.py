"""AS/RS adapter <-> simulated AS/RS over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from firmware_sim.asrs import AsrsFaults, AsrsSimulator, default_slots, main
from gateway.asrs import (
    AsrsAdapter,
    AsrsEvent,
    AsrsLinkDown,
    AsrsLinkUp,
    AsrsTiming,
    Shortage,
    ToteArrived,
    ToteStored,
    TransportFailed,
    TransportResult,
)
from protocols.asrs import ErrorCode

DEADLINE = 5.0
TIMING = AsrsTiming(
    ack_timeout=0.1,
    max_resends=3,
    life_interval=0.1,
    life_misses=3,
    connect_timeout=1.0,
    backoff_initial=0.01,
    backoff_max=0.05,
)


@dataclass
class Events:
    items: list[AsrsEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, ev: AsrsEvent) -> None:
        self.items.append(ev)
        self.changed.set()

    def of(self, kind: type) -> list[AsrsEvent]:
        return [e for e in self.items if isinstance(e, kind)]

    async def wait_for(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Rig:
    sim: AsrsSimulator
    gw: AsrsAdapter
    events: Events


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    slots = default_slots(10, empty=["A01-009"])
    sim = AsrsSimulator(
        port=0,
        slots=slots,
        travel_time=0.0,
        ack_timeout=TIMING.ack_timeout,
        life_interval=TIMING.life_interval,
        life_misses=TIMING.life_misses,
        faults=AsrsFaults(),
    )
    await sim.start()
    events = Events()
    gw = AsrsAdapter(host="127.0.0.1", port=sim.port, on_event=events, timing=TIMING)
    task = asyncio.create_task(gw.run(), name="asrs-adapter")
    try:
        await events.wait_for(lambda: bool(events.of(AsrsLinkUp)))
        yield Rig(sim, gw, events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sim.close()


async def test_requested_totes_arrive_and_go_back(rig: Rig) -> None:
    results = await asyncio.wait_for(
        rig.gw.request_totes("W1", [("T00001", "A01-001"), ("T00002", "A01-002")], "PS01"), DEADLINE
    )
    assert results == [TransportResult("T00001", 0), TransportResult("T00002", 0)]
    await rig.events.wait_for(lambda: len(rig.events.of(ToteArrived)) == 2)
    assert rig.events.of(ToteArrived) == [
        ToteArrived("asrs-1", "W1", "T00001", "PS01"),
        ToteArrived("asrs-1", "W1", "T00002", "PS01"),
    ]
    assert rig.sim.positions["T00001"] == "PS01" and rig.sim.slots["A01-001"] is None

    await asyncio.wait_for(rig.gw.return_totes("W1", [("T00001", "A01-001")], "PS01"), DEADLINE)
    await rig.events.wait_for(lambda: bool(rig.events.of(ToteStored)))
    assert rig.events.of(ToteStored) == [ToteStored("asrs-1", "W1", "T00001", "A01-001")]
    assert rig.sim.slots["A01-001"] == "T00001"


async def test_lost_ack_is_resent_and_applied_once(rig: Rig) -> None:
    rig.sim.faults.lose_acks = 1
    results = await asyncio.wait_for(rig.gw.request_totes("W2", [("T00003", "A01-003")], "PS01"), DEADLINE)
    assert results == [TransportResult("T00003", 0)]
    await rig.events.wait_for(lambda: bool(rig.events.of(ToteArrived)))
    assert rig.sim.stats.acks_lost == 1
    assert rig.sim.stats.duplicates >= 1
    assert rig.sim.stats.requests == 1
    assert rig.sim.stats.transports_started == 1
    assert len(rig.events.of(ToteArrived)) == 1


async def test_location_empty_becomes_a_shortage(rig: Rig) -> None:
    results = await asyncio.wait_for(
        rig.gw.request_totes("W3", [("T00009", "A01-009"), ("T00004", "A01-004")], "PS01"), DEADLINE
    )
    assert [r.accepted for r in results] == [False, True]
    assert results[0].code == ErrorCode.LOCATION_EMPTY
    assert rig.events.of(Shortage) == [Shortage("asrs-1", "W3", "T00009", "A01-009")]
    failed = rig.events.of(TransportFailed)
    assert len(failed) == 1 and isinstance(failed[0], TransportFailed)
    assert failed[0].reason == "location empty"
    await rig.events.wait_for(lambda: bool(rig.events.of(ToteArrived)))


async def test_malfunction_after_accept_is_an_event(rig: Rig) -> None:
    rig.sim.faults.malfunction.add("T00005")
    results = await asyncio.wait_for(rig.gw.request_totes("W4", [("T00005", "A01-005")], "PS01"), DEADLINE)
    assert results == [TransportResult("T00005", 0)]
    await rig.events.wait_for(lambda: bool(rig.events.of(TransportFailed)))
    assert rig.events.of(TransportFailed) == [
        TransportFailed("asrs-1", "W4", "T00005", "A01-005", ErrorCode.MALFUNCTION, "malfunction")
    ]
    assert not rig.events.of(Shortage)


async def test_connection_drop_reconnects_and_resyncs(rig: Rig) -> None:
    rig.sim.faults.drop_on_request = 1  # applied and acked, but the ack dies with the connection
    results = await asyncio.wait_for(rig.gw.request_totes("W5", [("T00006", "A01-006")], "PS01"), DEADLINE)
    assert results == [TransportResult("T00006", 0)]
    await rig.events.wait_for(lambda: bool(rig.events.of(ToteArrived)))
    assert rig.events.of(AsrsLinkDown)
    assert len(rig.events.of(AsrsLinkUp)) >= 2
    assert rig.sim.stats.connections >= 2
    assert rig.sim.stats.requests == 1
    assert rig.sim.stats.transports_started == 1
    assert rig.events.of(ToteArrived) == [ToteArrived("asrs-1", "W5", "T00006", "PS01")]
    # and the link works normally afterwards
    more = await asyncio.wait_for(rig.gw.request_totes("W5", [("T00007", "A01-007")], "PS01"), DEADLINE)
    assert more == [TransportResult("T00007", 0)]


async def test_life_watchdog_declares_the_link_down(rig: Rig) -> None:
    rig.sim.faults.silent = True
    await rig.events.wait_for(lambda: bool(rig.events.of(AsrsLinkDown)))
    down = rig.events.of(AsrsLinkDown)[0]
    assert isinstance(down, AsrsLinkDown) and down.reason.startswith("no telegram from ASRS1")
    rig.sim.faults.silent = False
    results = await asyncio.wait_for(rig.gw.request_totes("W6", [("T00008", "A01-008")], "PS01"), DEADLINE)
    assert results == [TransportResult("T00008", 0)]


async def test_requests_wait_while_the_asrs_is_away() -> None:
    events = Events()
    sim = AsrsSimulator(
        port=0,
        slots=default_slots(2),
        ack_timeout=TIMING.ack_timeout,
        life_interval=TIMING.life_interval,
    )
    await sim.start()
    port = sim.port
    await sim.close()  # nothing listens now: the adapter retries with backoff
    gw = AsrsAdapter(host="127.0.0.1", port=port, on_event=events, timing=TIMING)
    task = asyncio.create_task(gw.run())
    sim2 = AsrsSimulator(
        port=port, slots=default_slots(2), ack_timeout=TIMING.ack_timeout, life_interval=TIMING.life_interval
    )
    try:
        pending = asyncio.create_task(gw.request_totes("W7", [("T00001", "A01-001")], "PS01"))
        await asyncio.sleep(0)
        assert not pending.done()
        await sim2.start()
        assert await asyncio.wait_for(pending, DEADLINE) == [TransportResult("T00001", 0)]
        await events.wait_for(lambda: bool(events.of(ToteArrived)))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sim2.close()


def test_sim_main_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--lose-acks" in capsys.readouterr().out
