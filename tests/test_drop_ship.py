"""Drop-ship at the supplier (issue 15, item 3): the supplier's gateway takes the ``drop_ship``
record central sends, shows the order and sends the supplier's confirm / ship / refuse back
as ``supplier_confirmation``, over a real Mosquitto between real processes; and the supplier
of an item for shortage reports and returns is the item master's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from central import wiring
from central.allocate import inventory, shortage, waves
from central.allocate.allocation import SourcingRule
from central.fulfil import picking, returns
from central.intake.ingest import apply_envelope
from central.migrations import all_migrations
from central.orders import lifecycle, masters, repo
from ops.broker import Mosquitto
from protocols.envelope import Envelope, Record
from runtime.dbapi import is_postgres_url
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON, order
from tests.conftest import wait_for
from tests.db_conn import open_conn, open_database
from tests.procs import ROOT, Proc, central_db, central_proc, gateway_proc

DEADLINE = 30.0
MASTERS = (
    ("locations", LOCATIONS_CSV),
    ("items", ITEMS_CSV),
    ("prices", PRICES_CSV),
    ("customers", CUSTOMERS_CSV),
)


def seed_central(tmp: Path, url: str | None) -> None:
    """The fixture masters: MILK and BREAD come from supplier SUP1, whose gateway is sup-1
    (central's database: its SQLite file in ``tmp``, or the PostgreSQL one at ``url``)."""
    conn = open_conn(url or tmp / "central" / "central.db", all_migrations())
    try:
        conn.execute("BEGIN IMMEDIATE" if url is None else "BEGIN")
        for kind, text in MASTERS:
            masters.import_csv(conn, kind, text)
        conn.execute("COMMIT")
    finally:
        conn.close()


def storegate_supplier(gw: Proc, *args: str) -> tuple[int, Any, str]:
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "supplier", *args, "--gateway-url", gw.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else None, done.stderr


def central_status(tmp: Path, url: str | None, record_id: str) -> tuple[str, str, list[str]]:
    """(order status, order number, drop_ships states) at central."""
    conn = central_db(tmp, url)
    try:
        row = conn.execute(
            "SELECT order_id, status, order_no FROM orders WHERE record_id = ?", (record_id,)
        ).fetchone()
        if row is None:
            return "", "", []
        states = [s for (s,) in conn.execute("SELECT status FROM drop_ships WHERE order_id = ?", (row[0],))]
        return row[1], row[2], states
    finally:
        conn.close()


def gw_status(tmp: Path, gw: str, record_id: str) -> str | None:
    conn = sqlite3.connect(f"file:{tmp / gw / f'{gw}.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT status FROM order_status WHERE record_id = ?", (record_id,)).fetchone()
        return row[0] if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


async def test_supplier_gateway_shows_confirms_ships_and_refuses_drop_ship_orders(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    url = central_backend if is_postgres_url(central_backend) else None
    central = central_proc(tmp_path, broker.port, db_url=url)
    seed_central(tmp_path, url)
    store = gateway_proc(tmp_path, broker.port, "store-1")
    sup = gateway_proc(tmp_path, broker.port, "sup-1")
    try:
        for p in (central, store, sup):
            await asyncio.to_thread(p.start)

        async def drop_ship(qty: int) -> str:
            body = {"customer": "S001", "order_type": "drop-ship", "requested_date": SOON}
            body["lines"] = [{"sku": "MILK", "qty": qty}]
            status, made = await asyncio.to_thread(store.post, "/api/orders", body)
            assert status == 201, made
            return str(made["id"])

        first, second = await drop_ship(12), await drop_ship(6)
        await wait_for(
            lambda: (
                central_status(tmp_path, url, first)[0] == "released"
                and central_status(tmp_path, url, second)[0] == "released"
            ),
            timeout=DEADLINE,
            what="both orders passed to the supplier",
        )
        no1, no2 = central_status(tmp_path, url, first)[1], central_status(tmp_path, url, second)[1]

        # the supplier's gateway has them (the drop_ship record applied, not rejected)
        async def listed() -> bool:
            code, out, _ = await asyncio.to_thread(storegate_supplier, sup, "list", "--state", "received")
            return code == 0 and {o["order_no"] for o in out["orders"]} == {no1, no2}

        await wait_for(listed, timeout=DEADLINE, what="the orders listed at the supplier's gateway")
        code, shown, err = await asyncio.to_thread(storegate_supplier, sup, "show", no1)
        assert code == 0, err
        assert (shown["supplier"], shown["ship_to"], shown["lines"]) == (
            "SUP1",
            "S001",
            [{"line_no": 1, "sku": "MILK", "qty": 12}],
        )

        # confirm (CLI) while the supplier's gateway is down (SIGKILL): the CLI retries until it is
        # back; sent again by hand, the step is answered as before and taken once
        sup.kill()
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "ops.cli", "supplier", "confirm", no1, "--ref", "AB-1"),
            *("--gateway-url", sup.url),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert cli.stderr is not None
            retried = (await asyncio.wait_for(cli.stderr.readline(), 30)).decode()
            assert "retrying" in retried, retried
            await asyncio.to_thread(sup.start)
            out_bytes, err_bytes = await asyncio.wait_for(cli.communicate(), 60)
        finally:
            if cli.returncode is None:
                cli.kill()
                await cli.wait()
        assert cli.returncode == 0 and json.loads(out_bytes)["state"] == "confirmed", err_bytes.decode()
        code, out, err = await asyncio.to_thread(storegate_supplier, sup, "confirm", no1, "--ref", "AB-1")
        assert code == 0 and out["state"] == "confirmed" and "already taken" in err, err
        await wait_for(
            lambda: central_status(tmp_path, url, first)[2] == ["confirmed"],
            timeout=DEADLINE,
            what="central hears confirmed",
        )
        status, out = await asyncio.to_thread(sup.post, f"/api/supplier/orders/{no1}/ship", {"ref": "DN-77"})
        assert status == 201 and out["state"] == "shipped", out
        code, out, err = await asyncio.to_thread(
            storegate_supplier, sup, "refuse", no2, "--detail", "out of stock until March"
        )
        assert code == 0, err
        # a step the table does not allow is refused at the supplier's gateway
        status, out = await asyncio.to_thread(sup.post, f"/api/supplier/orders/{no2}/ship", {})
        assert status == 409 and "refused" in out["error"], out

        await wait_for(
            lambda: (
                central_status(tmp_path, url, first)[:3:2] == ("shipped", ["shipped"])
                and central_status(tmp_path, url, second)[:3:2] == ("cancelled", ["refused"])
            ),
            timeout=DEADLINE,
            what="central: shipped and cancelled",
        )
        # and the store hears what became of its orders
        await wait_for(
            lambda: (
                gw_status(tmp_path, "store-1", first) == "shipped"
                and gw_status(tmp_path, "store-1", second) == "cancelled"
            ),
            timeout=DEADLINE,
            what="the store's order status",
        )
        conn = central_db(tmp_path, url)
        try:
            (ref,) = conn.execute(
                "SELECT supplier_ref FROM drop_ships d JOIN orders o USING (order_id) WHERE o.record_id = ?",
                (first,),
            ).fetchone()
        finally:
            conn.close()
        assert ref == "DN-77"
    finally:
        for p in (sup, store, central):
            p.kill()


# -- the item master's supplier --------------------------------------------------------------


@pytest.fixture
async def db(central_backend: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DurableDB]:
    hub = wiring.hub(waves.AllocationSettings(realtime=True))
    d: DurableDB = open_database(central_backend, all_migrations(), on_connect=hub.attach)
    await d.open()

    def seed(c: Any) -> None:
        for kind, text in MASTERS:
            masters.import_csv(c, kind, text)
        inventory.set_sourcing(c, [SourcingRule("*", "DC1", 1, preferred=True)])
        inventory.set_stock(c, "DC1", "BREAD", 40, bin="01-02")  # no supplier on the stock row

    await d.write(seed)
    try:
        yield d
    finally:
        await d.close()


async def test_shortages_and_returns_name_the_item_masters_supplier(db: DurableDB) -> None:
    rec = Record(id="o1", seq=1, type="order", ts=0, body=order(lines=[{"sku": "BREAD", "qty": 50}]))
    env = Envelope(gw="store-1", sent=0, records=(rec,))
    await db.write(lambda c: apply_envelope(c, topic_gw="store-1", topic="sg/v1/gw/store-1/up", env=env))
    by_supplier = await db.read(lambda c: shortage.report(c, "supplier"))
    assert [(r["supplier"], r["units"]) for r in by_supplier] == [("SUP1", 10)]

    def ship_and_return(c: Any) -> returns.Rma:
        o = repo.get_order(c, "o1")
        assert o is not None
        oid = o["order_id"]
        picking.release_order(c, oid)
        for st in ("picked", "shipped"):
            lifecycle.transition(c, oid, st, actor="test", detail=st)
        return returns.create_rma(c, order_id=oid, line_no=1, qty=2, reason="defective", now=1)

    rma = await db.write(ship_and_return)
    assert rma.disposition == "return_to_supplier" and rma.location == "SUP1" and "supplier SUP1" in rma.rule
    # the credit note lowers S001's receivables: its gateway is told its new standing
    rows = await db.read(
        lambda c: c.execute(
            "SELECT gateway, packed FROM downlink_outbox WHERE type = 'customer_standing' ORDER BY seq"
        ).fetchall()
    )
    gw, packed = rows[-1]
    assert gw == "store-1" and rma.credit > 0
    assert msgpack.unpackb(packed)["body"]["customers"][0]["receivables"] == -rma.credit
