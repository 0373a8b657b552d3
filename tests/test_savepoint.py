"""runtime.sqlitedb.savepoint, the one way the code takes a savepoint, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.sqlitedb import DatabaseError, connect, savepoint


def _rows(conn) -> list[int]:  # type: ignore[no-untyped-def]
    return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]


def test_a_block_is_kept_when_it_ends_and_undone_when_it_raises(tmp_path: Path) -> None:
    conn = connect(tmp_path / "sp.db")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.execute("BEGIN IMMEDIATE")
    with savepoint(conn, "one"):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), savepoint(conn, "two"):
        conn.execute("INSERT INTO t VALUES (2)")
        _ = 1 / 0
    with savepoint(conn, "three") as sp:  # a batch that starts again row by row
        conn.execute("INSERT INTO t VALUES (3)")
        sp.rollback()
        conn.execute("INSERT INTO t VALUES (4)")
    assert conn.in_transaction  # released, not committed: the enclosing transaction decides
    conn.execute("COMMIT")
    assert _rows(conn) == [1, 4]
    conn.close()


def test_a_transaction_rolled_back_under_the_block(tmp_path: Path) -> None:
    """SQLite can roll the whole transaction back under a savepoint (a full disk does): the
    block's own error goes on untouched; a block that ended normally is an error."""
    conn = connect(tmp_path / "sp.db")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(KeyError), savepoint(conn, "gone"):
        conn.execute("ROLLBACK")
        raise KeyError("the block's own")
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseError, match="rolled back under savepoint gone"), savepoint(conn, "gone"):
        conn.execute("ROLLBACK")
    assert not conn.in_transaction
    conn.close()


def test_a_name_must_be_an_identifier(tmp_path: Path) -> None:
    conn = connect(tmp_path / "sp.db")
    with pytest.raises(ValueError, match="identifier"):
        savepoint(conn, "x; DROP TABLE t")
    conn.close()
