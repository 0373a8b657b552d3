"""Pick-to-light benchmark: confirm received -> next position's light written, at the gateway.

Runs :class:`gateway.ptl.PtlCart` against the simulated controller over real TCP on 127.0.0.1
with zero picker delay. ``p50_ms``/``p99_ms`` are taken inside the adapter, from the read that
returned the confirm frame to the write of the next light frame; ``round_trip_*`` add the
sockets and event-loop scheduling as the controller sees them. With ``nodes=1`` (default)
presses never coincide, as with human pickers, so the figure is the adapter's own reaction
time; more nodes add queueing behind simultaneous presses. Prints nothing; returns the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from firmware_sim.ptl import PtlController, honest_picker
from gateway.ptl import PickResult, PickTask, PtlCart


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def bench_confirm_to_next_lit(n: int, *, nodes: int = 1, timeout_s: float = 120.0) -> dict[str, float]:
    """Measure ``n`` confirm -> next-lit latencies; returns ms figures and the rate."""
    if n < 1 or nodes < 1:
        raise ValueError("n and nodes must be >= 1")
    latencies: list[float] = []
    total = n + nodes  # the last task of each node has no next one to light
    done = asyncio.Event()
    count = 0

    async def on_result(result: PickResult) -> None:
        nonlocal count
        count += 1
        if count == total:
            done.set()

    loop = asyncio.get_running_loop()
    async with PtlController(nodes=nodes, picker=honest_picker) as sim:
        cart = PtlCart(
            cart_id="bench",
            host="127.0.0.1",
            port=sim.port,
            on_result=on_result,
            relight_guard_s=0.0,
            latency_sink=latencies.append,
        )
        cart.add_tasks(
            PickTask(task_id=f"t{i}", order_id=f"o{i % 7}", node=1 + i % nodes, sku=f"sku{i}", qty=1 + i % 50)
            for i in range(total)
        )
        runner = asyncio.create_task(cart.run(), name="bench-ptl-cart")
        try:
            start = loop.time()
            async with asyncio.timeout(timeout_s):
                await done.wait()
            elapsed = loop.time() - start
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        round_trip = sorted(v * 1000 for v in sim.press_to_light)
    ms = sorted(v * 1000 for v in latencies)
    return {
        "n": float(len(ms)),
        "nodes": float(nodes),
        "p50_ms": _percentile(ms, 50),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
        "confirms_per_s": total / elapsed if elapsed > 0 else math.nan,
        # seen from the controller: confirm frame written -> next light frame read, over TCP
        # both ways and through both event-loop hops (the simulator shares the process)
        "round_trip_p50_ms": _percentile(round_trip, 50),
        "round_trip_p99_ms": _percentile(round_trip, 99),
    }
