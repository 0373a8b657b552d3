"""A central for the promising and scheduling tests: the real aiohttp app with the order,
inventory and promising routes on a real SQLite file opened as the service opens it
(every migration, the standard wiring with real-time allocation), and the masters of
``central/PROMISE.md``'s examples."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from central import wiring
from central.allocate.waves import AllocationSettings
from central.migrations import central_db
from central.web import allocation_api, auth, promise_api
from central.web.api import create_app
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import Central

auth.PBKDF2_ITERATIONS = 1_000

LOCATIONS_CSV = """code,kind,name,region
DC1,dc,Main DC,N
DC2,dc,South DC,S
STORE1,store,Store One,N
SUP1,supplier,Engraving Supplier,
"""
ITEMS_CSV = """sku,description,supplier,price
MUG,Mug,SUP1,500
OVEN,Oven,SUP1,40000
WASHER,Washing machine,SUP1,30000
"""
CUSTOMERS_CSV = """code,name,grade,region,route
C1,Customer North,A,N,R-N
C2,Customer North Two,B,N,R-N
"""
SOURCING_CSV = """zone,location,cost,preferred,transfer
N,DC1,1,yes,no
N,DC2,5,no,no
N,STORE1,9,no,yes
"""
LEAD_TIMES_CSV = """location,zone,lead_days,transit_days
DC1,N,1,1
DC2,*,1,3
STORE1,N,0,0
"""
SERVICES_CSV = """code,kind,description,minutes_per_unit,slot_units
ENGRAVE,vas,engraving,10,
INSTALL,field,oven installation,,1
"""
VAS_CAPACITY_CSV = """location,minutes_per_day
DC1,60
DC2,480
"""
SLOTS_CSV = "route,weekday,slot,capacity\n" + "".join(
    f"R-N,{d},{s},{c}\n"
    for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    for s, c in (("AM", 1), ("PM", 2))
)
MASTERS = (
    ("locations", LOCATIONS_CSV),
    ("items", ITEMS_CSV),
    ("customers", CUSTOMERS_CSV),
    ("sourcing", SOURCING_CSV),
    ("lead_times", LEAD_TIMES_CSV),
    ("services", SERVICES_CSV),
    ("vas_capacity", VAS_CAPACITY_CSV),
    ("slots", SLOTS_CSV),
)


def day(n: int, today: dt.date | None = None) -> str:
    return ((today or dt.datetime.now(dt.UTC).date()) + dt.timedelta(days=n)).isoformat()


async def load(c: Central) -> None:
    for kind, text in MASTERS:
        status, body = await c.req("POST", f"/api/masters/{kind}/import", data=text)
        assert status == 200, (kind, body)


async def stock(c: Central, location: str, sku: str, on_hand: int) -> None:
    status, body = await c.req(
        "POST", "/api/inventory/stock", json={"location": location, "sku": sku, "on_hand": on_hand}
    )
    assert status == 200, body


@asynccontextmanager
async def promise_central(
    tmp_path: Path,
    *,
    db: DurableDB | None = None,
    users: str = "user",
    realtime: bool = True,
    target: str | None = None,
) -> AsyncIterator[Central]:
    """``users``: the suffix of the user names (one per role), unique per app on one database;
    ``target``: where (a path or a ``postgresql://`` URL, ``central_backend``), default a SQLite
    file in ``tmp_path``."""
    own = db is None
    if db is None:
        db = central_db(target or tmp_path / "central.db", wiring.hub(AllocationSettings(realtime=realtime)))
        await db.open()
    try:
        tokens = {}
        for role in auth.Role:
            name = f"{role.value}-{users}"
            tokens[role.value] = await db.write(lambda c, n=name, r=role: auth.add_user(c, n, r))
        app = create_app(db=db)
        allocation_api.add_routes(app)
        promise_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield Central(db, client, tokens)
    finally:
        if own:
            await db.close()


async def order(c: Central, body: dict[str, Any], role: str = "order_desk") -> tuple[int, Any]:
    return await c.req("POST", "/api/orders", role=role, json={"order_type": "normal", **body})


async def keep_promise(c: Central, sku: str, qty: int, customer: str = "C1") -> dict[str, Any]:
    """A promise kept (``reserve``) for one line, as the order desk asks for it; its answer."""
    status, kept = await c.req(
        "POST",
        "/api/promise",
        role="order_desk",
        json={"customer": customer, "reserve": True, "lines": [{"sku": sku, "qty": qty}]},
    )
    assert status == 201, kept
    return dict(kept)
