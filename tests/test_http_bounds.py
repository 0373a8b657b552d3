"""Every HTTP input is bounded: a body or a path no view can turn into a bare 500.

Against the real aiohttp apps (a gateway's order entry and POS routes, central's REST API
with its allocation and release routes) on real SQLite files: a 5,000-digit quantity, JSON
nested 50,000 deep, ``NaN``, ``1e309``, an integer past 64 bits, a non-object, a body over the
limit - each is answered 4xx with a JSON ``{"error": reason}``, and a sweep over every route
with such bodies and such path parameters finds no answer of 500 or more."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from central.migrations import all_migrations
from central.web import allocation_api, auth, release_api
from central.web.api import create_app as central_app
from protocols.bounded import MAX_REASON
from runtime.sqlitedb import DurableDB
from tests.test_pos import gateway as pos_gateway

auth.PBKDF2_ITERATIONS = 1_000

ORDER = '{"customer": "S001", "requested_date": "2026-12-01", "lines": [{"sku": "MILK", "qty": %s}]}'
HUGE_QTY = ORDER % ("9" * 5_000)
DEEP = "[" * 50_000 + "]" * 50_000
DEEP_OBJECT = '{"a":' * 40_000 + "1" + "}" * 40_000  # 240 kB: within the gateway's body limit

# name -> (body, what its error names)
POISON_BODIES: dict[str, tuple[str, str]] = {
    "5000-digit-qty": (HUGE_QTY, "5000 digits"),
    "50k-deep-array": (DEEP, "nested too deeply"),
    "40k-deep-object": (DEEP_OBJECT, "nested too deeply"),
    "NaN-qty": (ORDER % "NaN", "NaN"),
    "1e309-qty": (ORDER % "1e309", "1e309"),
    "-Infinity-qty": (ORDER % "-Infinity", "Infinity"),
    "2**64-qty": (ORDER % "18446744073709551616", "out of range"),
    "an-array": ("[1, 2]", "expected a JSON object"),
    "unterminated": ('"\\ud800', "not JSON"),
    "truncated": ("{", "not JSON"),
}


@asynccontextmanager
async def central(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str]]]:
    db = DurableDB(tmp_path / "central.db", migrations=all_migrations())
    await db.open()
    try:
        token = await db.write(lambda c: auth.add_user(c, "desk", auth.Role.SUPERVISOR))
        app = central_app(db=db)
        allocation_api.add_routes(app)
        release_api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield client, {"Authorization": f"Bearer {token}"}
    finally:
        await db.close()


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str]]]:
    async with pos_gateway(tmp_path / "gw.db", store_id="store-001") as gw:
        yield gw.client, {}


APPS = {"central": central, "gateway": gateway}


async def _answer(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, Any]:
    hdrs = {**headers, "Content-Type": "application/json"} if body is not None else headers
    data = io.BytesIO(body) if body is not None and len(body) > 1024 * 1024 else body  # aiohttp asks for it
    async with client.request(method, path, data=data, headers=hdrs) as r:
        text = await r.text()
        if r.status >= 500:
            pytest.fail(f"{method} {path} answered {r.status}: {text[:300]}")
        if r.content_type != "application/json":
            return r.status, text
        return r.status, await r.json()


@pytest.mark.parametrize("app", sorted(APPS))
@pytest.mark.parametrize("name", list(POISON_BODIES))
async def test_poison_order_bodies_get_a_json_400(app: str, name: str, tmp_path: Path) -> None:
    body, names = POISON_BODIES[name]
    async with APPS[app](tmp_path) as (client, headers):
        status, answer = await _answer(client, "POST", "/api/orders", headers, body.encode())
    assert status == 400, answer
    assert names in answer["error"], answer
    assert len(answer["error"]) <= MAX_REASON + len("body: ")


@pytest.mark.parametrize("app", sorted(APPS))
async def test_a_body_over_the_limit_gets_a_json_413(app: str, tmp_path: Path) -> None:
    body = ORDER % "1" + " " * 2 * 1024 * 1024  # over the gateway's limit and central's
    async with APPS[app](tmp_path) as (client, headers):
        status, answer = await _answer(client, "POST", "/api/orders", headers, body.encode())
    assert status == 413 and "larger than" in answer["error"], answer


async def test_pos_bodies_are_bounded_the_same_way(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (client, headers):
        for body, names in POISON_BODIES.values():
            for path in ("/api/pos/transactions", "/api/receipts", "/api/stock/SKU-PEN"):
                method = "PUT" if path.startswith("/api/stock") else "POST"
                status, answer = await _answer(client, method, path, headers, body.encode())
                assert status == 400 and answer["field"] == "body", (path, answer)
                assert names in answer["reason"] or names == "expected a JSON object", (path, answer)


# -- the sweep ------------------------------------------------------------------------------------

PATH_VALUES = ["9" * 5_000, "9" * 25, "-1", "\u00b2", "%00", "x" * 2_000]
SWEEP_BODIES = [HUGE_QTY, DEEP, ORDER % "NaN", '{"qty": 1e309}', '{"x": 18446744073709551616}', "[]"]


def _routes(app: web.Application) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD" and path.startswith("/api/"):
            out.append((route.method, path))
    return sorted(set(out))


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


@pytest.mark.parametrize("app", sorted(APPS))
async def test_no_route_answers_500_to_a_hostile_path_or_body(app: str, tmp_path: Path) -> None:
    async with APPS[app](tmp_path) as (client, headers):
        routes = _routes(client.server.app)
        assert len(routes) > 5, routes
        for method, template in routes:
            for value in PATH_VALUES:
                path = _fill(template, value)
                await _answer(client, method, path, headers, None)
                if method in ("POST", "PUT"):
                    for body in SWEEP_BODIES:
                        await _answer(client, method, path, headers, body.encode())
