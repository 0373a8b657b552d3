"""The dashboard's live stream (``GET /api/stream``, Server-Sent Events) against the real aiohttp
app and a real SQLite file: a browser that closes its tab mid-stream ends the handler quietly.

The app runs under ``web.AppRunner`` as ``central.app.serve`` runs it, not under aiohttp's
``TestServer``: that one cancels a handler whose client went away (``handler_cancellation=True``),
which hides what central really does - keep writing until the write fails.
"""

from __future__ import annotations

import logging

import pytest
from aiohttp import ClientSession, web

from central.fleet import Fleet
from central.migrations import central_db
from central.web import auth, dashboard
from central.web.api import create_app
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
