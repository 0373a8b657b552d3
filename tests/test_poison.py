"""Poison input against real processes: one small hostile record (a map nested 1,000 deep
where a GTIN or an SKU belongs, a 200 kB SKU, an envelope whose ``v`` is nested 1,000 deep, a
status document nested 50,000 deep) must be refused with a bounded reason and cost nothing
else: central (a real ``storegate central`` process on a real Mosquitto) stays up, applies the
valid records beside the poison exactly once, and answers a resend of the poison the same way;
a gateway answers a poisoned downlink record ``rejected`` so central stops resending it.

The peer is a raw MQTT client publishing where a (hostile or broken) gateway, or central,
would publish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack

from ops.broker import Mosquitto
from ops.mqtt import Client
from protocols import envelope, topics
from protocols.bounded import MAX_REASON
from protocols.envelope import Ack, AckStatus
from tests.conftest import wait_for
from tests.procs import Proc, central_db, central_proc, gateway_proc

GW = "store-p"
DEEP = 1_000  # containers nested: msgpack's own limit (1,024 for the whole message) still reads it


def nested(depth: int, leaf: object = "4006381333931") -> object:
    v = leaf
    for _ in range(depth):
        v = {"a": v}
    return v


def order(**line: object) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"qty": 2, **line}],
    }


def rec(rid: str, seq: int, body: dict[str, Any], rtype: str = "order") -> dict[str, Any]:
    return {"id": rid, "seq": seq, "type": rtype, "ts": 1_700_000_000_000, "body": body}


def packed(doc: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(doc, use_bin_type=True)
    return data


class Peer:
    """A raw MQTT 5 client: publishes on one topic, collects the acks arriving on another."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.acks: list[Ack] = []
        self.messages = 0

    async def read(self) -> None:
        async for m in self.client.messages:
            assert isinstance(m.payload, bytes)
            self.messages += 1
            self.acks.extend(envelope.decode(m.payload).acks)

    def answers(self) -> dict[str, Ack]:
        return {a.id: a for a in self.acks}


@asynccontextmanager
async def peer(port: int, *, listen: str, client_id: str) -> AsyncIterator[Peer]:
    async with Client("127.0.0.1", port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(listen, qos=1)
        p = Peer(c)
        task = asyncio.create_task(p.read())
        try:
            yield p
        finally:
            task.cancel()


def rows(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = central_db(tmp)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def alive(proc: Proc, pid: int) -> bool:
    assert proc.proc is not None
    return proc.proc.poll() is None and proc.proc.pid == pid


async def test_poison_records_are_rejected_and_their_neighbours_applied_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_proc(tmp_path, broker.port)
    central.start()
    assert central.proc is not None
    pid = central.proc.pid
    try:
        poisons = {
            "poison-gtin": order(gtin=nested(DEEP)),
            "poison-sku": order(sku=nested(DEEP, "SKU-1")),
            "poison-long-sku": order(sku="X" * 200_000),
            "poison-shallow": order(gtin=nested(20)),  # within the depth bound: the schema's reason
        }
        valid = {"ok-1": order(gtin="4006381333931"), "ok-2": order(sku="MILK")}
        ids = ["ok-1", *poisons, "ok-2"]
        bodies = {**valid, **poisons}
        message = packed(
            {
                "v": 1,
                "gw": GW,
                "sent": 1,
                "records": [rec(rid, seq, bodies[rid]) for seq, rid in enumerate(ids, 1)],
            }
        )
        async with peer(broker.port, listen=topics.downlink(GW), client_id="poison-peer") as p:
            await p.client.publish(topics.uplink(GW), message, qos=1)
            await wait_for(lambda: set(ids) <= p.answers().keys(), timeout=30, what="an ack for every record")
            first = p.answers()
            assert alive(central, pid), "central survived the poison"
            for rid in valid:
                assert first[rid].status is AckStatus.ACCEPTED, first[rid]
            for rid in poisons:
                a = first[rid]
                assert a.status is AckStatus.REJECTED, a
                assert a.reason and len(a.reason) <= MAX_REASON, (rid, len(a.reason or ""))
            index = {rid: i for i, rid in enumerate(ids)}
            assert first["poison-gtin"].reason == (
                f"records[{index['poison-gtin']}].body: nested deeper than 32 levels"
            )
            assert first["poison-sku"].reason == (
                f"records[{index['poison-sku']}].body: nested deeper than 32 levels"
            )
            long_reason = first["poison-long-sku"].reason or ""
            assert long_reason.startswith("lines[0].sku: 'XXX") and "is not a code" in long_reason
            assert first["poison-shallow"].reason == (
                "lines[0].gtin: {'a': {'a': {...}}} is not 8, 12, 13 or 14 digits"
            )

            # the valid neighbours are applied (an order each), the poison is quarantined
            def orders_made() -> list[tuple[Any, ...]]:
                return rows(tmp_path, "SELECT record_id FROM orders ORDER BY record_id")

            await wait_for(lambda: len(orders_made()) == 2, timeout=30, what="the two valid orders")
            assert orders_made() == [("ok-1",), ("ok-2",)]
            quarantined = rows(
                tmp_path, "SELECT record_id, length(reason) FROM quarantine WHERE record_id IS NOT NULL"
            )
            assert sorted(r[0] for r in quarantined) == sorted(poisons)
            assert all(n <= MAX_REASON for _, n in quarantined)

            # an envelope whose version is nested 1,000 deep: quarantined whole, nothing acked
            deep_v = packed(
                {"v": nested(DEEP, 1), "gw": GW, "sent": 2, "records": [rec("ok-3", 9, order(sku="B"))]}
            )
            await p.client.publish(topics.uplink(GW), deep_v, qos=1)
            await wait_for(
                lambda: rows(tmp_path, "SELECT reason FROM quarantine WHERE record_id IS NULL"),
                timeout=30,
                what="the deep envelope quarantined",
            )
            [(reason,)] = rows(tmp_path, "SELECT reason FROM quarantine WHERE record_id IS NULL")
            assert reason == "envelope.v: unknown version {'a': {'a': {...}}} (this side speaks 1)"
            assert alive(central, pid), "central survived the deep envelope"

            # the gateway's resend (same bytes): the same answers, no second effect, no crash
            before = len(p.acks)
            await p.client.publish(topics.uplink(GW), message, qos=1)
            await wait_for(lambda: len(p.acks) >= before + len(ids), timeout=30, what="the resend's acks")
            again = {a.id: a for a in p.acks[before:]}
            for rid in valid:
                assert again[rid].status is AckStatus.DUPLICATE, again[rid]
            for rid in poisons:
                assert again[rid].status is AckStatus.REJECTED and again[rid].reason == first[rid].reason
            assert "ok-3" not in p.answers()
            assert alive(central, pid), "central survived the resend"
            assert orders_made() == [("ok-1",), ("ok-2",)], "applied once"
            health = central.get("/api/health")
            assert health["mqtt"]["connected"] is True
    finally:
        central.stop()


async def test_a_status_nested_50k_deep_does_not_stop_central(broker: Mosquitto, tmp_path: Path) -> None:
    central = central_proc(tmp_path, broker.port)
    central.start()
    assert central.proc is not None
    pid = central.proc.pid
    try:
        deep = b"[" * 50_000 + b"]" * 50_000
        async with peer(broker.port, listen=topics.downlink(GW), client_id="status-peer") as p:
            await p.client.publish(topics.status(GW), deep, qos=1)
            # then a plain order: it is acked only if central is still consuming after the status
            ok = packed({"v": 1, "gw": GW, "sent": 1, "records": [rec("after-status", 1, order(sku="MILK"))]})
            await p.client.publish(topics.uplink(GW), ok, qos=1)
            await wait_for(
                lambda: "after-status" in p.answers(), timeout=30, what="the order after the status"
            )
        assert p.answers()["after-status"].status is AckStatus.ACCEPTED
        assert alive(central, pid)
    finally:
        central.stop()


async def test_gateway_rejects_a_poisoned_downlink_record(broker: Mosquitto, tmp_path: Path) -> None:
    gw = "store-q"
    gateway = gateway_proc(tmp_path, broker.port, gw)
    gateway.start()
    assert gateway.proc is not None
    pid = gateway.proc.pid
    try:
        item = {"gtin": "4006381333931", "sku": "MILK", "description": "milk", "pack_size": 6}
        records = [
            rec("down-poison", 1, {"id": nested(DEEP), "status": "rejected"}, "record_result"),
            rec("down-ok", 2, {"items": [item], "replace": False}, "master_items"),
        ]
        message = packed({"v": 1, "gw": gw, "sent": int(time.time() * 1000), "records": records})
        async with peer(broker.port, listen=topics.uplink(gw), client_id="central-impostor") as p:
            await wait_for(lambda: gateway.get("/api/health")["connected"], timeout=30, what="gateway online")
            await p.client.publish(topics.downlink(gw), message, qos=1)
            await wait_for(
                lambda: {"down-poison", "down-ok"} <= p.answers().keys(), timeout=30, what="both answered"
            )
        answers = p.answers()
        assert answers["down-ok"].status is AckStatus.ACCEPTED
        assert answers["down-poison"].status is AckStatus.REJECTED
        assert answers["down-poison"].reason == "records[0].body: nested deeper than 32 levels"
        assert gateway.proc.poll() is None and gateway.proc.pid == pid
        assert gateway.get("/api/health")["connected"] is True
    finally:
        gateway.stop()
