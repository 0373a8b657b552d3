"""In-process smoke test of the spine: gateway outbox -> Mosquitto -> central -> ack."""

from __future__ import annotations

import asyncio
from pathlib import Path

from central.intake.consumer import BrokerSettings, Consumer
from central.orders import repo
from central.schema import MIGRATIONS as CENTRAL_MIGRATIONS
from gateway import order_status
from gateway.app import migrations as gateway_migrations
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops.broker import Mosquitto
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for

ORDER = {
    "customer": "S001",
    "channel": "manual",
    "order_type": "normal",
    "requested_date": "2026-12-01",
    "lines": [{"gtin": "04012345678901", "qty": 3}],
}


async def test_order_reaches_central_and_leaves_outbox(broker: Mosquitto, tmp_path: Path) -> None:
    cdb = DurableDB(tmp_path / "central.db", migrations=CENTRAL_MIGRATIONS)
    gdb = DurableDB(tmp_path / "gw.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    try:
        consumer = Consumer(db=cdb, broker=BrokerSettings(port=broker.port, client_id="central-test"))
        box = Outbox(gdb)
        inbox = Inbox(gdb)
        inbox.register(order_status.RECORD, order_status.apply_order_status)
        sync = Sync(
            gateway_id="store-1", outbox=box, mqtt=MqttSettings(port=broker.port), on_records=inbox.handle
        )
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(consumer.run())
            await consumer.connected.wait()
            t2 = tg.create_task(sync.run())
            recs = [await box.submit("order", ORDER) for _ in range(5)]

            async def drained() -> bool:
                return (await box.backlog()).count == 0

            await wait_for(drained, what="outbox drained")

            async def told() -> bool:
                return await gdb.read(lambda c: order_status.latest(c, recs[-1].id)) is not None

            await wait_for(told, what="central's order status reaches the gateway")
            for t in (t1, t2):
                t.cancel()
        orders = await cdb.read(lambda c: repo.list_orders(c, filters={}))
        assert [o["record_id"] for o in orders] == [r.id for r in recs]
        res = await box.result(recs[0].id)
        assert res is not None and res["status"] == "accepted"
        st = await gdb.read(lambda c: order_status.latest(c, recs[0].id))
        assert st is not None and st.order_no == orders[0]["order_no"]
    finally:
        await gdb.close()
        await cdb.close()
