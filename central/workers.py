"""One central worker among several on one database: its leases and its one-at-a-time jobs.

Central scales out as N worker processes on the same config and database (``storegate
central --config central.toml --worker I``, see ``central.app``): the broker's MQTT 5 shared
subscription spreads the gateways' uplink messages over them, each receives and acks what it
gets, and processing, allocation and the REST API are safe under concurrency in the
database itself (row locks and ``SKIP LOCKED`` claiming on PostgreSQL, the single writer on
SQLite). What must happen in one worker at a time goes by lease (``central.leases``):

- each gateway's downlink has one sender (``downlink/<gw>``, taken in ``central.downlink``);
- the periodic jobs (:data:`JOBS`: schedule, retention, release, fleet alerts) run in the
  worker that holds their lease; another takes a job over when its holder dies.

:class:`Worker` keeps this worker's leases: it renews them every ``leases.RENEW_S``, counts a
lease as its own only until ``leases.SAFE_S`` after the renewal's start (the database lets
another worker take it only after ``leases.TTL_S``), starts a job's task when it gets the
job's lease and cancels it when it loses it. A single central is simply a pool of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from central import leases
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, StorageFull

log = logging.getLogger(__name__)

JOBS = ("job/schedule", "job/retention", "job/release", "job/fleet-alerts")
PRESENCE = "worker/"  # each worker holds worker/<owner>: the live workers are their count

JobFactory = Callable[[], Coroutine[Any, Any, None]]


class Worker:
    def __init__(self, db: DurableDB, *, name: str) -> None:
        self.db = db
        self.name = name
        self.owner = leases.new_owner(name)
        self._held: dict[str, float] = {}  # lease -> monotonic time until which it is ours
        self._jobs: dict[str, JobFactory] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.live_workers = 1
        self.renewals = 0
        self.takeovers = 0  # leases taken that another run held before

    # -- what the rest of central asks -----------------------------------------------------

    def holds(self, name: str) -> bool:
        return self._held.get(name, 0.0) > time.monotonic()

    def held(self, prefix: str = "") -> list[str]:
        now = time.monotonic()
        return sorted(n for n, t in self._held.items() if t > now and n.startswith(prefix))

    async def claim(self, names: Iterable[str]) -> set[str]:
        """Take those of ``names`` that are free, expired or ours; return the ones now held."""
        want = sorted(set(names))
        if not want:
            return set()
        start = time.monotonic()
        got = await self.db.write(
            partial(leases.claim, names=want, owner=self.owner, now=now_ms(), ttl_ms=int(leases.TTL_S * 1000))
        )
        for n in got:
            if n not in self._held:
                log.info("worker %s took lease %s", self.name, n)
            self._held[n] = start + leases.SAFE_S
        return set(got)

    def fence(self, name: str) -> Callable[[Any], None]:
        """For a job's write transaction: fails with ``leases.LeaseLost`` unless this worker
        holds ``name`` (and keeps it until the transaction ends)."""

        def check(conn: Any) -> None:
            leases.hold(conn, name, owner=self.owner, now=now_ms())

        return check

    def job(self, name: str, factory: JobFactory) -> None:
        """Run ``factory()`` as a task while this worker holds lease ``name``."""
        self._jobs[name] = factory

    # -- the loop ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Before the worker's tasks start: forget the leases a previous run under this name
        held (it is dead: a second live run under one name would fight over the MQTT client id
        anyway), and take this run's presence lease."""
        prefix = self.name + "@"
        try:
            await self.db.write(partial(_drop_previous, prefix=prefix, owner=self.owner))
            await self.claim([PRESENCE + self.owner])
        except StorageFull as e:  # a start on a full disk: the leases wait for room (run)
            log.warning("worker %s: leases not taken yet: %s", self.name, e)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._turn()
                except StorageFull as e:  # a full disk: leases lapse, jobs stop; back when it has room
                    log.warning("worker %s: leases not renewed: %s", self.name, e)
                    self._sync_tasks()
                    await self.db.wait_writable()
                    continue
                await asyncio.sleep(leases.RENEW_S)
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _turn(self) -> None:
        start = time.monotonic()
        kept = await self.db.write(
            partial(leases.renew, owner=self.owner, now=now_ms(), ttl_ms=int(leases.TTL_S * 1000))
        )
        self.renewals += 1
        for n in list(self._held):
            if n not in kept:
                log.warning("worker %s lost lease %s", self.name, n)
                del self._held[n]
        for n in kept:
            self._held[n] = start + leases.SAFE_S
        if PRESENCE + self.owner not in kept:  # lapsed (a long pause): take presence again
            await self.claim([PRESENCE + self.owner])
        free = [j for j in self._jobs if not self.holds(j)]
        if free:
            await self.claim(free)
        self.live_workers = max(1, len(await self.db.read(partial(_live, now=now_ms()))))
        self._sync_tasks()

    def _sync_tasks(self) -> None:
        for name, factory in self._jobs.items():
            task = self._tasks.get(name)
            if self.holds(name):
                if task is not None and task.done() and not task.cancelled() and task.exception() is None:
                    continue  # the job ended by itself (disabled in the config): it stays ended
                if task is None or task.done():
                    if task is not None and not task.cancelled():
                        log.error(
                            "worker %s: job %s failed; started again",
                            self.name,
                            name,
                            exc_info=task.exception(),
                        )
                    log.info("worker %s runs %s", self.name, name)
                    self._tasks[name] = asyncio.create_task(factory(), name=f"central-{name}")
            elif task is not None:
                log.info("worker %s stops %s (lease lost)", self.name, name)
                task.cancel()
                del self._tasks[name]

    def describe(self) -> dict[str, Any]:
        """For ``/api/health``: this worker, the live workers, what it holds and runs."""
        from central.downlink import LEASE_PREFIX  # noqa: PLC0415 - downlink takes a Worker as its owner

        return {
            "name": self.name,
            "owner": self.owner,
            "live_workers": self.live_workers,
            "downlink_gateways": [n[len(LEASE_PREFIX) :] for n in self.held(LEASE_PREFIX)],
            "jobs": self.running(),
        }

    def running(self) -> list[str]:
        return sorted(n for n, t in self._tasks.items() if not t.done())

    async def stop(self) -> None:
        """A clean stop: give every lease up so the other workers need not wait for expiry."""
        names = list(self._held)
        self._held.clear()
        with contextlib.suppress(Exception):
            await self.db.write(partial(leases.release, names=names, owner=self.owner))


def _drop_previous(conn: Any, *, prefix: str, owner: str) -> None:
    conn.execute(
        "DELETE FROM leases WHERE owner >= ? AND owner < ? AND owner <> ?", (prefix, prefix + "\uffff", owner)
    )


def _live(conn: Any, *, now: int) -> dict[str, str]:
    return leases.holders(conn, prefix=PRESENCE, now=now)
