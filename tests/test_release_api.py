"""Releasing a batch wave over REST: its allocations become pick tasks on the DC gateway's
durable downlink, in storage-location order, once; the order desk may do it, a viewer may not."""

from __future__ import annotations

import sqlite3

import msgpack
from aiohttp.test_utils import TestClient, TestServer

from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.migrations import all_migrations
from central.web import allocation_api, auth, release_api
from central.web.api import create_app
from tests.db_conn import open_database

auth.PBKDF2_ITERATIONS = 1_000


def seed(conn: sqlite3.Connection) -> int:
    conn.execute("INSERT INTO locations (code, kind, gateway) VALUES ('DC1', 'dc', 'dc-1')")
    conn.execute("INSERT INTO customers (code, backorder_policy) VALUES ('C1', 'backorder')")
    inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
    inventory.set_stock(conn, "DC1", "A", 10, bin="02-01")
    inventory.set_stock(conn, "DC1", "B", 10, bin="01-01")
    conn.execute(
        "INSERT INTO orders (order_id, order_no, record_id, gateway, seq, customer, channel, order_type,"
        " requested_date, status, created_at, received_at, updated_at)"
        " VALUES (1, 'SO00000001', 'r1', 'store-1', 1, 'C1', 'rest', 'normal', '2099-01-01', 'validated',"
        " 0, 1, 0)"
    )
    conn.executemany(
        "INSERT INTO order_lines (order_id, line_no, sku, qty, price) VALUES (1, ?, ?, ?, 100)",
        [(1, "A", 3), (2, "B", 2)],
    )
    settings = waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",)))
    (wave,) = waves.run_wave(conn, cutoff=10, now=10, settings=settings)
    return int(wave["wave_id"])


async def test_release_wave_over_rest(central_backend: str) -> None:
    db = open_database(central_backend, all_migrations(), synchronous="NORMAL")
    await db.open()
    try:
        wave_id = await db.write(seed)
        desk = await db.write(lambda c: auth.add_user(c, "desk", auth.Role.ORDER_DESK))
        viewer = await db.write(lambda c: auth.add_user(c, "eyes", auth.Role.VIEWER))
        app = create_app(db=db)
        allocation_api.add_routes(app)
        release_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            r = await client.post(
                f"/api/waves/{wave_id}/release", headers={"Authorization": f"Bearer {viewer}"}
            )
            assert r.status == 403
            r = await client.post(
                f"/api/waves/{wave_id}/release", headers={"Authorization": f"Bearer {desk}"}
            )
            assert r.status == 200, await r.text()
            assert (await r.json())["tasks"] == 2
            again = await client.post(
                f"/api/waves/{wave_id}/release", headers={"Authorization": f"Bearer {desk}"}
            )
            assert (await again.json())["tasks"] == 0  # released once
            r = await client.post("/api/waves/999/release", headers={"Authorization": f"Bearer {desk}"})
            assert r.status == 404 and "no wave 999" in (await r.json())["error"]
        rows = await db.read(
            lambda c: c.execute(
                "SELECT gateway, packed FROM downlink_outbox WHERE type = 'pick_task' ORDER BY seq"
            ).fetchall()
        )
        status = await db.read(lambda c: c.execute("SELECT status FROM orders").fetchone()[0])
    finally:
        await db.close()
    assert [gw for gw, _ in rows] == ["dc-1", "dc-1"]
    bins = [msgpack.unpackb(p)["body"]["bin"] for _, p in rows]
    assert bins == sorted(bins) == ["01-01", "02-01"]  # storage-location order
    assert status == "released"
