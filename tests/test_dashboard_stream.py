"""The dashboard's live stream (``GET /api/stream``, Server-Sent Events) against the real aiohttp
app and a real SQLite file: a browser that closes its tab mid-stream ends the handler quietly.

The app runs under ``web.AppRunner`` as ``central.app.serve`` runs it, not under aiohttp's
``TestServer``: that one cancels a handler whose client went away (``handler_cancellation=True``),
which hides what central really does - keep writing until the write fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientSession, web

from central.allocate.availability import ALERT_KIND
from central.fleet import Fleet
from central.migrations import central_db
from central.web import auth, dashboard
from central.web.api import create_app
from runtime.metrics import add_metrics
from tests.conftest import wait_for

auth.PBKDF2_ITERATIONS = 1_000  # fast tests; the stored hash names its own count


async def test_client_closing_the_stream_leaves_no_traceback(
    central_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "HEARTBEAT_S", 0.05)  # the next write comes soon after the close
    caplog.set_level(logging.DEBUG)
    db = central_db(central_backend)
    await db.open()
    try:
        token = await db.write(lambda c: auth.add_user(c, "viewer", auth.Role.VIEWER))
        app = create_app(db=db)
        dashboard.add_routes(app, fleet=Fleet(db), db=db)
        runner = web.AppRunner(app, access_log=None)  # as central.app.serve
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            await _close_three_tabs(f"http://{host}:{port}/api/stream", token, caplog)
        finally:
            await runner.cleanup()
    finally:
        await db.close()
    tracebacks = [
        f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
    ]
    assert tracebacks == []


async def _close_three_tabs(url: str, token: str, caplog: pytest.LogCaptureFixture) -> None:
    async with ClientSession() as client:
        for _tab in range(3):
            resp = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith(b"event: fleet\ndata: {")
            resp.close()  # the tab closes: the connection goes, mid-stream

        def handlers_ended() -> bool:
            ended = [r for r in caplog.records if r.name == "central.web.dashboard" and "closed" in r.message]
            failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
            return len(ended) == 3 or bool(failed)

        await wait_for(handlers_ended, what="the three stream handlers to notice the closed tabs")


def _status(gw: str, backlog: int) -> bytes:
    return json.dumps({"gw": gw, "state": "online", "site": "S1", "backlog": backlog}).encode()


def _seed_stock_alerts(conn: sqlite3.Connection) -> None:
    """Two of the availability monitor's stock alerts, one of supplier SUP-A's item."""
    conn.executemany(
        "INSERT INTO items (sku, description, supplier, price) VALUES (?, ?, ?, 100)",
        [("SKU-A", "a", "SUP-A"), ("SKU-B", "b", "SUP-B")],
    )
    conn.executemany(
        "INSERT INTO alerts (key, kind, gateway, device_id, severity, message, opened_ms)"
        " VALUES (?, ?, 'DC1', ?, 'warning', 'low', 1)",
        [(f"risk:{sku}", ALERT_KIND, sku) for sku in ("SKU-A", "SKU-B")],
    )


@contextlib.asynccontextmanager
async def _served(db: Any, fleet: Fleet) -> AsyncIterator[ClientSession]:
    """Central's app with the dashboard, its metrics as ``central.app.build_app`` adds them,
    served on a free loopback port under ``web.AppRunner``; a client of it."""
    app = create_app(db=db)
    dashboard.add_routes(app, fleet=fleet, db=db)
    add_metrics(app, app[dashboard.FEED_KEY].collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        async with ClientSession(f"http://{host}:{port}") as client:
            yield client
    finally:
        await runner.cleanup()


async def test_one_overview_per_change_shared_by_every_stream(
    central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five streams on one central: each change is computed once (central's metrics count it)
    and reaches every stream; a stream opened later gets the current overview at once, without a
    computation of its own; a supplier user's stream carries only its own items' stock alerts and
    no company-wide order figures; with no stream open nothing is computed."""
    monkeypatch.setattr(dashboard, "HEARTBEAT_S", 600.0)  # only changes make overviews here
    monkeypatch.setattr(dashboard, "MIN_INTERVAL_S", 0.01)
    monkeypatch.setattr(dashboard, "ORDERS_EVERY_S", 600.0)  # the order figures: read once
    db = central_db(central_backend)
    await db.open()
    try:
        token = await db.write(lambda c: auth.add_user(c, "viewer", auth.Role.VIEWER))
        supplier = await db.write(lambda c: auth.add_user(c, "sup-a", auth.Role.VIEWER))
        await db.write(_seed_stock_alerts)
        await db.write(lambda c: auth.set_scope(c, "sup-a", auth.Scope(auth.ScopeKind.SUPPLIER, ("SUP-A",))))
        fleet = Fleet(db)
        async with _served(db, fleet) as client:
            await _streams(client, fleet, token, supplier)
    finally:
        await db.close()


async def _streams(client: ClientSession, fleet: Fleet, token: str, supplier: str) -> None:
    async def metric(name: str) -> float:
        async with client.get("/metrics") as r:
            text = await r.text()
        (value,) = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
        return value

    async def open_stream(tok: str) -> ClientResponse:
        resp = await client.get("/api/stream", headers={"Authorization": f"Bearer {tok}"})
        assert resp.status == 200
        return resp

    async def event(resp: ClientResponse) -> dict[str, Any]:
        raw = await resp.content.readuntil(b"\n\n")
        assert raw.startswith(b"event: fleet\ndata: {")
        doc: dict[str, Any] = json.loads(raw.split(b"data: ", 1)[1])
        return doc

    streams = [await open_stream(token) for _ in range(5)]
    first = [await event(s) for s in streams]
    assert {e["version"] for e in first} == {fleet.version}
    assert await metric("storegate_central_dashboard_overviews_total") == 1
    assert await metric("storegate_central_dashboard_streams") == 5
    assert {a["device_id"] for a in first[0]["alerts"]} == {"SKU-A", "SKU-B"}
    as_of = first[0]["orders_as_of"]

    for n in range(1, 4):  # each change: once computed, seen by every stream
        await fleet.on_status("gw-1", _status("gw-1", n))
        seen = [await event(s) for s in streams]
        assert {e["version"] for e in seen} == {fleet.version}
        assert {e["summary"]["backlog"] for e in seen} == {n}
        assert {e["orders_as_of"] for e in seen} == {as_of}  # the order figures carried
        assert await metric("storegate_central_dashboard_overviews_total") == 1 + n
    assert await metric("storegate_central_dashboard_order_reads_total") == 1

    late = await open_stream(token)  # the current overview at once, nothing computed for it
    assert (await event(late))["version"] == fleet.version
    sup = await open_stream(supplier)
    scoped = await event(sup)
    assert scoped["version"] == fleet.version and scoped["summary"]["backlog"] == 3
    assert [a["device_id"] for a in scoped["alerts"]] == ["SKU-A"]
    assert scoped["fulfilment"]["withheld"] == "scope" and scoped["orders_per_minute"] == {}
    assert await metric("storegate_central_dashboard_overviews_total") == 4

    for s in [*streams, late, sup]:
        s.close()  # the tabs close: each handler notices at its next write (a change here)

    async def all_ended() -> bool:
        await fleet.bump()
        return await metric("storegate_central_dashboard_streams") == 0

    await wait_for(all_ended, what="the closed streams to end")
    computed = await metric("storegate_central_dashboard_overviews_total")
    await fleet.bump()  # no stream open: nothing computed
    await fleet.bump()
    again = await open_stream(token)
    assert (await event(again))["version"] == fleet.version
    assert await metric("storegate_central_dashboard_overviews_total") == computed + 1
    again.close()
    await wait_for(all_ended, what="the last stream to end")


async def test_a_store_user_sees_its_own_gateways_on_the_dashboard(central_backend: str) -> None:
    """A store user's dashboard (``/api/fleet``, ``/api/alerts``, the live stream): its own
    location's gateway, that gateway's alerts and backlog history - not another store's."""
    db = central_db(central_backend)
    await db.open()
    try:
        admin = await db.write(lambda c: auth.add_user(c, "viewer", auth.Role.VIEWER))
        store = await db.write(lambda c: auth.add_user(c, "s1", auth.Role.VIEWER))
        await db.write(
            lambda c: c.executemany(
                "INSERT INTO locations (code, kind, gateway) VALUES (?, 'store', ?)",
                [("S1", "gw-1"), ("S2", "gw-2")],
            )
        )
        await db.write(lambda c: auth.set_scope(c, "s1", auth.Scope(auth.ScopeKind.LOCATIONS, ("S1",))))
        fleet = Fleet(db)
        for gw in ("gw-1", "gw-2"):
            await fleet.on_status(gw, _status(gw, 5))
        await db.write(
            lambda c: c.executemany(
                "INSERT INTO alerts (key, kind, gateway, device_id, severity, message, opened_ms)"
                " VALUES (?, 'backlog', ?, NULL, 'warning', 'slow', 1)",
                [(f"backlog:{gw}", gw) for gw in ("gw-1", "gw-2")],
            )
        )
        async with _served(db, fleet) as client:

            async def get(path: str, tok: str) -> Any:
                async with client.get(path, headers={"Authorization": f"Bearer {tok}"}) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            def gateways(snap: dict[str, Any]) -> set[str]:
                return {g["gateway"] for gws in snap["sites"].values() for g in gws}

            assert gateways(await get("/api/fleet", admin)) == {"gw-1", "gw-2"}
            mine = await get("/api/fleet", store)
            assert gateways(mine) == {"gw-1"} and set(mine["history"]) <= {"gw-1"}
            assert {a["gateway"] for a in mine["alerts"]} == {"gw-1"}
            assert mine["fulfilment"]["withheld"] == "scope"
            assert {a["gateway"] for a in (await get("/api/alerts", admin))["alerts"]} == {"gw-1", "gw-2"}
            assert {a["gateway"] for a in (await get("/api/alerts", store))["alerts"]} == {"gw-1"}
            async with client.get("/api/stream", headers={"Authorization": f"Bearer {store}"}) as r:
                raw = await r.content.readuntil(b"\n\n")
            live = json.loads(raw.split(b"data: ", 1)[1])
            assert {a["gateway"] for a in live["alerts"]} == {"gw-1"}
            assert set(live["history"]) == {"gw-1"}
    finally:
        await db.close()
