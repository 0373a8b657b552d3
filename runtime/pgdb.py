"""Central's database on PostgreSQL, with the API central uses from :class:`DurableDB`.

    db = PgDB("postgresql://user@host/db", migrations=[...], on_connect=hub.attach)
    await db.open()
    oid = await db.write(lambda conn: conn.execute("INSERT INTO t(x) VALUES (?)", (1,)).lastrowid)

The same group commit as :class:`runtime.sqlitedb.DurableDB` (both subclass
:class:`runtime.groupwriter.GroupWriter`): ``write(fn)`` queues ``fn``; one writer thread runs
every queued job inside ONE transaction, each job under its own ``SAVEPOINT`` (a job that raises
is rolled back alone and its caller gets the exception), and commits once; the caller resumes
only after COMMIT returned. Here: the connections, running a group in PostgreSQL's transaction
(reruns, reconnects) and what its errors become.

Several processes may write the same database at once (central's workers). A serialization
failure or a deadlock (SQLSTATE ``40001`` / ``40P01``) in a job or at COMMIT rolls the whole
group back and runs it again (up to :data:`MAX_RETRIES` times; each connection's ``state`` is
given afresh first, so no cache keeps what the rollback undid): no job is lost or run twice
into the database. A lost connection fails the group's jobs with :class:`ConnectionLost`
(nothing of them was committed - or, when it was lost during COMMIT itself, the outcome is
unknown and the error says so) and the next group runs on a new connection.

Jobs get a :class:`PgConnection`: what central uses of ``sqlite3.Connection`` (``execute``
with ``?`` placeholders, ``executemany``, cursors with ``fetchone``/``fetchall``/iteration/
``lastrowid``/``rowcount``/``description``, ``in_transaction``, ``state``), so the same SQL
runs on both. See :func:`translate` for what is rewritten and :func:`translate_ddl` for the
migrations' DDL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import pq
from psycopg.adapt import Loader

from runtime import sqlitedb
from runtime.groupwriter import MAX_GROUP, ClosedError, DatabaseError, GroupWriter, Job, StorageFull
from runtime.sqlitedb import Migration, savepoint

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RETRIES = 8  # group reruns after a serialization failure or deadlock before its jobs fail
RETRY_SQLSTATES = frozenset({"40001", "40P01"})
DISK_FULL_SQLSTATE = "53100"
READERS = 2
# statements kept prepared per connection (psycopg prepares one after its 5th use; its default
# keeps 100, fewer than central's hot statements)
PREPARED_MAX = 512
READ_TRIES = 3  # a read whose connection the server ended goes again on another


class ConnectionLost(DatabaseError):
    """The connection to PostgreSQL broke under a group: its jobs were not committed (or,
    lost during COMMIT, their outcome is unknown - ``unknown`` is True)."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        what = "the job's outcome is unknown (lost during COMMIT)" if unknown else "the job was not committed"
        super().__init__(f"connection to PostgreSQL lost, {what}: {reason}")
        self.unknown = unknown


class RetriesExhausted(DatabaseError):
    pass


# --- SQL translation -------------------------------------------------------------------------

_INSERT_RE = re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_RETURNING_RE = re.compile(r"\bRETURNING\b", re.IGNORECASE)


_HEAD_RE = re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(([^()]*)\)\s*$", re.IGNORECASE)


def _split_top(text: str) -> list[str] | None:
    """``text`` split at commas outside quotes and parentheses, each part stripped."""
    parts, buf, depth = [], [], 0
    for plain, piece in _scan(text):
        if not plain:
            buf.append(piece)
            continue
        for ch in piece:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    return None
            if ch == "," and depth == 0:
                parts.append("".join(buf).strip())
                buf = []
            else:
                buf.append(ch)
    parts.append("".join(buf).strip())
    return parts


def _uniform(col: list[Any], udt: str) -> list[Any]:
    """A column's values as one Python type, as its array needs them."""
    if udt in ("float4", "float8", "numeric"):
        return [None if v is None else float(v) for v in col]
    if udt in ("int2", "int4", "int8"):
        return [None if v is None else int(v) for v in col]
    return [None if v is None else str(v) if udt == "text" else v for v in col]


def _scan(sql: str) -> Iterator[tuple[bool, str]]:
    """``sql`` in pieces: (True, text outside quotes and comments) or (False, a quoted literal,
    a quoted identifier or a comment, as it is)."""
    i, n, start = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c in "'\"":
            if i > start:
                yield True, sql[start:i]
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # '' or "" inside
                        j += 2
                        continue
                    break
                j += 1
            yield False, sql[i : j + 1]
            i = start = j + 1
        elif c == "-" and sql.startswith("--", i):
            if i > start:
                yield True, sql[start:i]
            j = sql.find("\n", i)
            j = n if j < 0 else j
            yield False, sql[i:j]
            i = start = j
        elif c == "/" and sql.startswith("/*", i):
            if i > start:
                yield True, sql[start:i]
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            yield False, sql[i:j]
            i = start = j
        else:
            i += 1
    if start < n:
        yield True, sql[start:]


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``?`` -> ``%s`` outside quoted literals, identifiers and comments; ``%`` -> ``%%``
    everywhere (psycopg formats the whole text)."""
    out = []
    for plain, piece in _scan(sql):
        text = piece.replace("%", "%%")
        out.append(text.replace("?", "%s") if plain else text)
    return "".join(out)


_IDENTITY_PK = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
_DDL_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I), _IDENTITY_PK),
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\b", re.I), _IDENTITY_PK),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\b", re.I), ")"),
    (re.compile(r"\)\s*STRICT\b", re.I), ")"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\s*,\s*STRICT\b", re.I), ")"),
    (re.compile(r"\)\s*STRICT\s*,\s*WITHOUT\s+ROWID\b", re.I), ")"),
]


def translate_ddl(sql: str) -> str:
    """A migration's SQLite DDL for PostgreSQL: ``INTEGER PRIMARY KEY [AUTOINCREMENT]`` ->
    an identity primary key, ``INTEGER`` -> ``BIGINT``, ``REAL`` -> ``DOUBLE PRECISION``,
    ``BLOB`` -> ``BYTEA``, ``WITHOUT ROWID`` / ``STRICT`` dropped (outside quoted text)."""
    out = []
    for plain, piece in _scan(sql):
        text = piece
        if plain:
            for pat, rep in _DDL_RULES:
                text = pat.sub(rep, text)
        out.append(text)
    return "".join(out)


def split_sql(sql: str) -> list[str]:
    """Statements of a migration, split at ``;`` outside quotes and comments, except inside
    ``$$ ... $$`` (function bodies of a ``postgres`` migration)."""
    out: list[str] = []
    buf: list[str] = []
    in_dollar = False
    for plain, piece in _scan(sql):
        if not plain:
            buf.append(piece)
            continue
        parts = re.split(r"(\$\$|;)", piece)
        for p in parts:
            if p == "$$":
                in_dollar = not in_dollar
                buf.append(p)
            elif p == ";" and not in_dollar:
                stmt = "".join(buf).strip()
                if stmt:
                    out.append(stmt)
                buf = []
            else:
                buf.append(p)
    stmt = "".join(buf).strip()
    if stmt:
        out.append(stmt)
    return out


# --- loaders: values as sqlite3 gives them ------------------------------------------------------


class _NumericLoader(Loader):
    """``numeric`` as SQLite would type the same value: ``sum()`` of a BIGINT (no decimal
    point) as ``int``, ``avg()`` and other fractions as ``float``."""

    def load(self, data: Any) -> int | float:
        s = bytes(data).decode()
        if "." in s or "e" in s or "E" in s or s in ("NaN", "Infinity", "-Infinity"):
            return float(s)  # avg() and the like: SQLite's are REAL
        return int(s)


class _BoolLoader(Loader):
    """A boolean expression's value as 1 / 0, as SQLite gives it."""

    def load(self, data: Any) -> int:
        return 1 if bytes(data) == b"t" else 0


# --- the connection adapter ------------------------------------------------------------------


class PgCursor:
    """What central uses of a ``sqlite3.Cursor``."""

    __slots__ = ("_cur", "_rows", "lastrowid")

    def __init__(
        self, cur: psycopg.Cursor[Any], rows: list[Any] | None = None, lastrowid: int | None = None
    ) -> None:
        self._cur = cur
        self._rows = rows  # the rows already taken (a RETURNING appended for lastrowid: none)
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        if self._cur.pgresult is None or self._cur.pgresult.status != pq.ExecStatus.TUPLES_OK:
            return None
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        if self._cur.pgresult is None or self._cur.pgresult.status != pq.ExecStatus.TUPLES_OK:
            return []
        return self._cur.fetchall()

    def fetchmany(self, size: int = 1) -> list[Any]:
        if self._rows is not None:
            rows, self._rows = self._rows[:size], self._rows[size:]
            return rows
        return self._cur.fetchmany(size)

    def __iter__(self) -> Iterator[Any]:
        if self._rows is not None or self._cur.pgresult is None:
            return iter(self.fetchall())
        if self._cur.pgresult.status != pq.ExecStatus.TUPLES_OK:
            return iter(())
        return iter(self._cur)  # rows made as they are taken

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def description(self) -> Any:
        return self._cur.description

    def close(self) -> None:
        self._cur.close()


class PgConnection:
    """What central uses of a ``sqlite3.Connection``, on a psycopg connection in autocommit
    mode (the transaction is the writer's explicit ``BEGIN`` ... ``COMMIT``)."""

    dialect = "postgresql"
    state: Any = None

    def __init__(self, raw: psycopg.Connection[Any], identity: dict[str, str] | None = None) -> None:
        self.raw = raw
        raw.prepared_max = PREPARED_MAX
        self.sequences: dict[tuple[str, str], str] = {}  # runtime.dbapi.next_ids
        self.spare_ids: dict[tuple[str, str], list[int]] = {}  # runtime.dbapi.give_back_id
        self._identity: dict[str, str] = identity if identity is not None else {}
        raw.adapters.register_loader("numeric", _NumericLoader)
        raw.adapters.register_loader("bool", _BoolLoader)

    def learn_identity(self) -> None:
        """Which tables have an identity primary key (for ``lastrowid``), from the catalog."""
        rows = self.raw.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " WHERE c.table_schema = current_schema() AND c.is_identity = 'YES'"
        ).fetchall()
        self._identity.clear()
        self._identity.update(dict(rows))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - per text, the connection lives as long
    def _prepare(self, sql: str) -> tuple[str, bool]:
        """(the text to send, whether a ``RETURNING pk`` was appended for ``lastrowid``)."""
        text = translate(sql)
        m = _INSERT_RE.match(sql)
        if m is not None and not _RETURNING_RE.search(sql):
            pk = self._identity.get(m.group(1).lower()) or self._identity.get(m.group(1))
            if pk is not None:
                return f"{text.rstrip().rstrip(';')} RETURNING {pk}", True
        return text, False

    def execute(self, sql: str, params: Sequence[Any] | None = ()) -> PgCursor:
        text, returning = self._prepare(sql)
        cur = self.raw.cursor()
        cur.execute(text, tuple(params) if params is not None else ())
        if returning:
            rows = cur.fetchall()
            return PgCursor(cur, [], rows[-1][0] if rows else None)
        return PgCursor(cur)

    def insert_rows(self, head: str, row: str, rows: Sequence[Sequence[Any]]) -> None:
        """``runtime.sqlitedb.insert_rows`` here: every row in ONE statement of short, fixed
        text - ``INSERT INTO t (cols) SELECT .. FROM unnest(?::type[], ..)``, one array per
        ``?`` of ``row`` (typed by the table's columns) - so it stays prepared and the server
        takes the rows in one go. A head or row it cannot read goes row by row."""
        plan = self._bulk_plan(head, row)
        if plan is None:
            self.executemany(f"{head} VALUES {row}", rows)
            return
        sql, udts = plan
        width = len(udts)
        cols: list[list[Any]] = [[] for _ in range(width)]
        for r in rows:
            for i in range(width):
                cols[i].append(r[i])
        try:
            self.raw.execute(sql, cols)
        except psycopg.DataError:
            # the driver refuses an array of mixed Python types (1 and 2.5, True and 2) before
            # sending anything; a refusal by the server aborted the transaction: that goes on
            if self.raw.info.transaction_status != pq.TransactionStatus.INTRANS:
                raise
            self.raw.execute(sql, [_uniform(col, udt) for col, udt in zip(cols, udts, strict=True)])

    @functools.lru_cache(maxsize=256)  # noqa: B019 - per text, the connection lives as long
    def _bulk_plan(self, head: str, row: str) -> tuple[str, tuple[str, ...]] | None:
        """(the statement, the type of each array), or None where it cannot tell."""
        m = _HEAD_RE.match(head)
        if m is None:
            return None
        table, names = m.group(1), [c.strip() for c in m.group(2).split(",")]
        inner = row.strip()
        if not (inner.startswith("(") and inner.endswith(")")):
            return None
        items = _split_top(inner[1:-1])
        if items is None or len(items) != len(names):
            return None
        types = dict(
            self.raw.execute(
                "SELECT column_name, udt_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            ).fetchall()
        )
        arrays, select, udts = [], [], []
        for name, item in zip(names, items, strict=True):
            if item == "?":
                udt = types.get(name)
                if udt is None:
                    return None
                arrays.append(f"%b::{udt}[]")  # binary: the driver dumps arrays fastest so
                udts.append(udt)
                select.append(f"u{len(arrays)}")
            elif "?" in item or "%" in item:
                return None
            else:
                select.append(item)
        if not arrays:
            return None
        alias = ", ".join(f"u{i + 1}" for i in range(len(arrays)))
        sql = (
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(select)}"
            f" FROM unnest({', '.join(arrays)}) AS u({alias})"
        )
        return sql, tuple(udts)

    def executemany(self, sql: str, seq: Any) -> PgCursor:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), [tuple(p) for p in seq])
        return PgCursor(cur)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def commit(self) -> None:
        if self.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


def _sqlstate(e: BaseException) -> str | None:
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if isinstance(cur, psycopg.Error) and cur.sqlstate:
            return cur.sqlstate
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def is_retryable(e: BaseException) -> bool:
    """A serialization failure or deadlock (here or as the cause of ``e``)."""
    return _sqlstate(e) in RETRY_SQLSTATES


def apply_migrations(conn: PgConnection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded in ``_migrations`` (each in its own transaction,
    under an advisory lock so workers starting together migrate once); return their names."""
    raw = conn.raw
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise DatabaseError(f"duplicate migration names in {names}")
    applied = []
    raw.execute("SELECT pg_advisory_lock(1717)")
    try:
        raw.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        done = {r[0] for r in raw.execute("SELECT name FROM _migrations").fetchall()}
        for m in migrations:
            if m.name in done:
                continue
            sql = m.postgres if m.postgres is not None else translate_ddl(m.sql)
            with raw.transaction():
                for stmt in split_sql(sql):
                    raw.execute(stmt.replace("%", "%%"))
                raw.execute(
                    "INSERT INTO _migrations(name, applied_at) VALUES (%s, to_char(now() AT TIME ZONE 'UTC',"
                    " 'YYYY-MM-DD HH24:MI:SS'))",
                    (m.name,),
                )
            applied.append(m.name)
            log.info("applied migration %s", m.name)
    finally:
        raw.execute("SELECT pg_advisory_unlock(1717)")
    return applied


class _Retry(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Lost(Exception):
    def __init__(self, cause: BaseException, *, unknown: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.unknown = unknown


def _broken(conn: PgConnection) -> bool:
    return conn.raw.closed or conn.raw.broken


class PgDB(GroupWriter[Any]):
    """See the module docstring. ``on_connect`` is called with each connection (the writer's,
    each reader's) in its own thread once it is open and migrated: to give it its ``state``."""

    dialect = "postgresql"
    _log = log

    def __init__(
        self,
        url: str,
        *,
        migrations: Sequence[Migration] = (),
        on_connect: Callable[[Any], None] | None = None,
        max_group: int = MAX_GROUP,
        readers: int = READERS,
        temp_store: str = "DEFAULT",  # accepted for open_db's sake; PostgreSQL has no such knob
    ) -> None:
        self.url = url
        self.path: str = url  # what logs and errors name
        super().__init__(
            migrations=migrations,
            on_connect=on_connect,
            max_group=max_group,
            writer_thread="pg-w",
            reader_thread="pg-r",
            readers=readers,
        )
        self._readers = readers
        self._identity: dict[str, str] = {}
        self._wconn: PgConnection | None = None
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self.retries = 0  # group reruns after a serialization failure or deadlock
        self.reconnects = 0

    # --- connections -------------------------------------------------------------------

    def _connect_writer(self, migrate: bool) -> PgConnection:
        raw = psycopg.connect(self.url, autocommit=True)
        conn = PgConnection(raw, self._identity)
        if migrate:
            collate = raw.execute(
                "SELECT datcollate FROM pg_database WHERE datname = current_database()"
            ).fetchone()
            if collate is not None and collate[0] not in ("C", "POSIX"):
                log.warning(
                    "%s: collation %s - text sorts unlike SQLite's (byte order): lists and ties"
                    " broken on text may come out in another order; create the database with"
                    " LC_COLLATE 'C' (TEMPLATE template0)",
                    self.url,
                    collate[0],
                )
            apply_migrations(conn, self._migrations)
        conn.learn_identity()
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    def _reader(self, raw: psycopg.Connection[Any]) -> PgConnection:
        # each pooled read connection carries its adapter (with its state): gone with it
        conn: PgConnection | None = getattr(raw, "_sg_adapter", None)
        if conn is None:
            conn = PgConnection(raw, self._identity)
            if self._on_connect is not None:
                self._on_connect(conn)
            raw._sg_adapter = conn  # type: ignore[attr-defined]
        return conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._wx, self._connect_writer, True)
        self._pool = psycopg_pool.ConnectionPool(
            self.url, min_size=1, max_size=self._readers, kwargs={"autocommit": True}, open=False,
            name="pg-read",
        )
        await loop.run_in_executor(self._rx, functools.partial(self._pool.open, wait=True, timeout=30))
        self._start_writer("pg-writer")

    async def _close_connections(self) -> None:
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            await loop.run_in_executor(self._wx, self._wconn.close)
        if self._pool is not None:
            await loop.run_in_executor(self._rx, self._pool.close)

    # --- API -----------------------------------------------------------------------------

    async def read(self, fn: Callable[[Any], T]) -> T:
        if self._pool is None or self._closed:
            raise ClosedError("database not open")
        pool = self._pool

        def run() -> T:
            for attempt in range(READ_TRIES):
                used: psycopg.Connection[Any] | None = None
                try:
                    with pool.connection() as raw:
                        used = raw
                        return fn(self._reader(raw))
                except psycopg.OperationalError as e:
                    # a session the server ended (restart, failover) is found at its next use:
                    # a read is safe to run again on a new one
                    if attempt + 1 == READ_TRIES or used is None or not (used.closed or used.broken):
                        raise
                    log.warning("read on %s: connection lost, reading again: %s", self.url, e)
            raise AssertionError("unreachable")

        return await asyncio.get_running_loop().run_in_executor(self._rx, run)

    async def probe(self) -> bool:
        return True

    # --- the writer ----------------------------------------------------------------------

    def _error(self, e: BaseException) -> Exception:
        if isinstance(e, _Lost):
            err: Exception = ConnectionLost(str(e.cause), unknown=e.unknown)
            err.__cause__ = e.cause
            return err
        if isinstance(e, _Retry):
            err = RetriesExhausted(f"group gave up after {MAX_RETRIES} retries: {e.cause}")
            err.__cause__ = e.cause
            return err
        if _sqlstate(e) == DISK_FULL_SQLSTATE:
            full = StorageFull(self.url, str(e))
            full.__cause__ = e
            return full
        return e if isinstance(e, Exception) else DatabaseError(str(e))

    def _say_failed(self, jobs: int, err: Exception, e: Exception) -> None:
        log.error("group commit of %d jobs failed on %s: %s", jobs, self.url, err)

    def _note_full(self, e: StorageFull, jobs: int) -> None:
        """The server's disk is full (SQLSTATE 53100): :meth:`wait_writable` waits
        :data:`runtime.sqlitedb.STORAGE_PROBE_S` before the next try (there is no free space
        to probe from here); the next commit clears it."""
        super()._note_full(e, jobs)
        self._writable.clear()
        asyncio.get_running_loop().call_later(sqlitedb.STORAGE_PROBE_S, self._writable.set)

    def _committed(self, results: list[tuple[bool, Any]]) -> None:
        if self.storage_full is not None:
            self._note_writable()

    def _reset_state(self, conn: PgConnection) -> None:
        """After a rollback of the whole group: caches in ``state`` may hold what it undid."""
        conn.state = None  # what a part gave it lazily goes too
        if self._on_connect is not None:
            self._on_connect(conn)

    def _run_group(self, jobs: list[Job[Any]]) -> list[tuple[bool, Any]]:
        assert threading.current_thread().name.startswith("pg-w")
        attempt = 0
        while True:
            conn = self._wconn
            if conn is None or _broken(conn):
                try:
                    conn = self._reconnect()
                except psycopg.Error as e:  # the server is away: this group fails, the next tries
                    raise _Lost(e, unknown=False) from e
            try:
                return self._attempt(conn, jobs)
            except _Retry as r:
                attempt += 1
                self.retries += 1
                self._reset_state(conn)
                if attempt > MAX_RETRIES:
                    raise
                log.info("group of %d jobs rolled back (%s), run again (%d)", len(jobs), r.cause, attempt)
                time.sleep(min(0.001 * 2**attempt, 0.1))
            except _Lost:
                with contextlib.suppress(Exception):
                    self._reconnect()
                raise

    def _reconnect(self) -> PgConnection:
        if self._wconn is not None:
            with contextlib.suppress(Exception):
                self._wconn.close()
        self._wconn = None
        self.reconnects += 1
        self._wconn = self._connect_writer(False)
        log.warning("reconnected the writer to %s", self.url)
        return self._wconn

    def _fail(self, conn: PgConnection, e: BaseException, *, commit: bool = False) -> BaseException:
        """What a failure of the whole transaction becomes: retry, lost, or itself."""
        if _broken(conn) or (isinstance(e, psycopg.OperationalError) and _sqlstate(e) is None):
            return _Lost(e, unknown=commit)
        with contextlib.suppress(Exception):
            conn.rollback()
        if is_retryable(e):
            return _Retry(e)
        return e

    def _attempt(self, conn: PgConnection, jobs: list[Job[Any]]) -> list[tuple[bool, Any]]:
        out: list[tuple[bool, Any]] = []
        try:
            conn.raw.execute("BEGIN")
        except Exception as e:
            raise self._fail(conn, e) from e
        try:
            if len(jobs) == 1:
                try:
                    out.append((True, jobs[0][0](conn)))
                except Exception as e:
                    if _broken(conn) or is_retryable(e):
                        raise
                    conn.rollback()
                    return [(False, self._error(e))]
                if conn.raw.info.transaction_status == pq.TransactionStatus.INERROR:
                    raise DatabaseError("the job swallowed an error that aborted the transaction")
            else:
                for i, (fn, _) in enumerate(jobs):
                    self._behind = len(jobs) - 1 - i
                    try:
                        with savepoint(conn, "job"):  # type: ignore[arg-type]
                            value = fn(conn)
                    except Exception as e:
                        if _broken(conn) or is_retryable(e):
                            raise
                        if conn.raw.info.transaction_status != pq.TransactionStatus.INTRANS:
                            # the savepoint could not be undone (the job swallowed an error that
                            # aborted the transaction): the whole group goes, not just this job
                            raise DatabaseError(f"the group's transaction was lost under a job: {e}") from e
                        out.append((False, self._error(e)))
                    else:
                        out.append((True, value))
        except Exception as e:
            raise self._fail(conn, e) from e
        finally:
            self._behind = 0
        try:
            conn.raw.execute("COMMIT")
        except Exception as e:
            raise self._fail(conn, e, commit=True) from e
        return out
