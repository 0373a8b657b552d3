"""Releasing allocated orders to the distribution centre's pickers on a schedule.

Real-time allocation leaves orders ``allocated``; at each release tick (the pick wave's
cut-off) every allocated order is released: its allocations become pick tasks, in
storage-location order, on the durable downlink of the DC gateway that picks them. Orders
allocated in a batch wave are not: they wait for their wave's release, so the wave is
picked (and its pick list printed) as one."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central.fulfil import picking
from runtime.sqlitedb import DurableDB, StorageFull

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReleaseSettings:
    enabled: bool = True
    every_s: float = 60.0
    max_orders: int = 500


def release_allocated(conn: sqlite3.Connection, *, limit: int) -> list[dict[str, Any]]:
    """Release allocated orders one by one - except an order of a batch wave that is not
    released yet: it waits for its wave (``POST /api/waves/{id}/release``,
    ``central.web.release_api``), whose pick
    list and tasks hold the whole wave - and an order with a line waiting for a value-added
    or scheduled service (its process definition, ``central/PROCESS.md``)."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT o.order_id FROM orders o WHERE o.status = 'allocated' AND NOT EXISTS"
            " (SELECT 1 FROM wave_orders wo JOIN waves w ON w.wave_id = wo.wave_id"
            "  WHERE wo.order_id = o.order_id AND w.status != 'released')"
            " AND NOT EXISTS (SELECT 1 FROM process_lines p WHERE p.order_id = o.order_id AND p.waiting = 1)"
            " ORDER BY o.order_id LIMIT ?",
            (limit,),
        )
    ]
    return [picking.release_order(conn, oid) for oid in ids]


class Releaser:
    def __init__(
        self,
        db: DurableDB,
        settings: ReleaseSettings,
        *,
        on_release: Callable[[], None],
        fence: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """``fence``: called first in each release job (``central.workers.Worker.fence``: fails
        unless this worker holds the release lease, so two workers never release at once)."""
        self.db = db
        self.fence = fence
        self.settings = settings
        self.on_release = on_release
        self.released_orders = 0
        self.tasks = 0

    async def tick(self) -> int:
        def job(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if self.fence is not None:
                self.fence(conn)
            return release_allocated(conn, limit=self.settings.max_orders)

        out = await self.db.write(job)
        tasks = sum(int(r["tasks"]) for r in out)
        if out:
            self.released_orders += sum(int(r["orders"]) for r in out)
            self.tasks += tasks
            log.info("released %d orders, %d pick tasks", len(out), tasks)
            self.on_release()
        return len(out)

    async def run(self) -> None:
        if not self.settings.enabled:
            return
        while True:
            await asyncio.sleep(self.settings.every_s)
            try:
                await self.tick()
            except StorageFull as e:  # nothing released; the next tick after space returns does it
                log.warning("release postponed: %s", e)
                await self.db.wait_writable()
