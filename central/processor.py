"""Central's processing stage: works through received records in arrival order.

The MQTT consumer only receives (schema check, durable store, ack); this task runs the
record handlers (validation, numbering, allocation, ...) on what was received, a batch per
transaction, and wakes the downlink sender when its work produced records for gateways (order
status, rejections).

A batch is sized to take about :data:`JOB_BUDGET_S` of the writer: long enough that the work
each job does once (its transaction, reading the queue, checking what the batch path kept)
is shared by many orders, short enough that a receive job queued behind it waits only that
long. The size follows the last job's time per record, between :data:`BATCH_MIN` and
:data:`BATCH_MAX` records."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable

from central.ingest import PROCESS_BATCH, process_queue
from ops.sqlitedb import DurableDB
from protocols.envelope import Ack

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
# While messages are being received, processing steps aside (receiving durably is what frees
# the gateways' outboxes), but never for longer than this at a time.
MAX_DEFER_S = 1.0
DEFER_STEP_S = 0.02
JOB_BUDGET_S = 0.005
BATCH_MIN = PROCESS_BATCH
BATCH_MAX = 64


class Processor:
    def __init__(
        self,
        db: DurableDB,
        *,
        on_progress: Callable[[], None] | None = None,
        receiving: Callable[[], bool] | None = None,
    ) -> None:
        self.db = db
        self.on_progress = on_progress
        self.receiving = receiving
        self.wakeup = asyncio.Event()
        self.processed = 0
        self.idle = asyncio.Event()
        self.batch = BATCH_MIN  # records the next job takes

    def _job(self, conn: sqlite3.Connection) -> tuple[dict[str, Ack], float]:
        t = time.perf_counter()
        done = process_queue(conn, limit=self.batch)
        return done, time.perf_counter() - t

    def notify(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            self.wakeup.clear()
            await self._step_aside()
            done, took = await self.db.write(self._job)
            if done:
                per_record = took / len(done)
                self.batch = max(BATCH_MIN, min(BATCH_MAX, int(JOB_BUDGET_S / max(per_record, 1e-9))))
                self.idle.clear()
                self.processed += len(done)
                if self.on_progress is not None:
                    self.on_progress()
                continue
            self.idle.set()
            try:
                async with asyncio.timeout(IDLE_POLL_S):
                    await self.wakeup.wait()
            except TimeoutError:
                pass

    async def _step_aside(self) -> None:
        if self.receiving is None:
            return
        waited = 0.0
        while self.receiving() and waited < MAX_DEFER_S:
            await asyncio.sleep(DEFER_STEP_S)
            waited += DEFER_STEP_S
