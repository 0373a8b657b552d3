"""Group commit, the part both databases share: :class:`runtime.sqlitedb.DurableDB` (SQLite) and
:class:`runtime.pgdb.PgDB` (PostgreSQL) subclass :class:`GroupWriter`.

``write(fn)`` queues ``fn`` and returns a future. One asyncio task takes every job queued (up to
``max_group``) and hands them as one group to the subclass's ``_run_group`` in the one writer
thread, which runs them inside ONE transaction (each job under its own savepoint, so a job that
raises is rolled back alone and its caller gets the exception) and commits once: many submitters
share one commit. Each future resolves only after ``_run_group`` returned, i.e. after COMMIT, with
its own job's outcome. A group that fails as a whole (its COMMIT, a transaction lost under it)
fails every one of its jobs with the same error, as the subclass's ``_error`` maps it
(:class:`StorageFull`, ...); the writer lives on with the next group.

``close()`` stops taking jobs; a group already running in the writer thread cannot be stopped, so
the writer waits for it and each of its jobs gets its true outcome (committed is not "failed");
jobs still queued fail with :class:`ClosedError`.

A full disk: ``_note_full`` makes the database count as full (:attr:`GroupWriter.storage_full`,
``on_storage_change`` listeners hear False, :meth:`GroupWriter.wait_writable` waits) and
``_note_writable`` turns it back (listeners hear True). A group failed with
:class:`StorageFull` is noted here; the rest is the subclass's (SQLite also notes single jobs
failed with it and probes the disk to turn back; PostgreSQL's next commit turns it back).

What differs stays in the subclasses: opening, reading, running a group in a transaction and what
its errors become.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

T = TypeVar("T")
C = TypeVar("C")  # what a job is given: the writer's connection

MAX_GROUP = 4096


class DatabaseError(Exception):
    """Base class for storage errors."""


class ClosedError(DatabaseError):
    pass


class StorageFull(DatabaseError):
    """The disk (or the database's page limit) is full: nothing of the failed job was kept."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: storage full ({reason})")
        self.path = str(path)
        self.reason = reason


# a job and its caller's future
Job = tuple[Callable[[C], Any], asyncio.Future[Any]]


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class GroupWriter(Generic[C]):
    """See the module docstring. A subclass sets ``_log`` (its module's logger: what it says goes
    out under its own name) and gives ``_run_group``, ``_error``, ``_say_failed`` and
    ``_close_connections``; its ``open`` ends with :meth:`_start_writer`."""

    _log: ClassVar[logging.Logger]
    path: Path | str  # what logs and errors name

    def __init__(
        self,
        *,
        migrations: Sequence[Any],
        on_connect: Callable[[C], None] | None,
        max_group: int,
        writer_thread: str,
        reader_thread: str,
        readers: int = 1,
    ) -> None:
        self._migrations = list(migrations)
        self._on_connect = on_connect
        self._max_group = max_group
        self._wx = ThreadPoolExecutor(1, thread_name_prefix=writer_thread)
        self._rx = ThreadPoolExecutor(readers, thread_name_prefix=reader_thread)
        self._queue: asyncio.Queue[Job[C]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        self.jobs = 0
        self._behind = 0  # jobs of the running group after the one running
        self.storage_full: StorageFull | None = None  # the failure that made it count as full
        self.storage_full_since_ms: int | None = None
        self.storage_full_errors = 0  # jobs failed with StorageFull
        # called with False when the disk fills up, with True when it has room again
        self.on_storage_change: list[Callable[[bool], None]] = []
        self._writable = asyncio.Event()
        self._writable.set()

    # --- what a subclass gives -------------------------------------------------------------

    def _run_group(self, jobs: list[Job[C]]) -> list[tuple[bool, Any]]:
        """In the writer thread: run ``jobs`` in one transaction and commit; (True, value) or
        (False, the exception as the caller gets it) per job, in order. Raises when the group
        failed as a whole (nothing of it committed, or its outcome unknown)."""
        raise NotImplementedError

    def _error(self, e: BaseException) -> Exception:
        """``e`` as the callers see it (a full disk becomes :class:`StorageFull`)."""
        raise NotImplementedError

    def _say_failed(self, jobs: int, err: Exception, e: Exception) -> None:
        """Log that a group of ``jobs`` failed as a whole with ``e`` (its callers get ``err``)."""
        raise NotImplementedError

    async def _close_connections(self) -> None:
        """At close, after the writer stopped: close the writer's and the readers' connections."""
        raise NotImplementedError

    # --- life ------------------------------------------------------------------------------

    def _start_writer(self, name: str) -> None:
        self._task = asyncio.create_task(self._writer(), name=name)

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._task)
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(ClosedError("database closed"))
        await self._close_connections()
        self._wx.shutdown(wait=True)
        self._rx.shutdown(wait=True)

    async def open(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- API -------------------------------------------------------------------------------

    def write(self, fn: Callable[[C], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for the next group commit; the future resolves after COMMIT."""
        if self._closed:
            raise ClosedError("database closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, fut))
        return fut

    def waiting(self) -> int:
        """Jobs waiting for the writer behind the one running: queued, or later in its group.
        For a long job to ask between its steps (it runs in the writer thread; the count is
        read as it stands, without a lock) whether to commit what it has and make way."""
        return self._queue.qsize() + self._behind

    async def wait_writable(self) -> None:
        """Return at once, or, while the database counts as full, when it is writable again:
        for a loop whose write failed with :class:`StorageFull` (it retries instead of dying)."""
        await self._writable.wait()

    def storage_state(self) -> dict[str, Any]:
        """For health, metrics and telemetry: ``state`` is ``ok`` or ``full``."""
        full = self.storage_full
        return {
            "state": "full" if full is not None else "ok",
            "since_ms": self.storage_full_since_ms,
            "reason": full.reason if full is not None else None,
            "free_bytes": self._free_bytes(),
            "errors": self.storage_full_errors,
        }

    def _free_bytes(self) -> int | None:
        return None

    # --- the writer ------------------------------------------------------------------------

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self._max_group and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            work = loop.run_in_executor(self._wx, self._run_group, jobs)
            try:
                results = await asyncio.shield(work)
            except asyncio.CancelledError:
                # closing: the group already runs in the writer thread and cannot be stopped;
                # wait for it so every job gets its true outcome (committed is not "failed")
                try:
                    results = await work
                except Exception as e:
                    self._group_failed(jobs, e)
                else:
                    self._deliver(jobs, results)
                raise
            except Exception as e:  # the COMMIT itself failed: every job in the group failed
                self._group_failed(jobs, e)
                continue
            self._deliver(jobs, results)

    def _group_failed(self, jobs: list[Job[C]], e: Exception) -> None:
        err = self._error(e)
        if isinstance(err, StorageFull):
            self._note_full(err, len(jobs))
        self._say_failed(len(jobs), err, e)
        for _, fut in jobs:
            if not fut.done():
                fut.set_exception(err)

    def _deliver(self, jobs: list[Job[C]], results: list[tuple[bool, Any]]) -> None:
        self.commits += 1
        self.jobs += len(jobs)
        self._committed(results)
        for (_, fut), (ok, value) in zip(jobs, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _committed(self, results: list[tuple[bool, Any]]) -> None:
        """A group committed with ``results``, about to be delivered."""

    # --- storage full ----------------------------------------------------------------------

    def _note_full(self, e: StorageFull, jobs: int) -> None:
        """``jobs`` jobs failed with ``e``: from the first, the database counts as full."""
        self.storage_full_errors += jobs
        if self.storage_full is None:
            self.storage_full = e
            self.storage_full_since_ms = time.time_ns() // 1_000_000
            self._writable.clear()
            self._log.error("%s: storage full, writes fail until space returns: %s", self.path, e.reason)
            self._tell_storage(False)

    def _note_writable(self) -> None:
        """The database counts as writable again."""
        self.storage_full = None
        self.storage_full_since_ms = None
        self._writable.set()
        self._tell_storage(True)

    def _tell_storage(self, writable: bool) -> None:
        for fn in list(self.on_storage_change):
            try:
                fn(writable)
            except Exception:  # a listener's bug must not stop the writer
                self._log.exception("%s: storage listener failed", self.path)
