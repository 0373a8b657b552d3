"""Leases: which of several central workers on one database does a job that only one may do.

A lease is a row ``(name, owner, until_ms)`` in ``leases``. A worker takes a lease that is
free or expired, or its own, with one atomic statement (an upsert whose update is guarded by
``owner = me OR until_ms < now``: the database serialises two workers racing for the same
row, and exactly one of them gets it back from ``RETURNING``); it renews every lease it holds
with one ``UPDATE ... WHERE owner = me AND until_ms >= now``; a worker that dies (SIGKILL, a
lost host) stops renewing, and another takes its leases over once they expire.

Names used by central (``central.app``, ``central.downlink``):

- ``downlink/<gateway>``: the worker that sends that gateway its downlink (the window of
  unacked messages is kept in the owner's memory: one sender per gateway);
- ``job/schedule``, ``job/retention``, ``job/release``, ``job/fleet-alerts``: the periodic jobs
  that must run in one worker at a time.

A job that must not overlap even at a hand-over (the old owner paused past its lease while a
write was under way) calls :func:`hold` inside its write transaction: on PostgreSQL the lease
row is locked until that transaction ends (a take-over waits for it, and a job started after a
take-over fails with :class:`LeaseLost`); on SQLite the single writer already serialises.

Times are the workers' wall clocks (``now_ms``): workers on several hosts need their clocks
in step (NTP) to well within :data:`TTL_S`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
from collections.abc import Iterable

from central import CentralError
from runtime.dbapi import dialect
from runtime.sqlitedb import Migration

log = logging.getLogger(__name__)

# A lease lives this long after it was last renewed; the holder renews every RENEW_S and
# counts it as its own only until SAFE_S after its last renewal (a margin for a slow renewal:
# the holder gives a lease up in its own mind before anyone else may take it).
TTL_S = 10.0
RENEW_S = 2.0
SAFE_S = 6.0

MIGRATIONS = [
    Migration(
        "leases_0001",
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            until_ms INTEGER NOT NULL,
            taken_at INTEGER NOT NULL
        );
        CREATE INDEX leases_owner ON leases(owner, name);
        """,
    )
]


class LeaseLost(CentralError):
    """The lease ``name`` is not (or no longer) held by ``owner``."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"lease {name!r} is not held by {owner!r}")
        self.name = name
        self.owner = owner


def new_owner(worker: str) -> str:
    """A lease owner for one run of a worker: its name, host, pid and a random part, so a
    restarted worker (or two started by mistake under one name) never mistakes another run's
    lease for its own."""
    return f"{worker}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


_CLAIM = (
    "INSERT INTO leases (name, owner, until_ms, taken_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms,"
    " taken_at = CASE WHEN leases.owner = excluded.owner THEN leases.taken_at ELSE excluded.taken_at END"
    " WHERE leases.owner = excluded.owner OR leases.until_ms < ?"
    " RETURNING name"
)


def claim(conn: sqlite3.Connection, names: Iterable[str], *, owner: str, now: int, ttl_ms: int) -> list[str]:
    """Take (or renew) each lease of ``names`` that is free, expired or ``owner``'s; return
    the names now held. Names in sorted order: two workers claiming overlapping sets lock the
    rows in one order (no deadlock on PostgreSQL)."""
    got = []
    for name in sorted(set(names)):
        row = conn.execute(_CLAIM, (name, owner, now + ttl_ms, now, now)).fetchone()
        if row is not None:
            got.append(str(row[0]))
    return got


def renew(conn: sqlite3.Connection, *, owner: str, now: int, ttl_ms: int) -> set[str]:
    """Renew every lease ``owner`` still holds (not expired); return their names. A lease that
    expired before this renewal is not renewed (another worker may have it by now)."""
    return {
        str(r[0])
        for r in conn.execute(
            "UPDATE leases SET until_ms = ? WHERE owner = ? AND until_ms >= ? RETURNING name",
            (now + ttl_ms, owner, now),
        ).fetchall()
    }


def release(conn: sqlite3.Connection, names: Iterable[str], *, owner: str) -> None:
    """Give leases up at once (a clean stop): another worker need not wait for them to expire."""
    conn.executemany(
        "DELETE FROM leases WHERE name = ? AND owner = ?", [(n, owner) for n in sorted(set(names))]
    )


def hold(conn: sqlite3.Connection, name: str, *, owner: str, now: int) -> None:
    """Inside a write transaction: raise :class:`LeaseLost` unless ``owner`` holds ``name``
    now, and keep it until the transaction ends (the row is locked on PostgreSQL; the
    single writer does that on SQLite)."""
    sql = "SELECT owner FROM leases WHERE name = ? AND owner = ? AND until_ms >= ?"
    if dialect(conn) == "postgresql":  # lock the row
        sql += " FOR UPDATE"
    if conn.execute(sql, (name, owner, now)).fetchone() is None:
        raise LeaseLost(name, owner)


def holders(conn: sqlite3.Connection, *, prefix: str, now: int) -> dict[str, str]:
    """Live leases whose name starts with ``prefix``: name -> owner (for health and tests)."""
    return {
        str(n): str(o)
        for n, o in conn.execute(
            "SELECT name, owner FROM leases WHERE name >= ? AND name < ? AND until_ms >= ? ORDER BY name",
            (prefix, prefix + "\uffff", now),
        )
    }
