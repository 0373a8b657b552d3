"""Shared fixtures for the scanner tests: a real gateway SQLite file with items."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway import items, outbox, scanner
from gateway.items import Item, upsert_items
from gateway.outbox import Outbox
from gateway.scanner import ScanSessions
from runtime.sqlitedb import DurableDB

GTIN_A = "4006381333931"
GTIN_B = "96385074"
GTIN_UNKNOWN = "9501101530003"
CUSTOMER = "STORE-042"
TODAY = dt.date(2025, 3, 14)


@dataclass
class Clock:
    t: float = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Gw:
    db: DurableDB
    outbox: Outbox
    sessions: ScanSessions
    clock: Clock
    path: Path


MIGRATIONS = outbox.MIGRATIONS + items.MIGRATIONS + scanner.MIGRATIONS


async def open_gw(path: Path, clock: Clock, idle_timeout_s: float = 60.0) -> Gw:
    db = DurableDB(path, migrations=MIGRATIONS)
    await db.open()
    ob = Outbox(db)
    sessions = ScanSessions(
        db=db, outbox=ob, customer=CUSTOMER, idle_timeout_s=idle_timeout_s, clock=clock, today=lambda: TODAY
    )
    return Gw(db, ob, sessions, clock, path)


async def seeded_gw(path: Path, clock: Clock | None = None) -> Gw:
    g = await open_gw(path, clock or Clock())
    await g.db.write(
        lambda c: upsert_items(c, [Item(GTIN_A, "SKU-A", "Stabilo"), Item(GTIN_B, "SKU-B", "Gum")])
    )
    return g


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    g = await seeded_gw(tmp_path / "gw.db")
    try:
        yield g
    finally:
        await g.db.close()


async def outbox_orders(g: Gw) -> list[dict[str, Any]]:
    rows = await g.outbox.pending(after_seq=0, limit=100)
    out = []
    for _, _, packed in rows:
        r = msgpack.unpackb(packed, raw=False)
        out.append({"id": r["id"], "type": r["type"], **r["body"]})
    return out
