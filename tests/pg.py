"""A fresh PostgreSQL database per test: ``with pg_database() as url: ...``.

The server is ``SG_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``, what
``./run test`` starts on a fresh Debian box); each database gets a unique name, C collation
(text sorts byte-wise, as SQLite's) and is dropped at the end, its connections ended first.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

SERVER_URL = os.environ.get("SG_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _url_for(name: str) -> str:
    base, _, _ = SERVER_URL.rpartition("/")
    if "?" in SERVER_URL.rpartition("/")[2]:
        query = SERVER_URL.rpartition("/")[2].partition("?")[2]
        return f"{base}/{name}?{query}"
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(SERVER_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def pg_database(prefix: str = "sgtest") -> Iterator[str]:
    """A new empty database on the server; yields its ``postgresql://`` URL; drops it after."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    try:
        yield _url_for(name)
    finally:
        drop_database(name)
