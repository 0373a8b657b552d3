"""Every schema migration of the central database, in the order they apply."""

from __future__ import annotations

from pathlib import Path

from central import fleet, retention, schema
from central.allocate import availability, inventory
from central.fulfil import picking
from central.hub import Hub
from runtime.sqlitedb import DurableDB, Migration


def all_migrations() -> list[Migration]:
    return [
        *schema.MIGRATIONS,
        *inventory.MIGRATIONS,
        *fleet.MIGRATIONS,
        *picking.MIGRATIONS,
        *retention.MIGRATIONS,
        *availability.MIGRATIONS,
    ]


def central_db(path: Path | str, hub: Hub | None = None) -> DurableDB:
    """Central's database as the service opens it: every migration, WAL with
    ``synchronous=FULL`` and group commit, temp store in memory (its group commits hold a
    savepoint per job, and the real-time batch path keeps a TEMP watch table); each of its
    connections gets ``hub`` (``central.wiring``) and caches of its own."""
    return DurableDB(
        path,
        migrations=all_migrations(),
        temp_store="MEMORY",
        on_connect=hub.attach if hub is not None else None,
    )
