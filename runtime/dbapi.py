"""The database contract central codes against, on SQLite or PostgreSQL (issue 17).

- :func:`open_db` - a :class:`runtime.sqlitedb.DurableDB` for a path or ``sqlite:///path``, a
  :class:`runtime.pgdb.PgDB` for ``postgresql://...``; both have the same API (``open``,
  ``close``, ``async with``, ``write(fn)`` -> future resolved after COMMIT, ``read(fn)``,
  ``waiting()``, ``storage_state()``, ``wait_writable()``, ``on_storage_change``).
- The connection a job gets (``sqlite3.Connection`` subclass or :class:`runtime.pgdb.PgConnection`)
  takes the same SQL with ``?`` placeholders; :func:`dialect` tells which it is.
- :func:`has_table`, :func:`columns` instead of ``sqlite_master`` / ``PRAGMA table_info``.
- :data:`IntegrityError` - catch this, not ``sqlite3.IntegrityError``. On PostgreSQL a failing
  statement aborts the transaction: a statement whose error is caught and gone past must run
  under :class:`savepoint` (works on both), or use ``ON CONFLICT``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg

from runtime import pgdb, sqlitedb
from runtime.pgdb import PgConnection, PgDB
from runtime.sqlitedb import DurableDB, Migration, savepoint

__all__ = [
    "Database",
    "Dialect",
    "DurableDB",
    "IntegrityError",
    "Migration",
    "PgDB",
    "columns",
    "dialect",
    "has_table",
    "is_postgres_url",
    "open_db",
    "savepoint",
]

Dialect = Literal["sqlite", "postgresql"]
Database = DurableDB | PgDB

IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_db(
    target: Path | str,
    *,
    migrations: Sequence[Migration] = (),
    on_connect: Callable[[Any], None] | None = None,
    temp_store: str = "DEFAULT",
) -> Database:
    """The database at ``target`` (not opened yet: ``await db.open()`` or ``async with``)."""
    if is_postgres_url(target):
        return PgDB(str(target), migrations=migrations, on_connect=on_connect)
    path = str(target)
    if path.startswith("sqlite:///"):  # sqlite:///relative/file, sqlite:////absolute/file
        path = path[len("sqlite:///") :]
    elif path.startswith("sqlite://"):
        raise ValueError(f"{target!r}: a sqlite URL is sqlite:///relative or sqlite:////absolute")
    return DurableDB(path, migrations=migrations, on_connect=on_connect, temp_store=temp_store)


def connect(target: Path | str, *, migrations: Sequence[Migration] = ()) -> Any:
    """One connection to the database at ``target`` for a tool (a CLI, a test's check), not a
    service: autocommit, each statement its own transaction unless :func:`begin` opened one;
    ``migrations`` applied first. A ``sqlite3.Connection`` (``runtime.sqlitedb.connect``) or a
    :class:`runtime.pgdb.PgConnection` - the same SQL either way."""
    if is_postgres_url(target):
        conn = PgConnection(psycopg.connect(str(target), autocommit=True))
        pgdb.apply_migrations(conn, migrations)
        conn.learn_identity()
        return conn
    path = str(target)
    if path.startswith("sqlite:///"):
        path = path[len("sqlite:///") :]
    lite = sqlitedb.connect(path)
    sqlitedb.apply_migrations(lite, migrations)
    return lite


def begin(conn: Any) -> None:
    """Open a write transaction on a :func:`connect` connection (``COMMIT``/``ROLLBACK`` end it)."""
    conn.execute("BEGIN" if dialect(conn) == "postgresql" else "BEGIN IMMEDIATE")


def dialect(conn: Any) -> Dialect:
    """``"sqlite"`` or ``"postgresql"``: which database ``conn`` (a job's connection) talks to."""
    d = getattr(conn, "dialect", None)
    if d is None:
        if isinstance(conn, sqlite3.Connection):
            return "sqlite"
        raise TypeError(f"not a database connection: {conn!r}")
    return d  # type: ignore[no-any-return]


def has_table(conn: Any, name: str) -> bool:
    if dialect(conn) == "postgresql":
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (name,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
    return row is not None


def columns(conn: Any, table: str) -> set[str]:
    """The column names of ``table`` (empty when there is no such table)."""
    if dialect(conn) == "postgresql":
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
    else:
        rows = conn.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
    return {r[0] for r in rows}


def column_list(conn: Any, table: str) -> list[str]:
    """The column names of ``table`` in their order."""
    if dialect(conn) == "postgresql":
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    else:
        rows = conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,)).fetchall()
    return [r[0] for r in rows]


def next_ids(conn: Any, table: str, column: str, n: int = 1) -> list[int]:
    """``n`` ids for explicit inserts into ``table``'s ``INTEGER PRIMARY KEY AUTOINCREMENT``
    ``column``, ascending. SQLite: the next ``n`` its AUTOINCREMENT would hand out (one more
    than the larger of ``sqlite_sequence``'s entry and the largest key) - not reserved: insert
    them before asking again, in the same transaction (one writer). PostgreSQL: taken from the
    identity's sequence (reserved at once, for any number of writers; a rollback leaves a gap,
    and default inserts never collide with them)."""
    if dialect(conn) == "postgresql":
        out: list[int] = []
        spare = getattr(conn, "spare_ids", {}).get((table, column))
        while spare and len(out) < n:
            out.append(spare.pop(0))
        if len(out) == n:
            return out
        n -= len(out)
        seq = _sequence(conn, table, column)
        if n == 1:
            return [*out, conn.execute("SELECT nextval(?::regclass)", (seq,)).fetchone()[0]]
        rows = conn.execute(
            "SELECT nextval(?::regclass) AS id FROM generate_series(1, ?) ORDER BY id", (seq, n)
        ).fetchall()
        return [*out, *(r[0] for r in rows)]
    first = conn.execute(
        f"SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),"
        f" coalesce((SELECT max({column}) FROM {table}), 0)) + 1"
    ).fetchone()[0]
    return list(range(first, first + n))


def next_ids_many(conn: Any, wants: Sequence[tuple[str, str, int]]) -> list[list[int]]:
    """:func:`next_ids` for several ``(table, column, n)`` at once: on PostgreSQL one round
    trip for them all (ids given back first, then one ``SELECT nextval(..), ..``)."""
    if dialect(conn) != "postgresql":
        return [next_ids(conn, t, c, n) for t, c, n in wants]
    out: list[list[int]] = []
    seqs: list[str] = []
    spare_all: dict[tuple[str, str], list[int]] = conn.spare_ids
    for t, c, n in wants:
        spare = spare_all.get((t, c))
        got: list[int] = []
        while spare and len(got) < n:
            got.append(spare.pop(0))
        out.append(got)
        seqs += [_sequence(conn, t, c)] * (n - len(got))
    if seqs:
        row = iter(conn.execute(_nextvals(len(seqs)), seqs).fetchone())
        for (_t, _c, n), got in zip(wants, out, strict=True):
            got += [next(row) for _ in range(n - len(got))]
    return out


@functools.lru_cache(maxsize=64)
def _nextvals(n: int) -> str:
    return "SELECT " + ", ".join(["nextval(?::regclass)"] * n)


def _sequence(conn: Any, table: str, column: str) -> str:
    seq = _sequences(conn).get((table, column))
    if seq is None:
        seq = conn.execute("SELECT pg_get_serial_sequence(?, ?)", (table, column)).fetchone()[0]
        if seq is None:
            raise ValueError(f"{table}.{column} has no sequence")
        _sequences(conn)[(table, column)] = seq
    return seq


def give_back_id(conn: Any, table: str, column: str, value: int) -> None:
    """An id :func:`next_ids` gave that was not used: the next call for the table hands it
    out first (PostgreSQL, this connection: no one else has it; SQLite: nothing to do)."""
    if dialect(conn) == "postgresql":
        spare: dict[tuple[str, str], list[int]] = conn.spare_ids
        spare.setdefault((table, column), []).insert(0, value)


def tables(conn: Any) -> list[str]:
    """The tables of the database (not the migrations' own), by name."""
    if dialect(conn) == "postgresql":
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
        ).fetchall()
    return [r[0] for r in rows if r[0] != "_migrations"]


def _sequences(conn: Any) -> dict[tuple[str, str], str]:
    seqs: dict[tuple[str, str], str] | None = getattr(conn, "sequences", None)
    if seqs is None:
        seqs = {}
        conn.sequences = seqs
    return seqs


IN_CHUNK = 512


def in_chunks(values: Sequence[Any], *, most: int = IN_CHUNK) -> Iterator[tuple[str, list[Any]]]:
    """``values`` for ``x IN (...)`` as chunks of ``(marks, params)``: ``marks`` is ``?, ?, ...``
    for the chunk's params. Each chunk's size is a power of two up to ``most`` (the last value
    repeated to fill it), so a statement sees only a few texts and they stay prepared."""
    i, n = 0, len(values)
    while i < n:
        chunk = list(values[i : i + most])
        i += len(chunk)
        size = 1
        while size < len(chunk):
            size *= 2
        chunk += [chunk[-1]] * (size - len(chunk))
        yield _marks(size), chunk


@functools.lru_cache(maxsize=64)
def _marks(n: int) -> str:
    return ", ".join("?" * n)


def is_transient(e: BaseException) -> bool:
    """An error that is no fault of the job: a serialization failure or deadlock between
    writers, or a lost connection (PostgreSQL). Code that catches a job's errors to go on
    (quarantine a record, fall back) must let these through: the writer runs the whole group
    again (or fails it as not committed)."""
    return pgdb.is_retryable(e) or isinstance(e, psycopg.OperationalError)


def is_integrity_error(e: BaseException) -> bool:
    return isinstance(e, IntegrityError)


__all__ += [
    "PgConnection",
    "begin",
    "column_list",
    "connect",
    "give_back_id",
    "in_chunks",
    "is_integrity_error",
    "is_transient",
    "next_ids",
    "next_ids_many",
    "tables",
]
