"""The examples in protocols/WIRE.md decode to what the page says they are."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgpack
import pytest

from protocols import envelope
from protocols.records import parse_order

DOC = Path(__file__).resolve().parent.parent / "protocols" / "WIRE.md"
BLOCK = re.compile(r"```(hex|json) example=([\w-]+)\n(.*?)```", re.S)


def examples() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for kind, name, text in BLOCK.findall(DOC.read_text()):
        out.setdefault(name, {})[kind] = text
    return out


@pytest.mark.parametrize("name", sorted(examples()))
def test_doc_example_decodes_to_its_json(name: str) -> None:
    ex = examples()[name]
    payload = bytes.fromhex("".join(ex["hex"].split()))
    expected = json.loads(ex["json"])
    assert msgpack.unpackb(payload, raw=False) == expected
    env = envelope.decode(payload)  # strict decoder accepts it
    assert env.gw == expected["gw"] and not env.bad_records
    for rec in env.records:
        if rec.type == "order":
            parse_order(rec.body)


def test_doc_has_examples_for_both_directions() -> None:
    assert {"uplink-order", "downlink-acks"} <= set(examples())


def test_every_record_type_handled_by_central_is_documented() -> None:
    from central import wiring

    text = DOC.read_text()
    for rtype in wiring.hub().handlers:
        documented = f"### `{rtype}`" in text or any(
            f"### `{rtype}`" in p.read_text() for p in DOC.parent.parent.glob("*/*.md")
        )
        assert documented, f"record type {rtype!r} is not documented in any *.md"
