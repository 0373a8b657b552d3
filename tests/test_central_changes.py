"""Order changes from gateways through central's ingest: sequence per order, parking,
refusals that keep the sequence moving, and the status sent back down."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from central.intake.ingest import apply_envelope
from central.orders import masters, repo
from central.schema import MIGRATIONS
from protocols.envelope import Ack, Envelope, Record
from runtime.dbapi import open_db
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, PRICES_CSV, order

_seq = itertools.count(1)


@pytest.fixture
async def db(central_backend: str) -> AsyncIterator[DurableDB]:
    d: DurableDB = open_db(central_backend, migrations=MIGRATIONS)  # type: ignore[assignment]
    await d.open()
    await d.write(
        lambda c: [
            masters.import_csv(c, k, t)
            for k, t in (("items", ITEMS_CSV), ("prices", PRICES_CSV), ("customers", CUSTOMERS_CSV))
        ]
    )
    try:
        yield d
    finally:
        await d.close()


async def send(
    db: DurableDB, rtype: str, body: dict[str, Any], *, rid: str | None = None, gw: str = "store-1"
) -> Ack:
    n = next(_seq)
    rec = Record(id=rid or f"r{n}", seq=n, type=rtype, ts=0, body=body)
    env = Envelope(gw=gw, sent=0, records=(rec,))
    acks = await db.write(lambda c: apply_envelope(c, topic_gw=gw, topic=f"sg/v1/gw/{gw}/up", env=env))
    return acks[0]


def change(seq: int, action: str, order_ref: str = "o1", **kw: Any) -> dict[str, Any]:
    return {"order": order_ref, "change_seq": seq, "action": action, **kw}


async def get(db: DurableDB, key: str) -> dict[str, Any]:
    o = await db.read(lambda c: repo.get_order(c, key))
    assert o is not None
    return o


async def statuses(db: DurableDB) -> list[dict[str, Any]]:
    rows = await db.read(
        lambda c: c.execute(
            "SELECT packed FROM downlink_outbox WHERE type = 'order_status' ORDER BY seq"
        ).fetchall()
    )
    return [msgpack.unpackb(p)["body"] for (p,) in rows]


async def test_changes_apply_in_sequence_even_before_the_order(db: DurableDB) -> None:
    # change 2 and 1 arrive before the order itself: both parked
    assert (await send(db, "order_change", change(2, "set_qty", line_no=1, qty=18))).ref == "parked"
    assert (await send(db, "order_change", change(1, "set_qty", line_no=1, qty=24))).ref == "parked"
    ack = await send(db, "order", order(), rid="o1")
    assert ack.status == "accepted"
    o = await get(db, "o1")
    assert o["change_seq"] == 2 and o["lines"][0]["qty"] == 18 and o["parked_changes"] == []
    details = [e["detail"] for e in o["events"] if e["event"] == "changed"]
    assert details == ["line 1 qty 12 -> 24", "line 1 qty 24 -> 18"]
    # a repeated sequence number is refused with a reason; nothing changes
    again = await send(db, "order_change", change(2, "set_qty", line_no=1, qty=1))
    assert again.status == "rejected" and "already applied" in (again.reason or "")
    # another gateway cannot change this store's order
    other = await send(db, "order_change", change(3, "cancel_order"), gw="store-2")
    assert other.status == "rejected" and "another gateway" in (other.reason or "")


async def test_refused_change_keeps_the_sequence_and_tells_the_gateway(db: DurableDB) -> None:
    await send(db, "order", order(), rid="o1")
    await send(db, "order_change", change(1, "cancel_order", reason="duplicate order"))
    # change 3 waits for 2; 2 is refused (the order is cancelled) but the sequence moves on
    assert (await send(db, "order_change", change(3, "cancel_order"))).ref == "parked"
    ack = await send(db, "order_change", change(2, "set_qty", line_no=1, qty=5))
    assert ack.status == "accepted"
    o = await get(db, "o1")
    assert o["status"] == "cancelled" and o["change_seq"] == 3 and o["parked_changes"] == []
    refused = [e["detail"] for e in o["events"] if e["event"] == "change refused"]
    assert len(refused) == 2 and "change 2:" in refused[0] and "lines can no longer change" in refused[0]
    last = (await statuses(db))[-1]
    assert last["record_id"] == "o1" and last["status"] == "cancelled" and "refused" in last["detail"]
    versions = [s["version"] for s in await statuses(db)]
    assert versions == sorted(versions)


async def test_bad_change_bodies_are_rejected_with_reason(db: DurableDB) -> None:
    await send(db, "order", order(), rid="o1")
    for body, reason in (
        (change(1, "explode"), "action"),
        (change(0, "cancel_order"), "change_seq"),
        (change(1, "set_qty", line_no=1, qty=-3), "qty"),
        ({**change(1, "cancel_order"), "extra": 1}, "unknown field"),
    ):
        ack = await send(db, "order_change", body)
        assert ack.status == "rejected" and reason in (ack.reason or ""), (body, ack)
    assert (await get(db, "o1"))["change_seq"] == 0
