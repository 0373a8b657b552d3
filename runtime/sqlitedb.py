"""Durable SQLite with group commit, shared by the gateway and central processes.

One SQLite file, one writer thread, many concurrent writers in asyncio::

    db = DurableDB(path, migrations=[Migration("0001_outbox", "CREATE TABLE ...")])
    await db.open()
    seq = await db.write(lambda conn: conn.execute("INSERT ...").lastrowid)

``write(fn)`` queues ``fn``; the writer thread runs every queued job inside ONE transaction
(each job under its own savepoint, so a job that raises is rolled back alone and its caller
gets the exception) and commits once: many submitters share one fsync. The awaiting caller
resumes only after COMMIT returned, i.e. after the data is on disk. The queue, the writer
task, delivery and close are :class:`runtime.groupwriter.GroupWriter`'s (shared with
:class:`runtime.pgdb.PgDB`); here: opening the file, running a group in SQLite's transaction,
and the full disk.

Durability setting: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode, NORMAL
syncs only at checkpoints, so a transaction committed just before power loss can be rolled
back on recovery - a device would have been acked for a record that is gone. FULL fsyncs
the WAL on every commit; group commit amortises that fsync over many records.

Reads go through ``read(fn)`` on a separate connection and thread (WAL readers do not block
the writer).

A full disk (SQLite's ``SQLITE_FULL``: the file system, or ``PRAGMA max_page_count``) fails
the group commit it hits: SQLite rolls the whole transaction back (savepoints or not), so each
job of that group fails with :class:`StorageFull` and nothing of it is kept. The writer lives
on; later groups commit as space allows. From the first such failure (or a probe at open) the
database counts as full (:attr:`DurableDB.storage_full`) until its own probe task has committed
a small write and seen :data:`STORAGE_HEADROOM_BYTES` free again, every
:data:`STORAGE_PROBE_S`; ``on_storage_change`` listeners hear both turns, and
:meth:`DurableDB.wait_writable` lets a loop whose write failed wait for room.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from runtime.groupwriter import (
    MAX_GROUP,
    ClosedError,
    DatabaseError,
    GroupWriter,
    Job,
    StorageFull,
    stop_task,
)

# the errors and MAX_GROUP are runtime.groupwriter's, named here as before
__all__ = [
    "MAX_GROUP", "MAX_ROWS_PER_INSERT", "MAX_VARIABLES", "STORAGE_HEADROOM_BYTES", "STORAGE_PROBE_S",
    "SWITCH_INTERVAL_S", "TEMP_STORES", "ClosedError", "Connection", "DatabaseError", "DurableDB",
    "Migration", "StorageFull", "apply_migrations", "connect", "free_bytes", "insert_rows",
    "is_storage_full", "savepoint", "tune_interpreter",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_storage_full(e: BaseException) -> bool:
    """True for :class:`StorageFull` and for SQLite's own ``database or disk is full``, also
    where that was the error being handled when ``e`` was raised (a job's ``ROLLBACK TO`` that
    fails because the full disk already rolled the whole transaction back)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if isinstance(cur, StorageFull):
            return True
        code = getattr(cur, "sqlite_errorcode", None) if isinstance(cur, sqlite3.Error) else None
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


# While the database counts as full, a probe write is tried this often; it counts as writable
# again once the probe commits and the file system has this much free (a free page or two
# would let the probe through and the next real job fail again).
STORAGE_PROBE_S = 2.0
STORAGE_HEADROOM_BYTES = 1024 * 1024


class savepoint:
    """``with savepoint(conn, "name") as sp:`` runs the block under ``SAVEPOINT name``.

    The block's changes are released into the enclosing transaction when it ends normally;
    if it raises, they are rolled back (``ROLLBACK TO`` + ``RELEASE``) and the exception goes
    on. If SQLite rolled back the whole transaction under the block (a full disk can), there is
    nothing left to undo: the block's error goes on as it is (so :func:`is_storage_full` still
    sees it), and a block that ended normally raises :class:`DatabaseError`; if the savepoint's
    own ROLLBACK TO or RELEASE fails, the whole transaction is rolled back (the caller's job
    then fails as a lost transaction, as when it raised itself). ``sp.rollback()``
    undoes what the block did so far and keeps the savepoint open (a batch that falls back to
    row by row). A class, not a generator: it sits on hot paths."""

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
        if not self._conn.in_transaction:  # SQLite rolled back the whole transaction (a full disk can)
            if exc_type is not None:
                return  # the savepoint went with it: the block's own error goes on
            raise DatabaseError(f"the transaction was rolled back under savepoint {self._name}")
        try:
            if exc_type is not None:
                self._conn.execute(f"ROLLBACK TO {self._name}")
            self._conn.execute(f"RELEASE {self._name}")
        except BaseException:  # the block's changes may still be in: give the whole transaction up
            _rollback(self._conn)
            raise


@dataclass(frozen=True, slots=True)
class Migration:
    """A named schema change, applied once, in list order, at open."""

    name: str
    sql: str
    # the SQL run instead on PostgreSQL (triggers, anything translate_ddl does not translate);
    # None: ``sql`` through runtime.pgdb.translate_ddl
    postgres: str | None = None


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


class Connection(sqlite3.Connection):
    """The connections :func:`connect` opens: a ``sqlite3.Connection`` that carries ``state``,
    what the part using it keeps per connection (central: its wiring and caches, see
    ``central.hub``), so nothing is kept in a module keyed by the connection's id."""

    state: Any = None
    dialect = "sqlite"


WAL_LIMIT_BYTES = 64 * 1024 * 1024


def connect(
    path: Path | str,
    *,
    synchronous: str = "FULL",
    temp_store: str = "DEFAULT",
    wal_limit: int = WAL_LIMIT_BYTES,
) -> sqlite3.Connection:
    """``temp_store="MEMORY"``: statement journals, savepoint sub-journals and TEMP tables in
    memory rather than in temporary files (a write transaction that holds many savepoints -
    one per job of a group commit - copies pages to them over and over).

    ``wal_limit``: the size the write-ahead log is cut back to once a checkpoint has emptied it
    (``PRAGMA journal_size_limit``). Without it the -wal file keeps the size of the largest
    burst it ever held - a gateway that drained a day's outage backlog would keep that much disk
    taken for good, on the same disk whose filling stops it taking orders."""
    if temp_store not in TEMP_STORES:
        raise DatabaseError(f"temp_store {temp_store!r}: one of {', '.join(TEMP_STORES)}")
    # room for the few prepared texts per table that insert_rows uses (the default keeps 128)
    conn = sqlite3.connect(
        str(path),
        isolation_level=None,
        check_same_thread=False,
        timeout=30,
        cached_statements=512,
        factory=Connection,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA temp_store={temp_store}")
    conn.execute(f"PRAGMA journal_size_limit={int(wal_limit)}")
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
    if getattr(conn, "dialect", "sqlite") == "postgresql":  # runtime.pgdb: its own bulk insert
        conn.insert_rows(head, row, rows)  # type: ignore[attr-defined]
        return
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


class _TransactionLost(Exception):
    """A job left the group's transaction rolled back (SQLite undoes the whole transaction on
    some errors, e.g. a full disk at commit): every job of the group failed with ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def free_bytes(path: Path) -> int | None:
    """Bytes free to an unprivileged writer on the file system holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class DurableDB(GroupWriter[sqlite3.Connection]):
    _log = log

    def __init__(
        self,
        path: Path | str,
        *,
        migrations: Sequence[Migration] = (),
        synchronous: str = "FULL",
        temp_store: str = "DEFAULT",
        wal_limit: int = WAL_LIMIT_BYTES,
        max_group: int = MAX_GROUP,
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """``on_connect`` is called with each connection (the writer's, the reader's) in its
        own thread once it is open and migrated: to give it its ``state``."""
        self.path: Path = Path(path)
        super().__init__(
            migrations=migrations,
            on_connect=on_connect,
            max_group=max_group,
            writer_thread=f"sqlite-w-{self.path.name}",
            reader_thread=f"sqlite-r-{self.path.name}",
        )
        self._synchronous = synchronous
        self._temp_store = temp_store
        self._wal_limit = wal_limit
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._full = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def _open(migrate: bool) -> sqlite3.Connection:
            conn = connect(
                self.path,
                synchronous=self._synchronous,
                temp_store=self._temp_store,
                wal_limit=self._wal_limit,
            )
            if migrate:
                apply_migrations(conn, self._migrations)
            if self._on_connect is not None:
                self._on_connect(conn)
            return conn

        self._wconn = await loop.run_in_executor(self._wx, _open, True)
        self._rconn = await loop.run_in_executor(self._rx, _open, False)
        self._start_writer(f"sqlite-writer:{self.path.name}")
        # Opening needs no free space (a database already migrated is only read): a full disk
        # is found here and reported, not a reason to exit and be restarted into it again.
        await self.probe()
        self._probe_task = asyncio.create_task(self._watch_storage(), name=f"sqlite-probe:{self.path.name}")

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._probe_task)
        await super().close()

    async def _close_connections(self) -> None:
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            await loop.run_in_executor(self._wx, self._wconn.close)
        if self._rconn is not None:
            await loop.run_in_executor(self._rx, self._rconn.close)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            raise ClosedError("database not open")
        conn = self._rconn
        return await asyncio.get_running_loop().run_in_executor(self._rx, fn, conn)

    def _error(self, e: BaseException) -> Exception:
        """``e`` as the callers see it: SQLite's full-disk error becomes :class:`StorageFull`."""
        if isinstance(e, _TransactionLost):
            e = e.cause
        if is_storage_full(e) and not isinstance(e, StorageFull):
            full = StorageFull(self.path, str(e))
            full.__cause__ = e
            return full
        return e if isinstance(e, Exception) else DatabaseError(str(e))

    def _say_failed(self, jobs: int, err: Exception, e: Exception) -> None:
        if isinstance(err, StorageFull):  # said once at ERROR when the disk fills up
            log.debug("group commit of %d jobs failed on %s: %s", jobs, self.path, err.reason)
        else:
            log.error("group commit of %d jobs failed on %s", jobs, self.path, exc_info=e)

    def _committed(self, results: list[tuple[bool, Any]]) -> None:
        full = [v for ok, v in results if not ok and isinstance(v, StorageFull)]
        if full:
            self._note_full(full[0], len(full))

    def _note_full(self, e: StorageFull, jobs: int) -> None:
        super()._note_full(e, jobs)
        self._full.set()  # the probe task takes over

    async def probe(self) -> bool:
        """Try a small write; True if it committed and the file system has
        :data:`STORAGE_HEADROOM_BYTES` free (the database then counts as writable again), else
        False (and the database counts as full)."""

        def job(conn: sqlite3.Connection) -> None:
            # new pages, given back at once (a page limit refuses them here), then one page
            # really written: the header's user_version, set to what it is
            conn.execute("SAVEPOINT probe")
            try:
                conn.execute("CREATE TABLE _storage_probe (pad BLOB)")
                conn.execute("INSERT INTO _storage_probe VALUES (zeroblob(16384))")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO probe")
                    conn.execute("RELEASE probe")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")

        try:
            await self.write(job)
        except StorageFull:
            return False
        free = free_bytes(self.path.parent)
        if free is not None and free < STORAGE_HEADROOM_BYTES:
            self._note_full(
                StorageFull(self.path, f"{free} bytes free, less than {STORAGE_HEADROOM_BYTES}"), 0
            )
            return False
        if self.storage_full is not None:
            log.warning(
                "%s: storage writable again after %.1fs",
                self.path,
                (time.time_ns() // 1_000_000 - (self.storage_full_since_ms or 0)) / 1000,
            )
            self._full.clear()
            self._note_writable()
        return True

    async def _watch_storage(self) -> None:
        """While the database counts as full, probe it every :data:`STORAGE_PROBE_S` (read at
        each turn, so tests may shrink it) until it is writable again; runs until closed."""
        while True:
            await self._full.wait()
            await asyncio.sleep(STORAGE_PROBE_S)
            try:
                await self.probe()
            except Exception:  # a probe that fails otherwise must not end the watch
                log.exception("%s: storage probe failed", self.path)

    def _free_bytes(self) -> int | None:
        return free_bytes(self.path.parent)

    def _run_group(self, jobs: list[Job[sqlite3.Connection]]) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None
        assert threading.current_thread().name.startswith("sqlite-w-")
        if len(jobs) == 1:  # no savepoint needed: the job's own failure rolls back everything
            fn = jobs[0][0]
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except Exception as e:
                _rollback(conn)
                return [(False, self._error(e))]
            except BaseException:
                _rollback(conn)
                raise
            if not conn.in_transaction:  # the job swallowed an error that undid the transaction
                raise DatabaseError("the transaction was rolled back under the job")
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
                    # SQLite may have rolled back the whole transaction (a full disk can): the
                    # jobs before this one are gone too, and the next would run outside it
                    if not conn.in_transaction:
                        raise _TransactionLost(e) from e
                    out.append((False, self._error(e)))
                else:
                    out.append((True, value))
        except BaseException:
            _rollback(conn)
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
            _rollback(conn)
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already; the error that brought us here
    is the one to report, not a failing ROLLBACK."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except Exception as e:  # sqlite3.Error, or psycopg's on a runtime.pgdb connection
            log.warning("ROLLBACK failed: %s", e)
