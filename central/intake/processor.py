"""Central's processing stage: works through received records in arrival order.

The MQTT consumer only receives (schema check, durable store, ack); this task runs the
record handlers (validation, numbering, allocation, ...) on what was received, a batch per
transaction, and wakes the downlink sender when its work produced records for gateways (order
status, rejections).

A job works the queue in chunks of :data:`CHUNK` records, all in one transaction, until the
queue is empty, the job has run :data:`JOB_MAX_S` or done :data:`JOB_MAX_RECORDS`, or another
job is waiting for the writer (``DurableDB.waiting``: a message being received, an API
write) and the job has had :data:`JOB_MIN_S`. That is asked between orders, so a waiting job
waits at most about that long, plus the writing of what the chunk made; then the processing
job commits and makes way (and still gets through a few dozen orders per commit). So
when nothing else wants the writer a backlog goes in few, big transactions (one commit, one
reading of the batch path's state and a few multi-row inserts shared by hundreds of orders),
and when messages keep arriving each one still waits only a few milliseconds."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable

from central.intake.ingest import process_queue
from protocols.envelope import Ack
from runtime.sqlitedb import DatabaseError, DurableDB, StorageFull

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
# While messages are being received, processing steps aside (receiving durably is what frees
# the gateways' outboxes), but never for longer than this at a time.
MAX_DEFER_S = 1.0
DEFER_STEP_S = 0.02
CHUNK = 64  # records read from the queue at a time (what a stop leaves unread is re-read)
JOB_MIN_S = 0.005  # a job others wait for gets this long before it makes way
JOB_MAX_S = 0.1  # what a job commits, its orders' status included, is at most this late
JOB_MAX_RECORDS = 1024
RETRY_AFTER_DB_ERROR_S = 0.5  # a processing job failed by the database (not a full disk)


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
        self.jobs = 0  # jobs that processed something
        self.busy_s = 0.0  # the writer's time in processing jobs (its rate: how busy processing is)

    def _job(self, conn: sqlite3.Connection) -> dict[str, Ack]:
        start = time.perf_counter()
        try:
            return self._work(conn, start)
        finally:
            self.busy_s += time.perf_counter() - start

    def _work(self, conn: sqlite3.Connection, start: float) -> dict[str, Ack]:

        def stop() -> bool:
            took = time.perf_counter() - start
            return took >= JOB_MAX_S or (took >= JOB_MIN_S and self.db.waiting() > 0)

        done: dict[str, Ack] = {}
        while True:
            got = process_queue(conn, limit=CHUNK, stop=stop)
            done.update(got)
            if len(got) < CHUNK or len(done) >= JOB_MAX_RECORDS or stop():
                return done  # the queue is empty, the job is long enough, or someone waits

    def notify(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            self.wakeup.clear()
            await self._step_aside()
            try:
                done = await self.db.write(self._job)
            except StorageFull as e:  # the queue stays as it was; processed once there is room
                log.warning("processing postponed: %s", e)
                await self.db.wait_writable()
                continue
            except DatabaseError as e:
                # PostgreSQL's connection lost (runtime.pgdb.ConnectionLost) or writers that kept
                # deadlocking: nothing of the job was committed, the queue stays as it was
                log.warning("processing postponed %.1fs: %s", RETRY_AFTER_DB_ERROR_S, e)
                await asyncio.sleep(RETRY_AFTER_DB_ERROR_S)
                continue
            if done:
                self.jobs += 1
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
