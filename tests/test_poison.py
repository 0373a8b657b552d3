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
import contextlib
import functools
import json
import sqlite3
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import central.picking  # noqa: F401  (registers the pick record handlers, as central does)
from central import consumer as consumer_mod
from central import ingest
from central.consumer import BrokerSettings, Consumer
from central.migrations import all_migrations
from ops.broker import Mosquitto
from ops.mqtt import Client
from ops.sqlitedb import DurableDB, apply_migrations, connect
from protocols import envelope, topics
from protocols.bounded import MAX_DEPTH, MAX_REASON, JsonError, json_loads, nests_deeper, value_repr
from protocols.envelope import Ack, AckStatus, EnvelopeError
from protocols.order_changes import parse_order_change, parse_order_status, parse_supplier_confirmation
from protocols.picking import parse_pick_result, parse_pick_task, parse_tote_event
from protocols.records import RecordSchemaError, parse_order
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
                lambda: bool(rows(tmp_path, "SELECT reason FROM quarantine WHERE record_id IS NULL")),
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
            mqtt = central.get("/api/health")["mqtt"]
            assert mqtt["connected"] is True
            assert (mqtt["restarts"], mqtt["reconnects"]) == (0, 0), "no restart of central's MQTT loop"
    finally:
        central.stop()


async def test_a_status_nested_50k_deep_is_ignored_without_a_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
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
        mqtt = central.get("/api/health")["mqtt"]
        assert (mqtt["restarts"], mqtt["reconnects"]) == (0, 0), (
            "the status was ignored, not a crash of the loop"
        )
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


# -- fuzz: decoders and reason formatters -----------------------------------------------------
#
# Hostile values (anything msgpack or JSON can carry, nested up to msgpack's own limit, huge
# texts, numbers and maps) put anywhere in an otherwise valid message: the decoders and the
# schema checks raise only their own error classes, every reason stays within MAX_REASON, and
# central's receive path (on a real SQLite database) answers every record without an internal
# error.

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
)
_trees = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


def _chain(depth: int, seed: int, leaf: object) -> object:
    """``leaf`` inside ``depth`` containers, each a map or an array (by ``seed``)."""
    v = leaf
    for i in range(depth):
        v = {"k": v} if (seed >> (i % 31)) & 1 else [v]
    return v


_deep = st.builds(_chain, st.just(1_000) | st.integers(30, 1_000), st.integers(0, 2**31 - 1), _scalars)
_huge = st.sampled_from(
    [
        "9" * 300_000,
        "\u00e9" * 100_000,
        b"\x00" * 300_000,
        2**64 - 1,
        -(2**63),
        float("nan"),
        float("inf"),
        {f"field-{i}-{'x' * 50}": i for i in range(4_000)},
        list(range(10_000)),
    ]
)
_hostile = st.one_of(_trees, _deep, _huge)

_BODIES: dict[str, dict[str, Any]] = {
    "order": order(gtin="4006381333931", price=100),
    "order_change": {"order": "ok-1", "change_seq": 1, "action": "set_qty", "line_no": 1, "qty": 3},
    "supplier_confirmation": {"order_no": "SO00000001", "state": "confirmed", "ref": "r", "detail": ""},
    "pick_result": {
        "task_id": "t1",
        "order_no": "SO00000001",
        "sku": "MILK",
        "requested_qty": 2,
        "picked_qty": 2,
        "outcome": "picked",
        "key": "confirm",
        "ts": 1,
    },
    "tote_event": {"wave": "w1", "tote": "T1", "event": "arrived", "location": "S1", "ts": 1},
    "mystery": {"x": 1},
}
_SCHEMAS: list[Callable[[dict[str, Any]], object]] = [
    parse_order,
    parse_order_change,
    parse_supplier_confirmation,
    parse_order_status,
    parse_pick_task,
    parse_pick_result,
    parse_tote_event,
]


def _child(target: object, step: object) -> object:
    if isinstance(target, dict):
        return target.get(step)
    if isinstance(target, list) and isinstance(step, int) and step < len(target):
        return target[step]
    return None


def _place(doc: dict[str, Any], path: tuple[Any, ...], value: object) -> None:
    """Set the item at ``path`` to ``value``, as far down the path as ``doc`` reaches."""
    target: Any = doc
    for step in path[:-1]:
        child = _child(target, step)
        if not isinstance(child, dict | list):
            break
        target = child
    if isinstance(target, dict):
        target[path[-1]] = value
    elif target:
        target[min(path[-1] if isinstance(path[-1], int) else 0, len(target) - 1)] = value


_RECORD_FIELDS = ["id", "seq", "type", "ts", "body", "extra"]
_BODY_FIELDS = ["customer", "channel", "order_type", "requested_date", "lines", "note", "source_ref"]
_BODY_FIELDS += ["order", "action", "qty", "state", "outcome", "key", "event", "task_id", "extra"]
_LINE_FIELDS = ["gtin", "sku", "qty", "price", "extra"]
_line_paths = st.tuples(
    st.just("records"),
    st.integers(0, 2),
    st.just("body"),
    st.just("lines"),
    st.just(0),
    st.sampled_from(_LINE_FIELDS),
)
_paths = st.one_of(
    st.tuples(st.sampled_from(["v", "gw", "sent", "records", "acks", "extra"])),
    st.tuples(st.just("records"), st.integers(0, 2), st.sampled_from(_RECORD_FIELDS)),
    st.tuples(st.just("records"), st.integers(0, 2), st.just("body"), st.sampled_from(_BODY_FIELDS)),
    _line_paths,
    _line_paths,  # twice: an order's lines are where most of a body's values are
    st.tuples(st.just("acks"), st.integers(0, 1), st.sampled_from(["id", "st", "reason", "ref", "extra"])),
)


@st.composite
def _poisoned(draw: st.DrawFn) -> bytes:
    """A message of three records (and, sometimes, acks) with a hostile value put somewhere."""
    types = draw(st.lists(st.sampled_from(["order", "order", *sorted(_BODIES)]), min_size=3, max_size=3))
    doc: dict[str, Any] = {
        "v": 1,
        "gw": GW,
        "sent": 1,
        "records": [rec(f"f-{i}", i + 1, json.loads(json.dumps(_BODIES[t])), t) for i, t in enumerate(types)],
    }
    if draw(st.booleans()):
        doc["acks"] = [{"id": "a-1", "st": "accepted"}, {"id": "a-2", "st": "rejected", "reason": "no"}]
    for path in draw(st.lists(_paths, min_size=1, max_size=3)):
        _place(doc, path, draw(_hostile))
    try:
        return packed(doc)
    except ValueError:  # nested past the packer's own limit where two deep values met
        return packed({**doc, "records": []})


def _check_reason(reason: str | None) -> None:
    assert reason is None or len(reason) <= MAX_REASON, len(reason or "")


def _decoded(payload: bytes) -> list[envelope.Envelope | envelope.Uplink]:
    """The message through every decoder, each raising nothing but EnvelopeError."""
    out: list[envelope.Envelope | envelope.Uplink] = []
    for decode in (envelope.decode, envelope.decode_strict, _decode_uplink):
        try:
            out.append(decode(payload))
        except EnvelopeError as e:
            _check_reason(e.reason)
    return out


def _decode_uplink(payload: bytes) -> envelope.Uplink:
    return envelope.decode_uplink(payload, quick=ingest.quick_checks())


def _check_envelope(env: envelope.Envelope | envelope.Uplink) -> None:
    for bad in env.bad_records:
        _check_reason(bad.reason)
    for r in env.records:
        body = r.body if r.body is not None else msgpack.unpackb(r.raw)["body"]
        assert not nests_deeper(body, MAX_DEPTH), "a body past the depth bound got through"
        for schema in _SCHEMAS:
            try:
                schema(body)
            except RecordSchemaError as e:
                _check_reason(e.reason)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(_poisoned())
def test_fuzz_poisoned_messages_raise_only_envelope_and_schema_errors(payload: bytes) -> None:
    for env in _decoded(payload):
        _check_envelope(env)


def _deep_bytes(depth: int, seed: int) -> bytes:
    """A record whose body holds ``depth`` nested containers, written byte by byte (past what
    msgpack's packer will write), in an otherwise valid message."""
    nest = bytes(0x81 if (seed >> (i % 31)) & 1 else 0x91 for i in range(depth))
    keyed = b"".join(b"\x81\xa1k" if b == 0x81 else b"\x91" for b in nest)
    body = b"\x81\xa5lines" + keyed + b"\x01"
    record = b"\x85\xa2id\xa2r1\xa3seq\x01\xa4type\xa5order\xa2ts\x01\xa4body" + body
    head = packed({"v": 1, "gw": GW, "sent": 1})
    return b"\x84" + head[1:] + packed("records") + b"\x91" + record  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300_000), st.integers(0, 2**31 - 1))
def test_fuzz_nesting_of_any_depth_is_a_bounded_refusal(depth: int, seed: int) -> None:
    for env in _decoded(_deep_bytes(depth, seed)):
        _check_envelope(env)
        if depth > MAX_DEPTH:
            assert not env.records


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_garbage_bytes_raise_only_envelope_errors(data: bytes) -> None:
    for env in _decoded(data):
        _check_envelope(env)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(_hostile, st.integers(1, 200))
def test_fuzz_value_repr_is_bounded_and_never_raises(v: object, limit: int) -> None:
    s = value_repr(v, limit)
    assert isinstance(s, str) and len(s) <= limit


def _json_chain(depth: int, seed: int) -> str:
    opens = ['{"k":' if (seed >> (i % 31)) & 1 else "[" for i in range(depth)]
    return "".join(opens) + "1" + "".join("}" if o != "[" else "]" for o in reversed(opens))


_json_texts = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    _trees.map(lambda v: json.dumps(v, default=repr)),
    st.builds(_json_chain, st.integers(0, 100_000), st.integers(0, 2**31 - 1)),
    st.sampled_from(
        ['{"qty": ' + "9" * 5_000 + "}", "[1e309]", "[-1e400]", "[NaN]", "-Infinity", "[" + "1" * 21 + "]"]
    ),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(_json_texts)
def test_fuzz_json_loads_raises_only_json_error(data: bytes | str) -> None:
    try:
        doc = json_loads(data, max_bytes=1_000_000)
    except JsonError as e:
        _check_reason(e.reason)
        return
    assert not nests_deeper(doc, MAX_DEPTH)


@functools.cache
def _central_conn() -> sqlite3.Connection:
    conn = connect(":memory:")
    apply_migrations(conn, all_migrations())
    return conn


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(_poisoned())
@example(packed({"v": 1, "gw": GW, "sent": 1, "records": [rec("p", 1, order(gtin=nested(DEEP)))]}))
@example(packed({"v": 1, "gw": GW, "sent": 1, "records": [rec("p", 1, order(sku="X" * 200_000))]}))
@example(packed({"v": nested(DEEP, 1), "gw": GW, "sent": 1}))
def test_fuzz_central_receives_any_message_without_an_internal_error(payload: bytes) -> None:
    """The whole receive path at central on a real database: decode, check, store, ack,
    process. Every record with an id is answered; no reason is unbounded; nothing raises."""
    conn = _central_conn()
    internal = ingest.INTERNAL_ERRORS[0]
    conn.execute("BEGIN")
    try:
        try:
            up = _decode_uplink(payload)
        except EnvelopeError as e:
            ingest.quarantine_message(conn, topic=topics.uplink(GW), gateway=GW, reason=e.reason, raw=payload)
            return
        acks = ingest.receive_uplink(conn, topic_gw=GW, topic=topics.uplink(GW), up=up)
        outcome = ingest.process_queue(conn, limit=None)
        for a in [*acks, *outcome.values()]:
            _check_reason(a.reason)
        assert {a.id for a in acks} >= {r.id for r in up.records}
        assert ingest.INTERNAL_ERRORS[0] == internal, "a record failed with an internal error"
        assert all(n <= MAX_REASON for (n,) in conn.execute("SELECT length(reason) FROM quarantine"))
    finally:
        conn.execute("ROLLBACK")


# -- the worst a 1 MiB message can hold: bounded work ------------------------------------------

WORST_CASE_S = 5.0  # generous on a loaded machine: each case takes well under 0.1 s alone


def _worst_messages() -> dict[str, bytes]:
    head = packed({"v": 1, "gw": GW, "sent": 1})
    many = {f"field-{i}-{'x' * 200}": i for i in range(4_000)}
    return {
        "1 MiB of nested arrays": b"\x84" + head[1:] + packed("records") + b"\x91" * (1 << 20) + b"\x01",
        "4,000 long unknown fields": packed(
            {"v": 1, "gw": GW, "sent": 1, "records": [rec("r", 1, {**order(sku="A"), **many})]}
        ),
        "a 1 MB gtin": packed(
            {"v": 1, "gw": GW, "sent": 1, "records": [rec("r", 1, order(gtin="9" * 1_000_000))]}
        ),
        "2,000 records nested 33 deep": packed(
            {
                "v": 1,
                "gw": GW,
                "sent": 1,
                "records": [rec(f"r{i}", i + 1, order(gtin=nested(30))) for i in range(2_000)],
            }
        ),
    }


def test_the_worst_messages_cost_bounded_time_and_give_bounded_reasons() -> None:
    for name, payload in _worst_messages().items():
        t0 = time.perf_counter()
        for env in _decoded(payload[: envelope.MAX_PAYLOAD_BYTES]):
            _check_envelope(env)
        elapsed = time.perf_counter() - t0
        assert elapsed < WORST_CASE_S, f"{name}: {elapsed:.2f}s"


def test_value_repr_works_in_constant_memory() -> None:
    big = "x" * 10_000_000
    values = [big, [big] * 1_000, {f"k{i}": big for i in range(1_000)}, b"y" * 1_000_000, 10**4_000]
    values.append({f"k{i}": i for i in range(100_000)})
    tracemalloc.start()
    try:
        for v in values:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            assert len(value_repr(v)) <= 60
            assert tracemalloc.get_traced_memory()[1] - before < 64 * 1024, type(v).__name__
    finally:
        tracemalloc.stop()


async def test_a_message_that_meets_a_bug_is_left_unacked_and_the_rest_goes_on(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poison no bound foresaw - here receipt raising a plain RuntimeError for one message -
    ends neither central nor its MQTT session: that message is not acked (its gateway sends it
    again), the next is taken, and the resend is taken once the bug is gone."""
    real = consumer_mod.receive_uplink
    bug = {"on": True}

    def receive(conn: sqlite3.Connection, *, topic_gw: str, topic: str, up: Any) -> list[Ack]:
        if bug["on"] and any(r.id == "meets-bug" for r in up.records):
            raise RuntimeError("a bug no bound foresaw")
        return real(conn, topic_gw=topic_gw, topic=topic, up=up)

    monkeypatch.setattr(consumer_mod, "receive_uplink", receive)
    errors = ingest.INTERNAL_ERRORS[0]
    async with DurableDB(tmp_path / "central.db", migrations=all_migrations()) as db:
        consumer = Consumer(db=db, broker=BrokerSettings(port=broker.port, client_id="central-bug"))
        task = asyncio.create_task(consumer.run())
        try:
            await wait_for(consumer.connected.is_set, timeout=20, what="central connected")
            async with peer(broker.port, listen=topics.downlink(GW), client_id="bug-peer") as p:
                bad = packed({"v": 1, "gw": GW, "sent": 1, "records": [rec("meets-bug", 1, order(sku="A"))]})
                good = packed({"v": 1, "gw": GW, "sent": 2, "records": [rec("after-bug", 2, order(sku="B"))]})
                await p.client.publish(topics.uplink(GW), bad, qos=1)
                await p.client.publish(topics.uplink(GW), good, qos=1)
                await wait_for(lambda: "after-bug" in p.answers(), timeout=20, what="the next message acked")
                await wait_for(lambda: ingest.INTERNAL_ERRORS[0] > errors, timeout=20, what="the bug counted")
                assert "meets-bug" not in p.answers(), "a message that failed must not be acked"
                assert not task.done() and consumer.stats.restarts == 0 and consumer.stats.reconnects == 0
                bug["on"] = False  # the gateway's resend, after the fix
                await p.client.publish(topics.uplink(GW), bad, qos=1)
                await wait_for(lambda: "meets-bug" in p.answers(), timeout=20, what="the resend acked")
                assert p.answers()["meets-bug"].status is AckStatus.ACCEPTED
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
