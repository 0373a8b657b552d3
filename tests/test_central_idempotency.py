"""Central's own ``POST /api/orders`` with an ``Idempotency-Key`` follows the same draft rules as
a gateway's (``central/web/idempotency.py``, ``central/ORDERS.md``): the same order again -> the
first answer with ``Idempotent-Replayed: true``; another order under the key -> 422; a malformed
key -> 400. Against the real aiohttp app and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from central.orders.lifecycle import now_ms
from central.web import idempotency
from tests.central_fixtures import Central, central, order


async def post(c: Central, body: Any, *keys: str) -> tuple[int, dict[str, Any], str | None]:
    """POST /api/orders with the raw body (a dict is sent as JSON) and each key as its own
    ``Idempotency-Key`` header field; returns status, JSON body and ``Idempotent-Replayed``."""
    headers = [(k, v) for k, v in c.h("order_desk").items()]
    headers += [("Content-Type", "application/json"), *(("Idempotency-Key", k) for k in keys)]
    data = body if isinstance(body, str) else json.dumps(body)
    async with c.client.post("/api/orders", data=data, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Idempotent-Replayed")


async def test_same_key_same_order_replays_the_first_answer(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st1, first, rep1 = await post(c, order(note="rush"), '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
        assert (st1, rep1) == (201, None)
        # the order changes after its answer: a replay still says what the first answer said
        st, _ = await c.req("POST", f"/api/orders/{first['order_no']}/cancel", "order_desk", json={})
        assert st == 200
        # same order, other spacing and key order, the key bare instead of an sf-string
        same = json.dumps(dict(reversed(order(note="rush").items())), indent=2)
        st2, again, rep2 = await post(c, same, "8e03978e-40d5-43e8-bc93-6894a57f9324")
        assert (st2, rep2) == (201, "true")
        assert again == first and again["status"] != "cancelled"
        assert await c.count("orders") == 1


async def test_same_key_another_order_is_422_and_stores_nothing(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st1, first, _ = await post(c, order(), "k-1")
        assert st1 == 201
        other = order(lines=[{"sku": "MILK", "qty": 24}])
        st2, body, rep = await post(c, other, "k-1")
        assert (st2, rep) == (422, None)
        assert body == {
            "error": f"Idempotency-Key 'k-1' was already used for another order ({first['order_no']})"
        }
        assert await c.count("orders") == 1
        # the first order is still what the key answers
        st3, again, rep3 = await post(c, order(), "k-1")
        assert (st3, again, rep3) == (201, first, "true")


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (['"unterminated'], 'expected a quoted string ("...") or a bare key of visible ASCII characters'),
        (["two words"], 'expected a quoted string ("...") or a bare key of visible ASCII characters'),
        (['""'], "1..128 characters, got 0"),
        (["x" * 129], "1..128 characters, got 129"),
        (["a", "b"], "more than one header field"),
    ],
)
async def test_malformed_key_is_400_with_reason(
    tmp_path: Path, central_backend: str, keys: list[str], reason: str
) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st, body, _ = await post(c, order(), *keys)
        assert (st, body) == (400, {"error": f"Idempotency-Key: {reason}"})
        assert await c.count("orders") == 0


async def test_a_128_character_key_is_taken(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        key = "k" * 128  # main refused keys over 64 characters; the gateway takes 128
        st1, first, _ = await post(c, order(), key)
        st2, again, rep = await post(c, order(), f'"{key}"')
        assert (st1, st2, rep) == (201, 201, "true") and again == first


async def test_a_refused_order_is_not_remembered(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st1, body, _ = await post(c, order(lines=[{"sku": "NOPE", "qty": 1}]), "k-fix")
        assert st1 == 422 and "NOPE" in body["error"]
        st2, created, rep = await post(c, order(), "k-fix")  # corrected and sent again
        assert (st2, rep, created["status"]) == (201, None, "validated")
        assert await c.count("orders") == 1 and await c.count("idempotency") == 1


async def test_concurrent_requests_with_one_key_make_one_order(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        answers = await asyncio.gather(*(post(c, order(), "k-race") for _ in range(8)))
        assert sorted(st for st, _, _ in answers) == [201] * 8
        assert len({json.dumps(b, sort_keys=True) for _, b, _ in answers}) == 1
        assert sorted(rep or "" for _, _, rep in answers) == [""] + ["true"] * 7
        assert await c.count("orders") == 1


async def test_key_whose_row_expired_cannot_make_a_second_order(tmp_path: Path, central_backend: str) -> None:
    async with central(tmp_path, target=central_backend) as c:
        await c.load_masters()
        st1, first, _ = await post(c, order(), "k-old")
        assert st1 == 201
        old = now_ms() - idempotency.KEEP_S * 1000 - 1
        await c.db.write(lambda conn: conn.execute("UPDATE idempotency SET created_at = ?", (old,)))
        st2, _, _ = await post(c, order(customer="S003"), "k-new")  # prunes the expired row
        assert st2 == 201
        assert await c.db.read(lambda conn: conn.execute("SELECT key FROM idempotency").fetchall()) == [
            ("k-new",)
        ]
        st3, body, rep = await post(c, order(), "k-old")
        assert (st3, rep) == (422, None)
        assert body["error"].startswith(f"Idempotency-Key 'k-old' made order {first['order_no']}")
        assert await c.count("orders") == 2
