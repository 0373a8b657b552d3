"""Changing an allocated order (issue 15, item 2): until the order is released to picking, a
change gives the allocation back and allocates again in the same transaction, with the history
in the order's events and the answer sent down to the store. Through central's real ingest and
SQLite; the store's path over the wire is in tests/test_order_change_e2e.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from central import wiring
from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.fulfil import picking
from central.intake.ingest import apply_envelope
from central.migrations import all_migrations
from central.orders import masters, repo
from protocols.envelope import Ack, Envelope, Record
from runtime.dbapi import open_db
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, order

_seq = itertools.count(1)


@pytest.fixture
async def db(central_backend: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DurableDB]:
    hub = wiring.hub(waves.AllocationSettings(realtime=True))  # allocation at once, as central runs
    d: DurableDB = open_db(  # type: ignore[assignment]
        central_backend, migrations=all_migrations(), on_connect=hub.attach
    )
    await d.open()

    def seed(c: Any) -> None:
        for kind, text in (
            ("locations", LOCATIONS_CSV),
            ("items", ITEMS_CSV),
            ("prices", PRICES_CSV),
            ("customers", CUSTOMERS_CSV),
        ):
            masters.import_csv(c, kind, text)
        inventory.set_sourcing(c, [SourcingRule("*", "DC1", 1, preferred=True)])
        inventory.set_stock(c, "DC1", "MILK", 100, bin="01-01")
        inventory.set_stock(c, "DC1", "BREAD", 40, bin="01-02")

    await d.write(seed)
    try:
        yield d
    finally:
        await d.close()


async def send(db: DurableDB, rtype: str, body: dict[str, Any], *, rid: str | None = None) -> Ack:
    n = next(_seq)
    rec = Record(id=rid or f"r{n}", seq=n, type=rtype, ts=0, body=body)
    env = Envelope(gw="store-1", sent=0, records=(rec,))
    acks = await db.write(
        lambda c: apply_envelope(c, topic_gw="store-1", topic="sg/v1/gw/store-1/up", env=env)
    )
    return acks[0]


def change(seq: int, action: str, **kw: Any) -> dict[str, Any]:
    return {"order": "o1", "change_seq": seq, "action": action, **kw}


async def allocated(db: DurableDB) -> dict[str, int]:
    """Units allocated per SKU at DC1 (the inventory's own counter)."""
    rows = await db.read(
        lambda c: c.execute("SELECT sku, allocated FROM inventory WHERE location = 'DC1'").fetchall()
    )
    return dict(rows)


async def get(db: DurableDB) -> dict[str, Any]:
    o = await db.read(lambda c: repo.get_order(c, "o1"))
    assert o is not None
    return o


async def last_status(db: DurableDB) -> dict[str, Any]:
    (packed,) = await db.read(
        lambda c: c.execute(
            "SELECT packed FROM downlink_outbox WHERE type = 'order_status' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    )
    body: dict[str, Any] = msgpack.unpackb(packed)["body"]
    return body


async def test_changes_to_an_allocated_order_give_back_and_allocate_again(db: DurableDB) -> None:
    assert (await send(db, "order", order(), rid="o1")).status == "accepted"
    assert (await get(db))["status"] == "allocated" and await allocated(db) == {"MILK": 12, "BREAD": 0}

    assert (await send(db, "order_change", change(1, "set_qty", line_no=1, qty=30))).status == "accepted"
    o = await get(db)
    assert o["status"] == "allocated" and o["lines"][0]["qty"] == 30
    assert await allocated(db) == {"MILK": 30, "BREAD": 0}
    events = [e["event"] for e in o["events"]]
    tail = events[events.index("allocation given back") :]
    assert tail == ["allocation given back", "changed", "validated", "allocated"], events
    assert "12 units back to stock" in next(
        e["detail"] for e in o["events"] if e["event"] == "allocation given back"
    )
    assert (await last_status(db))["status"] == "allocated"

    await send(db, "order_change", change(2, "add_line", sku="BREAD", qty=5))
    assert await allocated(db) == {"MILK": 30, "BREAD": 5}
    await send(db, "order_change", change(3, "cancel_line", line_no=1))
    assert await allocated(db) == {"MILK": 0, "BREAD": 5}
    assert (await get(db))["status"] == "allocated"
    await send(db, "order_change", change(4, "cancel_order", reason="store closed"))
    assert await allocated(db) == {"MILK": 0, "BREAD": 0}
    assert (await get(db))["status"] == "cancelled"
    # the allocations were given back, not deleted: each one made stays in the history
    # (12 MILK; 30 MILK; 30 MILK + 5 BREAD; 5 BREAD)
    statuses = await db.read(
        lambda c: c.execute("SELECT status, count(*) FROM allocations GROUP BY 1").fetchall()
    )
    assert dict(statuses) == {"released": 5}


async def test_a_change_that_fails_a_check_holds_the_order_with_its_stock_given_back(db: DurableDB) -> None:
    await send(db, "order", order(), rid="o1")
    # MILK's max_order_qty is 1000: completeness fails, the order is held, nothing stays allocated
    await send(db, "order_change", change(1, "set_qty", line_no=1, qty=2000))
    o = await get(db)
    assert o["status"] == "held" and "2000 > 1000" in o["hold_reason"]
    assert await allocated(db) == {"MILK": 0, "BREAD": 0}
    # a change that passes the checks again allocates again
    await send(db, "order_change", change(2, "set_qty", line_no=1, qty=12))
    assert (await get(db))["status"] == "allocated" and await allocated(db) == {"MILK": 12, "BREAD": 0}


async def test_a_short_allocation_is_redone_and_its_shortage_closed(db: DurableDB) -> None:
    await send(db, "order", order(lines=[{"sku": "BREAD", "qty": 50}]), rid="o1")  # 40 in stock
    assert await allocated(db) == {"MILK": 0, "BREAD": 40}
    await send(db, "order_change", change(1, "set_qty", line_no=1, qty=30))
    assert await allocated(db) == {"MILK": 0, "BREAD": 30}
    rows = await db.read(lambda c: c.execute("SELECT qty, status, resolution FROM shortages").fetchall())
    assert [(q, s) for q, s, _ in rows] == [(10, "cancelled")] and "order changed" in rows[0][2]


async def test_a_released_order_cannot_change(db: DurableDB) -> None:
    await send(db, "order", order(), rid="o1")
    oid = (await get(db))["order_id"]
    await db.write(lambda c: picking.release_order(c, oid))
    assert (await send(db, "order_change", change(1, "set_qty", line_no=1, qty=30))).status == "accepted"
    o = await get(db)
    assert o["status"] == "released" and o["lines"][0]["qty"] == 12
    assert o["events"][-1]["event"] == "change refused" and "released to picking" in o["events"][-1]["detail"]
    assert (await last_status(db))["detail"].startswith("change 1 refused")
    assert await allocated(db) == {"MILK": 12, "BREAD": 0}
