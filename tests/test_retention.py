"""Retention of per-record history (issue 14, item 7).

Central forgets a ``processed`` id only below the watermark its gateway reported
(``acked_below``: every lower ``seq`` has left the gateway's outbox for good) and only after a
grace period; the gateway drops old ``record_results``. Real SQLite files on both sides; the
status path and the downlink bound over a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central import downlink, wiring
from central import retention as central_retention
from central.fleet import Fleet
from central.intake import ingest
from central.intake.consumer import BrokerSettings, Consumer
from central.migrations import central_db
from gateway import order_status
from gateway import retention as gateway_retention
from gateway import sync as sync_mod
from gateway.app import migrations as gateway_migrations
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from gateway.telemetry import DeviceBoard, Telemetry
from ops.broker import Mosquitto
from protocols import envelope, topics
from protocols.envelope import Ack, AckStatus, Record
from runtime.clock import now_ms
from runtime.mqtt import Client as MqttClient
from runtime.sqlitedb import DurableDB
from tests.conftest import wait_for
from tests.db_conn import open_conn

GW = "store-ret"
GRACE_MS = int(central_retention.GRACE_S * 1000)


def order_body(n: int) -> dict[str, object]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "SKU-1", "qty": 1 + n % 5}],
        "source_ref": f"ref-{n}",
    }


@contextlib.asynccontextmanager
async def two_sides(tmp: Path, target: str) -> AsyncIterator[tuple[Outbox, DurableDB]]:
    """The gateway's database in ``tmp``, central's at ``target`` (``central_backend``)."""
    gdb = DurableDB(tmp / f"{GW}.db", migrations=gateway_migrations())
    cdb = central_db(target)
    await gdb.open()
    await cdb.open()
    try:
        yield Outbox(gdb), cdb
    finally:
        await gdb.close()
        await cdb.close()


async def send(box: Outbox, cdb: DurableDB) -> list[Ack]:
    """What the gateway's sync does, without the broker: everything in the outbox goes to
    central in seq order (central receives it in one transaction and processes it)."""
    rows = await box.pending(after_seq=0, limit=100_000)
    acks: list[Ack] = []
    topic = topics.uplink(GW)
    for i in range(0, len(rows), 500):
        payload = envelope.encode_raw_records(
            gw=GW, sent=1, raw_records=[p for _s, _r, p in rows[i : i + 500]]
        )
        up = envelope.decode_uplink(payload, quick=ingest.quick_checks(wiring.hub()))

        def job(conn: sqlite3.Connection, up: envelope.Uplink = up) -> list[Ack]:
            got = ingest.receive_uplink(conn, topic_gw=GW, topic=topic, up=up)
            ingest.process_queue(conn, limit=None)
            return got

        acks += await cdb.write(job)
    return acks


def count(target: str, sql: str, *args: object) -> int:
    """One number from central's database at ``target``, on a connection of its own."""
    conn = open_conn(target, [])
    try:
        n: int = conn.execute(sql, args).fetchone()[0]
        return n
    finally:
        conn.close()


async def submit(box: Outbox, n: int, start: int = 0) -> list[Record]:
    return list(await asyncio.gather(*(box.submit("order", order_body(start + i)) for i in range(n))))


# -- the watermark ------------------------------------------------------------------------------


async def test_watermark_is_below_every_record_the_gateway_can_still_send(
    tmp_path: Path, central_backend: str
) -> None:
    async with two_sides(tmp_path, central_backend) as (box, _cdb):
        assert await box.db.read(gateway_retention.acked_below) == 1  # nothing ever sent
        recs = await submit(box, 40)
        seqs = sorted(r.seq for r in recs)
        assert await box.db.read(gateway_retention.acked_below) == seqs[0]
        # central's acks arrive in any order and some are lost: the mark is the lowest left
        rng = random.Random(7)
        acked = set(rng.sample(seqs[1:], 25)) | {seqs[0]}
        await box.apply_acks(Ack(r.id, AckStatus.ACCEPTED) for r in recs if r.seq in acked)
        left = [s for s in seqs if s not in acked]
        mark = await box.db.read(gateway_retention.acked_below)
        assert mark == min(left)
        assert all(s >= mark for s in left)
        await box.apply_acks(Ack(r.id, AckStatus.ACCEPTED) for r in recs)
        mark = await box.db.read(gateway_retention.acked_below)
        assert mark == seqs[-1] + 1  # empty outbox: the next seq it will use
        (new,) = await submit(box, 1)
        assert new.seq >= mark


# -- central's rule ------------------------------------------------------------------------------


async def test_pruned_ids_are_never_ones_a_gateway_can_still_resend(
    tmp_path: Path, central_backend: str
) -> None:
    """Acks lost at random, the watermark reported, pruning past its grace period: every
    record still in the outbox keeps its id at central, and resending them all (what the
    sync does after a reconnect) applies nothing twice."""
    async with two_sides(tmp_path, central_backend) as (box, cdb):
        recs = await submit(box, 600)
        acks = await send(box, cdb)
        assert all(a.status is AckStatus.ACCEPTED for a in acks)
        rng = random.Random(11)
        delivered = [a for a in acks if rng.random() < 0.6]  # the rest of the acks are lost
        await box.apply_acks(delivered)
        mark = await box.db.read(gateway_retention.acked_below)
        t0 = 1_800_000_000_000
        await cdb.write(lambda c: central_retention.report(c, GW, mark, t0))
        stats = await central_retention.prune_once(cdb, now=t0 + GRACE_MS, batch=37)

        still_held = {rid for _s, rid, _p in await box.pending(after_seq=0, limit=10_000)}
        by_id = {r.id: r for r in recs}
        assert still_held and stats.processed == sum(1 for r in recs if r.seq < mark)
        db_path = central_backend
        for rid in still_held:
            assert count(db_path, "SELECT count(*) FROM processed WHERE record_id = ?", rid) == 1, by_id[
                rid
            ].seq
        assert count(db_path, "SELECT count(*) FROM processed WHERE seq < ?", mark) == 0

        again = await send(box, cdb)
        assert {a.id for a in again} == still_held
        assert all(a.status is AckStatus.DUPLICATE for a in again)
        assert count(db_path, "SELECT count(*) FROM orders") == 600


async def test_a_report_takes_effect_only_after_the_grace_period(
    tmp_path: Path, central_backend: str
) -> None:
    async with two_sides(tmp_path, central_backend) as (box, cdb):
        await submit(box, 300)
        await box.apply_acks(await send(box, cdb))
        db_path = central_backend
        t0 = 1_800_000_000_000
        await cdb.write(lambda c: central_retention.report(c, GW, 101, t0))
        await cdb.write(lambda c: central_retention.report(c, GW, 201, t0 + 1000))  # waits its turn
        assert (await central_retention.prune_once(cdb, now=t0 + GRACE_MS - 1)).processed == 0
        assert (await central_retention.prune_once(cdb, now=t0 + GRACE_MS)).processed == 100
        assert count(db_path, "SELECT min(seq) FROM processed") == 101
        # the later report becomes the candidate at the next report, and the mark a grace later
        await cdb.write(lambda c: central_retention.report(c, GW, 201, t0 + GRACE_MS + 1))
        assert (await central_retention.prune_once(cdb, now=t0 + 2 * GRACE_MS + 1)).processed == 100
        assert count(db_path, "SELECT min(seq) FROM processed") == 201
        assert await cdb.read(central_retention.marks) == {GW: (201, t0 + GRACE_MS + 1)}


async def test_a_gateway_with_a_new_database_keeps_its_new_ids(tmp_path: Path, central_backend: str) -> None:
    """A gateway whose database was replaced starts its seq at 1 again, far below the mark
    its old database reported: the ids central receives from it after that report are not
    covered by it, and a resend of them (acks lost) is still a duplicate."""
    async with two_sides(tmp_path, central_backend) as (box, cdb):
        await submit(box, 300)
        await box.apply_acks(await send(box, cdb))
        t_report = now_ms()
        mark = await box.db.read(gateway_retention.acked_below)
        await cdb.write(lambda c: central_retention.report(c, GW, mark, t_report))
        assert (await central_retention.prune_once(cdb, now=t_report + GRACE_MS)).processed == 300
    (tmp_path / f"{GW}.db").unlink()
    for side in ("-wal", "-shm"):
        (tmp_path / f"{GW}.db{side}").unlink(missing_ok=True)
    async with two_sides(tmp_path, central_backend) as (fresh, cdb):
        recs = await submit(fresh, 50)
        assert max(r.seq for r in recs) < mark
        acks = await send(fresh, cdb)  # received after the old report; its acks are lost
        assert all(a.status is AckStatus.ACCEPTED for a in acks)
        assert (await central_retention.prune_once(cdb, now=t_report + 3 * GRACE_MS)).processed == 0
        again = await send(fresh, cdb)
        assert [a.status for a in again] == [AckStatus.DUPLICATE] * 50
        assert count(central_backend, "SELECT count(*) FROM orders") == 350


async def test_pruning_bounds_processed_under_a_steady_stream(tmp_path: Path, central_backend: str) -> None:
    per_round, rounds = 250, 16
    async with two_sides(tmp_path, central_backend) as (box, cdb):
        db_path = central_backend
        sizes = []
        for r in range(rounds):
            now = 1_800_000_000_000 + r * GRACE_MS  # each report is promoted a round later
            await submit(box, per_round, start=r * per_round)
            await box.apply_acks(await send(box, cdb))
            mark = await box.db.read(gateway_retention.acked_below)
            await cdb.write(lambda c, mark=mark, now=now: central_retention.report(c, GW, mark, now))
            await central_retention.prune_once(cdb, now=now, batch=100)
            sizes.append(count(db_path, "SELECT count(*) FROM processed"))
        assert count(db_path, "SELECT count(*) FROM orders") == per_round * rounds  # nothing lost
        assert max(sizes) <= 2 * per_round, sizes  # bounded by the grace period, not by history


async def test_downlink_results_and_record_results_go_by_age(tmp_path: Path, central_backend: str) -> None:
    """History that is no duplicate check goes by age, in batches; a gateway keeps the
    answers a store still needs (rejections, and an open reorder's answer)."""
    async with two_sides(tmp_path, central_backend) as (box, cdb):
        recs = await submit(box, 30)
        rejected = {recs[1].id, recs[2].id}
        await box.apply_acks(
            Ack(r.id, AckStatus.REJECTED if r.id in rejected else AckStatus.ACCEPTED, "no") for r in recs
        )
        now = int(time.time() * 1000)
        old = [r.id for r in recs[:18]]
        open_reorder = recs[3].id
        keep_ms = int(gateway_retention.RECORD_RESULTS_KEEP_S * 1000)

        def age(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE record_results SET acked_at = ? WHERE id = ?", [(now - keep_ms - 1, i) for i in old]
            )
            conn.execute(
                "INSERT INTO stock_reorders (record_id, sku, qty, raised_at, trigger)"
                " VALUES (?, 'SKU-1', 6, 1, 'sale')",
                (open_reorder,),
            )

        await box.db.write(age)
        assert await gateway_retention.prune_once(box.db, now=now, batch=5) == 18 - 3
        assert await box.result(old[0]) is None
        assert (await box.result(recs[-1].id) or {}).get("status") == "accepted"
        assert [(await box.result(i) or {}).get("status") for i in sorted(rejected)] == ["rejected"] * 2
        assert (await box.result(open_reorder) or {}).get("status") == "accepted"

        keep_dl = int(central_retention.DOWNLINK_RESULTS_KEEP_S * 1000)

        def results(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO downlink_results (id, gateway, type, status, reason, acked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (f"d{i}", GW, "order_status", "accepted", None, now - keep_dl - 1 + i % 2 * 10**6)
                    for i in range(9)
                ],
            )

        await cdb.write(results)
        assert (await central_retention.prune_once(cdb, now=now, batch=2)).downlink_results == 5
        assert count(central_backend, "SELECT count(*) FROM downlink_results") == 4


# -- over the broker -----------------------------------------------------------------------------


async def test_gateway_status_carries_its_watermark_to_central(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    cdb = central_db(central_backend)
    gdb = DurableDB(tmp_path / f"{GW}.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    fleet = Fleet(cdb)
    consumer = Consumer(
        db=cdb,
        broker=BrokerSettings(port=broker.port, client_id=f"central-{uuid.uuid4().hex[:6]}"),
        on_status=fleet.on_status,
    )
    box = Outbox(gdb)
    telemetry = Telemetry(site="S001", outbox=box, board=DeviceBoard())
    sync = Sync(gateway_id=GW, outbox=box, mqtt=MqttSettings(port=broker.port), status_extra=telemetry.extra)
    telemetry.sync = sync
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(sync.run())]
    try:
        recs = await submit(box, 20)
        await wait_for(lambda: _backlog_empty(box), timeout=30, what="outbox drained")
        await telemetry.refresh()
        await sync.publish_status()
        want = max(r.seq for r in recs) + 1

        async def candidate() -> bool:
            row = await cdb.read(
                lambda c: c.execute(
                    "SELECT candidate FROM retention_marks WHERE gateway = ?", (GW,)
                ).fetchone()
            )
            return row is not None and row[0] == want

        await wait_for(candidate, timeout=30, what="central holds the gateway's acked_below")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await gdb.close()
        await cdb.close()


async def _backlog_empty(box: Outbox) -> bool:
    return (await box.backlog()).count == 0


async def test_a_downlink_backlog_is_read_in_bounded_batches(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that comes back to 30 downlink messages waiting for it, with its inbox
    stalled, reads no more than the bounded queue holds; once the inbox moves, every record
    is handled once."""
    decoded = 0
    real_decode = envelope.decode

    def counting_decode(payload: bytes) -> envelope.Envelope:
        nonlocal decoded
        decoded += 1
        return real_decode(payload)

    monkeypatch.setattr(sync_mod.envelope, "decode", counting_decode)
    gdb = DurableDB(tmp_path / f"{GW}.db", migrations=gateway_migrations())
    await gdb.open()
    gate = asyncio.Event()
    handled: list[str] = []

    async def on_records(recs: tuple[Record, ...]) -> list[Ack]:
        await gate.wait()
        handled.extend(r.id for r in recs)
        return [Ack(r.id, AckStatus.ACCEPTED) for r in recs]

    sync = Sync(gateway_id=GW, outbox=Outbox(gdb), mqtt=MqttSettings(port=broker.port), on_records=on_records)
    task = asyncio.create_task(sync.run())
    await sync.connected.wait()  # the persistent session exists; then the gateway goes away
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="central-test", protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    ids = []
    try:
        for m in range(30):
            raws = []
            for i in range(50):
                rid = uuid.uuid4().hex
                ids.append(rid)
                raws.append(
                    envelope.pack_record(Record(rid, m * 50 + i + 1, "order_status", 1, {"pad": "x" * 300}))
                )
            info = pub.publish(
                topics.downlink(GW), envelope.encode_raw_records(gw=GW, sent=1, raw_records=raws), qos=1
            )
            info.wait_for_publish(10)
        task = asyncio.create_task(sync.run())
        bound = sync_mod.MAX_DOWNLINK_QUEUED + 2  # one in the handler, the queue, one waiting to join it
        await wait_for(lambda: decoded >= bound, timeout=30, what="the first downlink messages read")
        # An unbounded reader takes all 30 within milliseconds (on main: every one decoded
        # and held while the inbox is stalled); give it ample time to show.
        await asyncio.sleep(1.0)
        assert decoded == bound
        gate.set()
        await wait_for(lambda: len(handled) >= len(ids), timeout=60, what="every downlink record handled")
        assert sorted(handled) == sorted(ids)
    finally:
        pub.loop_stop()
        pub.disconnect()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gdb.close()


# -- the downlink: the gateway's inbox ------------------------------------------------------------


def downlink_record(seq: int) -> Record:
    body = {
        "record_id": uuid.uuid4().hex,
        "order_no": f"SO{seq:08d}",
        "status": "held",
        "detail": "",
        "version": 1,
    }
    return Record(uuid.uuid4().hex, seq, "order_status", 1, body)


async def test_inbox_ids_go_only_below_centrals_mark_and_before_its_report(tmp_path: Path) -> None:
    """Central's ``acked_below`` takes effect after the grace period; inbox ids below it that
    came before the report go, the rest stay - and a resend of a kept one is a duplicate."""
    gdb = DurableDB(tmp_path / f"{GW}.db", migrations=gateway_migrations())
    await gdb.open()
    try:
        inbox = Inbox(gdb)
        applied: list[str] = []

        def apply(_conn: sqlite3.Connection, rec: Record) -> None:
            applied.append(rec.id)  # the effect: counted

        inbox.register(order_status.RECORD, apply)
        recs = tuple(downlink_record(s) for s in range(1, 101))
        await inbox.handle(recs)
        t_report = now_ms()  # central's report arrives now
        grace_ms = int(gateway_retention.GRACE_S * 1000)
        assert await gateway_retention.prune_once(gdb, now=t_report, downlink_mark=(61, t_report)) == 0
        # a central with a new database numbers its downlink from 1 again, after the report
        await wait_for(lambda: now_ms() > t_report, what="the clock past the report")
        fresh = tuple(downlink_record(s) for s in range(1, 11))
        await inbox.handle(fresh)
        pruned = await gateway_retention.prune_once(gdb, now=t_report + grace_ms, batch=7)
        assert pruned == 60
        left = {r[0] for r in await gdb.read(lambda c: c.execute("SELECT id FROM inbox").fetchall())}
        assert left == {r.id for r in recs[60:]} | {r.id for r in fresh}
        again = await inbox.handle(recs[60:] + fresh)
        assert {a.status for a in again} == {AckStatus.DUPLICATE}
        assert len(applied) == 110
    finally:
        await gdb.close()


async def test_central_puts_its_downlink_mark_on_each_message(
    broker: Mosquitto, tmp_path: Path, central_backend: str
) -> None:
    cdb = central_db(central_backend)
    gdb = DurableDB(tmp_path / f"{GW}.db", migrations=gateway_migrations())
    await cdb.open()
    await gdb.open()
    inbox = Inbox(gdb)
    inbox.register(order_status.RECORD, order_status.apply_order_status)
    sync = Sync(
        gateway_id=GW, outbox=Outbox(gdb), mqtt=MqttSettings(port=broker.port), on_records=inbox.handle
    )
    sender = downlink.DownlinkSender(cdb)
    tasks = [asyncio.create_task(sync.run())]
    try:
        await sync.connected.wait()

        def enqueue(conn: sqlite3.Connection) -> list[int]:
            for s in range(5):
                downlink.enqueue(conn, gateway=GW, type="order_status", body=downlink_record(s + 1).body)
            return [r[0] for r in conn.execute("SELECT seq FROM downlink_outbox ORDER BY seq")]

        seqs = await cdb.write(enqueue)
        async with MqttClient(
            "127.0.0.1", broker.port, identifier="central-ret", protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            tasks.append(asyncio.create_task(sender.run(client)))
            await wait_for(
                lambda: sync.downlink_acked_below is not None, timeout=30, what="a downlink message"
            )
            assert sync.downlink_acked_below is not None
            assert sync.downlink_acked_below[0] == seqs[0]  # nothing acked yet when it went
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await t
        await gdb.close()
        await cdb.close()
