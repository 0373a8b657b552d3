"""Durable SQLite with group commit, shared by the gateway and central processes.

One SQLite file, one writer thread, many concurrent writers in asyncio::

    db = DurableDB(path, migrations=[Migration("0001_outbox", "CREATE TABLE ...")])
    await db.open()
    seq = await db.write(lambda conn: conn.execute("INSERT ...").lastrowid)

``write(fn)`` queues ``fn``; the writer thread runs every queued job inside ONE transaction
(each job under its own savepoint, so a job that raises is rolled back alone and its caller
gets the exception) and commits once: many submitters share one fsync. The awaiting caller
resumes only after COMMIT returned, i.e. after the data is on disk.

Durability setting: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode, NORMAL
syncs only at checkpoints, so a transaction committed just before power loss can be rolled
back on recovery - a device would have been acked for a record that is gone. FULL fsyncs
the WAL on every commit; group commit amortises that fsync over many records.

Reads go through ``read(fn)`` on a separate connection and thread (WAL readers do not block
the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_GROUP = 4096


class DatabaseError(Exception):
    """Base class for storage errors."""


class ClosedError(DatabaseError):
    pass


class savepoint:
    """``with savepoint(conn, "name") as sp:`` runs the block under ``SAVEPOINT name``.

    The block's changes are released into the enclosing transaction when it ends normally;
    if it raises, they are rolled back (``ROLLBACK TO`` + ``RELEASE``) and the exception goes
    on. ``sp.rollback()`` undoes what the block did so far and keeps the savepoint open (a
    batch that falls back to row by row). A class, not a generator: it sits on hot paths."""

    __slots__ = ("_conn", "_name")

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        if not name.isidentifier():
            raise ValueError(f"savepoint name must be an identifier: {name!r}")
        self._conn = conn
        self._name = name

    def __enter__(self) -> savepoint:
        self._conn.execute(f"SAVEPOINT {self._name}")
        return self

    def rollback(self) -> None:
        self._conn.execute(f"ROLLBACK TO {self._name}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            self._conn.execute(f"ROLLBACK TO {self._name}")
        self._conn.execute(f"RELEASE {self._name}")


@dataclass(frozen=True, slots=True)
class Migration:
    """A named schema change, applied once, in list order, at open."""

    name: str
    sql: str


TEMP_STORES = ("DEFAULT", "FILE", "MEMORY")


def _bind_as_is() -> None:
    """Bind ``None`` and ``bytes`` parameters without the adaptation lookup.

    CPython's sqlite3 (3.11) binds exact ``int``, ``float`` and ``str`` directly but sends
    ``None`` and ``bytes`` through ``microprotocols_adapt``: no adapter is registered, so it
    asks ``PrepareProtocol`` for ``__adapt__``, which raises and formats an AttributeError
    (~2,000 CPU instructions) before the value is bound as it is. Central's real-time path
    binds ~20 such values per order (NULL columns, packed inputs and records), the outboxes
    one blob per record. An identity adapter for each makes that one dict lookup (callgrind:
    -2.6 % of the instructions per processed order). Exact types only: subclasses are
    adapted as before; ``int``/``float``/``str`` keep the fast path (no adapter for them)."""
    sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself for an exact bytes
    sqlite3.register_adapter(type(None), {None: None}.get)


_bind_as_is()


def connect(
    path: Path | str, *, synchronous: str = "FULL", temp_store: str = "DEFAULT"
) -> sqlite3.Connection:
    """``temp_store="MEMORY"``: statement journals, savepoint sub-journals and TEMP tables in
    memory rather than in temporary files (a write transaction that holds many savepoints -
    one per job of a group commit - copies pages to them over and over)."""
    if temp_store not in TEMP_STORES:
        raise DatabaseError(f"temp_store {temp_store!r}: one of {', '.join(TEMP_STORES)}")
    # room for the few prepared texts per table that insert_rows uses (the default keeps 128)
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=30, cached_statements=512
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA temp_store={temp_store}")
    return conn


# SQLite's default limit on ``?`` variables in one statement (builds may raise it, never lower it)
MAX_VARIABLES = 32_766
MAX_ROWS_PER_INSERT = 1024


@functools.lru_cache(maxsize=512)
def _values_sql(head: str, row: str, n: int) -> str:
    return f"{head} VALUES {','.join([row] * n)}"


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], *, row: str | None = None
) -> None:
    """``executemany(f"{head} VALUES {row}", rows)`` as a few multi-row ``VALUES`` statements
    (the same rows and rowids, in order).

    ``executemany`` steps the statement once per row, and hands the GIL to other threads and
    waits to get it back at every step; with the event loop busy that wait is most of a big
    insert's time. Here SQLite inserts a whole chunk in one step (the other threads run
    meanwhile) and the rows cost less to bind. Chunks are powers of two (1,000 rows go as
    512 + 256 + 128 + 64 + 32 + 8), so the few statement texts stay prepared in the
    connection's cache: preparing a 1,000-row statement costs more than running it.
    ``head`` is the statement up to ``VALUES``; ``row`` the placeholder group, e.g.
    ``"(?, ?, 'accepted')"`` (default: one ``?`` per column of the rows)."""
    if not rows:
        return
    if row is None:
        row = "(" + ", ".join("?" * len(rows[0])) + ")"
    width = max(1, row.count("?"))
    top = MAX_ROWS_PER_INSERT
    while top > 1 and top * width > MAX_VARIABLES:
        top //= 2
    i, n = 0, len(rows)
    while i < n:
        size = top
        while size > n - i:
            size //= 2
        chunk = rows[i : i + size]
        conn.execute(_values_sql(head, row, size), list(itertools.chain.from_iterable(chunk)))
        i += size


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded in ``_migrations``; return their names."""
    db = sqlite_utils.Database(conn)
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": str}, pk="name")  # type: ignore[union-attr]
    done = {row["name"] for row in db["_migrations"].rows}
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise DatabaseError(f"duplicate migration names in {names}")
    applied = []
    for m in migrations:
        if m.name in done:
            continue
        with db.atomic():
            for stmt in _split_sql(m.sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO _migrations(name, applied_at) VALUES (?, datetime('now'))", (m.name,))
        applied.append(m.name)
        log.info("applied migration %s", m.name)
    return applied


def _split_sql(sql: str) -> list[str]:
    out, buf = [], ""
    for piece in sql.split(";"):
        buf += piece
        if sqlite3.complete_statement(buf + ";"):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
        else:
            buf += ";"
    if buf.strip():
        out.append(buf.strip())
    return out


# A process that runs a DurableDB has two busy threads: the event loop and the SQLite writer.
# The writer gives up the GIL at every SQLite call and must get it back from the loop, which
# (busy decoding, say) keeps it for up to the interpreter's switch interval - 5 ms by default,
# so under load a receive job of a few statements at central spent most of its time waiting.
SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """For central's process: hand the GIL over every :data:`SWITCH_INTERVAL_S`, so its writer
    thread is not starved by the event loop (drain ~+20% in interleaved runs; the same setting
    in a gateway process measured slower, so gateways keep the default)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]


class DurableDB:
    def __init__(
        self,
        path: Path | str,
        *,
        migrations: Sequence[Migration] = (),
        synchronous: str = "FULL",
        temp_store: str = "DEFAULT",
        max_group: int = MAX_GROUP,
    ) -> None:
        self.path = Path(path)
        self._migrations = list(migrations)
        self._synchronous = synchronous
        self._temp_store = temp_store
        self._max_group = max_group
        self._wx = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-w-{self.path.name}")
        self._rx = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-r-{self.path.name}")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        self.jobs = 0
        self._behind = 0  # jobs of the running group after the one running

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def _open_w() -> sqlite3.Connection:
            conn = connect(self.path, synchronous=self._synchronous, temp_store=self._temp_store)
            apply_migrations(conn, self._migrations)
            return conn

        self._wconn = await loop.run_in_executor(self._wx, _open_w)
        self._rconn = await loop.run_in_executor(
            self._rx, lambda: connect(self.path, synchronous=self._synchronous, temp_store=self._temp_store)
        )
        self._task = asyncio.create_task(self._writer(), name=f"sqlite-writer:{self.path.name}")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(ClosedError("database closed"))
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            await loop.run_in_executor(self._wx, self._wconn.close)
        if self._rconn is not None:
            await loop.run_in_executor(self._rx, self._rconn.close)
        self._wx.shutdown(wait=True)
        self._rx.shutdown(wait=True)

    async def __aenter__(self) -> DurableDB:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
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

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            raise ClosedError("database not open")
        conn = self._rconn
        return await asyncio.get_running_loop().run_in_executor(self._rx, fn, conn)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self._max_group and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._wx, self._run_group, jobs)
            except BaseException as e:  # the COMMIT itself failed: every job in the group failed
                log.exception("group commit of %d jobs failed on %s", len(jobs), self.path)
                for _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(e if isinstance(e, Exception) else DatabaseError(str(e)))
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            self.commits += 1
            self.jobs += len(jobs)
            for (_, fut), (ok, value) in zip(jobs, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_group(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None
        assert threading.current_thread().name.startswith("sqlite-w-")
        if len(jobs) == 1:  # no savepoint needed: the job's own failure rolls back everything
            fn = jobs[0][0]
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except Exception as e:
                conn.execute("ROLLBACK")
                return [(False, e)]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._commit(conn)
            return [(True, value)]
        out: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i, (fn, _) in enumerate(jobs):
                self._behind = len(jobs) - 1 - i
                try:
                    with savepoint(conn, "job"):
                        value = fn(conn)
                except Exception as e:
                    out.append((False, e))
                else:
                    out.append((True, value))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self._behind = 0
        self._commit(conn)
        return out

    @staticmethod
    def _commit(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
