"""``central/ORDERS.md``'s REST examples (paging of ``GET /api/orders``, ``Idempotency-Key`` on
``POST /api/orders``) sent, in order, to the real aiohttp app on a real SQLite file: each
answer's status, the headers shown and every JSON field shown must be what central answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.central_fixtures import SOON, central
from tests.procs import ROOT

DOC = ROOT / "central" / "ORDERS.md"
BLOCK = re.compile(r"```http (request|answer)\n(.*?)```", re.S)
DOC_DATE = "2026-12-08"  # stands for a date two days ahead (the page says so)


def _http_block(text: str) -> tuple[str, dict[str, str], str]:
    head, _, body = text.partition("\n\n")
    first, *fields = head.splitlines()
    headers = {}
    for f in fields:
        name, _, value = f.partition(":")
        headers[name.strip()] = value.strip()
    return first, headers, body.strip()


def _shown_fields(want: Any, got: Any, where: str = "body") -> list[str]:
    """Where ``got`` differs from ``want`` in what ``want`` shows: every key of a shown object,
    every element of a shown list (same length), every scalar."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: {got!r} is not an object"]
        out = []
        for k, v in want.items():
            out += _shown_fields(v, got[k], f"{where}.{k}") if k in got else [f"{where}.{k}: missing"]
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r} is not a list of {len(want)}"]
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in _shown_fields(w, g, f"{where}[{i}]")
        ]
    return [] if want == got else [f"{where}: {got!r}, the page says {want!r}"]


async def test_documented_rest_examples(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert DOC_DATE in text
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 24 and [k for k, _ in blocks] == ["request", "answer"] * (len(blocks) // 2)
    async with central(tmp_path) as c:
        await c.load_masters()
        for (_, req), (_, ans) in zip(blocks[::2], blocks[1::2], strict=True):
            line, headers, body = _http_block(req.replace(DOC_DATE, SOON))
            method, path, _ = line.split()
            async with c.client.request(
                method, path, data=body.encode() or None, headers={**headers, **c.h("order_desk")}
            ) as r:
                got = await r.json()
                status_line, want_headers, want_body = _http_block(ans.replace(DOC_DATE, SOON))
                assert r.status == int(status_line.split()[1]), (req, got)
                for name, value in want_headers.items():
                    assert r.headers.get(name) == value, (req, name)
                assert "Idempotent-Replayed" in want_headers or "Idempotent-Replayed" not in r.headers, req
            assert _shown_fields(json.loads(want_body), got) == [], req
