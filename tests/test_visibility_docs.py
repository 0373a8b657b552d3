"""``central/VISIBILITY.md``'s REST examples sent, in order, to central's real aiohttp app on a
real SQLite file (set up as ``tests/test_visibility.py`` does), each as the user its
``Authorization`` line names: each answer's status and every JSON field shown must be what
central answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.central_fixtures import SOON
from tests.procs import ROOT
from tests.test_orders_docs import BLOCK, DOC_DATE, _http_block, _shown_fields
from tests.test_visibility import running

DOC = ROOT / "central" / "VISIBILITY.md"
TOKEN = re.compile(r"TOKEN-of-(\S+)")


async def test_documented_visibility_and_availability_examples(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 36 and [k for k, _ in blocks] == ["request", "answer"] * (len(blocks) // 2)
    async with running(tmp_path) as app:
        for (_, shown), (_, ans) in zip(blocks[::2], blocks[1::2], strict=True):
            req = TOKEN.sub(lambda m: app.tokens[m.group(1)], shown.replace(DOC_DATE, SOON))
            line, headers, body = _http_block(req)
            method, path, _ = line.split()
            async with app.client.request(method, path, data=body.encode() or None, headers=headers) as r:
                got = await r.json()
                status_line, _, want_body = _http_block(ans)
                assert r.status == int(status_line.split()[1]), (req, got)
            assert _shown_fields(json.loads(want_body), got) == [], (req, got)
