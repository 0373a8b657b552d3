"""Fleet drill-down REST through the real aiohttp app and a real SQLite file: the gateway list
at 1,000 gateways (summary, problems first, search, paging, its time), one gateway's detail
(history, answers, quarantine, devices, alerts), one device, the alert history; and the pages
in a real headless Chromium (overview -> search -> gateway page -> device page)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from central.fleet import AlertThresholds, Fleet, _Counters, apply_status, evaluate_alerts
from central.intake.ingest import apply_envelope
from central.migrations import central_db
from central.web import auth, dashboard, fleet_api
from central.web.api import create_app
from protocols import topics
from protocols.envelope import Envelope, Record
from runtime.sqlitedb import DurableDB
from tests.central_fixtures import Central, order

auth.PBKDF2_ITERATIONS = 1_000  # fast tests; the stored hash names its own count
TH = AlertThresholds(gateway_offline_s=0, backlog_age_s=300)
N = 1000


def status(gw: str, state: str = "online", **kw: object) -> dict[str, object]:
    site = f"S{int(gw.split('-')[1]) // 10:03d}" if gw.startswith("gw-") else "S001"
    return {"gw": gw, "state": state, "ts": 0, "site": site, "backlog": 0, "oldest_age_s": 0, **kw}


def kind_of(i: int) -> str:
    """The seeded fleet: every 100th gateway disk full, every 50th offline, every 20th with an
    old backlog, every 25th with a low battery device (an alert), the rest healthy."""
    if i % 100 == 7:
        return "disk_full"
    if i % 50 == 3:
        return "offline"
    if i % 20 == 11:
        return "backlog_old"
    if i % 25 == 13:
        return "alerting"
    return ""


def seed_fleet(conn: sqlite3.Connection, now: int) -> None:
    for i in range(N):
        gw = f"gw-{i:04d}"
        k = kind_of(i)
        dev = {"id": f"{gw}-ht", "kind": "handheld", "state": "online", "battery": 90, "firmware": "2.1"}
        if k == "alerting":
            dev["battery"] = 5
        doc = status(gw, backlog=i % 7, oldest_age_s=float(i % 60), devices=[dev])
        if k == "disk_full":
            doc["storage"] = {
                "state": "full",
                "since_ms": now - 1000,
                "free_bytes": 10,
                "reason": "disk full",
            }
        if k == "backlog_old":
            doc["oldest_age_s"] = 400.0 + i
        apply_status(conn, gw, doc, now - 60_000)
        if k == "offline":
            apply_status(conn, gw, status(gw, "offline"), now - 30_000)
    evaluate_alerts(conn, now, TH, _Counters())


@asynccontextmanager
async def fleet_central(target: str) -> AsyncIterator[Central]:
    """``target``: central's database, a SQLite file or a PostgreSQL URL (``central_backend``)."""
    db = central_db(target)
    await db.open()
    try:
        tokens = {}
        for role in auth.Role:
            tokens[role.value] = await db.write(
                lambda c, r=role: auth.add_user(c, f"{r.value}-user", r, password="pw")
            )
        app = create_app(db=db)
        dashboard.add_routes(app, fleet=Fleet(db, TH), db=db)
        fleet_api.add_routes(app, db=db, backlog_age_s=TH.backlog_age_s)
        async with TestClient(TestServer(app)) as client:
            yield Central(db, client, tokens)
    finally:
        await db.close()


async def get(c: Central, path: str, role: str = "viewer") -> tuple[int, Any]:
    return await c.req("GET", path, role)


async def test_list_of_1000_gateways_summary_problems_first_search_paging(central_backend: str) -> None:
    async with fleet_central(central_backend) as c:
        await c.db.write(lambda conn: seed_fleet(conn, int(time.time() * 1000)))
        kinds = [kind_of(i) for i in range(N)]

        st, page = await get(c, "/api/fleet/gateways?limit=500")
        assert st == 200
        s = page["summary"]
        assert s["gateways"] == N and page["total"] == N
        assert s["disk_full"] == kinds.count("disk_full") == 10
        assert s["offline"] == kinds.count("offline")
        assert s["backlog_old"] == kinds.count("backlog_old")
        assert s["problems"] == sum(1 for k in kinds if k)
        assert s["online"] == N - s["offline"]
        assert s["sites"] == 100

        # problems on top, in order: disk full, offline, old backlog, alerts; then the healthy
        everything = []
        for offset in range(0, N, 100):
            st, p = await get(c, f"/api/fleet/gateways?limit=100&offset={offset}")
            assert st == 200 and len(p["items"]) == 100
            everything += p["items"]
        names = [g["gateway"] for g in everything]
        assert len(set(names)) == N  # paging: each gateway once
        assert names[:500] == [g["gateway"] for g in page["items"]]
        problems = [g["problem"] for g in everything]
        order_of = ["disk_full", "offline", "backlog_old", "alerting", ""]
        assert problems == sorted(problems, key=order_of.index)
        assert {g["gateway"]: g["problem"] for g in everything} == {f"gw-{i:04d}": kinds[i] for i in range(N)}
        old = [g["oldest_age_s"] for g in everything if g["problem"] == "backlog_old"]
        assert old == sorted(old, reverse=True)  # the oldest backlog first

        st, p = await get(c, "/api/fleet/gateways?q=gw-0042")
        assert [g["gateway"] for g in p["items"]] == ["gw-0042"] and p["total"] == 1
        assert [d["device_id"] for d in p["items"][0]["device_list"]] == ["gw-0042-ht"]
        st, p = await get(c, "/api/fleet/gateways?q=S004&limit=500")  # by site
        assert sorted(g["gateway"] for g in p["items"]) == [f"gw-{i:04d}" for i in range(40, 50)]
        st, p2 = await get(c, "/api/fleet/gateways?q=s004&limit=500")  # any case, on either backend
        assert p2["items"] == p["items"]
        st, p2 = await get(c, "/api/fleet/gateways?q=GW-0042")
        assert [g["gateway"] for g in p2["items"]] == ["gw-0042"]
        st, p = await get(c, "/api/fleet/gateways?q=%25")  # a LIKE wildcard is searched literally
        assert p["total"] == 0
        st, p = await get(c, "/api/fleet/gateways?state=offline&limit=500")
        assert {g["problem"] for g in p["items"]} == {"offline"} and p["total"] == s["offline"]
        st, p = await get(c, "/api/fleet/gateways?state=problem&q=gw-00&limit=500")
        assert p["total"] == sum(1 for i in range(100) if kinds[i])

        # the overview's live stream stays small at this size: summary, not 1,000 gateways
        async with c.client.get("/api/stream", headers=c.h("viewer")) as r:
            first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"event: fleet\ndata: {") and len(first) < 100_000, len(first)
        event = json.loads(first.split(b"data: ", 1)[1])
        assert event["summary"] == s and "sites" not in event
        assert len(event["history"]) == fleet_api.OVERVIEW_TOP
        assert len(event["alerts"]) == fleet_api.OVERVIEW_ALERTS < s["open_alerts"]

        for bad in ("limit=0", "limit=x", "offset=-1", "state=weird"):
            st, body = await get(c, f"/api/fleet/gateways?{bad}")
            assert st == 400 and body["error"]

        # the measure: the first page (what the overview asks on every change), 1,000 gateways
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            st, _p = await get(c, "/api/fleet/gateways?limit=50")
            times.append(time.perf_counter() - t0)
            assert st == 200
        t0 = time.perf_counter()
        st, _p = await get(c, "/api/fleet/gateways?q=gw-09&limit=50")
        search_s = time.perf_counter() - t0
        print(
            f"\nfleet list, {N} gateways: median {statistics.median(times) * 1000:.1f} ms,"
            f" min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f} ms (first page of 50);"
            f" search {search_s * 1000:.1f} ms"
        )
        assert statistics.median(times) < 1.0  # generous: a shared 2-core machine


async def test_gateway_detail_device_detail_and_alert_history(central_backend: str) -> None:
    async with fleet_central(central_backend) as c:
        await c.load_masters()
        now = int(time.time() * 1000)
        devs = [
            {"id": "ht-1", "kind": "handheld", "state": "online", "battery": 8, "firmware": "2.1",
             "last_seen_ms": now - 5000, "errors": 2, "last_error": "<b>checksum</b>"},
            {"id": "sc-1", "kind": "serial-scanner", "state": "offline", "firmware": "1.0"},
        ]  # fmt: skip

        def seed(conn: sqlite3.Connection) -> None:
            for k in range(5):
                doc = status("store-1", backlog=10 * k, oldest_age_s=1.5 * k, devices=devs, version="1.2")
                apply_status(conn, "store-1", doc, now - (5 - k) * 60_000)
            evaluate_alerts(conn, now - 30_000, TH, _Counters())
            apply_status(
                conn,
                "store-1",
                status("store-1", devices=[{**devs[0], "battery": 90}, devs[1]], version="1.2"),
                now,
            )
            evaluate_alerts(conn, now, TH, _Counters())  # the battery alert closes, device offline stays
            good = Record("o-1", 1, "order", now, order())
            bad = Record("o-2", 2, "order", now, {"customer": "S001"})
            env = Envelope(gw="store-1", sent=0, records=(good, bad))
            apply_envelope(conn, topic_gw="store-1", topic=topics.uplink("store-1"), env=env)
            apply_envelope(conn, topic_gw="store-1", topic=topics.uplink("store-1"), env=env)  # a resend

        await c.db.write(seed)

        st, g = await get(c, "/api/fleet/gateways/store-1")
        assert st == 200
        assert g["state"] == "online" and g["version"] == "1.2" and g["site"] == "S001"
        assert [h[1] for h in g["history"]] == [0, 10, 20, 30, 40, 0]
        assert [h[2] for h in g["history"]][:5] == [0, 1.5, 3.0, 4.5, 6.0]
        assert g["answers"] == {"accepted": 1, "rejected": 1}
        by_id = {r["record_id"]: r for r in g["records"]}
        assert by_id["o-1"]["status"] == "accepted" and by_id["o-1"]["ref"]
        assert by_id["o-2"]["status"] == "rejected" and "missing" in by_id["o-2"]["reason"]
        assert g["quarantined"] == 1 and g["quarantine"][0]["record_id"] == "o-2"
        assert [d["device_id"] for d in g["devices"]] == ["sc-1", "ht-1"]  # offline first
        assert g["devices"][1]["last_error"] == "<b>checksum</b>"
        kinds = {(a["kind"], a["closed_ms"] is None) for a in g["alerts"]}
        assert kinds == {("battery_low", False), ("device_offline", True)}

        st, d = await get(c, "/api/fleet/gateways/store-1/devices/ht-1")
        assert st == 200 and d["battery"] == 90 and d["firmware"] == "2.1" and d["errors"] == 2
        assert d["site"] == "S001" and d["gateway_state"] == "online"
        assert [a["kind"] for a in d["alerts"]] == ["battery_low"]
        assert d["events"][-1]["event"] == "device online"

        st, body = await get(c, "/api/fleet/gateways/nope")
        assert st == 404 and "nope" in body["error"]
        st, body = await get(c, "/api/fleet/gateways/store-1/devices/nope")
        assert st == 404 and "nope" in body["error"]
        st, body = await get(c, "/api/fleet/gateways/store-1?records=0")
        assert st == 400

        st, h = await get(c, "/api/fleet/alerts")
        assert st == 200 and {a["kind"] for a in h["alerts"]} == {"battery_low", "device_offline"}
        assert h["kinds"] == ["battery_low", "device_offline"]
        st, h = await get(c, "/api/fleet/alerts?state=closed")
        assert [a["kind"] for a in h["alerts"]] == ["battery_low"]
        st, h = await get(c, "/api/fleet/alerts?state=open&kind=device_offline&gateway=store-1")
        assert [a["device_id"] for a in h["alerts"]] == ["sc-1"]
        st, h = await get(c, "/api/fleet/alerts?gateway=other")
        assert h["alerts"] == []
        st, h = await get(c, "/api/fleet/alerts?limit=1")
        assert len(h["alerts"]) == 1 and h["next_before"] is not None
        st, h2 = await get(c, f"/api/fleet/alerts?limit=1&before={h['next_before']}")
        assert len(h2["alerts"]) == 1 and h2["alerts"][0]["id"] < h["alerts"][0]["id"]
        st, body = await get(c, "/api/fleet/alerts?state=maybe")
        assert st == 400

        # scoped users (central/VISIBILITY.md): a store user its own gateway only, a supplier none
        def scope(kind: auth.ScopeKind, *values: str) -> Any:
            return c.db.write(lambda conn: auth.set_scope(conn, "viewer-user", auth.Scope(kind, values)))

        await scope(auth.ScopeKind.LOCATIONS, "DC1")
        st, body = await get(c, "/api/fleet/gateways/store-1")
        assert st == 403 and body["error"] == (
            "user 'viewer-user' is bound to DC1 (served by no location);"
            " gateway 'store-1' is not one of its own"
        )
        assert (await get(c, "/api/fleet/gateways/store-1/devices/ht-1"))[0] == 403
        assert (await get(c, "/api/fleet/gateways"))[1]["items"] == []
        assert (await get(c, "/api/fleet/alerts"))[1]["alerts"] == []
        await scope(auth.ScopeKind.LOCATIONS, "STORE1")
        assert [g["gateway"] for g in (await get(c, "/api/fleet/gateways"))[1]["items"]] == ["store-1"]
        assert (await get(c, "/api/fleet/gateways/store-1"))[0] == 200
        assert len((await get(c, "/api/fleet/alerts"))[1]["alerts"]) == 2
        await scope(auth.ScopeKind.SUPPLIER, "SUP1")
        st, body = await get(c, "/api/fleet/gateways")
        assert st == 403 and "gateways are visible only to all-scope users" in body["error"]
        assert (await get(c, "/api/fleet/alerts"))[1]["alerts"] == []

        for path in (
            "/api/fleet/gateways",
            "/api/fleet/gateways/store-1",
            "/api/fleet/gateways/store-1/devices/ht-1",
            "/api/fleet/alerts",
            "/fleet/gateway?gw=store-1",
        ):
            async with c.client.get(path) as r:
                assert r.status == 401, path


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
async def test_overview_search_gateway_page_device_page_in_chromium(tmp_path: Path) -> None:
    assert CHROMIUM, "Debian's chromium is needed for this test (./run test installs it)"
    db = central_db(tmp_path / "central.db")
    await db.open()
    try:
        await db.write(lambda conn: auth.add_user(conn, "viewer", auth.Role.VIEWER, password="pw"))
        now = int(time.time() * 1000)
        await db.write(lambda conn: seed_fleet(conn, now))
        evil = '<img src=x onerror="document.body.dataset.pwned=1">'

        def store(conn: sqlite3.Connection) -> None:
            devs = [
                {"id": "ht-9", "kind": "handheld", "state": "online", "battery": 64, "firmware": "3.0",
                 "last_seen_ms": now - 2000, "last_error": evil},
                {"id": "sc-9", "kind": "serial-scanner", "state": "offline", "firmware": "1.0"},
            ]  # fmt: skip
            for k in range(30):
                doc = status("store-9", backlog=(k * 7) % 40, oldest_age_s=float(k % 12), devices=devs)
                doc["site"] = "S900"
                apply_status(conn, "store-9", doc, now - (30 - k) * 100_000)
            evaluate_alerts(conn, now, TH, _Counters())
            good = Record("o-1", 1, "order", now, order())
            bad = Record("o-2", 2, "order", now, {"customer": evil})
            apply_envelope(
                conn,
                topic_gw="store-9",
                topic=topics.uplink("store-9"),
                env=Envelope(gw="store-9", sent=0, records=(good, bad)),
            )

        await db.write(store)
        await _browse(db, evil, tmp_path)
    finally:
        await db.close()


async def _browse(db: DurableDB, evil: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    app = create_app(db=db)
    dashboard.add_routes(app, fleet=Fleet(db, TH), db=db)
    fleet_api.add_routes(app, db=db, backlog_age_s=TH.backlog_age_s)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )  # fmt: skip
            try:
                context = await browser.new_context(
                    http_credentials={"username": "viewer", "password": "pw"},
                    viewport={"width": 1280, "height": 900},
                )
                page = await context.new_page()
                await page.goto(url + "/")
                await page.wait_for_selector("#fleet [data-gateway]", timeout=15_000)
                assert await page.inner_text("#s-gateways") == str(N + 1)
                first = page.locator("#fleet [data-gateway]").first
                assert await first.get_attribute("data-problem") == "disk_full"  # problems on top
                assert await page.locator("#fleet [data-gateway]").count() == 50  # a page, not 1,001 cards
                over = Path(os.environ.get("STOREGATE_FLEET_OVERVIEW_SCREENSHOT", tmp_path / "overview.png"))
                await page.screenshot(path=str(over))
                await page.fill("#search", "store-9")
                await page.wait_for_selector('#fleet [data-gateway="store-9"]', timeout=10_000)
                await page.wait_for_function("document.body.dataset.listTotal === '1'", timeout=10_000)
                chip = page.locator(
                    '#fleet [data-gateway="store-9"] [data-device="sc-9"][data-state="offline"]'
                )
                assert await chip.count() == 1
                await page.click('#fleet [data-gateway="store-9"] a.name')
                await page.wait_for_selector("body[data-loaded='1'][data-gateway='store-9']", timeout=10_000)
                assert "/fleet/gateway?gw=store-9" in page.url
                assert await page.inner_text("#link-state") == "ONLINE"
                assert await page.inner_text("#n-rejected") == "1"
                assert await page.inner_text("#n-quarantined") == "1"
                assert await page.locator('#records [data-record="o-2"][data-status="rejected"]').count() == 1
                assert await page.locator("#backlog-chart polyline").count() == 1
                assert evil in await page.inner_text("#devices")  # shown as text, not run
                assert await page.evaluate("document.body.dataset.pwned") is None
                shot = Path(os.environ.get("STOREGATE_FLEET_SCREENSHOT", tmp_path / "fleet-gateway.png"))
                await page.screenshot(path=str(shot), full_page=True)
                assert await asyncio.to_thread(os.path.getsize, shot) > 10_000
                await page.click('#devices [data-device="ht-9"] a')
                await page.wait_for_selector("body[data-loaded='1'][data-device='ht-9']", timeout=10_000)
                assert await page.inner_text("#device-state") == "ONLINE"
                text = await page.inner_text("#status")
                assert "64 %" in text and "3.0" in text and "S900" in text
                assert await page.evaluate("document.body.dataset.pwned") is None
                await page.goto(url + "/fleet/alerts?gateway=store-9&state=open")
                await page.wait_for_selector("body[data-loaded='1']", timeout=10_000)
                rows = page.locator("#alerts tbody tr")
                assert await rows.count() == 1
                assert await rows.first.get_attribute("data-alert") == "device_offline"
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
