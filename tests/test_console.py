"""The order console (``/console``): its two small REST reads, its login and roles, and the
main flows clicked through in headless Chromium (Debian's, via Playwright) against central's
real aiohttp app and SQLite file - each effect checked in the database too."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from central import wiring
from central.allocate import inventory, waves
from central.allocate.allocation import SourcingRule
from central.hub import Hub
from central.migrations import central_db
from central.web import allocation_api, auth, console, release_api
from central.web.api import create_app
from ops.broker import Mosquitto
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import SOON
from tests.procs import VIEWER, basic_auth, central_proc

auth.PBKDF2_ITERATIONS = 1_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# STOREGATE_SCREENSHOTS=docs writes the README's screenshots; by default they go to tmp_path
SHOTS_ENV = "STOREGATE_SCREENSHOTS"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 15_000
XSS = "<img src=x onerror=window.pwned=1>"

LOCATIONS = "code,kind,name,gateway\nDC1,dc,Main DC,dc-1\n"
ITEMS = "sku,description,pack_size,price,storage\nA,Apples,1,100,DC1=01-01\nB,Bread,1,250,DC1=02-01\n"
# C2 is near its credit limit: any order of 200 or more is held for a supervisor.
CUSTOMERS = "code,name,grade,credit_limit,receivables\nC1,Corner Shop,A,,0\nC2,Tight,B,1000,900\n"


@pytest.fixture
def batch() -> Iterator[Hub]:
    """Allocation in waves, so the console makes and releases them."""
    yield wiring.hub(waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",))))


@dataclass
class Desk:
    db: DurableDB
    client: TestClient[Any, Any]
    tokens: dict[str, str]

    async def req(self, method: str, path: str, role: str = "supervisor", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        async with self.client.request(method, path, headers=headers, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.req(method, path, **kw)
        assert status in (200, 201), (status, body)
        return body

    async def order(self, customer: str, sku: str, qty: int, note: str = "") -> str:
        body = {
            "customer": customer,
            "order_type": "normal",
            "requested_date": SOON,
            "lines": [{"sku": sku, "qty": qty}],
            "note": note,
        }
        no: str = (await self.ok("POST", "/api/orders", json=body))["order_no"]
        return no

    def q(self, sql: str, *args: Any) -> Any:
        return self.db.read(lambda c: c.execute(sql, args).fetchall())


@asynccontextmanager
async def desk(tmp_path: Path, hub: Hub, target: str | None = None) -> AsyncIterator[Desk]:
    """``target``: central's database (``central_backend``), default a SQLite file in ``tmp_path``."""
    db = central_db(target or tmp_path / "central.db", hub)
    await db.open()
    try:
        tokens = {}
        for role in auth.Role:
            tokens[role.value] = await db.write(
                lambda c, r=role: auth.add_user(c, f"{r.value}-user", r, password="pw")
            )

        def stock(c: sqlite3.Connection) -> None:
            inventory.set_sourcing(c, [SourcingRule("*", "DC1", 1, preferred=True)])
            inventory.set_stock(c, "DC1", "A", 10, bin="01-01")
            inventory.set_stock(c, "DC1", "B", 5, bin="02-01")

        app = create_app(db=db)
        allocation_api.add_routes(app)
        release_api.add_routes(app)
        console.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            d = Desk(db, client, tokens)
            for kind, text in (("locations", LOCATIONS), ("items", ITEMS), ("customers", CUSTOMERS)):
                await d.ok("POST", f"/api/masters/{kind}/import", data=text)
            await db.write(stock)
            yield d
    finally:
        await db.close()


# -- the REST reads the console added --------------------------------------------------------


async def test_me_names_the_user_and_the_roles_it_includes(
    tmp_path: Path, batch: Hub, central_backend: str
) -> None:
    async with desk(tmp_path, batch, central_backend) as d:
        assert await d.ok("GET", "/api/me") == {
            "name": "supervisor-user",
            "role": "supervisor",
            "roles": ["viewer", "order_desk", "inventory_controller", "supervisor"],
        }
        status, body = await d.req("GET", "/api/me", role="viewer")
        assert (status, body["roles"]) == (200, ["viewer"])
        async with d.client.get("/api/me") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")


async def test_console_page_and_assets_need_a_viewer(
    tmp_path: Path, batch: Hub, central_backend: str
) -> None:
    async with desk(tmp_path, batch, central_backend) as d:
        for path in ("/console", "/console/console.js", "/console/console.css"):
            async with d.client.get(path) as r:
                assert r.status == 401, path
        status, text = await d.req("GET", "/console", role="viewer")
        assert status == 200 and "/console/console.js" in text
        status, text = await d.req("GET", "/console/console.js", role="viewer")
        assert status == 200 and "innerHTML" not in text  # everything shown is set as text
        status, body = await d.req("GET", "/console/secrets.txt", role="viewer")
        assert status == 404 and "no console asset" in body["error"]


async def test_returns_of_an_order_listed_oldest_first(
    tmp_path: Path, batch: Hub, central_backend: str
) -> None:
    async with desk(tmp_path, batch, central_backend) as d:
        no = await d.order("C1", "B", 3)
        for step in ("allocated", "released", "picked", "shipped"):
            await d.ok("POST", f"/api/orders/{no}/status", json={"status": step})
        oid = (await d.ok("GET", f"/api/orders/{no}"))["order_id"]
        assert (await d.ok("GET", f"/api/returns?order_id={oid}")) == {"returns": []}
        for qty, reason in ((1, "unwanted"), (2, "damaged")):
            body = {"order_id": oid, "line_no": 1, "qty": qty, "reason": reason}
            await d.ok("POST", "/api/returns", json=body)
        got = (await d.ok("GET", f"/api/returns?order_id={oid}"))["returns"]
        assert [(r["qty"], r["reason"], r["disposition"]) for r in got] == [
            (1, "unwanted", "restock"),
            (2, "damaged", "scrap"),
        ]
        assert (await d.ok("GET", f"/api/returns?order_id={oid + 1}")) == {"returns": []}
        for bad in ("", "?order_id=x", "?order_id=%C2%B2", "?order_id=1&sku=A"):
            status, body = await d.req("GET", f"/api/returns{bad}", role="viewer")
            assert status == 400 and "error" in body, bad


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=basic_auth()), timeout=5) as r:
        return str(r.headers["Content-Type"]), bytes(r.read())


@pytest.mark.slow
async def test_central_process_serves_the_console(broker: Mosquitto, tmp_path: Path) -> None:
    """The central process itself (``central.app.build_app``) serves the page, its script and
    ``/api/me``."""
    central = central_proc(tmp_path, broker.port)
    await asyncio.to_thread(central.start)
    try:
        ctype, page = await asyncio.to_thread(_get, central.url + "/console")
        assert ctype.startswith("text/html") and b"/console/console.js" in page
        ctype, _ = await asyncio.to_thread(_get, central.url + "/console/console.js")
        assert ctype.startswith("application/javascript")
        _, me = await asyncio.to_thread(_get, central.url + "/api/me")
        assert json.loads(me) == {"name": VIEWER[0], "role": "viewer", "roles": ["viewer"]}
    finally:
        central.kill()


# -- the console in a browser ---------------------------------------------------------------


async def _shot(page: Any, name: str, into: Path) -> None:
    path = into / name
    await page.screenshot(path=str(path), full_page=True)
    assert await asyncio.to_thread(os.path.getsize, path) > 10_000


async def open_order(page: Any, base: str, order_no: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{base}#order/{order_no}")
    await expect(page.locator("#order-head")).to_have_attribute("data-order", order_no)


@pytest.mark.slow
async def test_console_main_flows_in_chromium(tmp_path: Path, batch: Hub) -> None:
    from playwright.async_api import async_playwright, expect

    assert CHROMIUM, "Debian's chromium is needed for this test (./run test installs it)"
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    async with desk(tmp_path, batch) as d:
        so_take = await d.order("C1", "A", 4, note=XSS)  # amended to 6
        so_held = await d.order("C2", "A", 2)  # credit hold
        so_short = await d.order("C1", "B", 8)  # 5 in stock: 3 short
        so_cancel = await d.order("C1", "A", 1)
        so_ship = await d.order("C1", "B", 2)  # shipped: takes a return
        so_reject = await d.order("C2", "A", 3)  # credit hold, rejected
        for status in ("allocated", "released", "picked", "shipped"):
            await d.ok("POST", f"/api/orders/{so_ship}/status", json={"status": status})
        assert (await d.ok("GET", f"/api/orders/{so_held}"))["status"] == "held"
        base = str(d.client.make_url("/console"))

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                ctx = await browser.new_context(
                    http_credentials={"username": "supervisor-user", "password": "pw"},
                    viewport={"width": 1280, "height": 900},
                )
                ctx.set_default_timeout(UI_TIMEOUT_MS)
                page = await ctx.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("dialog", lambda dlg: asyncio.ensure_future(dlg.accept()))

                # log in: the page knows who it is; the order list shows every order
                await page.goto(base)
                await expect(page.locator("#who")).to_contain_text("supervisor-user (supervisor)")
                await expect(page.locator("#order-results tbody tr")).to_have_count(6)
                await _shot(page, "console-orders.png", shots)

                # paging: More follows next_after until the last page
                await page.goto(f"{base}#orders?limit=4")
                await expect(page.locator("#order-results tbody tr")).to_have_count(4)
                await page.click("#more")
                await expect(page.locator("#order-results tbody tr")).to_have_count(6)
                await expect(page.locator("#more")).to_have_count(0)

                # search: held orders
                await page.select_option("#order-search select[name=status]", "held")
                await page.click("#order-search button[type=submit]")
                await expect(page.locator("#order-results tbody tr")).to_have_count(2)
                assert "status=held" in page.url
                await page.click(f'#order-results tr[data-order="{so_held}"]')

                # detail: lines, checks (the credit hold), history; approve it
                await expect(page.locator("#order-head")).to_have_attribute("data-status", "held")
                await expect(page.locator("#order-checks")).to_contain_text("credit")
                await expect(page.locator("#order-checks [data-outcome=hold]")).to_have_count(1)
                await expect(page.locator("#order-lines tbody tr")).to_have_count(1)
                await expect(page.locator("#order-history")).to_contain_text("held")
                await page.fill("#action-reason", "paid by phone")
                await _shot(page, "console-hold.png", shots)
                await page.click("#approve")
                await expect(page.locator("#order-head")).to_have_attribute("data-status", "validated")
                await expect(page.locator("#flash")).to_contain_text("approve: done")
                rows = await d.q(
                    "SELECT o.status, e.actor, e.detail FROM orders o JOIN order_events e USING (order_id)"
                    " WHERE o.order_no = ? ORDER BY e.id DESC LIMIT 1",
                    so_held,
                )
                assert rows[0][0] == "validated" and rows[0][1] == "supervisor-user"

                # reject another hold: the order is cancelled, the reason recorded
                await open_order(page, base, so_reject)
                await page.fill("#action-reason", "no payment")
                await page.click("#reject")
                await expect(page.locator("#order-head")).to_have_attribute("data-status", "cancelled")
                got = await d.q(
                    "SELECT o.status, e.actor FROM orders o JOIN order_events e USING (order_id)"
                    " WHERE o.order_no = ? AND e.detail LIKE '%no payment%'",
                    so_reject,
                )
                assert got and got[-1] == ("cancelled", "supervisor-user"), got

                # amend a quantity
                await open_order(page, base, so_take)
                await page.fill("#qty-1", "6")
                await page.click("#set-qty-1")
                await expect(page.locator("#flash")).to_contain_text("line 1 quantity: done")
                await expect(page.locator("#qty-1")).to_have_value("6")
                assert await d.q(
                    "SELECT l.qty FROM order_lines l JOIN orders o USING (order_id) WHERE o.order_no = ?",
                    so_take,
                ) == [(6,)]
                await expect(page.locator("#order-history")).to_contain_text("changed")

                # cancel an order (the confirm dialog is accepted)
                await open_order(page, base, so_cancel)
                await page.click("#cancel-order")
                await expect(page.locator("#order-head")).to_have_attribute("data-status", "cancelled")
                assert await d.q("SELECT status FROM orders WHERE order_no = ?", so_cancel) == [
                    ("cancelled",)
                ]
                await expect(page.locator("#cancel-order")).to_have_count(0)

                # waves: make them, release one, open its pick list
                await page.click("nav a[data-nav=waves]")
                await page.click("#make-waves")
                wave_row = page.locator("tr[data-wave]").first
                await expect(wave_row).to_have_attribute("data-status", "allocated")
                wave_id = int(await wave_row.get_attribute("data-wave") or 0)
                await page.click(f"#release-{wave_id}")
                await expect(page.locator("#flash")).to_contain_text("pick tasks sent to the DC")
                await expect(page.locator(f'tr[data-wave="{wave_id}"]')).to_have_attribute(
                    "data-status", "released"
                )
                assert await d.q("SELECT status FROM waves WHERE wave_id = ?", wave_id) == [("released",)]
                tasks = await d.q("SELECT count(*) FROM downlink_outbox WHERE type = 'pick_task'")
                assert tasks[0][0] >= 3  # A for two orders, B for one
                await page.click(f"#picklist-{wave_id}")
                doc = page.locator("#document")
                await expect(doc).to_contain_text(f"Pick list — wave {wave_id}")
                await expect(doc.locator("tbody tr")).to_have_count(3)
                await expect(doc).to_contain_text("01-01")
                await _shot(page, "console-picklist.png", shots)
                await page.emulate_media(media="print")
                assert not await page.locator("header").is_visible()  # print CSS: the document only
                assert not await page.locator("#document button").first.is_visible()
                await page.emulate_media(media="screen")

                # shortages by item and by customer
                await page.goto(f"{base}#shortages")
                await expect(page.locator("table[data-by=item]")).to_contain_text("B")
                item_row = page.locator("table[data-by=item] tbody tr").first
                await expect(item_row.locator("td").nth(2)).to_have_text("3")
                await page.click("#by-customer")
                await expect(page.locator("table[data-by=customer] tbody tr").first).to_contain_text("C1")
                await _shot(page, "console-shortages.png", shots)
                short = await d.q("SELECT sku, qty - filled, customer FROM shortages WHERE status = 'open'")
                assert short == [("B", 3, "C1")]

                # the short order: allocation, its trace and a replay that matches
                await open_order(page, base, so_short)
                await expect(page.locator("#order-allocation tbody tr").first).to_contain_text("DC1")
                run_btn = page.locator("#order-allocation button[id^=run-]").first
                run_id = (await run_btn.get_attribute("id") or "").removeprefix("run-")
                await run_btn.click()
                await expect(page.locator(f"#trace-{run_id}")).to_contain_text("short 3")
                await page.click(f"#replay-{run_id}")
                await expect(page.locator(".replay")).to_have_attribute("data-identical", "true")
                await _shot(page, "console-order.png", shots)

                # its delivery note, printed: 5 shipped, 3 short on back order, the line marked
                await page.click("#delivery-note")
                note = page.locator("#document")
                await expect(note).to_contain_text(f"Delivery note {so_short}")
                await expect(note.locator("tr.short")).to_have_count(1)
                await expect(note.locator("tr.short")).to_contain_text("3 backorder (open)")
                await page.emulate_media(media="print")
                await _shot(page, "console-delivery-note.png", shots)
                await page.emulate_media(media="screen")

                # a return on the shipped order
                await open_order(page, base, so_ship)
                await page.fill("#ret-qty", "1")
                await page.select_option("#ret-reason", "unwanted")
                await page.click("#return-form button[type=submit]")
                await expect(page.locator("#order-returns tbody tr")).to_have_count(1)
                await expect(page.locator("#order-returns")).to_contain_text("restock")
                rmas = await d.q(
                    "SELECT r.qty, r.reason, r.disposition FROM rmas r JOIN orders o USING (order_id)"
                    " WHERE o.order_no = ?",
                    so_ship,
                )
                assert rmas == [(1, "unwanted", "restock")]

                assert errors == []

                # markup in an order's note is shown as text, never run
                await page.goto(f"{base}#orders?customer=C1")
                await expect(page.locator("#order-results tbody tr")).to_have_count(4)
                await open_order(page, base, so_take)
                await expect(page.locator("#order-head")).to_contain_text(XSS)
                assert await page.locator("#view img").count() == 0
                assert await page.evaluate("window.pwned") is None

                # the order desk may cancel and amend but not approve
                dctx = await browser.new_context(
                    http_credentials={"username": "order_desk-user", "password": "pw"}
                )
                dctx.set_default_timeout(UI_TIMEOUT_MS)
                dpage = await dctx.new_page()
                held_again = await d.order("C2", "A", 5)
                await open_order(dpage, base, held_again)
                await expect(dpage.locator("#order-head")).to_have_attribute("data-status", "held")
                await expect(dpage.locator("#cancel-order")).to_have_count(1)
                await expect(dpage.locator("#set-qty-1")).to_have_count(1)
                for sel in ("#approve", "#reject"):
                    await expect(dpage.locator(sel)).to_have_count(0)

                # a viewer sees no action, and the server refuses one sent anyway
                vctx = await browser.new_context(
                    http_credentials={"username": "viewer-user", "password": "pw"}
                )
                vctx.set_default_timeout(UI_TIMEOUT_MS)
                vpage = await vctx.new_page()
                await open_order(vpage, base, so_take)
                await expect(vpage.locator("#order-head")).to_be_visible()
                await expect(vpage.locator("#who")).to_contain_text("(viewer)")
                for sel in ("#cancel-order", "#set-qty-1", "#add-line", "#approve"):
                    await expect(vpage.locator(sel)).to_have_count(0)
                status = await vpage.evaluate(
                    "async (no) => (await fetch(`/api/orders/${no}/cancel`, {method: 'POST'})).status",
                    so_take,
                )
                assert status == 403
                await vpage.goto(f"{base}#waves")
                await expect(vpage.locator("tr[data-wave]").first).to_be_visible()
                await expect(vpage.locator("#make-waves")).to_have_count(0)
                assert await d.q("SELECT status FROM orders WHERE order_no = ?", so_take) != [("cancelled",)]
            finally:
                await browser.close()
