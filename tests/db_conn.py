"""A plain connection to central's database on either backend (issue 17), for tests that work
on it directly rather than through a ``write`` job: ``conn = open_conn(central_backend, migrations)``.

``target`` is what the ``central_backend`` fixture gives: a SQLite file path
(``runtime.sqlitedb.connect``, autocommit as sqlite3 has it with ``isolation_level=None``) or a
``postgresql://`` URL (a ``runtime.pgdb.PgConnection`` on a psycopg connection in autocommit
mode: each statement its own transaction unless the test says ``BEGIN``). The migrations are
applied first, as the service applies them.

Central's code always runs inside a transaction (a write job); a test calling it on a plain
connection does not. SQLite then starts a transaction at a ``SAVEPOINT`` and commits it at
that savepoint's ``RELEASE``; PostgreSQL refuses a ``SAVEPOINT`` outside a transaction. The
PostgreSQL connection here does what SQLite does (and nothing else differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from runtime import pgdb, sqlitedb
from runtime.dbapi import is_postgres_url
from runtime.sqlitedb import Migration


class _TestConnection(pgdb.PgConnection):
    """A ``PgConnection`` whose ``SAVEPOINT`` outside a transaction begins one, committed at
    that savepoint's ``RELEASE`` (SQLite's rule, see the module docstring)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        super().__init__(raw)
        self._outer: str | None = None  # the savepoint that began the transaction

    def execute(self, sql: str, params: Sequence[Any] | None = ()) -> pgdb.PgCursor:
        words = sql.split()
        if words and words[0].upper() == "SAVEPOINT" and not self.in_transaction:
            super().execute("BEGIN")
            self._outer = words[1]
        cur = super().execute(sql, params)
        if self._outer is not None and words[:2] == ["RELEASE", self._outer]:
            self._outer = None
            super().execute("COMMIT")
        return cur


def open_conn(target: Path | str, migrations: Sequence[Migration], **sqlite_kw: Any) -> Any:
    """The connection (the caller closes it); ``sqlite_kw`` go to ``runtime.sqlitedb.connect``."""
    if is_postgres_url(target):
        conn = _TestConnection(psycopg.connect(str(target), autocommit=True))
        pgdb.apply_migrations(conn, migrations)
        conn.learn_identity()
        return conn
    sconn = sqlitedb.connect(target, **sqlite_kw)
    sqlitedb.apply_migrations(sconn, migrations)
    return sconn


def open_database(
    target: Path | str, migrations: Sequence[Migration], *, on_connect: Any = None, **sqlite_kw: Any
) -> Any:
    """A ``DurableDB`` (``sqlite_kw`` to it, e.g. ``synchronous="NORMAL"``) or a ``PgDB`` for
    ``target``, not opened yet."""
    if is_postgres_url(target):
        return pgdb.PgDB(str(target), migrations=migrations, on_connect=on_connect)
    return sqlitedb.DurableDB(target, migrations=migrations, on_connect=on_connect, **sqlite_kw)
