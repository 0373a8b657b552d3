"""Central's processing stage: works through received records in arrival order.

The MQTT consumer only receives (schema check, durable store, ack); this task runs the
record handlers (validation, numbering, allocation, ...) on what was received, a small batch
per transaction so receiving never waits long behind it, and wakes the downlink sender when
its work produced records for gateways (order status, rejections)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from central.ingest import process_queue
from ops.sqlitedb import DurableDB

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
# While messages are being received, processing steps aside (receiving durably is what frees
# the gateways' outboxes), but never for longer than this at a time.
MAX_DEFER_S = 1.0
DEFER_STEP_S = 0.02


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

    def notify(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            self.wakeup.clear()
            await self._step_aside()
            done = await self.db.write(process_queue)
            if done:
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
