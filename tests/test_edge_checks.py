"""The edge checks (issue 15, item 9): every order entry at a gateway applies the same rules
from the cached masters - unknown items, another store's customer, quantities a scanner or
handheld would refuse are refused with their reason, and the customer's credit is checked
from the standing central last sent (warn, hold), with central away too."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from central.migrations import all_migrations
from central.orders import masters
from gateway import items, order_status, outbox, scanner, stock
from gateway.items import Item
from gateway.outbox import Outbox
from ops.broker import Mosquitto
from protocols.records import Channel, OrderBody, OrderLine, OrderType
from runtime.sqlitedb import DurableDB, apply_migrations, connect
from tests.conftest import wait_for
from tests.procs import ROOT, central_db, central_proc, gateway_proc

GTIN_A, GTIN_B, GTIN_UNKNOWN = "4006381333931", "5901234123457", "4000000000006"
DAY = (dt.date.today() + dt.timedelta(days=2)).isoformat()
LIMIT = 10_000  # S001's credit limit, minor units
PRICE = 100


def seed_central(path: Path) -> None:
    """Masters as an order desk keeps them: two stores on two gateways, two items."""
    conn = connect(path)
    try:
        apply_migrations(conn, all_migrations())
        conn.execute("BEGIN IMMEDIATE")
        masters.upsert(conn, "customers", {"code": "S001", "credit_limit": LIMIT, "gateway": "store-1"})
        masters.upsert(conn, "customers", {"code": "S002", "gateway": "store-2"})
        masters.upsert(
            conn,
            "items",
            {"sku": "PEN", "gtins": GTIN_A, "price": PRICE, "max_order_qty": 50, "supplier": "SUP"},
        )
        masters.upsert(conn, "items", {"sku": "TEA", "gtins": GTIN_B, "price": PRICE})
        conn.execute("COMMIT")
    finally:
        conn.close()


def gw_query(tmp: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{tmp / 'store-1' / 'store-1.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the gateway has not created its tables yet
        return []
    finally:
        conn.close()


def order(*lines: dict[str, Any], customer: str = "S001") -> dict[str, Any]:
    return {"customer": customer, "requested_date": DAY, "lines": list(lines)}


async def test_http_order_entry_applies_the_edge_checks_and_credit_online_and_offline(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_proc(tmp_path, broker.port)
    seed_central(tmp_path / "central" / "central.db")
    gw = gateway_proc(tmp_path, broker.port, "store-1")
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)
        # central's masters reach the gateway's cache
        await wait_for(
            lambda: gw_query(tmp_path, "SELECT count(*) FROM items") == [(2,)],
            timeout=30,
            what="the item master cached at the gateway",
        )
        status, body = await asyncio.to_thread(
            gw.post, "/api/orders", order({"gtin": GTIN_UNKNOWN, "qty": 1})
        )
        assert status == 422, body
        # items with their order limit, and the standing of the customer mapped to this gateway
        await wait_for(
            lambda: (
                gw_query(tmp_path, "SELECT max_order_qty FROM items WHERE sku = 'PEN'") == [(50,)]
                and gw_query(tmp_path, "SELECT credit_limit FROM customers") == [(LIMIT,)]
            ),
            timeout=30,
            what="masters cached at the gateway",
        )

        refused = {
            "unknown GTIN": order({"gtin": GTIN_UNKNOWN, "qty": 1}),
            "another store's customer": order({"gtin": GTIN_A, "qty": 1}, customer="S002"),
            "qty 100000": order({"gtin": GTIN_B, "qty": 100_000}),
            "over the item's max": order({"gtin": GTIN_B, "qty": 1}, {"gtin": GTIN_A, "qty": 51}),
        }
        answers = {
            what: await asyncio.to_thread(gw.post, "/api/orders", body) for what, body in refused.items()
        }
        assert {what: status for what, (status, _) in answers.items()} == dict.fromkeys(refused, 422), answers
        assert answers["unknown GTIN"][1]["refused"] == [
            {"line": 1, "field": "gtin", "reason": f"unknown GTIN {GTIN_UNKNOWN}: not in the item master"}
        ]
        assert answers["another store's customer"][1]["refused"][0]["field"] == "customer"
        assert "100000 > 9999" in answers["qty 100000"][1]["error"]
        assert answers["over the item's max"][1]["refused"] == [
            {"line": 2, "field": "qty", "reason": "quantity 51 > 50 allowed for 'PEN'"}
        ]

        # a good order: accepted; central counts it (the gateway hears its status)
        status, first = await asyncio.to_thread(
            gw.post, "/api/orders", order({"gtin": GTIN_A, "qty": 20, "price": PRICE})
        )
        assert status == 201 and first["status"] == "pending" and "credit" not in first, first
        await wait_for(
            lambda: (
                gw_query(tmp_path, "SELECT status FROM order_status WHERE record_id = ?", first["id"])
                in ([("validated",)], [("allocated",)])
            ),
            timeout=30,
            what="the first order counted at central",
        )
        # the order desk books receivables (a separate process on central's database, as
        # `storegate masters import` is): central sends the new standing down
        csv = tmp_path / "customers.csv"
        csv.write_text(f"code,credit_limit,receivables,gateway\nS001,{LIMIT},1000,store-1\n")
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "ops.cli",
                "masters",
                "import",
                "customers",
                str(csv),
                "--db",
                str(tmp_path / "central" / "central.db"),
            ],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        await wait_for(
            lambda: gw_query(tmp_path, "SELECT receivables FROM customers WHERE code = 'S001'") == [(1000,)],
            timeout=30,
            what="the customer's new standing at the gateway",
        )

        # central away: the edge keeps the textbook's credit rules from its cached standing
        central.kill()
        answers2 = []
        # receivables 1000 + the first order 2000 (not in the standing: counted at the edge)
        for qty in (50, 15, 10):  # then 8000 (pass), 9500 (over 90 %: warn), 10500 (over: hold)
            lines = [{"gtin": GTIN_B, "qty": qty, "price": PRICE}]
            status, body = await asyncio.to_thread(gw.post, "/api/orders", order(*lines))
            assert status == 201, body
            answers2.append(body)
        assert [(a["status"], a.get("credit", "pass")) for a in answers2] == [
            ("pending", "pass"),
            ("pending", "warn"),
            ("held", "hold"),
        ], answers2
        assert "= 10500 vs limit 10000" in answers2[2]["credit_detail"]

        # central back: it holds the same order for a supervisor, and the store hears so
        await asyncio.to_thread(central.start)
        held_id = answers2[2]["id"]

        def central_status() -> list[tuple[str, str]]:
            conn = central_db(tmp_path)
            try:
                return conn.execute("SELECT record_id, status FROM orders ORDER BY order_id").fetchall()
            finally:
                conn.close()

        await wait_for(lambda: len(central_status()) == 4, timeout=30, what="central has the four orders")
        assert dict(central_status())[held_id] == "held"
        await wait_for(
            lambda: (
                gw_query(tmp_path, "SELECT status FROM order_status WHERE record_id = ?", held_id)
                == [("held",)]
            ),
            timeout=30,
            what="the held status at the gateway",
        )
    finally:
        gw.kill()
        central.kill()


async def open_gateway_db(tmp_path: Path) -> tuple[DurableDB, Outbox]:
    from gateway.items import Standing

    db = DurableDB(
        tmp_path / "gw.db",
        migrations=[
            *outbox.MIGRATIONS,
            *items.MIGRATIONS,
            *order_status.MIGRATIONS,
            *stock.MIGRATIONS,
            *scanner.MIGRATIONS,
        ],
    )
    await db.open()
    await db.write(
        lambda c: (
            items.upsert_items(
                c,
                [
                    Item(
                        GTIN_A,
                        "PEN",
                        price=PRICE,
                        max_order_qty=50,
                        pack_size=6,
                        safety_stock=10,
                        order_up_to=400,
                    )
                ],
            ),
            items.upsert_standing(c, [Standing("S001", credit_limit=LIMIT)]),
        )
    )
    return db, Outbox(db)


def body(customer: str, *lines: OrderLine) -> OrderBody:
    """An order as a handheld terminal's batch would make it."""
    return OrderBody(customer, Channel.HANDHELD, OrderType.NORMAL, dt.date.today(), tuple(lines))


async def test_check_order_is_the_one_rule_for_every_entry(tmp_path: Path) -> None:
    from gateway import edge_checks

    db, box = await open_gateway_db(tmp_path)
    try:
        verdicts = await db.read(
            lambda conn: [
                edge_checks.check_order(conn, o, store_customer="S001")
                for o in (
                    body("S001", OrderLine(qty=50, gtin=GTIN_A)),
                    body("S002", OrderLine(qty=1, gtin=GTIN_A)),
                    body("S001", OrderLine(qty=1, sku="NOPE")),
                    body("S001", OrderLine(qty=51, sku="PEN")),
                )
            ]
        )
        assert verdicts[0].accepted and verdicts[0].value == 50 * PRICE
        assert [r.field for v in verdicts[1:] for r in v.refusals] == ["customer", "sku", "qty"]

        # the POS safety-stock reorder is cut to the item's limit in whole packs (48, not 396);
        # its value (4800 of the 10000 limit) counts against the customer's credit at the edge
        book = stock.StockBook(outbox=box, customer="S001")
        applied = await db.write(lambda conn: book.count(conn, "PEN", 4))
        assert [r.qty for r in applied.reorders] == [48]

        # a scanner: each scan is checked as the line it would make; the closed order gets the
        # credit check (4800 + 50 x 100 = 9800: over 90 %, warn; then 60 more: hold)
        sessions = scanner.ScanSessions(db=db, outbox=box, customer="S001")
        assert (await sessions.scan("sc-1", Channel.SCANNER, "SG-QTY-50")).accepted
        assert (await sessions.scan("sc-1", Channel.SCANNER, GTIN_A)).accepted
        refused = await sessions.scan("sc-1", Channel.SCANNER, GTIN_A)  # 51 > PEN's 50
        assert (refused.accepted, refused.code) == (False, "qty-too-large")
        first = (await sessions.scan("sc-1", Channel.SCANNER, "SG-END")).record
        await sessions.scan("sc-1", Channel.SCANNER, "SG-QTY-6")
        await sessions.scan("sc-1", Channel.SCANNER, GTIN_A)
        second = (await sessions.scan("sc-1", Channel.SCANNER, "SG-END")).record
        assert first is not None and second is not None
        answers = await db.read(lambda conn: [edge_checks.entry(conn, r.id) for r in (first, second)])
        assert [(a["value"], a["credit"]) for a in answers if a] == [(5000, "warn"), (600, "hold")]
    finally:
        await db.close()
