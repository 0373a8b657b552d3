"""Fleet monitoring: gateway status and Last Will into the registry, alerts by threshold,
Prometheus metrics, and the live dashboard in a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from central import fleet
from central.fleet import AlertThresholds, _Counters, apply_status, evaluate_alerts
from central.migrations import all_migrations
from ops.broker import Mosquitto
from runtime.dbapi import is_postgres_url
from tests.conftest import wait_for
from tests.db_conn import open_conn
from tests.procs import VIEWER, basic_auth, central_proc, gateway_proc


def db(target: str) -> sqlite3.Connection:
    conn: sqlite3.Connection = open_conn(target, all_migrations(), synchronous="NORMAL")
    return conn


def status(gw: str, state: str = "online", **kw: object) -> dict[str, object]:
    return {"gw": gw, "state": state, "ts": 0, "site": "S001", "backlog": 0, "oldest_age_s": 0, **kw}


def open_alerts(conn: sqlite3.Connection) -> set[str]:
    return {k for (k,) in conn.execute("SELECT kind FROM alerts WHERE closed_ms IS NULL")}


def test_status_builds_sites_gateways_devices_with_history(central_backend: str) -> None:
    conn = db(central_backend)
    dev = {"id": "ht-1", "kind": "handheld", "state": "online", "battery": 80, "firmware": "2.1", "naks": 1}
    apply_status(conn, "store-1", status("store-1", backlog=12, oldest_age_s=3.5, devices=[dev]), now=1000)
    apply_status(conn, "store-1", status("store-1", "offline"), now=2000)
    snap = fleet.snapshot(conn)
    (gw,) = snap["sites"]["S001"]
    assert gw["gateway"] == "store-1" and gw["state"] == "offline" and gw["backlog"] == 12
    assert gw["devices"][0]["battery"] == 80 and gw["devices"][0]["firmware"] == "2.1"
    events = [e for (e,) in conn.execute("SELECT event FROM fleet_events ORDER BY id")]
    assert events == ["gateway online", "device online", "gateway offline"]


def test_alerts_open_and_close_by_threshold(central_backend: str) -> None:
    conn = db(central_backend)
    th = AlertThresholds(gateway_offline_s=60, backlog_age_s=100, naks_per_window=3, battery_low_pct=20)
    last = _Counters()
    dev = {"id": "sc-1", "kind": "serial-scanner", "state": "online", "naks": 0, "errors": 0, "battery": 50}
    apply_status(conn, "store-1", status("store-1", devices=[dev]), now=0)
    evaluate_alerts(conn, 0, th, last)
    assert open_alerts(conn) == set()
    # backlog growing old, a scanner NAKing, its battery low
    dev2 = {**dev, "naks": 4, "battery": 15}
    apply_status(conn, "store-1", status("store-1", oldest_age_s=150, devices=[dev2]), now=10_000)
    evaluate_alerts(conn, 10_000, th, last)
    assert open_alerts(conn) == {"backlog_age", "device_errors", "battery_low"}
    # goes offline: not an alert until the threshold passes
    apply_status(conn, "store-1", status("store-1", "offline"), now=20_000)
    evaluate_alerts(conn, 50_000, th, last)
    assert "gateway_offline" not in open_alerts(conn)
    evaluate_alerts(conn, 81_000, th, last)
    assert "gateway_offline" in open_alerts(conn)
    # back, healthy: everything closes, history kept
    dev3 = {**dev2, "battery": 90}
    apply_status(conn, "store-1", status("store-1", devices=[dev3]), now=90_000)
    evaluate_alerts(conn, 90_000, th, last)
    assert open_alerts(conn) == set()
    assert conn.execute("SELECT count(*) FROM alerts WHERE closed_ms IS NOT NULL").fetchone()[0] == 4


def test_bad_status_payloads_are_refused_with_reason() -> None:
    for payload, reason in [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({"gw": "other", "state": "online"}).encode(), "names gateway"),
        (json.dumps({"gw": "store-1", "state": "sleepy"}).encode(), "not online/offline"),
    ]:
        with pytest.raises(fleet.StatusError, match=reason):
            fleet.parse_status("store-1", payload)


def get_json(url: str) -> object:
    with urllib.request.urlopen(urllib.request.Request(url, headers=basic_auth()), timeout=5) as r:
        return json.loads(r.read())


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def gateway_state(central_url: str, gw: str) -> str | None:
    snap = get_json(f"{central_url}/api/fleet")
    assert isinstance(snap, dict)
    for gws in snap["sites"].values():
        for g in gws:
            if g["gateway"] == gw:
                return str(g["state"])
    return None


@pytest.mark.slow
async def test_killed_gateway_turns_offline_and_metrics_are_served(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    url = central_backend if is_postgres_url(central_backend) else None
    central = central_proc(tmp_path, broker.port, db_url=url)
    gw = gateway_proc(tmp_path, broker.port, "store-7")
    await asyncio.to_thread(central.start)
    try:
        await asyncio.to_thread(gw.start)
        await wait_for(lambda: gateway_state(central.url, "store-7") == "online", timeout=10, what="online")
        gw_metrics = await asyncio.to_thread(fetch_text, f"{gw.url}/metrics")
        assert (
            "storegate_gateway_backlog " in gw_metrics and "storegate_gateway_records_in_total" in gw_metrics
        )
        gw.kill()
        await wait_for(lambda: gateway_state(central.url, "store-7") == "offline", timeout=5, what="offline")
        c_metrics = await asyncio.to_thread(fetch_text, f"{central.url}/metrics")
        assert "storegate_central_messages_total" in c_metrics
        assert 'storegate_central_acks_total{status="accepted"}' in c_metrics
        for name in ("processed_records_total", "processing_jobs_total", "processing_seconds_total"):
            assert f"storegate_central_{name} " in c_metrics
    finally:
        gw.kill()
        central.kill()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
async def test_dashboard_in_chromium_shows_killed_gateway_offline(broker: Mosquitto, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM, "Debian's chromium is needed for this test (./run test installs it)"

    central = central_proc(tmp_path, broker.port)
    gw = gateway_proc(tmp_path, broker.port, "store-8")
    await asyncio.to_thread(central.start)
    await asyncio.to_thread(gw.start)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            try:
                context = await browser.new_context(
                    http_credentials={"username": VIEWER[0], "password": VIEWER[1]}
                )
                page = await context.new_page()
                await page.goto(central.url + "/")
                card = page.locator('[data-gateway="store-8"]')
                await card.wait_for(timeout=10_000)
                await page.wait_for_selector('[data-gateway="store-8"][data-state="online"]', timeout=10_000)
                assert "ONLINE" in await card.inner_text()
                gw.kill()
                await page.wait_for_selector('[data-gateway="store-8"][data-state="offline"]', timeout=5_000)
                assert "OFFLINE" in await card.inner_text()
                shot = Path(os.environ.get("STOREGATE_SCREENSHOT", tmp_path / "dashboard.png"))
                await page.screenshot(path=str(shot), full_page=True)
                assert await asyncio.to_thread(os.path.getsize, shot) > 10_000
            finally:
                await browser.close()
    finally:
        gw.kill()
        central.kill()


@pytest.mark.slow
async def test_dashboard_and_fleet_api_need_a_viewer(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    url = central_backend if is_postgres_url(central_backend) else None
    central = central_proc(tmp_path, broker.port, db_url=url)
    await asyncio.to_thread(central.start)
    try:
        for path in ("/", "/api/fleet", "/api/alerts", "/api/stream"):
            with pytest.raises(urllib.error.HTTPError) as ei:
                await asyncio.to_thread(fetch_text, central.url + path)
            assert ei.value.code == 401
            assert ei.value.headers["WWW-Authenticate"].startswith("Basic")
            ei.value.close()
        snap = await asyncio.to_thread(get_json, f"{central.url}/api/fleet")
        assert isinstance(snap, dict) and "sites" in snap
    finally:
        central.kill()


def test_pruning_the_history_finds_old_samples_by_index(tmp_path: Path) -> None:
    """At 1,000 gateways ``fleet_samples`` grows 200 rows a second; the prune every 2 s must
    not scan it (it took 0.5 s per prune after 6 hours, the whole writer by a day). SQLite's
    plan is read here; PostgreSQL gets the same index from the same migration."""
    conn = db(str(tmp_path / "central.db"))
    plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + fleet.PRUNE_SAMPLES, (0,)))
    assert "USING INDEX fleet_samples_at" in plan, plan
