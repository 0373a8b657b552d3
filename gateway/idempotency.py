"""Idempotent order entry: a client that did not see the answer may send the order again and
gets the first answer back, never a second order (``protocols/GATEWAY-HTTP.md``).

Two things name an order the gateway has already taken:

- the request's ``Idempotency-Key`` header (IETF httpapi draft "The Idempotency-Key HTTP Header
  Field"): same key and same order -> the original answer (status and JSON body) replayed;
  same key and another order -> 422; a malformed key -> 400;
- the order's ``(customer, source_ref)`` where the order carries a ``source_ref`` that is the
  client's own reference for it (every order type but ``contract`` and ``voucher``, whose
  ``source_ref`` names a contract or voucher that many orders may share): the same order again
  -> the original answer, also without the header; another order under that reference -> 422
  (not 409: the draft's 409 tells a client to retry unchanged, which would never succeed).

"The same order" means the same order once parsed (:func:`fingerprint`): JSON spacing, key order
and defaulted fields do not matter. The header's parser and the fingerprint are shared with
central's own ``POST /api/orders`` (``protocols/idempotency.py``).

The other requests that create a record use the same rows through :func:`replay` and
:func:`remember`, each under its own scope: a clerk's change to an order (``Idempotency-Key``
of ``POST /api/orders/{id}/changes``, ``gateway/order_changes.py``) and a supplier's answer to a
drop-ship order (named by the order and the state it moves to, ``gateway/supplier.py``).

The key -> answer rows are written in the SAME database job as the order's outbox record
(:meth:`OrderEntry.submit`), so one commit holds both: a crash leaves either the order with its
keys or neither. Two requests with one key cannot both create: the gateway's single writer runs
their jobs one after the other, and the second finds the first's row.

Retention: a row is kept :data:`KEEP_S` (7 days) after its order was created and then pruned
(a few expired rows at each keyed entry). Clients retry a key for at most :data:`RETRY_WINDOW_S`
(24 hours) after their first attempt; the first attempt precedes the commit, so every retry
falls within 24 hours of the row's creation, well inside the 7 days: pruning never reopens a
duplicate window for a client that keeps to the retry window.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from gateway import edge_checks
from gateway.outbox import Outbox, now_ms
from ops.sqlitedb import Migration
from protocols.envelope import Record
from protocols.idempotency import (  # shared with central's POST /api/orders; the gateway's names
    HEADER,
    IdempotencyError,
    fingerprint,
)
from protocols.records import OrderBody

log = logging.getLogger(__name__)

RETRY_WINDOW_S = 24 * 3600  # a client may send one key again for this long after its first try
KEEP_S = 7 * 24 * 3600  # a key (and a source_ref) is remembered this long after its order's commit
PRUNE_BATCH = 64  # expired rows removed per keyed entry

SCOPE_KEY = 1  # rows named by an Idempotency-Key of POST /api/orders
SCOPE_REF = 2  # rows named by an order's (customer, source_ref)
SCOPE_CHANGE = 3  # rows named by an Idempotency-Key of POST /api/orders/{id}/changes
SCOPE_TRANSITION = 4  # rows named by a drop-ship order's (order_no, state): the supplier's answer
REF_TYPES_EXCLUDED = frozenset({"contract", "voucher"})  # source_ref names a shared contract/voucher

MIGRATIONS = [
    Migration(
        "idempotency_0001",
        """
        CREATE TABLE idempotency (
            scope INTEGER NOT NULL,
            key TEXT NOT NULL,
            fingerprint BLOB NOT NULL,
            status INTEGER NOT NULL,
            answer TEXT NOT NULL,
            record_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        CREATE INDEX idempotency_created ON idempotency(created_at);
        """,
    )
]


def source_ref_name(order: dict[str, Any]) -> str | None:
    """The ``(customer, source_ref)`` name of an order, or None if its source_ref does not
    identify it (none given, or a contract/voucher code)."""
    ref = order.get("source_ref") or ""
    if not ref or order.get("order_type") in REF_TYPES_EXCLUDED:
        return None
    return json.dumps([order["customer"], ref], ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client is told: ``status`` and the JSON ``body``. ``replayed``: the original
    answer of an earlier request."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class _Row:
    fingerprint: bytes
    status: int
    answer: str
    record_id: str


def _find(conn: sqlite3.Connection, scope: int, key: str) -> _Row | None:
    row = conn.execute(
        "SELECT fingerprint, status, answer, record_id FROM idempotency WHERE scope = ? AND key = ?",
        (scope, key),
    ).fetchone()
    return _Row(*row) if row else None


def _remember(conn: sqlite3.Connection, scope: int, key: str, row: _Row, *, now: int) -> None:
    conn.execute(
        "INSERT INTO idempotency (scope, key, fingerprint, status, answer, record_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (scope, key, row.fingerprint, row.status, row.answer, row.record_id, now),
    )


def replay(conn: sqlite3.Connection, scope: int, key: str, fp: bytes, *, clash: str) -> Answer | None:
    """The answer remembered under ``key`` for the same request (fingerprint ``fp``), to be
    replayed; None when the key is new. Raises :class:`IdempotencyError` (422, ``clash`` and the
    record) when the key was remembered for another request."""
    row = _find(conn, scope, key)
    if row is None:
        return None
    if row.fingerprint != fp:
        raise IdempotencyError(422, f"{clash} (record {row.record_id})")
    return Answer(row.status, json.loads(row.answer), replayed=True)


def remember(
    conn: sqlite3.Connection, scope: int, key: str, fp: bytes, answer: Answer, *, record_id: str
) -> None:
    """Keep ``answer`` (of the request that created ``record_id``) under ``key``: call it in the
    database job that creates the record, so one commit holds both. Prunes expired rows."""
    now = now_ms()
    _remember(conn, scope, key, _Row(fp, answer.status, json.dumps(answer.body), record_id), now=now)
    prune(conn, now=now)


def prune(conn: sqlite3.Connection, *, now: int, limit: int = PRUNE_BATCH) -> int:
    """Remove up to ``limit`` rows older than :data:`KEEP_S`; returns how many."""
    return conn.execute(
        "DELETE FROM idempotency WHERE (scope, key) IN"
        " (SELECT scope, key FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)",
        (now - KEEP_S * 1000, limit),
    ).rowcount


class OrderEntry:
    """Puts orders entered over HTTP into the outbox, at most once per key or source_ref."""

    def __init__(self, *, outbox: Outbox, gateway_id: str, customer: str = "") -> None:
        self.outbox = outbox
        self.gateway_id = gateway_id
        self.customer = customer  # this store's customer code at central (the edge checks)
        self.replayed = 0  # answers replayed (a client's repeat, recognised)

    def _enter(self, conn: sqlite3.Connection, parsed: OrderBody) -> tuple[Record | None, dict[str, Any]]:
        """The edge checks, then the outbox (``gateway/edge_checks.py``): the record and the
        201 body, or None and the 422 body naming each refused line."""
        rec, verdict = edge_checks.enter_order(conn, self.outbox, parsed, store_customer=self.customer)
        if rec is None:
            refused = [r.to_json() for r in verdict.refusals]
            return None, {"error": refused[0]["reason"], "refused": refused}
        status = "held" if verdict.credit is edge_checks.Credit.HOLD else "pending"
        return rec, {"id": rec.id, "seq": rec.seq, "status": status, **verdict.to_json()}

    async def submit(self, parsed: OrderBody, *, key: str | None) -> Answer:
        """Check and commit the order and answer 201 (422 when the edge checks refuse it: not
        remembered, a retry is checked again), or answer what the first request with the same
        key or source_ref was told. Raises :class:`IdempotencyError` (422: the key was used
        for another order, or the source_ref names another order)."""
        order = parsed.to_wire()
        ref = source_ref_name(order)
        if key is None and ref is None:  # nothing names it
            rec, body = await self.outbox.db.write(lambda conn: self._enter(conn, parsed))
            if rec is None:
                return Answer(422, body)
            self.outbox.notify()
            return Answer(201, body)
        fp = fingerprint(order)

        def job(conn: sqlite3.Connection) -> Answer:
            now = now_ms()
            clash = f"{HEADER} {key!r} was already used for another order"
            if key is not None and (ans := replay(conn, SCOPE_KEY, key, fp, clash=clash)) is not None:
                return ans
            if ref is not None and (row := _find(conn, SCOPE_REF, ref)) is not None:
                if row.fingerprint != fp:
                    raise IdempotencyError(
                        422,
                        f"source_ref {order['source_ref']!r} of customer {order['customer']!r} already"
                        f" names another order (record {row.record_id})",
                    )
                if key is not None:  # the new key answers the same from now on
                    _remember(conn, SCOPE_KEY, key, row, now=now)
                return Answer(row.status, json.loads(row.answer), replayed=True)
            rec, body = self._enter(conn, parsed)
            if rec is None:
                return Answer(422, body)
            new = _Row(fingerprint=fp, status=201, answer=json.dumps(body), record_id=rec.id)
            if key is not None:
                _remember(conn, SCOPE_KEY, key, new, now=now)
            if ref is not None:
                _remember(conn, SCOPE_REF, ref, new, now=now)
            prune(conn, now=now)
            return Answer(201, body)

        answer = await self.outbox.db.write(job)
        if answer.status == 422:
            return answer
        if answer.replayed:
            self.replayed += 1
            log.info(
                "gw=%s order %s: repeat (key %r, source_ref %r), original answer replayed",
                self.gateway_id,
                answer.body.get("id"),
                key,
                order.get("source_ref"),
            )
        else:
            self.outbox.notify()
        return answer
