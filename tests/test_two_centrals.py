"""Two centrals in one process share nothing: each database's connections carry their own hub
(record handlers, lifecycle hooks, allocation settings) and caches (``central.hub``).

Central A allocates in real time and knows item MILK; central B allocates in waves, knows
item JUICE instead, and has one more record type wired. Their orders, taken turn about in one
event loop, each follow only their own central's masters, mode and handlers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from central import wiring
from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.hub import Hub, hub_of
from central.intake.ingest import Context, apply_envelope
from central.migrations import central_db
from central.orders import masters
from protocols.envelope import Ack, AckStatus, Envelope, Record
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, LOCATIONS_CSV, SOON

ITEMS = {
    "A": "sku,gtins,description,pack_size,supplier,price\nMILK,04012345678901,Milk 1l,6,SUP1,100\n",
    "B": "sku,gtins,description,pack_size,supplier,price\nJUICE,04012345678918,Juice 1l,6,SUP1,120\n",
}


def _seed(conn: sqlite3.Connection, name: str) -> None:
    masters.import_csv(conn, "locations", LOCATIONS_CSV)
    masters.import_csv(conn, "items", ITEMS[name])
    masters.import_csv(conn, "customers", CUSTOMERS_CSV)
    inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
    sku = "MILK" if name == "A" else "JUICE"
    inventory.set_stock(conn, "DC1", sku, 100, bin="A-01-01")


def _ping(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    return f"pong from {ctx.gateway}"


def _order(rid: str, seq: int, sku: str) -> Record:
    body: dict[str, Any] = {
        "customer": "S001",
        "channel": "handheld",
        "order_type": "normal",
        "requested_date": SOON,
        "lines": [{"sku": sku, "qty": 6}],
    }
    return Record(rid, seq, "order", 1_700_000_000_000 + seq, body)


async def _send(db: DurableDB, *records: Record) -> list[Ack]:
    env = Envelope(gw="store-1", sent=0, records=records)
    acks: list[Ack] = await db.write(lambda c: apply_envelope(c, topic_gw="store-1", topic="t", env=env))
    return acks


async def _status(db: DurableDB, rid: str) -> str:
    row = await db.read(
        lambda c: c.execute("SELECT status FROM orders WHERE record_id = ?", (rid,)).fetchone()
    )
    return str(row[0])


@pytest.mark.parametrize("batched", [True, False], ids=["together", "one-by-one"])
async def test_two_centrals_in_one_process_share_nothing(tmp_path: Path, batched: bool) -> None:
    hub_a = wiring.hub(waves.AllocationSettings(realtime=True))
    hub_b = wiring.hub(waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",))))
    hub_b.handler("ping", _ping)
    db_a, db_b = central_db(tmp_path / "a.db", hub_a), central_db(tmp_path / "b.db", hub_b)
    await db_a.open()
    await db_b.open()
    try:
        await db_a.write(lambda c: _seed(c, "A"))
        await db_b.write(lambda c: _seed(c, "B"))
        # each connection (writer and reader) carries its own central's hub
        assert await db_a.write(hub_of) is hub_a and await db_a.read(hub_of) is hub_a
        assert await db_b.write(hub_of) is hub_b and await db_b.read(hub_of) is hub_b
        n = 2 if batched else 1  # two new orders in a message take the batch path together
        for k in range(3):  # turn about, so a cache or setting left by one would meet the other
            a_milk = [_order(f"a-milk-{k}-{i}", 10 * k + i + 1, "MILK") for i in range(n)]
            b_milk = [_order(f"b-milk-{k}-{i}", 10 * k + i + 1, "MILK") for i in range(n)]
            b_juice = [_order(f"b-juice-{k}-{i}", 10 * k + i + 5, "JUICE") for i in range(n)]
            a_juice = [_order(f"a-juice-{k}-{i}", 10 * k + i + 5, "JUICE") for i in range(n)]
            assert {a.status for a in await _send(db_a, *a_milk)} == {AckStatus.ACCEPTED}
            assert {a.status for a in await _send(db_b, *b_milk)} == {AckStatus.ACCEPTED}
            assert {a.status for a in await _send(db_b, *b_juice)} == {AckStatus.ACCEPTED}
            assert {a.status for a in await _send(db_a, *a_juice)} == {AckStatus.ACCEPTED}
            for r in a_milk:  # A: real time, its own item
                assert await _status(db_a, r.id) == "allocated"
            for r in b_milk:  # B does not know A's item
                assert await _status(db_b, r.id) == "held"
            for r in b_juice:  # B: waves, so validated and left for a wave
                assert await _status(db_b, r.id) == "validated"
            for r in a_juice:
                assert await _status(db_a, r.id) == "held"
        # the record type wired on B only
        ping = Record(f"ping-{batched}", 99, "ping", 1, {})
        (on_b,) = await _send(db_b, ping)
        (on_a,) = await _send(db_a, ping)
        assert on_b.status is AckStatus.ACCEPTED and on_b.ref == "pong from store-1"
        assert on_a.status is AckStatus.REJECTED and "unknown record type 'ping'" in (on_a.reason or "")
        assert "ping" not in hub_a.handlers and "ping" not in wiring.hub().handlers
    finally:
        await db_a.close()
        await db_b.close()


def test_a_connection_nobody_wired_gets_the_standard_handlers_and_no_hooks(tmp_path: Path) -> None:
    from runtime.sqlitedb import connect

    conn = connect(tmp_path / "x.db")
    try:
        hub = hub_of(conn)
        assert isinstance(hub, Hub) and hub is hub_of(conn)
        assert set(hub.handlers) == set(wiring.hub().handlers) and not hub.on_validated
        other = connect(tmp_path / "x.db")
        try:
            assert hub_of(other) is not hub  # another connection: another central's state
        finally:
            other.close()
    finally:
        conn.close()
