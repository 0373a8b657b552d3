"""The write-ahead log gives its disk back: after a burst (a gateway draining a long outage's
backlog, central taking a store's resent day) the -wal file is cut back to ``wal_limit`` once a
checkpoint has emptied it, instead of keeping the burst's size for good (real SQLite files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime.sqlitedb import WAL_LIMIT_BYTES, DurableDB

MIB = 1024 * 1024


async def _burst_then_trickle(path: Path, wal_limit: int) -> tuple[int, int]:
    """(-wal size after an ~8 MB transaction, -wal size after a few small commits)."""
    wal = path.with_name(path.name + "-wal")
    async with DurableDB(path, wal_limit=wal_limit) as db:
        await db.write(lambda c: c.execute("CREATE TABLE t (x BLOB)"))

        def burst(c: sqlite3.Connection) -> None:
            c.executemany("INSERT INTO t VALUES (randomblob(2000))", [()] * 4000)

        await db.write(burst)
        after_burst = await db.read(lambda _c: wal.stat().st_size)
        await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
        for i in range(3):
            await db.write(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
        return after_burst, await db.read(lambda _c: wal.stat().st_size)


@pytest.mark.parametrize(("wal_limit", "kept_small"), [(MIB, True), (-1, False)])
async def test_the_wal_is_cut_back_after_a_burst(tmp_path: Path, wal_limit: int, kept_small: bool) -> None:
    after_burst, after = await _burst_then_trickle(tmp_path / "gw.db", wal_limit)
    assert after_burst > 7 * MIB
    if kept_small:
        assert after <= MIB
    else:  # SQLite's own default (no limit): the file keeps the burst's size - what this prevents
        assert after == after_burst


async def test_every_connection_has_the_default_limit(tmp_path: Path) -> None:
    async with DurableDB(tmp_path / "c.db") as db:
        w = await db.write(lambda c: c.execute("PRAGMA journal_size_limit").fetchone()[0])
        r = await db.read(lambda c: c.execute("PRAGMA journal_size_limit").fetchone()[0])
    assert w == r == WAL_LIMIT_BYTES
