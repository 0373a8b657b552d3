"""One wave end to end over a real Mosquitto: store orders -> central validation and wave
allocation -> pick tasks down to the DC gateway -> lit cart (real PTL simulator over TCP)
and a tote from the real AS/RS simulator -> confirmations and one short back up -> central
shows the picked quantities and the short handled by the customer's policy (back order).

Also central's side on its own: release in storage-location order, re-release changes
nothing, a short reallocated to another DC (a new task goes down at once), a repeated
result applied once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central import downlink, wiring
from central.allocate import inventory, shortage, waves
from central.allocate.allocation import SourcingRule
from central.fulfil import documents, picking
from central.hub import Hub
from central.intake.consumer import BrokerSettings, Consumer
from central.intake.ingest import apply_envelope
from central.migrations import all_migrations
from central.orders import masters, repo
from firmware_sim.asrs import AsrsSimulator, default_slots
from firmware_sim.ptl import Press, PtlController, ScriptedPicker
from gateway import inbox, items, order_status, outbox
from gateway import picking as gw_picking
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.picking import AsrsConfig, CartConfig, PickExecutor, PickingConfig
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from protocols.envelope import Ack, AckStatus, Envelope, Record
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON
from tests.conftest import wait_for
from tests.db_conn import open_conn, open_database

WAVE_SETTINGS = waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",)))


@pytest.fixture(autouse=True)
def _batch_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downlink, "RESEND_AFTER_S", 0.5)


def _wave_hub() -> Hub:
    """Central's wiring with allocation in a wave, not at validation (no allocation hooks)."""
    hub = wiring.hub()
    hub.allocation = WAVE_SETTINGS
    return hub


def _seed(conn: sqlite3.Connection) -> None:
    for kind, text in (
        ("locations", LOCATIONS_CSV),
        ("items", ITEMS_CSV),
        ("prices", PRICES_CSV),
        ("customers", CUSTOMERS_CSV),
    ):
        masters.import_csv(conn, kind, text)
    inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
    inventory.set_stock(conn, "DC1", "MILK", 100, bin="A-01-01")
    inventory.set_stock(conn, "DC1", "BREAD", 50, bin="A-01-02")
    inventory.set_stock(conn, "DC1", "WATER", 20, bin="Z-ASRS")
    picking.set_tote(conn, "DC1", "WATER", tote="T00001", tote_location="A01-001")


@dataclass
class Gw:
    db: DurableDB
    box: Outbox
    inbox: Inbox
    sync: Sync


@asynccontextmanager
async def system(
    broker: Mosquitto, tmp_path: Path, ptl_sim: PtlController, asrs_sim: AsrsSimulator, target: str
) -> AsyncIterator[tuple[DurableDB, Consumer, dict[str, Gw]]]:
    """The gateways' databases in ``tmp_path``, central's at ``target`` (``central_backend``)."""
    cdb = open_database(target, all_migrations(), on_connect=_wave_hub().attach)
    await cdb.open()
    gws: dict[str, Gw] = {}
    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-dc-e2e"))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(consumer.run())]
            await consumer.connected.wait()
            for gid in ("store-1", "dc-1"):
                db = DurableDB(
                    tmp_path / f"{gid}.db",
                    migrations=[
                        *outbox.MIGRATIONS,
                        *inbox.MIGRATIONS,
                        *items.MIGRATIONS,
                        *order_status.MIGRATIONS,
                        *gw_picking.MIGRATIONS,
                    ],
                )
                await db.open()
                box, inb = Outbox(db), Inbox(db)
                inb.register(items.MASTER_RECORD, items.apply_master_items)
                inb.register(order_status.RECORD, order_status.apply_order_status)
                if gid == "dc-1":
                    ex = PickExecutor(
                        db=db,
                        outbox=box,
                        config=PickingConfig(
                            carts=[
                                CartConfig(
                                    cart_id="cart-1",
                                    host="127.0.0.1",
                                    port=ptl_sim.port,
                                    nodes=4,
                                    reconnect_min_s=0.01,
                                    reconnect_max_s=0.05,
                                    relight_guard_s=0.0,
                                )
                            ],
                            asrs=AsrsConfig(host="127.0.0.1", port=asrs_sim.port, backoff_initial_s=0.05),
                        ),
                    )
                    ex.register(inb)
                    tasks.append(tg.create_task(ex.run()))
                sync = Sync(
                    gateway_id=gid, outbox=box, mqtt=MqttSettings(port=broker.port), on_records=inb.handle
                )
                gws[gid] = Gw(db, box, inb, sync)
                tasks.append(tg.create_task(sync.run()))
                await wait_for(lambda s=sync: s.stats.connected, what=f"{gid} connected")
            await cdb.write(_seed)
            consumer.downlink.notify()
            try:
                yield cdb, consumer, gws
            finally:
                for t in tasks:
                    t.cancel()
    finally:
        for g in gws.values():
            await g.db.close()
        await cdb.close()


def _order(*lines: tuple[str, int]) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": SOON,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
    }


async def _status(cdb: DurableDB, record_id: str) -> str | None:
    o = await cdb.read(lambda c: repo.get_order(c, record_id))
    return None if o is None else str(o["status"])


async def test_wave_end_to_end_with_a_short_backordered(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    # the order on position 2 finds only 2 of its 6 MILK and presses the shortage key
    picker = ScriptedPicker({2: [Press("shortage", 2)]})
    async with (
        PtlController(nodes=4, picker=picker) as ptl_sim,
        AsrsSimulator(slots=default_slots(4)) as asrs_sim,
        system(broker, tmp_path, ptl_sim, asrs_sim, central_backend) as (cdb, consumer, gws),
    ):
        store, dc = gws["store-1"], gws["dc-1"]
        r1 = await store.box.submit("order", _order(("MILK", 12), ("WATER", 6)))
        r2 = await store.box.submit("order", _order(("MILK", 6), ("BREAD", 4)))
        for r in (r1, r2):
            await wait_for(lambda r=r: _statuses_are(cdb, [r.id], "validated"), what="orders validated")

        def wave_and_release(conn: sqlite3.Connection) -> dict[str, Any]:
            now = time.time_ns() // 1_000_000
            (w,) = waves.run_wave(conn, cutoff=now, now=now, settings=WAVE_SETTINGS)
            return picking.release_wave(conn, w["wave_id"], now=now)

        released = await cdb.write(wave_and_release)
        consumer.downlink.notify()
        assert released["tasks"] == 4 and released["gateways"] == {"dc-1": 4}
        tasks = await cdb.read(lambda c: picking.tasks(c, wave=released["wave"]))
        # storage-location sequence: bin, then sku, then order
        assert [(t["seq"], t["bin"], t["sku"], t["qty"]) for t in tasks] == [
            (1, "A-01-01", "MILK", 12),
            (2, "A-01-01", "MILK", 6),
            (3, "A-01-02", "BREAD", 4),
            (4, "Z-ASRS", "WATER", 6),
        ]
        assert tasks[3]["tote"] == "T00001"

        await wait_for(
            lambda: _statuses_are(cdb, [r1.id, r2.id], "picked"), timeout=20, what="both orders picked"
        )
        # the store hears it too
        for r in (r1, r2):

            async def store_sees(rid: str = r.id) -> bool:
                st = await store.db.read(lambda c: order_status.latest(c, rid))
                return st is not None and st.status == "picked"

            await wait_for(store_sees, what="store sees picked")
        await wait_for(lambda: asrs_sim.slots["A01-001"] == "T00001", what="tote back in storage")

        o2 = await cdb.read(lambda c: repo.get_order(c, r2.id))
        assert o2 is not None
        oid2 = o2["order_id"]
        done = await cdb.read(lambda c: picking.tasks(c, wave=released["wave"]))
        assert [(t["sku"], t["picked"], t["short"], t["status"]) for t in done] == [
            ("MILK", 12, 0, "picked"),
            ("MILK", 2, 4, "short"),
            ("BREAD", 4, 0, "picked"),
            ("WATER", 6, 0, "picked"),
        ]
        assert done[1]["action"] == "4 backorder" and done[1]["key"] == "shortage"
        shorts = await cdb.read(lambda c: shortage.list_shortages(c, filters={"order_id": str(oid2)}))
        assert [(s["sku"], s["qty"], s["action"], s["status"]) for s in shorts] == [
            ("MILK", 4, "backorder", "open")
        ]
        note = await cdb.read(lambda c: documents.delivery_rows(c, oid2))
        assert [(n["sku"], n["shipped"], n["short"]) for n in note] == [("MILK", 2, 4), ("BREAD", 4, 0)]
        assert "4 backorder (open)" in note[0]["shortage"]
        stock = await cdb.read(lambda c: {(r.sku): (r.on_hand, r.allocated) for r in inventory.stock(c)})
        assert stock == {"MILK": (100 - 12 - 6, 0), "BREAD": (46, 0), "WATER": (14, 0)}
        # every pick took its units off on hand in stock_audit, by the DC gateway that picked
        audit = await cdb.read(lambda c: inventory.stock_audit(c, sku="MILK"))
        assert {(a["actor"], a["action"]) for a in audit} == {("gateway:dc-1", "pick")}
        assert sum(a["before_qty"] - a["after_qty"] for a in audit) == 12 + 6
        assert audit[-1]["before_qty"] == 100 and audit[0]["after_qty"] == 100 - 12 - 6
        events = await cdb.read(
            lambda c: c.execute("SELECT tote, event FROM tote_events ORDER BY id").fetchall()
        )
        assert ("T00001", "arrived") in events

        # a confirmation sent again (same record id) is not counted twice
        await wait_for(lambda: _backlog_empty(dc), what="dc outbox drained")
        first = done[0]["task_id"]
        order_no = await dc.db.read(
            lambda c: c.execute("SELECT order_no FROM pick_tasks WHERE task_id = ?", (first,)).fetchone()[0]
        )
        again = await dc.box.submit(
            "pick_result",
            {
                "task_id": first,
                "order_no": order_no,
                "sku": "MILK",
                "requested_qty": 12,
                "picked_qty": 12,
                "outcome": "picked",
                "key": "confirm",
                "ts": 1,
            },
            record_id=f"pick:{first}",
        )

        repeated = dc.box.acks_repeated

        async def answered() -> bool:
            res = await dc.box.result(again.id)
            return res is not None and res["status"] == "accepted" and dc.box.acks_repeated == repeated + 1

        await wait_for(answered, what="central answers duplicate (kept as the acceptance it repeats)")
        stock2 = await cdb.read(lambda c: {(r.sku): (r.on_hand, r.allocated) for r in inventory.stock(c)})
        assert stock2 == stock


async def _statuses_are(cdb: DurableDB, ids: list[str], status: str) -> bool:
    return all([await _status(cdb, rid) == status for rid in ids])


async def _backlog_empty(gw: Gw) -> bool:
    return (await gw.box.backlog()).count == 0


# --------------------------------------------------------------------------- central alone


def _central(target: str) -> sqlite3.Connection:
    conn: sqlite3.Connection = open_conn(target, all_migrations())
    _wave_hub().attach(conn)
    conn.executemany(
        "INSERT INTO locations (code, kind, gateway) VALUES (?, 'dc', ?)", [("DC1", "dc-1"), ("DC2", "dc-2")]
    )
    conn.execute("INSERT INTO customers (code, backorder_policy) VALUES ('C1', 'backorder')")
    inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True), SourcingRule("*", "DC2", 5)])
    inventory.set_stock(conn, "DC1", "A", 10, bin="02-01")
    inventory.set_stock(conn, "DC1", "B", 5, bin="01-01")
    inventory.set_stock(conn, "DC2", "A", 10, bin="09-09")
    for oid, lines in ((1, [("A", 3), ("B", 2)]), (2, [("A", 4)])):
        conn.execute(
            "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
            " requested_date, status, created_at, received_at, updated_at)"
            " VALUES (?, ?, ?, 'store-1', ?, 'C1', 'rest', 'normal', '2099-01-01', 'validated', 0, ?, 0)",
            (oid, f"SO{oid:08d}", f"r{oid}", oid, oid),
        )
        conn.executemany(
            "INSERT INTO order_lines (order_id, line_no, sku, qty, price) VALUES (?, ?, ?, ?, 100)",
            [(oid, i + 1, s, q) for i, (s, q) in enumerate(lines)],
        )
    (w,) = waves.run_wave(conn, cutoff=10, now=10, settings=WAVE_SETTINGS)
    picking.release_wave(conn, w["wave_id"], now=11)
    return conn


def _result(task: dict[str, Any], picked: int, *, key: str = "confirm") -> Record:
    body = {
        "task_id": task["task_id"],
        "order_no": f"SO{task['order_id']:08d}",
        "sku": task["sku"],
        "requested_qty": task["qty"],
        "picked_qty": picked,
        "outcome": "picked" if picked >= task["qty"] else "short",
        "key": key,
        "ts": 1,
    }
    return Record(id=f"pick:{task['task_id']}", seq=1, type="pick_result", ts=1, body=body)


def _apply(conn: sqlite3.Connection, gw: str, *recs: Record) -> list[Ack]:
    return apply_envelope(
        conn, topic_gw=gw, topic=f"sg/v1/gw/{gw}/up", env=Envelope(gw=gw, sent=0, records=recs)
    )


def _stock(conn: sqlite3.Connection) -> dict[tuple[str, str], tuple[int, int]]:
    return {(r.location, r.sku): (r.on_hand, r.allocated) for r in inventory.stock(conn)}


def test_release_in_storage_order_once(central_backend: str) -> None:
    conn = _central(central_backend)
    tasks = picking.tasks(conn)
    assert [(t["seq"], t["bin"], t["sku"], t["order_id"], t["qty"]) for t in tasks] == [
        (1, "01-01", "B", 1, 2),
        (2, "02-01", "A", 1, 3),
        (3, "02-01", "A", 2, 4),
    ]
    down = conn.execute(
        "SELECT id, gateway FROM downlink_outbox WHERE type = 'pick_task' ORDER BY seq"
    ).fetchall()
    assert down == [(t["task_id"], "dc-1") for t in tasks]
    assert {r[0] for r in conn.execute("SELECT status FROM orders")} == {"released"}
    again = picking.release_wave(conn, 1, now=12)  # nothing new: same tasks, nothing re-sent
    assert again["tasks"] == 0
    assert conn.execute("SELECT count(*) FROM downlink_outbox WHERE type = 'pick_task'").fetchone()[0] == 3


def test_short_is_reallocated_to_another_dc_and_counted_once(central_backend: str) -> None:
    conn = _central(central_backend)
    t_b, t_a1, t_a2 = picking.tasks(conn)
    acks = _apply(conn, "dc-1", _result(t_b, 2), _result(t_a1, 3), _result(t_a2, 1, key="shortage"))
    assert [a.status for a in acks] == [AckStatus.ACCEPTED] * 3 and acks[2].ref == "SO00000002"
    assert conn.execute("SELECT status FROM orders WHERE order_id = 1").fetchone()[0] == "picked"
    # 3 short at DC1: written off there, reallocated from DC2 and sent to dc-2 at once
    new = [t for t in picking.tasks(conn) if t["status"] == "sent"]
    assert [(t["gateway"], t["location"], t["sku"], t["qty"], t["order_id"]) for t in new] == [
        ("dc-2", "DC2", "A", 3, 2)
    ]
    assert (
        conn.execute(
            "SELECT count(*) FROM downlink_outbox WHERE type = 'pick_task' AND gateway = 'dc-2'"
        ).fetchone()[0]
        == 1
    )
    assert conn.execute("SELECT status FROM orders WHERE order_id = 2").fetchone()[0] == "released"
    before = _stock(conn)
    assert before[("DC1", "A")] == (10 - 3 - 4, 0) and before[("DC2", "A")] == (10, 3)
    # the same confirmation again: same answer, no second effect
    dup = _apply(conn, "dc-1", _result(t_a2, 1, key="shortage"))
    assert dup[0].status is AckStatus.DUPLICATE and _stock(conn) == before
    (t_dc2,) = new
    ok = _apply(conn, "dc-2", _result(t_dc2, 3))
    assert ok[0].status is AckStatus.ACCEPTED
    # the same result from another gateway is refused with the reason
    wrong = _apply(conn, "dc-1", _result(t_dc2, 3))
    assert wrong[0].status is AckStatus.REJECTED and "dc-2" in (wrong[0].reason or "")
    assert conn.execute("SELECT status FROM orders WHERE order_id = 2").fetchone()[0] == "picked"
    assert _stock(conn)[("DC2", "A")] == (7, 0)
    assert shortage.list_shortages(conn, filters={}) == []  # nothing owed: all reallocated
    conn.close()
