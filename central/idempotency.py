"""Central's ``POST /api/orders`` with an ``Idempotency-Key``: the same rules as a gateway's
(IETF httpapi draft "The Idempotency-Key HTTP Header Field"; ``protocols/idempotency.py`` reads
the header and says what "the same order" is):

- same key, same order -> the original answer (status and JSON body as first sent) again, with
  ``Idempotent-Replayed: true``; no second order;
- same key, another order -> 422 naming the key and the order it made;
- a malformed key -> 400 (:func:`protocols.idempotency.parse_key`).

The key -> answer row is written in the SAME database job as the order (:func:`remember` in the
order's job), so one commit holds both, and two requests with one key cannot both create: the
single writer runs their jobs one after the other and the second finds the first's row. An
order refused with 422 (its checks) is not remembered: a retry is checked again.

Retention: a row is kept :data:`KEEP_S` (7 days), then pruned a few at each keyed entry. The
order itself keeps its record id ``rest:<key>`` for good, so a key sent again after its row is
gone (or one used before central compared bodies) cannot make a second order: it is refused
with 422 naming the order, since its body can no longer be compared.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from protocols.idempotency import HEADER, IdempotencyError

KEEP_S = 7 * 24 * 3600  # a key is remembered this long after its order's commit (clients retry <= 24 h)
PRUNE_BATCH = 64  # expired rows removed per keyed entry


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client is told: ``status`` and the JSON ``body``; ``replayed``: the original
    answer of an earlier request with the same key."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def record_id(key: str) -> str:
    """The record id of the order entered under ``key`` (unique in ``orders``)."""
    return f"rest:{key}"


def replay(conn: sqlite3.Connection, key: str, fp: bytes) -> Answer | None:
    """The answer remembered under ``key`` for the same order (fingerprint ``fp``); None when
    the key is new. Raises :class:`IdempotencyError` (422) when the key made another order."""
    row = conn.execute(
        "SELECT fingerprint, status, answer, order_no FROM idempotency WHERE key = ?", (key,)
    ).fetchone()
    if row is not None:
        if row[0] != fp:
            raise IdempotencyError(422, f"{HEADER} {key!r} was already used for another order ({row[3]})")
        return Answer(row[1], json.loads(row[2]), replayed=True)
    old = conn.execute("SELECT order_no FROM orders WHERE record_id = ?", (record_id(key),)).fetchone()
    if old is not None:
        raise IdempotencyError(
            422,
            f"{HEADER} {key!r} made order {old[0]} and is no longer remembered with its body"
            f" (kept {KEEP_S // 86400} days); send a new order with a new key",
        )
    return None


def remember(
    conn: sqlite3.Connection, key: str, fp: bytes, answer: Answer, *, order_no: str, now: int
) -> None:
    """Keep ``answer`` under ``key``: call it in the job that creates the order, so one commit
    holds both. Prunes expired rows."""
    conn.execute(
        "INSERT INTO idempotency (key, fingerprint, status, answer, order_no, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (key, fp, answer.status, json.dumps(answer.body, default=str), order_no, now),
    )
    conn.execute(
        "DELETE FROM idempotency WHERE key IN"
        " (SELECT key FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)",
        (now - KEEP_S * 1000, PRUNE_BATCH),
    )
