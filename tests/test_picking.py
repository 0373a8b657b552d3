"""DC pick execution at the gateway: pick_task records through the real inbox into SQLite,
the executor lighting the real PTL simulator over TCP (and fetching totes from the real
AS/RS simulator), results committed with their outbox records; a restart mid-wave picks
nothing twice and loses nothing. Also the record bodies and the examples in PICKING.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from firmware_sim.asrs import AsrsSimulator, default_slots
from firmware_sim.ptl import Press, PtlController, ScriptedPicker, honest_picker, idle_picker
from gateway import inbox as inbox_mod
from gateway import outbox as outbox_mod
from gateway import picking
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.picking import AsrsConfig, CartConfig, PickExecutor, PickingConfig
from protocols.envelope import AckStatus, Record
from protocols.picking import (
    PickKey,
    PickOutcome,
    PickTaskBody,
    parse_pick_result,
    parse_pick_task,
    parse_tote_event,
)
from protocols.records import RecordSchemaError
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for

DOC = Path(__file__).resolve().parent.parent / "protocols" / "PICKING.md"


# --------------------------------------------------------------------------- bodies and doc


def test_doc_examples_parse() -> None:
    blocks = dict(re.findall(r"```json example=([\w-]+)\n(.*?)```", DOC.read_text(), re.S))
    assert {"pick-task", "pick-task-tote", "pick-result", "pick-result-short", "tote-event"} <= set(blocks)
    t = parse_pick_task(json.loads(blocks["pick-task"]))
    assert t.to_wire() == json.loads(blocks["pick-task"])
    assert parse_pick_task(json.loads(blocks["pick-task-tote"])).tote
    r = parse_pick_result(json.loads(blocks["pick-result-short"]))
    assert r.outcome is PickOutcome.SHORT and r.short_qty == r.requested_qty - r.picked_qty
    assert parse_pick_result(json.loads(blocks["pick-result"])).to_wire() == json.loads(blocks["pick-result"])
    parse_tote_event(json.loads(blocks["tote-event"]))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"qty": 0}, "qty: 0 not in"),
        ({"task_id": "x" * 49}, "task_id: longer than 48"),
        ({"tote": "T1"}, "give both or neither"),
        ({"colour": "red"}, "unknown field colour"),
        ({"seq": "1"}, "seq: expected integer"),
    ],
)
def test_bad_pick_task_named(change: dict[str, Any], reason: str) -> None:
    body = _task("T1", "W1", 1, "SO1", "A", 2).to_wire() | change
    with pytest.raises(RecordSchemaError, match=reason):
        parse_pick_task(body)


def test_result_outcome_must_match_quantities() -> None:
    body = {
        "task_id": "T1",
        "order_no": "SO1",
        "sku": "A",
        "requested_qty": 3,
        "picked_qty": 1,
        "outcome": "picked",
        "key": "confirm",
        "ts": 1,
    }
    with pytest.raises(RecordSchemaError, match="outcome picked but picked_qty 1"):
        parse_pick_result(body)
    assert parse_pick_result(body | {"outcome": "short"}).short_qty == 2


# --------------------------------------------------------------------------- helpers


def _task(  # noqa: PLR0917 - a table row
    tid: str, wave: str, seq: int, order: str, sku: str, qty: int, *, tote: str = "", home: str = ""
) -> PickTaskBody:
    return PickTaskBody(
        task_id=tid,
        wave=wave,
        seq=seq,
        order_no=order,
        line_no=seq,
        location="DC1",
        bin=f"A-{seq:02d}",
        sku=sku,
        qty=qty,
        tote=tote,
        tote_location=home,
    )


def _records(tasks: list[PickTaskBody]) -> tuple[Record, ...]:
    return tuple(
        Record(id=t.task_id, seq=i + 1, type="pick_task", ts=1, body=t.to_wire()) for i, t in enumerate(tasks)
    )


def _cart(sim: PtlController, cart_id: str = "cart-1", nodes: int = 8) -> CartConfig:
    return CartConfig(
        cart_id=cart_id,
        host="127.0.0.1",
        port=sim.port,
        nodes=nodes,
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
        relight_guard_s=0.0,
    )


class Gw:
    def __init__(self, db: DurableDB, box: Outbox, inbox: Inbox, executor: PickExecutor) -> None:
        self.db, self.box, self.inbox, self.executor = db, box, inbox, executor

    async def results(self) -> dict[str, dict[str, Any]]:
        """pick_result records in the outbox by task id (fails if a task has two)."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT id, packed FROM outbox WHERE type = 'pick_result' ORDER BY seq"
            ).fetchall()
        )
        out: dict[str, dict[str, Any]] = {}
        for rid, packed in rows:
            body = msgpack.unpackb(packed, raw=False)["body"]
            assert rid == f"pick:{body['task_id']}"
            assert body["task_id"] not in out, "a task reported twice"
            out[body["task_id"]] = body
        return out

    async def tote_events(self) -> list[tuple[str, str]]:
        rows = await self.db.read(
            lambda c: c.execute("SELECT packed FROM outbox WHERE type = 'tote_event' ORDER BY seq").fetchall()
        )
        return [(b["tote"], b["event"]) for b in (msgpack.unpackb(r[0], raw=False)["body"] for r in rows)]

    async def states(self) -> dict[str, str]:
        rows = await self.db.read(picking.task_rows)
        return {r["task_id"]: r["state"] for r in rows}


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, config: PickingConfig) -> AsyncIterator[Gw]:
    db = DurableDB(
        tmp_path / "dc-1.db", migrations=[*outbox_mod.MIGRATIONS, *inbox_mod.MIGRATIONS, *picking.MIGRATIONS]
    )
    await db.open()
    box, inb = Outbox(db), Inbox(db)
    ex = PickExecutor(db=db, outbox=box, config=config)
    ex.register(inb)
    task = asyncio.create_task(ex.run(), name="test-executor")
    try:
        yield Gw(db, box, inb, ex)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()


async def all_done(gw: Gw, n: int) -> bool:
    st = await gw.states()
    return len(st) == n and all(s == "done" for s in st.values())


# --------------------------------------------------------------------------- over TCP


async def test_wave_lit_in_sequence_with_confirm_adjust_and_short(tmp_path: Path) -> None:
    # two orders -> positions 1 and 2; order SO2's first pick is adjusted down, its second short
    picker = ScriptedPicker({2: [Press("confirm", 2), Press("shortage", 0)]})
    tasks = [
        _task("T1", "W1", 1, "SO1", "MILK", 4),
        _task("T2", "W1", 2, "SO2", "MILK", 3),
        _task("T3", "W1", 3, "SO1", "BREAD", 1),
        _task("T4", "W1", 4, "SO2", "BREAD", 5),
    ]
    async with PtlController(nodes=8, picker=picker) as sim:
        cfg = PickingConfig(carts=[_cart(sim)])
        async with gateway(tmp_path, cfg) as gw:
            acks = await gw.inbox.handle(_records(tasks))
            assert [a.status for a in acks] == [AckStatus.ACCEPTED] * 4
            again = await gw.inbox.handle(_records(tasks))  # central resent them: stored once
            assert [a.status for a in again] == [AckStatus.DUPLICATE] * 4
            await wait_for(lambda: all_done(gw, 4), what="all four tasks done")
            res = await gw.results()
    assert {t: (r["picked_qty"], r["outcome"], r["node"]) for t, r in res.items()} == {
        "T1": (4, "picked", 1),
        "T2": (2, "short", 2),
        "T3": (1, "picked", 1),
        "T4": (0, "short", 2),
    }
    assert res["T4"]["key"] == "shortage" and res["T2"]["key"] == "confirm"
    assert sim.stats.lights == 4  # each task lit once


async def test_restart_mid_wave_picks_nothing_twice_and_loses_nothing(tmp_path: Path) -> None:
    tasks = [_task(f"T{i}", "W7", i, f"SO{i % 3}", f"SKU{i}", i) for i in range(1, 10)]
    async with PtlController(nodes=8, picker=idle_picker) as sim:
        cfg = PickingConfig(carts=[_cart(sim)])
        async with gateway(tmp_path, cfg) as gw:
            await gw.inbox.handle(_records(tasks))
            await wait_for(lambda: len(sim.lit) == 3, what="the first task of each order lit")
            first = sorted(sim.lit)
            for node in first:
                sim.press(node)
            await wait_for(lambda: gw.executor.results == 3, what="three results committed")
            await wait_for(lambda: len(sim.lit) == 3, what="the next three lit")
            done_before = {t for t, s in (await gw.states()).items() if s == "done"}
        # the gateway process is gone (cart link dropped: the controller resets its tags)
        await wait_for(lambda: not sim.lit, what="controller reset")
        sim.picker = honest_picker
        async with gateway(tmp_path, cfg) as gw:
            again = await gw.inbox.handle(_records(tasks))  # a resent wave changes nothing
            assert {a.status for a in again} == {AckStatus.DUPLICATE}
            await wait_for(lambda: all_done(gw, 9), what="the rest picked after restart")
            res = await gw.results()
            carts = gw.executor.carts.values()
            for tid in done_before:  # a confirmed task is never lit again
                assert all(c.state(tid) is None for c in carts)
    assert len(done_before) == 3
    assert sorted(res) == sorted(t.task_id for t in tasks)
    assert all(r["outcome"] == "picked" and r["picked_qty"] == r["requested_qty"] for r in res.values())


async def test_totes_fetched_picked_returned_and_empty_location_is_short(tmp_path: Path) -> None:
    slots = default_slots(4, empty=["A01-003"])  # T00003's location is empty
    tasks = [
        _task("T1", "W2", 1, "SO1", "WATER", 2, tote="T00001", home="A01-001"),
        _task("T2", "W2", 2, "SO2", "WATER", 1, tote="T00001", home="A01-001"),
        _task("T3", "W2", 3, "SO1", "JUICE", 3, tote="T00003", home="A01-003"),
        _task("T4", "W2", 4, "SO2", "BREAD", 1),
    ]
    async with PtlController(nodes=4) as ptl_sim, AsrsSimulator(slots=slots) as asrs_sim:
        cfg = PickingConfig(
            carts=[_cart(ptl_sim, nodes=4)],
            asrs=AsrsConfig(
                host="127.0.0.1",
                port=asrs_sim.port,
                station="PS01",
                ack_timeout_s=0.5,
                backoff_initial_s=0.05,
            ),
        )
        async with gateway(tmp_path, cfg) as gw:
            await gw.inbox.handle(_records(tasks))
            await wait_for(lambda: all_done(gw, 4), what="all tasks done")
            await wait_for(lambda: asrs_sim.slots["A01-001"] == "T00001", what="tote T00001 back in storage")
            res = await gw.results()

            async def stored() -> bool:
                return ("T00001", "stored") in await gw.tote_events()

            await wait_for(stored, what="tote_event stored")
            events = await gw.tote_events()
    assert res["T3"]["outcome"] == "short" and res["T3"]["key"] == PickKey.ASRS
    assert res["T3"]["picked_qty"] == 0 and "location empty" in res["T3"]["reason"]
    assert {t: r["outcome"] for t, r in res.items()} == {
        "T1": "picked",
        "T2": "picked",
        "T3": "short",
        "T4": "picked",
    }
    assert ("T00001", "arrived") in events and ("T00003", "empty") in events
    assert asrs_sim.stats.transports_started == 2  # T00001 fetched once (for both orders), returned once
