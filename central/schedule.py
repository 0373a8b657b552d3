"""Central's clock: the business schedules that run by date rather than on a request.

Jobs, each item run once:

- ``contract``: a contract's scheduled delivery due by today becomes its order
  (:func:`central.orders.orders.make_contract_delivery`); item ``<contract>@<date>``;
- ``delay-expiry``: an order held for a complete delivery (shortage action DELAY) past its
  time limit is cancelled and its stock given back (:func:`central.allocate.shortage.expire_delay`);
  item ``<order id>@<deadline>``;
- ``promise-expiry``: a kept promise (``central.promising.promise``) not claimed - or claimed by an
  order not allocated yet - by its ``hold_until`` gives its reserved stock and VAS minutes
  back (:func:`central.promising.promise.close`); item ``<ref>@<hold_until>``.

After the due items, each tick runs the scheduler's ``monitors`` (the availability monitor,
``central.allocate.availability``: velocity, days of cover, stock-out proposals and alerts).

Each item's effect, the mark that takes it off the due list (the delivery's order id, the
allocation status) and its ``schedule_runs`` row are written in one transaction, so a
crash or restart at any point neither runs an item twice (the row's primary key refuses a
second one) nor skips it (what did not commit is still due). :class:`Scheduler` runs the
jobs at start and then every ``[schedule] every_s`` seconds as a task of central's
TaskGroup, ``per_job`` items per write job; ``POST /api/contracts/run`` runs the contract
job by hand through the same path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from central.allocate import shortage
from central.orders import lifecycle, orders
from central.promising import promise
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)

CONTRACT = "contract"
DELAY_EXPIRY = "delay-expiry"
PROMISE_EXPIRY = "promise-expiry"


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    enabled: bool = True
    every_s: float = 60.0
    per_job: int = 50  # items per write job (each job is one transaction)


@dataclass(frozen=True, slots=True)
class Ran:
    job: str
    item: str
    result: str


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _record(conn: sqlite3.Connection, job: str, item: str, result: str, now: int) -> Ran:
    conn.execute(
        "INSERT INTO schedule_runs (job, item, ran_at, result) VALUES (?, ?, ?, ?)", (job, item, now, result)
    )
    return Ran(job, item, result)


def run_contracts(conn: sqlite3.Connection, *, today: dt.date, now: int, limit: int = -1) -> list[Ran]:
    """Make the orders of (up to ``limit``) contract deliveries due by ``today``."""
    out = []
    with lifecycle.coalesce_status(conn):
        for code, date, customer in orders.due_contract_deliveries(conn, today, limit=limit):
            created = orders.make_contract_delivery(conn, code, date, customer, today=today, now=now)
            out.append(_record(conn, CONTRACT, f"{code}@{date}", created.order_no, now))
    return out


def expire_delays(conn: sqlite3.Connection, *, today: dt.date, now: int, limit: int = -1) -> list[Ran]:
    """Cancel (up to ``limit``) orders held past their delay limit."""
    out = []
    with lifecycle.coalesce_status(conn):
        for oid, deadline in shortage.due_delay_expiries(conn, today, limit=limit):
            units = shortage.expire_delay(conn, oid, now=now)
            out.append(
                _record(conn, DELAY_EXPIRY, f"{oid}@{deadline}", f"cancelled, {units} units back", now)
            )
    return out


def expire_promises(conn: sqlite3.Connection, *, now: int, limit: int | None = None) -> list[Ran]:
    """End (up to ``limit``) kept promises past their ``hold_until``: stock and minutes back."""
    out = []
    for ref, until in promise.due(conn, now, limit=limit):
        back = promise.close(conn, ref, status="expired", reason="hold_until passed", now=now)
        result = f"expired, {back['units']} units and {back['vas_minutes']} VAS minutes back"
        out.append(_record(conn, PROMISE_EXPIRY, f"{ref}@{until}", result, now))
    return out


def run_due(conn: sqlite3.Connection, *, today: dt.date, now: int, limit: int) -> list[Ran]:
    """Up to ``limit`` due items of every job, in the caller's transaction."""
    ran = run_contracts(conn, today=today, now=now, limit=limit)
    if len(ran) < limit:
        ran += expire_delays(conn, today=today, now=now, limit=limit - len(ran))
    if len(ran) < limit:
        ran += expire_promises(conn, now=now, limit=limit - len(ran))
    return ran


def list_runs(conn: sqlite3.Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    cols = ("job", "item", "ran_at", "result")
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM schedule_runs ORDER BY ran_at DESC, job DESC, item DESC LIMIT ?",
        (limit,),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _fenced(
    job: Callable[[sqlite3.Connection], list[Ran]], fence: Callable[[sqlite3.Connection], None] | None
) -> Callable[[sqlite3.Connection], list[Ran]]:
    if fence is None:
        return job

    def fenced(conn: sqlite3.Connection) -> list[Ran]:
        fence(conn)
        return job(conn)

    return fenced


class Scheduler:
    """Runs the due items at start and every ``every_s`` seconds."""

    def __init__(
        self,
        db: DurableDB,
        settings: ScheduleSettings,
        *,
        on_work: Callable[[], None],
        today: Callable[[], dt.date] = today_utc,
        fence: Callable[[sqlite3.Connection], None] | None = None,
        monitors: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        """``fence``: called first in each write job (``central.workers.Worker.fence``: fails
        unless this worker holds the schedule's lease, so two workers never run it at once)."""
        self.db = db
        self.settings = settings
        self.on_work = on_work
        self.today = today
        self.fence = fence
        self.monitors = tuple(monitors)  # run after the due items on every tick
        self.ran = 0
        self.errors = 0

    async def tick(self) -> list[Ran]:
        """Run everything due now, ``per_job`` items per transaction."""
        limit = max(1, self.settings.per_job)
        out: list[Ran] = []
        while True:
            job = partial(run_due, today=self.today(), now=now_ms(), limit=limit)
            ran = await self.db.write(_fenced(job, self.fence))
            if ran:
                out += ran
                self.ran += len(ran)
                for r in ran:
                    log.info("schedule %s %s: %s", r.job, r.item, r.result)
                self.on_work()  # contract orders and cancellations queue status records
            if len(ran) < limit:
                for monitor in self.monitors:
                    await monitor()
                return out

    async def run(self) -> None:
        if not self.settings.enabled:
            return
        while True:
            try:
                await self.tick()
            except Exception:  # the task's boundary: log, count, try again next tick
                self.errors += 1
                log.exception(
                    "schedule tick failed (%d so far); retrying in %.0f s", self.errors, self.settings.every_s
                )
            await asyncio.sleep(self.settings.every_s)
