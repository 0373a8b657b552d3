"""Shared data and helpers for the central order-processing tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from central.hub import Hub
from central.schema import MIGRATIONS
from central.web import auth
from central.web.api import create_app
from runtime.dbapi import Database, open_db

auth.PBKDF2_ITERATIONS = 1_000  # fast tests; the stored hash names its own count
TODAY = dt.datetime.now(dt.UTC).date()
SOON = (TODAY + dt.timedelta(days=2)).isoformat()

CUSTOMERS_CSV = """code,name,grade,credit_limit,receivables,gateway,delivery_requirements,delivery_window
S001,Store One,A,100000,0,store-1,price labels on every unit,06:00-09:00
S002,Store Two,B,5000,4000,,,
S003,Cash Buyer,C,,0,,,
"""
ITEMS_CSV = """sku,gtins,description,pack_size,supplier,price,safety_stock,order_up_to,max_order_qty,storage
MILK,04012345678901,Milk 1l,6,SUP1,100,12,48,1000,DC1=A-01-01
BREAD,04012345678918,Bread,1,SUP1,250,5,20,0,DC1=A-01-02
WATER,04012345678925|4012345678925,Water 1.5l,6,SUP2,80,0,0,0,
"""
PRICES_CSV = """price_class,sku,min_qty,price,tolerance_pct
A,MILK,1,95,5
A,MILK,60,90,5
B,MILK,1,100,2
"""
LOCATIONS_CSV = """code,kind,name,gateway
DC1,dc,Main DC,dc-1
SUP1,supplier,Dairy Supplier,sup-1
SUP2,supplier,Water Supplier,
STORE1,store,Store One,store-1
"""


def order(customer: str = "S001", order_type: str = "normal", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer": customer,
        "channel": "manual",
        "order_type": order_type,
        "requested_date": SOON,
        "lines": [{"sku": "MILK", "qty": 12}],
    }
    body.update(kw)
    return body


class Central:
    """A real DurableDB file + the real aiohttp app, with one token per role."""

    def __init__(self, db: Database, client: TestClient[Any, Any], tokens: dict[str, str]) -> None:
        self.db = db
        self.client = client
        self.tokens = tokens

    def h(self, role: str = "supervisor") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def req(self, method: str, path: str, role: str = "supervisor", **kw: Any) -> tuple[int, Any]:
        headers = {**self.h(role), **kw.pop("headers", {})}
        async with self.client.request(method, path, headers=headers, **kw) as r:
            return r.status, await r.json()

    async def load_masters(self) -> None:
        for kind, text in (
            ("locations", LOCATIONS_CSV),
            ("items", ITEMS_CSV),
            ("prices", PRICES_CSV),
            ("customers", CUSTOMERS_CSV),
        ):
            status, body = await self.req("POST", f"/api/masters/{kind}/import", data=text)
            assert status == 200, body

    async def count(self, table: str) -> int:
        n: int = await self.db.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return n


@asynccontextmanager
async def central(
    tmp_path: Path, *, db: Database | None = None, hub: Hub | None = None, target: str | None = None
) -> AsyncIterator[Central]:
    """``hub``: central's wiring for the database opened here (``central.wiring``);
    ``target``: where (a path or a ``postgresql://`` URL, see ``central_backend``), default a
    SQLite file in ``tmp_path``."""
    own = db is None
    if db is None:
        db = open_db(
            target or tmp_path / "central.db", migrations=MIGRATIONS, on_connect=hub.attach if hub else None
        )
        await db.open()
    try:
        tokens = {}
        for role in auth.Role:
            name = f"{role.value}-user"
            tokens[role.value] = await db.write(
                lambda c, n=name, r=role: auth.add_user(
                    c, n, r, password="pw" if r is auth.Role.VIEWER else None
                )
            )
        async with TestClient(TestServer(create_app(db=db))) as client:
            yield Central(db, client, tokens)
    finally:
        if own:
            await db.close()
