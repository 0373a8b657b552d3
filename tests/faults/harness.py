"""One round of a fault scenario: load, fault, heal, wait for recovery, check.

A round drives :class:`~tests.faults.clients.Load` against the cluster's gateway, lets it run
for a while, injects the fault, heals it, and then waits - without any manual step - until

1. the gateway acknowledges new orders again,
2. every submission under way has its answer (clients retry with the same key),
3. the gateway's outbox is empty, central has processed all it received, and every
   acknowledged order is in central's ``orders``,

all within the scenario's deadline, counted from the heal. Then the checker compares the
history with central's rows whose source ref belongs to this round.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ops.broker import Mosquitto
from tests.conftest import wait_for
from tests.faults.checker import History, Outcome, check
from tests.faults.clients import SUBMIT_PAUSE_S, Load
from tests.faults.report import RoundResult
from tests.procs import Proc, central_db

# Rounds per scenario: a few in the default run, many under ./run faults.
ROUNDS = int(os.environ.get("SG_FAULT_ROUNDS", "2"))
LOAD_BEFORE_S = (0.3, 1.2)  # load runs a random time in this range before the fault
HEALTH_TIMEOUT_S = 2.0

Step = Callable[[], Awaitable[None]]


async def run_in_thread(fn: Callable[[], object]) -> None:
    await asyncio.to_thread(fn)


@dataclass
class Cluster:
    tmp: Path
    broker: Mosquitto
    central: Proc
    gateway: Proc
    rng: random.Random = field(default_factory=lambda: random.Random(os.environ.get("SG_FAULT_SEED")))
    load: Load | None = None  # the round's clients, while a round runs

    def central_orders(self, prefix: str) -> list[tuple[str, str]]:
        """(source ref, record id) of central's orders whose ref starts with ``prefix-``."""
        conn = central_db(self.tmp)
        try:
            rows = conn.execute(
                "SELECT source_ref, record_id FROM orders WHERE source_ref LIKE ? ESCAPE '\\'",
                (prefix.replace("_", "\\_") + "-%",),
            )
            return [(ref, rid) for ref, rid in rows]
        finally:
            conn.close()

    def central_idle(self) -> bool:
        conn = central_db(self.tmp)
        try:
            return conn.execute("SELECT count(*) FROM work_queue").fetchone()[0] == 0
        finally:
            conn.close()

    async def gateway_health(self) -> dict[str, Any] | None:
        """The gateway's ``/api/health`` document; None when it does not answer 200."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as s,
                s.get(f"{self.gateway.url}/api/health") as r,
            ):
                if r.status != 200:
                    return None
                doc: dict[str, Any] = await r.json()
                return doc
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def gateway_backlog(self) -> int | None:
        doc = await self.gateway_health()
        return None if doc is None else doc.get("backlog")

    async def delivered(self, history: History, prefix: str) -> bool:
        """The gateway holds nothing, central processed all, every acknowledged order is there."""
        if await self.gateway_backlog() != 0 or not self.central_idle():
            return False
        present = {ref for ref, _rid in self.central_orders(prefix)}
        return all(s.ref in present for s in history.submissions.values() if s.outcome is Outcome.OK)

    def exited(self) -> list[str]:
        """A process of the cluster that died by itself is a finding, not a detail."""
        out = []
        for name, p in (("central", self.central), ("gateway", self.gateway)):
            if p.proc is not None and p.proc.poll() is not None:
                out.append(f"{name} exited by itself with code {p.proc.returncode} (see {p.log.name})")
        return out


def round_prefix(scenario: str, round_no: int) -> str:
    """Every reference a round submits starts with this and a dash."""
    return f"{scenario}-r{round_no}"


async def run_round(
    cluster: Cluster,
    scenario: str,
    round_no: int,
    *,
    fault: Step,
    heal: Step,
    deadline_s: float,
    extra_check: Callable[[], Awaitable[list[str]]] | None = None,
    extra_ready: Callable[[], Awaitable[bool]] | None = None,
    history: History | None = None,
    workers: int = 4,
    pause_s: float = SUBMIT_PAUSE_S,
) -> RoundResult:
    """Run one round; return its result (the caller records it, then asserts ``passed``)."""
    prefix = round_prefix(scenario, round_no)
    history = history if history is not None else History()
    problems: list[str] = []
    recovery: float | None = None
    async with Load(
        lambda: cluster.gateway.url, prefix=prefix, history=history, workers=workers, pause_s=pause_s
    ) as load:
        cluster.load = load
        start = time.monotonic()
        await wait_for(lambda: load.oks_since(start), timeout=30, what=f"{prefix}: first order acknowledged")
        await asyncio.sleep(cluster.rng.uniform(*LOAD_BEFORE_S))  # load for a while, then the fault
        healed = time.monotonic()

        def left() -> float:
            return max(0.1, deadline_s - (time.monotonic() - healed))

        try:
            await fault()
            healed = time.monotonic()  # recovery counts from here: the restart, the link up, the space freed
            await heal()
            await wait_for(
                lambda: load.oks_since(healed), timeout=left(), what="the gateway to acknowledge orders again"
            )
            load.stop()
            await wait_for(load.finished, timeout=left(), what="every client's submission to be answered")

            async def ready() -> bool:
                return await cluster.delivered(history, prefix) and (
                    extra_ready is None or await extra_ready()
                )

            await wait_for(ready, timeout=left(), what="outbox empty and every acknowledged order at central")
            recovery = time.monotonic() - healed
        except AssertionError as e:
            problems.append(f"not recovered: {e}")
        except Exception as e:  # a restart that failed, say: the round's finding, with the others
            problems.append(f"fault or heal failed: {type(e).__name__}: {e}")
        load.give_up()
    cluster.load = None
    problems += cluster.exited()
    if extra_check is not None:
        problems += await extra_check()
    verdict = check(history, cluster.central_orders(prefix))
    return RoundResult.of(
        scenario, round_no, verdict, recovery_s=recovery, deadline_s=deadline_s, problems=problems
    )


def describe(r: RoundResult) -> str:
    return (
        f"{r.scenario} round {r.round}: {r.submissions} submissions, {r.ok} ok, {r.indeterminate} "
        f"indeterminate; lost {r.lost}, duplicated {r.duplicated}, unexpected {r.unexpected} "
        f"{r.examples}; recovery {r.recovery_s} s (deadline {r.deadline_s} s); problems: {list(r.problems)}"
    )
