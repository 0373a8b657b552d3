"""The examples in protocols/WIRE.md decode to what the page says they are."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    from central.ingest import HANDLERS

    text = DOC.read_text()
    for rtype in HANDLERS:
        documented = f"### `{rtype}`" in text or any(
            f"### `{rtype}`" in p.read_text() for p in DOC.parent.parent.glob("*/*.md")
        )
        assert documented, f"record type {rtype!r} is not documented in any *.md"


async def test_doc_acks_are_what_central_answers(tmp_path: Path) -> None:
    """The page's acks come from central's real receive path (``ingest.receive_uplink``, as the
    MQTT consumer calls it) on a real SQLite file: the order example acked ``accepted`` with
    ``ref`` null; once processed, the same record again plus an order of quantity 0 acked
    ``duplicate`` with the order number and ``rejected`` with the schema error."""
    from central import ingest
    from tests.central_fixtures import central

    ex = examples()

    def doc(name: str, key: str = "json") -> Any:
        return json.loads(ex[name][key])

    order_payload = bytes.fromhex("".join(ex["uplink-order"]["hex"].split()))
    first = envelope.decode(order_payload).records[0]
    bad_id = doc("downlink-acks-repeat")["acks"][1]["id"]
    bad_body = {**first.body, "lines": [{**first.body["lines"][0], "qty": 0}]}
    repeat_payload = envelope.encode(
        gw="store-001",
        sent=1795000031000,
        records=[first, envelope.Record(bad_id, first.seq + 1, "order", first.ts, bad_body)],
    )
    quick = ingest.quick_checks()

    async def acks_for(c: Any, payload: bytes) -> list[dict[str, Any]]:
        up = envelope.decode_uplink(payload, quick=quick)
        acks = await c.db.write(
            lambda conn: ingest.receive_uplink(
                conn, topic_gw="store-001", topic="sg/v1/gw/store-001/up", up=up
            )
        )
        return [{"id": a.id, "st": a.status.value, "reason": a.reason, "ref": a.ref} for a in acks]

    async with central(tmp_path) as c:
        await c.load_masters()  # customer S001 and the item of GTIN 04012345678901
        assert await acks_for(c, order_payload) == doc("downlink-acks")["acks"]
        await c.db.write(lambda conn: ingest.process_queue(conn, limit=None))
        assert await acks_for(c, repeat_payload) == doc("downlink-acks-repeat")["acks"]
