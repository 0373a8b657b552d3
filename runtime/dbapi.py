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

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg

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
    if path.startswith("sqlite:///"):
        path = path[len("sqlite:///") - 1 :] if path.startswith("sqlite:////") else path[len("sqlite:///") :]
    elif path.startswith("sqlite://"):
        raise ValueError(f"{target!r}: a sqlite URL is sqlite:///relative or sqlite:////absolute")
    return DurableDB(path, migrations=migrations, on_connect=on_connect, temp_store=temp_store)


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


def is_integrity_error(e: BaseException) -> bool:
    return isinstance(e, IntegrityError)


__all__ += ["PgConnection", "column_list", "is_integrity_error"]
