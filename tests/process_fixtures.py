"""A central for the process-definition and partner tests: the real aiohttp app with the
process/partner routes, on a real SQLite file with every migration and the running central's
wiring (real-time allocation, lifecycle hooks), the test masters plus an item class, and stock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from central import wiring
from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.fulfil import release
from central.migrations import central_db
from central.web import process_api, release_api
from central.web.api import create_app
from tests.central_fixtures import CUSTOMERS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON, Central
from tests.central_fixtures import auth as _auth

# the fixture items plus a ring that is engraved (item class) and a washer that is installed
ITEMS_CSV = """sku,gtins,description,pack_size,supplier,price,item_class,service,storage
MILK,04012345678901,Milk 1l,6,SUP1,100,,,DC1=A-01-01
BREAD,04012345678918,Bread,1,SUP1,250,,,DC1=A-01-02
WATER,04012345678925,Water 1.5l,6,SUP2,80,,,
RING,04012345678932,Silver ring,1,,5000,jewellery,engraving,DC1=B-01-01
WASHER,04012345678949,Washing machine,1,,40000,appliance,installation,DC1=C-01-01
"""


def order(*lines: tuple[str, int], customer: str = "S001", order_type: str = "normal") -> dict[str, Any]:
    return {
        "customer": customer,
        "order_type": order_type,
        "requested_date": SOON,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
    }


@asynccontextmanager
async def process_central(tmp_path: Path, *, target: str | None = None) -> AsyncIterator[Central]:
    """``target``: where (a path or a ``postgresql://`` URL, ``central_backend``), default a
    SQLite file in ``tmp_path``."""
    db = central_db(target or tmp_path / "central.db", wiring.hub(waves.AllocationSettings()))
    await db.open()
    try:
        tokens = {}
        for role in _auth.Role:
            tokens[role.value] = await db.write(lambda c, r=role: _auth.add_user(c, f"{r.value}-user", r))
        app = create_app(db=db)
        process_api.add_routes(app)
        release_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            c = Central(db, client, tokens)
            for kind, text in (
                ("locations", LOCATIONS_CSV),
                ("items", ITEMS_CSV),
                ("prices", PRICES_CSV),
                ("customers", CUSTOMERS_CSV),
            ):
                status, body = await c.req("POST", f"/api/masters/{kind}/import", data=text)
                assert status == 200, body

            def stock(conn: Any) -> None:
                inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
                for sku in ("MILK", "BREAD", "RING", "WASHER"):
                    inventory.set_stock(conn, "DC1", sku, 1000)

            await db.write(stock)
            yield c
    finally:
        await db.close()


@asynccontextmanager
async def second_worker(target: str, first: Central) -> AsyncIterator[Central]:
    """Another worker on ``first``'s database: its own connection and writer, the same app
    routes and users (for the races between two workers)."""
    db = central_db(target, wiring.hub(waves.AllocationSettings()))
    await db.open()
    try:
        app = create_app(db=db)
        process_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield Central(db, client, first.tokens)
    finally:
        await db.close()


async def release_tick(c: Central) -> int:
    """One tick of central's releaser: how many orders it released."""
    out = await c.db.write(lambda conn: release.release_allocated(conn, limit=100))
    return sum(int(r["orders"]) for r in out)


async def events(c: Central, no: str) -> list[tuple[str, str, str]]:
    status, o = await c.req("GET", f"/api/orders/{no}", "viewer")
    assert status == 200, o
    return [(e["event"], e["detail"], e["actor"]) for e in o["events"]]
