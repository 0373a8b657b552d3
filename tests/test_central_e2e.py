"""One end-to-end path per order type: gateway outbox -> Mosquitto -> central consumer ->
order processing -> ``order_status`` back down to the gateway's inbox."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central import downlink
from central.intake.consumer import BrokerSettings, Consumer
from central.orders import masters, ordertypes, repo
from central.schema import MIGRATIONS as CENTRAL_MIGRATIONS
from gateway import inbox, items, order_status, outbox
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from protocols.envelope import Record
from runtime.dbapi import open_db
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, order
from tests.conftest import wait_for


@dataclass
class Gw:
    db: DurableDB
    box: Outbox
    inbox: Inbox
    received: list[Record]


def _seed(conn: sqlite3.Connection) -> None:
    for kind, text in (
        ("locations", LOCATIONS_CSV),
        ("items", ITEMS_CSV),
        ("prices", PRICES_CSV),
        ("customers", CUSTOMERS_CSV),
    ):
        masters.import_csv(conn, kind, text)
    ordertypes.add_contract(conn, code="C1", customer="S001", lines={"MILK": 6}, dates=[])
    ordertypes.add_voucher(conn, code="V1", customer="S001", sku="BREAD", qty=2)
    ordertypes.deposit(conn, customer="S001", sku="WATER", qty=10, price=70)


@pytest.fixture(autouse=True)
def _fast_resend(monkeypatch: pytest.MonkeyPatch) -> None:
    # a record sent before the gateway subscribed is resent soon, not after 15 s
    monkeypatch.setattr(downlink, "RESEND_AFTER_S", 0.5)


@asynccontextmanager
async def system(
    broker: Mosquitto, tmp_path: Path, target: str
) -> AsyncIterator[tuple[DurableDB, dict[str, Gw]]]:
    """``target``: central's database (``central_backend``: SQLite or PostgreSQL)."""
    cdb: DurableDB = open_db(target, migrations=CENTRAL_MIGRATIONS)  # type: ignore[assignment]
    await cdb.open()
    gws: dict[str, Gw] = {}
    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-e2e"))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(consumer.run())]
            await consumer.connected.wait()
            for gid in ("store-1", "sup-1"):
                db = DurableDB(
                    tmp_path / f"{gid}.db",
                    migrations=[
                        *outbox.MIGRATIONS,
                        *inbox.MIGRATIONS,
                        *items.MIGRATIONS,
                        *order_status.MIGRATIONS,
                    ],
                )
                await db.open()
                box, inb, received = Outbox(db), Inbox(db), []
                inb.register(items.MASTER_RECORD, items.apply_master_items)
                inb.register(order_status.RECORD, order_status.apply_order_status)
                inb.register(ordertypes.DROP_SHIP_RECORD, lambda _c, r, rs=received: rs.append(r))
                gws[gid] = Gw(db, box, inb, received)
                sync = Sync(
                    gateway_id=gid, outbox=box, mqtt=MqttSettings(port=broker.port), on_records=inb.handle
                )
                tasks.append(tg.create_task(sync.run()))
                await wait_for(lambda s=sync: s.stats.connected, what=f"{gid} connected")
            await cdb.write(_seed)  # masters go down to the mapped gateways
            consumer.downlink.notify()

            async def store_has_masters() -> bool:
                milk = await gws["store-1"].db.read(lambda c: items.lookup_gtin(c, "04012345678901"))
                return milk is not None and milk.price == 95

            await wait_for(store_has_masters, what="item master at store-1")
            try:
                yield cdb, gws
            finally:
                for t in tasks:
                    t.cancel()
    finally:
        for g in gws.values():
            await g.db.close()
        await cdb.close()


async def gateway_status(gw: Gw, record_id: str) -> str | None:
    st = await gw.db.read(lambda c: order_status.latest(c, record_id))
    return st.status if st else None


async def wait_status(gw: Gw, record_id: str, status: str) -> None:
    async def ok() -> bool:
        return await gateway_status(gw, record_id) == status

    await wait_for(ok, what=f"gateway sees {record_id} {status}")


async def central_order(cdb: DurableDB, record_id: str) -> dict[str, Any]:
    o = await cdb.read(lambda c: repo.get_order(c, record_id))
    assert o is not None
    return o


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "normal": (order(lines=[{"gtin": "04012345678901", "qty": 12}]), "validated"),
    "cash-sale": (order(order_type="cash-sale"), "delivered"),
    "contract": (
        order(order_type="contract", source_ref="C1", lines=[{"sku": "MILK", "qty": 6}]),
        "validated",
    ),
    "consignment": (order(order_type="consignment", lines=[{"sku": "WATER", "qty": 4}]), "validated"),
    "voucher": (
        order(order_type="voucher", source_ref="V1", lines=[{"sku": "BREAD", "qty": 2}]),
        "validated",
    ),
    "drop-ship": (order(order_type="drop-ship", lines=[{"sku": "BREAD", "qty": 2}]), "released"),
}


@pytest.mark.parametrize("otype", sorted(CASES))
async def test_order_type_end_to_end(
    otype: str, broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    body, expected = CASES[otype]
    async with system(broker, tmp_path, central_backend) as (cdb, gws):
        store = gws["store-1"]
        rec = await store.box.submit("order", body)
        await wait_status(store, rec.id, expected)
        o = await central_order(cdb, rec.id)
        assert o["status"] == expected and o["order_type"] == otype and o["gateway"] == "store-1"
        if otype == "cash-sale":
            credit = await cdb.read(
                lambda c: c.execute("SELECT receivables FROM customers WHERE code = 'S001'").fetchone()[0]
            )
            assert credit == o["value"] == 12 * 95
        elif otype == "consignment":
            assert o["value"] == 4 * 70
        elif otype == "voucher":  # consumed once: a second redemption is held, and the store told why
            again = await store.box.submit("order", body)
            await wait_status(store, again.id, "held")
            st = await store.db.read(lambda c: order_status.latest(c, again.id))
            assert st is not None and "already consumed" in st.detail
        elif otype == "drop-ship":  # passed to the supplier's gateway, which confirms
            sup = gws["sup-1"]
            await wait_for(lambda: bool(sup.received), what="drop_ship at the supplier gateway")
            req = sup.received[0].body
            assert req["order_no"] == o["order_no"] and req["lines"] == [
                {"line_no": 1, "sku": "BREAD", "qty": 2}
            ]
            await sup.box.submit(
                "supplier_confirmation", {"order_no": o["order_no"], "state": "shipped", "ref": "DN-1"}
            )
            await wait_status(store, rec.id, "shipped")
            o = await central_order(cdb, rec.id)
            assert o["drop_ship"][0]["status"] == "shipped" and o["drop_ship"][0]["supplier_ref"] == "DN-1"


async def test_unknown_item_from_gateway_is_held_and_reported(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    async with system(broker, tmp_path, central_backend) as (cdb, gws):
        store = gws["store-1"]
        rec = await store.box.submit("order", order(lines=[{"gtin": "04000000000000", "qty": 1}]))
        await wait_status(store, rec.id, "held")
        st = await store.db.read(lambda c: order_status.latest(c, rec.id))
        assert st is not None and "unknown item GTIN 04000000000000" in st.detail
        # the store fixes it with an order change (sequence 1): re-checked and validated
        await store.box.submit(
            "order_change", {"order": rec.id, "change_seq": 2, "action": "cancel_line", "line_no": 1}
        )
        await store.box.submit(
            "order_change", {"order": rec.id, "change_seq": 1, "action": "add_line", "sku": "MILK", "qty": 6}
        )
        await wait_status(store, rec.id, "validated")
        o = await central_order(cdb, rec.id)
        assert [(ln["sku"], ln["cancelled"]) for ln in o["lines"]] == [(None, True), ("MILK", False)]
        assert o["change_seq"] == 2 and o["parked_changes"] == []
