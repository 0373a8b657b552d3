"""Every schema migration of the central database, in the order they apply."""

from __future__ import annotations

from pathlib import Path

from central import fleet, leases, retention, schema
from central.allocate import availability, inventory
from central.fulfil import picking
from central.hub import Hub
from runtime.dbapi import open_db
from runtime.sqlitedb import DurableDB, Migration


def all_migrations() -> list[Migration]:
    return [
        *schema.MIGRATIONS,
        *inventory.MIGRATIONS,
        *fleet.MIGRATIONS,
        *picking.MIGRATIONS,
        *retention.MIGRATIONS,
        *leases.MIGRATIONS,
        *availability.MIGRATIONS,
    ]


def central_db(target: Path | str, hub: Hub | None = None) -> DurableDB:
    """Central's database as the service opens it: every migration and group commit; on
    SQLite (``target`` a path) WAL with ``synchronous=FULL``, temp store in memory (its group
    commits hold a savepoint per job, and the real-time batch path keeps a TEMP watch table);
    on PostgreSQL (``target`` a ``postgresql://`` URL, ``runtime.pgdb``) the same jobs on the
    server. Each of its connections gets ``hub`` (``central.wiring``) and caches of its own."""
    # typed as DurableDB: runtime.pgdb.PgDB has its API (duck-typed), and central's code is
    # annotated with DurableDB and sqlite3.Connection (the job's PgConnection takes the same SQL)
    return open_db(  # type: ignore[return-value]
        target,
        migrations=all_migrations(),
        temp_store="MEMORY",
        on_connect=hub.attach if hub is not None else None,
    )
