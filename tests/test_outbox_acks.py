"""The gateway outbox takes central's acks: an acked record leaves the outbox and its answer
is kept in record_results - whatever the mix of statuses, reasons and refs in one message,
and a repeated or unknown ack changes nothing; a `duplicate` (the first ack was lost) is kept
as the acceptance it repeats. Plus the multi-row insert helper it relies on
and how parameters are bound (``runtime.sqlitedb._bind_as_is``)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgpack
import pytest

from gateway.app import migrations as gateway_migrations
from gateway.outbox import Outbox
from protocols.envelope import Ack, AckStatus
from runtime.sqlitedb import DurableDB, insert_rows


async def test_acks_move_records_to_their_results(tmp_path: Path) -> None:
    async with DurableDB(tmp_path / "gw.db", migrations=gateway_migrations()) as db:
        box = Outbox(db)
        recs = [await box.submit("order", {"n": i}) for i in range(1200)]
        acks = [Ack(r.id, AckStatus.ACCEPTED) for r in recs[:1100]]
        acks[7] = Ack(recs[7].id, AckStatus.REJECTED, "no credit")
        acks[8] = Ack(recs[8].id, AckStatus.DUPLICATE, None, "SO00000008")
        acks[9] = Ack(recs[9].id, AckStatus.DUPLICATE)
        acks[10] = Ack(recs[10].id, AckStatus.REJECTED)
        assert await box.apply_acks([*acks, Ack("not-ours", AckStatus.ACCEPTED)]) == 1100
        assert (await box.backlog()).count == 100
        r7 = await box.result(recs[7].id)
        assert r7 is not None
        assert (r7["type"], r7["status"], r7["reason"]) == ("order", "rejected", "no credit")
        got = {i: await box.result(recs[i].id) for i in (0, 8, 9, 10, 1099, 1100)}
        assert {i: (r or {}).get("status") for i, r in got.items()} == {
            0: "accepted",
            8: "accepted",  # a `duplicate` answers a resend whose first ack was lost:
            9: "accepted",  # central took the record once, and that is what the store sees
            10: "rejected",
            1099: "accepted",
            1100: "pending",
        }
        assert (got[8] or {})["ref"] == "SO00000008" and (got[0] or {})["ref"] is None
        assert box.acks_repeated == 2
        # the same acks again (a resend's repeat): nothing left to remove, answers unchanged
        assert await box.apply_acks(acks) == 0
        assert (await box.result(recs[7].id) or {})["reason"] == "no credit"
        pending = await box.pending(after_seq=0, limit=1000)
        assert [rid for _s, rid, _p in pending] == [r.id for r in recs[1100:]]


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 1024, 1025, 5000])
def test_insert_rows_inserts_every_row_in_order(n: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT, c TEXT)")
    rows = [(i, f"r{i}") for i in range(n)]
    insert_rows(conn, "INSERT INTO t (a, b, c)", rows, row="(?, ?, 'x')")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (n,)
    insert_rows(conn, "INSERT INTO t (a, b)", rows)
    rows = rows + rows
    assert conn.execute("SELECT a, b FROM t ORDER BY rowid").fetchall() == rows
    assert conn.execute("SELECT count(*) FROM t WHERE c = 'x'").fetchone() == (n,)


async def test_a_repeated_record_id_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async with DurableDB(tmp_path / "gw.db", migrations=gateway_migrations()) as db:
        box = Outbox(db)
        first = await box.submit("order", {"n": 0})
        results = await asyncio.gather(
            *(box.submit("order", {"n": i}) for i in range(1, 6)),
            box.submit("order", {"n": 99}, record_id=first.id),
            *(box.submit("order", {"n": i}) for i in range(6, 11)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results].count("IntegrityError") == 1
        assert isinstance(results[5], sqlite3.IntegrityError)
        assert (await box.backlog()).count == 11
        pending = await box.pending(after_seq=0, limit=100)
        assert [msgpack.unpackb(p)["body"]["n"] for _s, _rid, p in pending] == list(range(11))


def test_none_and_bytes_bind_as_they_are_without_the_adapt_lookup() -> None:
    """None is stored as NULL and bytes as a BLOB, as sqlite3 does by default, but through
    the identity adapters runtime.sqlitedb registers: no ``__adapt__`` lookup (which raises and
    formats an AttributeError per value). A bytes subclass, an int/str subclass and a
    registered adapter of another type behave as before."""

    class Tag(bytes):
        def __conform__(self, proto: object) -> bytes:
            return b"conformed"

    class Mark(str):
        pass

    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)](b"ab") == b"ab"
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
    blob = b"\x00\x01raw"
    assert sqlite3.adapt(blob) is blob and sqlite3.adapt(None) is None
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b, c, d)")
    insert_rows(conn, "INSERT INTO t (a, b, c, d)", [(None, blob, Tag(b"x"), Mark("m"))] * 3)
    assert (
        conn.execute("SELECT typeof(a), typeof(b), b, c, typeof(d), d FROM t").fetchall()
        == [("null", "blob", blob, b"conformed", "text", "m")] * 3
    )
