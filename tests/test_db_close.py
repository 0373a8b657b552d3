"""Closing a :class:`DurableDB` while a group commit runs in its writer thread.

The COMMIT cannot be stopped once the thread runs it. ``close()`` cancels the writer task; it
used to report every job of that group as failed (``DatabaseError`` from the cancellation)
and log the cancellation as a failed commit with a traceback - at every stop of a busy gateway
- although the rows were committed. Now the writer waits for the group and gives each job its
true outcome. Real SQLite file, real writer thread."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from ops.sqlitedb import DurableDB, Migration
from tests.conftest import wait_for

MIGRATIONS = [Migration("t_0001", "CREATE TABLE t (v INTEGER NOT NULL)")]
HOLD_S = 10.0  # the job waits at most this long for the test to let it go


async def test_close_during_a_commit_gives_the_job_its_result_and_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = DurableDB(tmp_path / "t.db", migrations=MIGRATIONS)
    await db.open()
    started, release = threading.Event(), threading.Event()

    def job(conn: sqlite3.Connection) -> int:
        started.set()
        release.wait(HOLD_S)
        conn.execute("INSERT INTO t (v) VALUES (42)")
        return 42

    fut = db.write(job)
    assert await asyncio.to_thread(started.wait, HOLD_S), "the job never ran"
    caplog.set_level(logging.DEBUG, logger=DurableDB.__module__)
    closing = asyncio.create_task(db.close())
    writer = db._task
    assert writer is not None

    async def writer_cancelled() -> bool:
        return writer.cancelling() > 0

    await wait_for(writer_cancelled, timeout=5, what="close() to cancel the writer")
    release.set()  # the group now finishes in its thread while the writer is being cancelled
    await asyncio.wait_for(closing, HOLD_S)
    assert await fut == 42  # committed, and the caller is told so
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]
    finally:
        conn.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
