"""Several central workers on one database (issue 17): leases, and each gateway's downlink
sent by one worker, its acks seen whichever worker received them, taken over when its sender
dies. On SQLite and on PostgreSQL (``central_backend``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from functools import partial
from typing import Any

import aiomqtt
import pytest

from central import downlink, leases, workers
from central.migrations import central_db
from ops.broker import Mosquitto
from protocols import envelope, topics
from protocols.envelope import Ack, AckStatus
from tests.conftest import wait_for

pytestmark = pytest.mark.parametrize("central_backend", ["sqlite", "postgresql"], indirect=True)

TTL = 2000


async def test_a_lease_has_one_owner_is_renewed_and_taken_over_when_it_expires(central_backend: str) -> None:
    db = central_db(central_backend)
    await db.open()
    try:

        async def claim(owner: str, now: int, *names: str) -> list[str]:
            got: list[str] = await db.write(
                partial(leases.claim, names=names, owner=owner, now=now, ttl_ms=TTL)
            )
            return got

        assert await claim("a", 1000, "job/x", "downlink/g1") == ["downlink/g1", "job/x"]
        assert await claim("b", 1500, "job/x", "downlink/g1", "downlink/g2") == ["downlink/g2"]
        assert await claim("a", 1600, "job/x") == ["job/x"]  # its own: renewed
        # a renews what it holds; b's lease is not a's
        held = await db.write(partial(leases.renew, owner="a", now=2000, ttl_ms=TTL))
        assert held == {"job/x", "downlink/g1"}
        # a stops renewing (dies): until its leases expire nobody else gets them, then b does
        assert await claim("b", 3999, "job/x") == []
        assert await claim("b", 4001, "job/x", "downlink/g1") == ["downlink/g1", "job/x"]
        # a, back from a long pause, has lost them: its renewal says so, its fence refuses
        assert await db.write(partial(leases.renew, owner="a", now=4002, ttl_ms=TTL)) == set()
        with pytest.raises(leases.LeaseLost):
            await db.write(partial(leases.hold, name="job/x", owner="a", now=4002))
        await db.write(partial(leases.hold, name="job/x", owner="b", now=4002))
        holders = await db.read(partial(leases.holders, prefix="downlink/", now=4002))
        assert holders == {"downlink/g1": "b"}  # g2 (b's since 1500) expired at 3500
        await db.write(partial(leases.release, names=["job/x"], owner="b"))
        assert await claim("a", 4003, "job/x") == ["job/x"]  # given up: free at once
    finally:
        await db.close()


async def test_two_workers_racing_for_leases_each_get_a_lease_once(central_backend: str) -> None:
    """Two databases handles (two workers) claim the same names at the same instants: every
    name goes to exactly one of them."""
    dbs = [central_db(central_backend), central_db(central_backend)]
    for db in dbs:
        await db.open()
    try:
        names = [f"downlink/gw-{i:03d}" for i in range(60)]
        for rnd in range(5):
            now = 10_000 * (rnd + 1)  # every lease of the round before has expired
            got = await asyncio.gather(
                *(
                    db.write(partial(leases.claim, names=names, owner=f"w{k}-{rnd}", now=now, ttl_ms=TTL))
                    for k, db in enumerate(dbs)
                )
            )
            assert sorted(got[0] + got[1]) == names
    finally:
        for db in dbs:
            await db.close()


@pytest.fixture
def fast_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "TTL_S", 3.0)
    monkeypatch.setattr(leases, "SAFE_S", 2.0)  # a busy box may stall a loop for a second
    monkeypatch.setattr(leases, "RENEW_S", 0.3)
    monkeypatch.setattr(downlink, "CLAIM_EVERY_S", 0.1)
    monkeypatch.setattr(downlink, "POLL_S", 0.05)


GW = "store-7"
_V5 = aiomqtt.ProtocolVersion.V5


async def test_one_worker_sends_a_gateways_downlink_acks_seen_anywhere_and_taken_over(
    central_backend: str, broker: Mosquitto, fast_leases: None
) -> None:
    """Workers A and B share a database. 4,600 records for one gateway go out 500 a message,
    4 messages in flight: only the lease holder publishes; the gateway's acks are applied
    through the OTHER worker (as the shared subscription may hand them there), and the sender
    sees them in the database and goes on. Then the sender dies without a word (its tasks
    cancelled, its lease left to expire): the other takes the gateway over and the rest
    arrives. Every record arrives; what went twice is at most what was in flight at the death."""
    dbs = [central_db(central_backend), central_db(central_backend)]
    for db in dbs:
        await db.open()
    received: Counter[str] = Counter()
    messages: list[int] = []
    ack_through: list[Any] = []  # the database of the worker acks are applied through
    try:
        total = 4600
        for i in range(0, total, 500):
            await dbs[0].write(
                lambda c, i=i: [
                    downlink.enqueue(c, gateway=GW, type="test_item", body={"n": n})
                    for n in range(i, min(total, i + 500))
                ]
            )
        ws = [workers.Worker(db, name=f"central-{k}") for k, db in enumerate(dbs)]
        senders = [downlink.DownlinkSender(db, owner=w) for db, w in zip(dbs, ws, strict=True)]
        for w in ws:
            await w.start()
        hold_acks = asyncio.Event()  # while clear, the gateway acks what arrives

        async def gateway(client: aiomqtt.Client) -> None:
            async for msg in client.messages:
                env = envelope.decode(bytes(msg.payload))  # type: ignore[arg-type]
                messages.append(len(env.records))
                for r in env.records:
                    received[r.id] += 1
                if hold_acks.is_set():
                    continue
                acks = [Ack(r.id, AckStatus.ACCEPTED) for r in env.records]
                owner = next(k for k, w in enumerate(ws) if w.holds(downlink.LEASE_PREFIX + GW))
                db = dbs[1 - owner]  # the worker that does NOT send: its consumer got the acks
                ack_through.append(db)
                await db.write(partial(downlink.apply_gateway_acks, gateway=GW, acks=acks))

        async def left() -> bool:
            n = await dbs[0].read(lambda c: c.execute("SELECT count(*) FROM downlink_outbox").fetchone()[0])
            return bool(n == 0)

        async with (
            aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-7", protocol=_V5) as gc,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="c-0", protocol=_V5) as c0,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="c-1", protocol=_V5) as c1,
        ):
            await gc.subscribe(topics.downlink(GW), qos=1)
            tasks = [asyncio.create_task(gateway(gc))]
            wtasks = [asyncio.create_task(w.run()) for w in ws]
            stasks = [asyncio.create_task(s.run(c)) for s, c in zip(senders, (c0, c1), strict=True)]
            tasks += wtasks + stasks
            try:
                await wait_for(lambda: received.total() >= 2500, timeout=30, what="past the first window")
                owners = [k for k, w in enumerate(ws) if w.holds(downlink.LEASE_PREFIX + GW)]
                assert len(owners) == 1
                owner = owners[0]
                assert senders[1 - owner].sent == 0  # the other worker sent nothing
                assert senders[owner].acked_elsewhere > 0  # the acks came only through the other
                # the owner dies with a message in flight and unacked; its lease is left to expire
                hold_acks.set()
                at = received.total()
                await wait_for(lambda: received.total() > at, timeout=10, what="a message in flight")
                for t in (stasks[owner], wtasks[owner]):
                    t.cancel()
                sent_before = senders[owner].sent
                hold_acks.clear()
                # the lease runs out TTL_S (10 s) after the owner's last renewal, the other
                # claims within CLAIM_EVERY_S after that; a loaded box (the whole suite with
                # PostgreSQL) once took longer than 20 s in all: the bound is what matters, not speed
                await wait_for(
                    lambda: ws[1 - owner].holds(downlink.LEASE_PREFIX + GW), timeout=40, what="the take-over"
                )
                await wait_for(left, timeout=30, what="every record acked")
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
    finally:
        for db in dbs:
            await db.close()
    assert len(received) == total  # every record arrived
    twice = sum(n - 1 for n in received.values())
    assert twice <= downlink.WINDOW * downlink.BATCH_RECORDS  # at most the window at the death
    assert sent_before < total and max(messages) <= downlink.BATCH_RECORDS
    assert any(db is dbs[0] for db in ack_through) and any(db is dbs[1] for db in ack_through)


@pytest.mark.parametrize("watch", ["hole", "reconcile"])
async def test_a_record_committed_below_what_was_sent_still_goes(
    central_backend: str, broker: Mosquitto, fast_leases: None, monkeypatch: pytest.MonkeyPatch, watch: str
) -> None:
    """On PostgreSQL a record's seq is taken before its transaction commits, so a record may
    appear below what the sender already sent (another worker's slower transaction). Records
    seq 1-3, then 5-8 are queued and sent; seq 4 commits afterwards: it is sent too - found by
    the watch on the hole it left, or (the hole watch given up at once) by the sender's
    periodic look below its cursor."""
    if watch == "reconcile":
        monkeypatch.setattr(downlink, "LATE_S", 0.0)
        monkeypatch.setattr(downlink, "RECONCILE_S", 0.3)
    db = central_db(central_backend)
    await db.open()
    received: Counter[str] = Counter()

    def queue(seqs: list[int]) -> Any:
        rows = [downlink.packed_row(GW, "test_item", {"n": s}, seq=s) for s in seqs]
        return partial(downlink.insert_rows, rows=rows)

    try:
        await db.write(queue([1, 2, 3]))
        w = workers.Worker(db, name="central-0")
        await w.start()
        sender = downlink.DownlinkSender(db, owner=w)

        async def gateway(client: aiomqtt.Client) -> None:
            async for msg in client.messages:
                env = envelope.decode(bytes(msg.payload))  # type: ignore[arg-type]
                for r in env.records:
                    received[r.id] += 1
                acks = [Ack(r.id, AckStatus.ACCEPTED) for r in env.records]
                await db.write(partial(downlink.apply_gateway_acks, gateway=GW, acks=acks))

        async with (
            aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-7", protocol=_V5) as gc,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="c-0", protocol=_V5) as c0,
        ):
            await gc.subscribe(topics.downlink(GW), qos=1)
            tasks = [asyncio.create_task(gateway(gc)), asyncio.create_task(w.run())]
            tasks.append(asyncio.create_task(sender.run(c0)))
            try:
                await wait_for(lambda: received.total() == 3, timeout=20, what="the first three")
                await db.write(queue([5, 6, 7, 8]))  # seq 4 taken by a transaction not committed yet
                await wait_for(lambda: received.total() == 7, timeout=20, what="5 to 8")
                await asyncio.sleep(0.2)  # the sender has looked again since (POLL_S 0.05)
                await db.write(queue([4]))  # the late one
                await wait_for(lambda: received.total() == 8, timeout=20, what="the late record")
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
        assert sender.late == 1 and set(received.values()) == {1}
    finally:
        await db.close()


async def test_processing_takes_one_gateways_records_in_one_worker_at_a_time(
    central_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' processing jobs at once (PostgreSQL): while one holds gateway A's queued
    records (its transaction open), the other skips A - also A's records queued after B's -
    and takes B's; once the first commits, A's are free again. On SQLite the single writer
    serialises the jobs, so each sees the whole queue."""
    from central.intake import ingest
    from protocols.envelope import Envelope, Record

    monkeypatch.setattr(ingest, "CLAIM_GATEWAYS", 1)
    db = central_db(central_backend)
    await db.open()
    try:
        for gw in ("gw-a", "gw-b", "gw-a"):  # queue rows: a, b, a (a type checked only when processed)
            n = await db.read(lambda c: c.execute("SELECT count(*) FROM work_queue").fetchone()[0])
            env = Envelope(gw=gw, sent=0, records=(Record(f"{gw}-{n}", n + 1, "pick_result", 1, {}),))
            await db.write(partial(ingest.receive_envelope, topic_gw=gw, topic=topics.uplink(gw), env=env))
        if central_backend.startswith("postgresql://"):
            import psycopg

            from runtime.pgdb import PgConnection

            with (
                psycopg.connect(central_backend, autocommit=True) as r1,
                psycopg.connect(central_backend, autocommit=True) as r2,
            ):
                one, two = PgConnection(r1), PgConnection(r2)
                r1.execute("BEGIN")
                r2.execute("BEGIN")
                first = [row[1] for row in ingest._claim_queue(one)]  # type: ignore[arg-type]
                second = [row[1] for row in ingest._claim_queue(two)]  # type: ignore[arg-type]
                assert first == ["gw-a", "gw-a"] and second == ["gw-b"]
                r1.execute("COMMIT")  # a's lock goes with the transaction
                r2.execute("ROLLBACK")
                r2.execute("BEGIN")
                assert [row[1] for row in ingest._claim_queue(two)] == ["gw-a", "gw-a"]  # type: ignore[arg-type]
                r2.execute("ROLLBACK")
        else:
            got = await db.write(lambda c: [row[1] for row in ingest._claim_queue(c)])
            assert got == ["gw-a", "gw-b", "gw-a"]
    finally:
        await db.close()
