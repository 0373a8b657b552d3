"""``central/PROCESS.md`` then ``central/PARTNERS.md``: their worked examples sent, in order, to
central's real app on a real SQLite file (``tests/process_fixtures.py``); each answer's status,
the headers shown and every JSON field shown must be what central answers. A
``<!-- test: release tick -->`` line runs central's release tick there; ``<ROLE token>`` and
``<CODE key>`` stand for the users' tokens and the partner keys the examples made. The history
table at the end of PARTNERS.md is checked row by row."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.central_fixtures import SOON
from tests.process_fixtures import process_central, release_tick
from tests.procs import ROOT
from tests.test_orders_docs import _http_block, _shown_fields

DOCS = (ROOT / "central" / "PROCESS.md", ROOT / "central" / "PARTNERS.md")
STEP = re.compile(r"```http (request|answer)\n(.*?)```|<!-- test: (release tick) -->", re.S)
DOC_DATE = "2026-12-08"
HISTORY_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \|$", re.M)


async def test_worked_examples(tmp_path: Path) -> None:
    texts = [d.read_text(encoding="utf-8") for d in DOCS]
    async with process_central(tmp_path) as c:
        keys: dict[str, str] = {}
        pending: str | None = None
        sent = 0
        for text in texts:
            for kind, block, tick in STEP.findall(text):
                if tick:
                    assert pending is None
                    await release_tick(c)
                    continue
                if kind == "request":
                    assert pending is None
                    pending = block
                    continue
                assert pending is not None, block
                req, pending = pending, None
                for role, token in c.tokens.items():
                    req = req.replace(f"<{role} token>", token)
                for code, key in keys.items():
                    req = req.replace(f"<{code} key>", key)
                line, headers, body = _http_block(req.replace(DOC_DATE, SOON))
                method, path, _ = line.split()
                async with c.client.request(method, path, data=body.encode() or None, headers=headers) as r:
                    got = await r.json()
                    status_line, want_headers, want_body = _http_block(block.replace(DOC_DATE, SOON))
                    assert r.status == int(status_line.split()[1]), (req, got)
                    for name, value in want_headers.items():
                        assert r.headers.get(name) == value, (req, name)
                    assert "Idempotent-Replayed" in want_headers or "Idempotent-Replayed" not in r.headers, (
                        req
                    )
                assert _shown_fields(json.loads(want_body), got) == [], (req, got)
                if path == "/api/partners" and r.status == 201:
                    keys[got["code"]] = got["key"]
                sent += 1
        assert pending is None and sent >= 20
        st, o = await c.req("GET", "/api/orders/SO00000002", "viewer")
        assert st == 200, o
        history = [(e["event"], e["detail"]) for e in o["events"] if e["actor"] == "partner:TPL1"]
        assert history == HISTORY_ROW.findall(texts[1].split("The order's history, from")[1])
