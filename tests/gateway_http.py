"""The gateway's HTTP app as ``gateway/app.py`` wires it (orders, order changes, optionally the
supplier's routes) on a real SQLite file, with an aiohttp test client: for the tests that talk
to the app without a broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway import order_changes, supplier
from gateway.app import migrations as gateway_migrations
from gateway.http import create_app
from gateway.outbox import Outbox
from runtime.sqlitedb import DurableDB


@contextlib.asynccontextmanager
async def gateway_http(
    path: Path, *, gateway_id: str, customer: str = "", suppliers: bool = False
) -> AsyncIterator[tuple[DurableDB, TestClient[Any, Any]]]:
    """(its database, a client of its app); closed in order on the way out."""
    db = DurableDB(path, migrations=gateway_migrations())
    await db.open()
    box = Outbox(db)
    app = create_app(gateway_id=gateway_id, outbox=box, customer=customer)
    order_changes.add_routes(app, outbox=box, customer=customer)
    if suppliers:
        supplier.add_routes(app, outbox=box)
    try:
        async with TestClient(TestServer(app)) as client:
            yield db, client
    finally:
        await db.close()
