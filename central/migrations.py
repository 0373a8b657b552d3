"""Every schema migration of the central database, in the order they apply."""

from __future__ import annotations

from central import fleet, inventory, picking, schema
from ops.sqlitedb import Migration


def all_migrations() -> list[Migration]:
    return [*schema.MIGRATIONS, *inventory.MIGRATIONS, *fleet.MIGRATIONS, *picking.MIGRATIONS]
