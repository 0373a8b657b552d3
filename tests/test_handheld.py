"""HT adapter <-> terminal simulator over a real PTY, with a real SQLite file: commits, faults,
duplicates, refusals, per-line rejects, and the ACK only after the commit."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from firmware_sim.handheld import Faults, Pty, Terminal, make_batch
from gateway import handheld, items, outbox
from gateway.handheld import HandheldAdapter
from gateway.items import Item, Standing
from gateway.outbox import Outbox
from protocols import bht
from protocols.bht import ORDER_FIELD_LENGTHS, BatchId, BhtFile, OrderRecord
from protocols.records import parse_order
from runtime.sqlitedb import DurableDB

G1, G2, G3 = "04006381333931", "09781492053743", "05012345678900"
D1, D2 = dt.date(2024, 5, 3), dt.date(2024, 5, 4)
ENQ_INTERVAL = 0.2  # the sender's patience; the receiver's timeout must be well above it
RX_TIMEOUT = 1.5
DEADLINE = 15.0


@dataclass
class Rig:
    db: DurableDB
    path: Path
    adapter: HandheldAdapter
    term: Terminal
    pty: Pty

    async def upload(self, file: BhtFile, faults: Faults | None = None) -> Any:
        async with asyncio.timeout(DEADLINE):
            return await self.term.upload(file, faults or Faults())

    def q(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read the SQLite file through a separate connection, synchronously."""
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def orders(self) -> list[dict[str, Any]]:
        return [msgpack.unpackb(p) for (p,) in self.q("SELECT packed FROM outbox ORDER BY seq")]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = tmp_path / "gw.db"
    db = DurableDB(path, migrations=[*outbox.MIGRATIONS, *items.MIGRATIONS, *handheld.MIGRATIONS])
    await db.open()
    await db.write(lambda c: items.upsert_items(c, [Item(G1, "SKU-1"), Item(G2, "SKU-2")]))
    # the customers central maps to this gateway (customer_standing): the edge takes their orders
    await db.write(lambda c: items.upsert_standing(c, [Standing("STORE-001"), Standing("C0042")]))
    pty = Pty()
    adapter = HandheldAdapter(
        port=pty.name,
        db=db,
        outbox=Outbox(db),
        default_customer="STORE-001",
        device_id="cradle-1",
        receiver_timeout=RX_TIMEOUT,
        linger=0.5,
        reopen_delay=0.05,
    )
    task = asyncio.create_task(adapter.run(), name="ht-adapter")
    try:
        async with asyncio.timeout(DEADLINE):
            await adapter.connected.wait()
        yield Rig(db, path, adapter, Terminal(pty.master, enq_interval=ENQ_INTERVAL), pty)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()
        pty.close()


def batch(number: int = 17, lines: list[OrderRecord] | None = None) -> BhtFile:
    lines = lines or [
        OrderRecord(G1, 12, D1),
        OrderRecord(G2, 3, D1, "C0042"),
        OrderRecord(G2, 5, D1),
        OrderRecord(G1, 1, D2),
    ]
    return make_batch("HT01", number, lines)


async def wait_counter(rig: Rig, name: str, n: int = 1) -> None:
    async with asyncio.timeout(DEADLINE):
        while rig.adapter.counters[name] < n:
            await asyncio.sleep(0.02)


async def test_upload_commits_one_order_per_customer_and_date(rig: Rig) -> None:
    res = await rig.upload(batch())
    assert res.ok, res.reason
    recs = rig.orders()
    bodies = [parse_order(r["body"]) for r in recs]
    assert [(b.customer, b.requested_date, [(ln.gtin, ln.qty) for ln in b.lines]) for b in bodies] == [
        ("STORE-001", D1, [(G1, 12), (G2, 5)]),
        ("C0042", D1, [(G2, 3)]),
        ("STORE-001", D2, [(G1, 1)]),
    ]
    assert all(r["type"] == "order" and r["body"]["channel"] == "handheld" for r in recs)
    assert {r["body"]["source_ref"] for r in recs} == {"HT01/00017"}
    [(terminal, number, ids, lines, rejected)] = rig.q(
        "SELECT terminal, batch_id, record_ids, lines, rejected FROM ht_batches"
    )
    assert (terminal, number, lines, rejected) == ("HT01", 17, 4, 0)
    assert sorted(r["id"] for r in recs) == sorted(json.loads(ids))
    assert rig.adapter.counters["batches_committed"] == 1


async def test_final_ack_is_sent_only_after_the_commit(rig: Rig) -> None:
    seen: list[tuple[int, int]] = []

    def on_output(o: bht.Output) -> None:
        if isinstance(o, bht.Completed):  # the terminal has just read the ACK to its EOT
            seen.append(
                (rig.q("SELECT count(*) FROM ht_batches")[0][0], rig.q("SELECT count(*) FROM outbox")[0][0])
            )

    term = Terminal(rig.pty.master, enq_interval=ENQ_INTERVAL, on_output=on_output)
    async with asyncio.timeout(DEADLINE):
        res = await term.upload(batch())
    assert res.ok and seen == [(1, 3)]


async def test_bad_bcc_is_naked_and_the_resend_commits(rig: Rig) -> None:
    res = await rig.upload(batch(), Faults(bad_bcc_blocks=frozenset({2})))
    assert res.ok and res.naks == 1
    assert rig.adapter.counters["naks"] == 1
    assert rig.q("SELECT lines FROM ht_batches") == [(4,)]


@pytest.mark.parametrize("lost", [3, 7], ids=["ack-of-block-1", "ack-of-final-eot"])
async def test_dropped_ack_recovers_without_doubling(rig: Rig, lost: int) -> None:
    res = await rig.upload(batch(), Faults(drop_acks=frozenset({lost})))
    assert res.ok, res.reason
    assert rig.q("SELECT lines FROM ht_batches") == [(4,)]
    assert len(rig.orders()) == 3


async def test_cable_pull_commits_nothing_and_resend_commits_once(rig: Rig) -> None:
    res = await rig.upload(batch(), Faults(cable_pull_after=2))
    assert not res.ok and "cable pulled" in res.reason
    await wait_counter(rig, "sessions_aborted")  # the receiver timed out
    assert rig.q("SELECT count(*) FROM ht_batches") == [(0,)]
    assert rig.q("SELECT count(*) FROM outbox") == [(0,)]
    res = await rig.upload(batch())
    assert res.ok, res.reason
    assert rig.q("SELECT lines FROM ht_batches") == [(4,)] and len(rig.orders()) == 3


async def test_duplicate_upload_is_acked_and_not_doubled(rig: Rig) -> None:
    f = batch()
    assert (await rig.upload(f)).ok
    first = rig.orders()
    res = await rig.upload(f)
    assert res.ok, res.reason
    assert rig.orders() == first
    assert rig.adapter.counters["batches_duplicate"] == 1
    assert rig.adapter.counters["batches_committed"] == 1


async def test_same_batch_id_with_other_content_is_refused(rig: Rig) -> None:
    assert (await rig.upload(batch())).ok
    before = rig.orders()
    res = await rig.upload(batch(lines=[OrderRecord(G1, 99, D1)]))
    assert not res.ok and "receiver sent EOT" in res.reason
    assert rig.adapter.counters["batches_conflict"] == 1
    assert rig.orders() == before
    # the next batch number goes through (after the refusal linger)
    await asyncio.sleep(0)  # let the refusal settle before we start another session
    async with asyncio.timeout(DEADLINE):
        while rig.adapter.counters["batches_committed"] < 2:
            res = await rig.term.upload(batch(18, [OrderRecord(G1, 99, D1)]))
            if not res.ok:
                await asyncio.sleep(0.1)  # refused while lingering: retry like a clerk
    assert rig.q("SELECT batch_id FROM ht_batches ORDER BY batch_id") == [(17,), (18,)]


async def test_invalid_lines_are_quarantined_and_the_rest_committed(rig: Rig) -> None:
    def raw(gtin: str, qty: str, date: str) -> bytes:
        return (gtin.rjust(14, "0") + qty + date + " " * 10).encode()

    records = (
        raw(G1, "000002", "20240503"),  # ok
        raw(G3, "000001", "20240503"),  # valid check digit, not in the item master
        raw("04006381333932", "000001", "20240503"),  # bad check digit
        raw(G2, "000000", "20240503"),  # zero
        raw(G2, "-00004", "20240503"),  # negative
        raw(G2, "050000", "20240503"),  # absurd (> max_qty 9999)
        raw(G2, "000001", "20241332"),  # no such date
        raw(G2, "000007", "20240503"),  # ok
    )
    f = BhtFile(BatchId("HT02", 5).file_name, ORDER_FIELD_LENGTHS, records)
    res = await rig.upload(f)
    assert res.ok, res.reason
    [body] = [parse_order(r["body"]) for r in rig.orders()]
    assert [(ln.gtin, ln.qty) for ln in body.lines] == [(G1, 2), (G2, 7)]
    rejects = await handheld.rejects(rig.db, "HT02", 5)
    assert [(r.serial, r.field) for r in rejects] == [
        (2, "gtin"),
        (3, "gtin"),
        (4, "qty"),
        (5, "qty"),
        (6, "qty"),
        (7, "date"),
    ]
    assert "unknown GTIN" in rejects[0].reason and "check digit" in rejects[1].reason
    assert rig.adapter.counters["lines_rejected"] == 6


async def test_the_edge_checks_refuse_another_stores_customer_and_the_items_limit(rig: Rig) -> None:
    """The same checks as every order entry (gateway/edge_checks.py): a customer central has
    not mapped to this gateway and a quantity over the item's max_order_qty are refused."""
    await rig.db.write(lambda c: items.upsert_items(c, [Item(G2, "SKU-2", max_order_qty=24)]))

    def raw(gtin: str, qty: str, customer: str = "") -> bytes:
        return (gtin.rjust(14, "0") + qty + "20240503" + customer.ljust(10)).encode()

    records = (
        raw(G1, "000002", "C0099"),  # another store's customer
        raw(G2, "000025"),  # over SKU-2's max_order_qty 24
        raw(G2, "000024", "C0042"),  # ok: C0042 is mapped to this gateway
    )
    res = await rig.upload(BhtFile(BatchId("HT02", 6).file_name, ORDER_FIELD_LENGTHS, records))
    assert res.ok, res.reason
    assert [(b["customer"], b["lines"]) for b in (r["body"] for r in rig.orders())] == [
        ("C0042", [{"gtin": G2, "qty": 24}])
    ]
    rejects = await handheld.rejects(rig.db, "HT02", 6)
    assert [(r.serial, r.field, r.reason) for r in rejects] == [
        (1, "customer", "customer 'C0099' is not this store's (C0042, STORE-001)"),
        (2, "qty", "quantity 25 > 24 allowed for 'SKU-2'"),
    ]


async def test_foreign_file_layout_is_refused_at_the_heading(rig: Rig) -> None:
    f = BhtFile("INVENTRY.DAT", (14, 6), (b"04006381333931000001",))
    res = await rig.upload(f)
    assert not res.ok and "receiver sent EOT" in res.reason
    assert rig.adapter.counters["headings_refused"] == 1
    assert rig.q("SELECT count(*) FROM ht_batches") == [(0,)]


async def test_line_noise_before_a_session_is_counted_and_harmless(rig: Rig) -> None:
    os.write(rig.pty.master, b"\xff\x00noise\x03\x7f")
    res = await rig.upload(batch())
    assert res.ok, res.reason
    assert rig.adapter.counters["garbage_bytes"] > 0
    assert rig.q("SELECT lines FROM ht_batches") == [(4,)]


async def test_port_lost_mid_batch_commits_nothing_and_adapter_survives(rig: Rig) -> None:
    res = await rig.upload(batch(), Faults(cable_pull_after=1))
    assert not res.ok
    rig.pty.pull_cable()  # the terminal's end goes away: the gateway's reads fail
    await wait_counter(rig, "link_errors")
    assert rig.q("SELECT count(*) FROM ht_batches") == [(0,)]
    assert rig.q("SELECT count(*) FROM outbox") == [(0,)]


def test_sim_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim.handheld import main

    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--pty", "--port", "--terminal", "--batch", "--fault", "cable-pull", "duplicate"):
        assert opt in out
