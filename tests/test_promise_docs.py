"""``central/PROMISE.md``'s REST examples sent, in order, to the real aiohttp app on a real
SQLite file (opened as central opens it, real-time allocation wired): each answer's status
and every JSON field shown must be what central answers. The page's dates stand for today
(``2026-12-05``) and the days after it; they are moved to the real today before sending."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from tests.procs import ROOT
from tests.promise_fixtures import load, promise_central
from tests.test_orders_docs import _http_block, _shown_fields

DOC = ROOT / "central" / "PROMISE.md"
BLOCK = re.compile(r"```http (request|answer)\n(.*?)```", re.S)
DOC_TODAY = dt.date(2026, 12, 5)
DOC_DATE = re.compile(r"2026-12-(\d\d)")


def _dated(text: str, today: dt.date) -> str:
    """The page's dates moved so that 2026-12-05 is ``today``."""
    return DOC_DATE.sub(
        lambda m: (today + dt.timedelta(days=int(m.group(1)) - DOC_TODAY.day)).isoformat(), text
    )


async def test_documented_promise_examples(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 40 and [k for k, _ in blocks] == ["request", "answer"] * (len(blocks) // 2)
    async with promise_central(tmp_path) as c:
        await load(c)
        today = dt.datetime.now(dt.UTC).date()
        for (_, req), (_, ans) in zip(blocks[::2], blocks[1::2], strict=True):
            line, headers, body = _http_block(_dated(req, today))
            method, path, _ = line.split()
            async with c.client.request(
                method, path, data=body.encode() or None, headers={**headers, **c.h("supervisor")}
            ) as r:
                got = await r.json()
            status_line, _, want_body = _http_block(_dated(ans, today))
            assert r.status == int(status_line.split()[1]), (req, got)
            assert _shown_fields(json.loads(want_body), got) == [], (req, got)
