"""Pick-to-light cart adapter against the simulated controller over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from firmware_sim import ptl as sim_ptl
from firmware_sim.ptl import Faults, Press, PtlController, RandomPicker, ScriptedPicker, idle_picker
from gateway.ptl import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Outcome,
    PickResult,
    PickTask,
    PtlCart,
    TaskError,
    TaskState,
    Trigger,
    next_state,
)
from ops.bench_ptl import bench_confirm_to_next_lit
from protocols import ptl

DEADLINE_S = 10.0


class Results:
    def __init__(self) -> None:
        self.items: list[PickResult] = []

    async def __call__(self, result: PickResult) -> None:
        self.items.append(result)

    def by_task(self) -> dict[str, PickResult]:
        out = {r.task_id: r for r in self.items}
        assert len(out) == len(self.items), "a task was reported twice"
        return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cart(sim: PtlController, results: Results, **kw: object) -> PtlCart:
    opts: dict[str, object] = {
        "reconnect_min_s": 0.01,
        "reconnect_max_s": 0.05,
        "relight_guard_s": 0.0,
        "result_retry_s": 0.0,
    }
    opts.update(kw)
    return PtlCart(cart_id="cart-1", host="127.0.0.1", port=sim.port, on_result=results, **opts)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(cart: PtlCart) -> AsyncIterator[PtlCart]:
    task = asyncio.create_task(cart.run(), name="test-cart")
    try:
        yield cart
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(pred: Callable[[], bool], *waiters: PtlCart | PtlController) -> None:
    """Wait for ``pred`` re-checking whenever the cart or the simulator changes."""
    async with asyncio.timeout(DEADLINE_S):
        while not pred():
            waits = [asyncio.ensure_future(w.wait_until(pred)) for w in waiters]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.gather(*waits, return_exceptions=True)


def task(tid: str, order: str, node: int, qty: int, colour: ptl.Colour = ptl.Colour.GREEN) -> PickTask:
    return PickTask(task_id=tid, order_id=order, node=node, sku=f"sku-{tid}", qty=qty, colour=colour)


# --------------------------------------------------------------------------- state machine


def test_transition_table() -> None:
    assert next_state(TaskState.PENDING, Trigger.LIGHT) is TaskState.LIT
    assert next_state(TaskState.LIT, Trigger.LINK_LOST) is TaskState.PENDING
    for state in TERMINAL:
        assert not [k for k in TRANSITIONS if k[0] is state], f"{state} must be final"
        with pytest.raises(IllegalTransition):
            next_state(state, Trigger.CONFIRM, task_id="t")
    with pytest.raises(IllegalTransition):
        next_state(TaskState.PENDING, Trigger.CONFIRM)


def test_task_validation() -> None:
    with pytest.raises(TaskError):
        task("t", "o", 0, 1)
    with pytest.raises(TaskError):
        task("t", "o", 1, 0)


# --------------------------------------------------------------------------- over TCP


async def test_cart_of_several_orders_confirm_adjust_short() -> None:
    picker = ScriptedPicker({2: [Press("confirm", 3)], 4: [Press("shortage", 1)]})
    results = Results()
    async with PtlController(nodes=8, picker=picker) as sim:
        cart = make_cart(sim, results)
        tasks = [
            task("t1", "o1", 1, 2, ptl.Colour.GREEN),
            task("t2", "o1", 2, 5, ptl.Colour.GREEN),
            task("t3", "o2", 3, 1, ptl.Colour.BLUE),
            task("t4", "o2", 4, 4, ptl.Colour.BLUE),
            task("t5", "o3", 1, 7, ptl.Colour.PINK),  # same position as t1: lit after it
            task("t6", "o3", 5, 12, ptl.Colour.PINK),
        ]
        assert cart.add_tasks(tasks) == 6
        async with running(cart):
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
        got = results.by_task()
        assert set(got) == {t.task_id for t in tasks}
        assert (got["t1"].outcome, got["t1"].picked_qty) == (Outcome.PICKED, 2)
        assert (got["t2"].outcome, got["t2"].picked_qty, got["t2"].key) == (Outcome.SHORT, 3, "confirm")
        assert got["t2"].short_qty == 2
        assert (got["t4"].outcome, got["t4"].picked_qty, got["t4"].key) == (Outcome.SHORT, 1, "shortage")
        assert got["t6"].as_body()["order_id"] == "o3"
        assert [r.task_id for r in results.items].index("t1") < [r.task_id for r in results.items].index("t5")
        assert all(cart.state(t.task_id) in TERMINAL for t in tasks)
        assert sim.tags[1].times_lit == 2
        # colour before digits, per picker
        shows = [m for m in sim.received if isinstance(m, ptl.ShowDigits | ptl.SetColour)]
        assert shows.index(ptl.SetColour(3, colour=ptl.Colour.BLUE)) < shows.index(
            ptl.ShowDigits.quantity(3, 1)
        )
        assert ptl.ShowDigits.quantity(1, 7) in sim.received
        assert cart.stats.stale_replies == 0


async def test_reconnect_relights_outstanding_tasks() -> None:
    results = Results()
    async with PtlController(nodes=8, picker=idle_picker) as sim:
        cart = make_cart(sim, results)
        cart.add_tasks([task(f"t{n}", "o1", n, n) for n in range(1, 5)])
        async with running(cart):
            await until(lambda: len(sim.lit) == 4, sim)
            sim.press(1)
            await until(lambda: cart.state("t1") is TaskState.CONFIRMED, cart)
            sim.drop_connections()
            await until(lambda: sim.stats.connections == 2 and len(sim.lit) == 3, sim)
            assert sim.lit == {2: "     2", 3: "     3", 4: "     4"}
            assert cart.stats.connects == 2
            for n in (2, 3, 4):
                sim.press(n)
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
        assert sorted(results.by_task()) == ["t1", "t2", "t3", "t4"]
        assert sim.tags[2].times_lit == 2 and sim.tags[1].times_lit == 1


async def test_tasks_added_while_disconnected_are_lit_on_connect() -> None:
    results = Results()
    async with PtlController(nodes=4) as sim:
        cart = make_cart(sim, results)
        async with running(cart):
            await until(cart.connected.is_set, cart)
            assert cart.add_tasks([task("a", "o", 1, 1)]) == 1
            assert cart.add_tasks([task("a", "o", 1, 1)]) == 0  # re-sent task: not picked twice
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
        assert len(results.items) == 1
        assert cart.stats.duplicate_tasks == 1


async def test_duplicate_confirm_is_ignored() -> None:
    results = Results()
    clock = FakeClock()
    async with PtlController(nodes=4, picker=idle_picker) as sim:
        cart = make_cart(sim, results, relight_guard_s=0.3, clock=clock)
        cart.add_tasks([task("only", "o1", 1, 3), task("first", "o2", 2, 1), task("second", "o2", 2, 9)])
        async with running(cart):
            await until(lambda: len(sim.lit) == 2, sim)
            clock.now += 1.0  # the pickers take a while
            # tag 1: nothing else to light, the repeat hits a dark tag
            sim.press(1, repeat=2)
            # tag 2: the repeat arrives right after "second" was lit and must not confirm it
            sim.press(2, repeat=2)
            await until(lambda: cart.stats.stale_replies == 2, cart)
            assert cart.state("only") is TaskState.CONFIRMED
            assert cart.state("first") is TaskState.CONFIRMED
            assert cart.state("second") is TaskState.LIT
            await until(lambda: sim.lit.get(2) == "     9", sim)
            clock.now += 1.0
            sim.press(2, qty=8)
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
        got = results.by_task()
        assert sorted(got) == ["first", "only", "second"]
        assert got["second"].picked_qty == 8


async def test_cancel_lit_task_lights_next() -> None:
    results = Results()
    async with PtlController(nodes=4, picker=idle_picker) as sim:
        cart = make_cart(sim, results)
        cart.add_tasks([task("x", "o1", 3, 4), task("y", "o2", 3, 6)])
        async with running(cart):
            await until(lambda: sim.lit.get(3) == "     4", sim)
            assert cart.cancel("x")
            assert not cart.cancel("x")
            await until(lambda: sim.lit.get(3) == "     6", sim)
            assert ptl.Clear(3) in sim.received
            sim.press(3)
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
        assert [r.task_id for r in results.items] == ["y"]
        assert cart.state("x") is TaskState.CANCELLED


async def test_random_pickers_with_lost_confirms_and_malfunctions_finish_every_task() -> None:
    import random

    results = Results()
    faults = Faults(lose_confirm_rate=0.3, malfunction_rate=0.2)
    picker = RandomPicker(p_adjust=0.2, p_short=0.2, rng=random.Random(7))
    async with PtlController(nodes=6, picker=picker, faults=faults, seed=7) as sim:
        cart = make_cart(sim, results)
        tasks = [task(f"t{i}", f"o{i % 4}", 1 + i % 6, 1 + i % 9) for i in range(40)]
        cart.add_tasks(tasks)
        async with running(cart):
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
            await until(lambda: cart.stats.malfunctions == sim.stats.malfunctions_sent, cart)
        got = results.by_task()
        assert len(got) == 40
        assert sim.stats.lost_confirms > 0 and sim.stats.malfunctions_sent > 0
        shorts = [r for r in got.values() if r.outcome is Outcome.SHORT]
        assert shorts and all(r.picked_qty < r.requested_qty for r in shorts)


async def test_failing_on_result_is_retried_without_blocking_lights() -> None:
    delivered: list[str] = []
    calls = 0

    async def flaky(result: PickResult) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("outbox unavailable")
        delivered.append(result.task_id)

    async with PtlController(nodes=2) as sim:
        cart = PtlCart(
            cart_id="cart-2",
            host="127.0.0.1",
            port=sim.port,
            on_result=flaky,
            relight_guard_s=0.0,
            result_retry_s=0.0,
        )
        cart.add_tasks([task("a", "o", 1, 1), task("b", "o", 1, 2)])
        async with running(cart):
            async with asyncio.timeout(DEADLINE_S):
                await cart.wait_done()
    assert delivered == ["a", "b"]
    assert cart.stats.result_errors == 1


async def test_framing_error_drops_the_link_and_reconnects() -> None:
    connections = 0
    writers: list[asyncio.StreamWriter] = []

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writers.append(writer)
        writer.write(b"\xff\xff\x60\x00")  # LEN 65535: not a frame
        await writer.drain()
        await reader.read()  # until the cart hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    results = Results()
    cart = PtlCart(
        cart_id="cart-3",
        host="127.0.0.1",
        port=port,
        on_result=results,
        reconnect_min_s=0.01,
        reconnect_max_s=0.02,
    )
    try:
        async with running(cart):
            await until(lambda: cart.stats.framing_errors >= 2 and cart.stats.connects >= 2, cart)
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()
    assert connections >= 2


async def test_bench_runs_with_small_n() -> None:
    figures = await bench_confirm_to_next_lit(20)
    assert figures["n"] == 20
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_sim_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sim_ptl.main(["--help"])
    assert info.value.code == 0
    assert "--drop-every" in capsys.readouterr().out
