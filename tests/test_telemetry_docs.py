"""``ops/TELEMETRY.md`` names exactly the fields a gateway's retained status carries: read from
a real gateway process through a real Mosquitto, online and, after a SIGKILL, its Last Will."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.telemetry import DeviceState
from ops.broker import Mosquitto
from protocols import topics
from tests.procs import ROOT, gateway_proc

DOC = ROOT / "ops" / "TELEMETRY.md"
STATUS_TIMEOUT_S = 30.0


def documented(section: str) -> dict[str, list[str]]:
    """The first table under ``section``: field -> its other cells."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{section}\n")
    end = text.find("\n#", start + len(section) + 2)
    body = text[start : end if end > 0 else len(text)]
    rows = {}
    for line in body.splitlines():
        m = re.match(r"^\| `([a-z_]+)` \|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]  # not at \|
    assert rows, f"no field table under {section!r} in {DOC.name}"
    return rows


async def next_status(messages: Any, state: str) -> dict[str, Any]:
    async for msg in messages:
        doc: dict[str, Any] = json.loads(bytes(msg.payload))
        if doc.get("state") == state and (state == "offline" or "acked_below" in doc):
            return doc
    raise AssertionError("the status subscription ended")


@pytest.mark.slow
async def test_documented_status_fields_are_the_fields_sent(broker: Mosquitto, tmp_path: Path) -> None:
    fields = documented("## Status fields")
    gw = gateway_proc(tmp_path, broker.port, "store-tel")
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="telemetry-doc-test") as client:
        await client.subscribe(topics.status("store-tel"), qos=1)
        await asyncio.to_thread(gw.start)
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                online = await next_status(client.messages, "online")
            assert set(online) == set(fields), "ops/TELEMETRY.md 'Status fields' vs the status sent"
            assert set(online["storage"]) == set(documented("### `storage`"))
            assert online["devices"] == []  # no devices configured: the device fields come below
            assert online["gw"] == "store-tel" and online["site"] == "S001"
            assert online["storage"]["state"] == "ok" and isinstance(online["acked_below"], int)
        finally:
            gw.kill()
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            offline = await next_status(client.messages, "offline")  # the Last Will
    will_fields = {name for name, cells in fields.items() if cells[1] == "yes"}
    assert set(offline) == will_fields == {"gw", "state", "ts"}


def test_documented_device_fields_are_the_fields_sent() -> None:
    """A self-reporting device's fields (``DeviceState.to_wire``; the adapters' counters in
    ``gateway/devices.py`` send the same keys) are the page's ``devices[]`` table."""
    sent = DeviceState(id="till-1", kind="pos").to_wire()
    assert set(sent) == set(documented("### `devices[]`"))


@pytest.mark.slow
async def test_a_cleanly_stopped_gateway_says_offline(broker: Mosquitto, tmp_path: Path) -> None:
    """SIGTERM is a clean stop: the broker sends no Last Will for a clean DISCONNECT, so the
    gateway itself sets its retained status to ``offline`` on the way out (it stayed ``online``,
    its ``ts`` frozen, and central raised no offline alert)."""
    gw = gateway_proc(tmp_path, broker.port, "store-stop")
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="telemetry-stop-test") as client:
        await client.subscribe(topics.status("store-stop"), qos=1)
        await asyncio.to_thread(gw.start)
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                await next_status(client.messages, "online")
        finally:
            await asyncio.to_thread(gw.stop)  # SIGTERM, waits for the exit
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="telemetry-stop-test-2") as client:
        await client.subscribe(topics.status("store-stop"), qos=1)
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            retained = await anext(aiter(client.messages))
    assert json.loads(bytes(retained.payload))["state"] == "offline"  # type: ignore[arg-type]
