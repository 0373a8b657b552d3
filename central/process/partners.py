"""Partners: 3PLs and drop-ship suppliers reporting on the orders they fulfil.

The partners master (``partners``): code, kind (``3pl`` or ``supplier`` - a supplier's code is
its location code, the item master's ``supplier``), name, an API key (random, shown once,
stored as its SHA-256) and ``active``. A partner is its own principal kind, apart from the
REST users of ``central.web.auth``: its key opens ``POST /api/partner/orders/{no}/events`` and
nothing else.

A partner fulfils an order when a line of it is the partner's: a 3PL's through the line's
process definition (``process_lines.partner``), a supplier's through the drop-ship
(``drop_ships``). Any other order - also one that does not exist - is 403 for it.

An event (``protocols/partner_events.py``) lands in the order's history with the partner named
and moves the order's lines and status (``central/PARTNERS.md``); its ``event_id`` makes it
idempotent: the same id with the same event answers the first answer again, with another
event 422. Both the effect and the remembered answer commit in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from central import CentralError
from central.orders import lifecycle, ordertypes
from central.process import tracker
from protocols.partner_events import PartnerEvent
from runtime.dbapi import IntegrityError
from runtime.sqlitedb import savepoint

KINDS = ("3pl", "supplier")
CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class PartnerError(CentralError):
    """``status``: 400 bad input, 401 no/bad key, 403 not the partner's order, 409 the order's
    state forbids it, 422 an event id used for another event."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Partner:
    code: str
    kind: str
    name: str


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_partner(conn: sqlite3.Connection, code: str, kind: str, *, name: str = "", now: int) -> str:
    """Create a partner or give it a new key (the old one stops working); returns the key."""
    if not CODE.match(code):
        raise PartnerError(400, f"code {code!r}: 1-32 characters of A-Z a-z 0-9 _ . -")
    if kind not in KINDS:
        raise PartnerError(400, f"kind {kind!r}: one of {', '.join(KINDS)}")
    if (
        kind == "supplier"
        and conn.execute("SELECT 1 FROM locations WHERE code = ? AND kind = 'supplier'", (code,)).fetchone()
        is None
    ):
        raise PartnerError(400, f"code {code!r}: a supplier partner's code is a supplier location's code")
    key = "pk_" + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO partners (code, kind, name, key_sha256, active, updated_at) VALUES (?, ?, ?, ?, 1, ?)"
        " ON CONFLICT (code) DO UPDATE SET kind = excluded.kind, name = excluded.name,"
        " key_sha256 = excluded.key_sha256, active = 1, updated_at = excluded.updated_at",
        (code, kind, name, _sha(key), now),
    )
    return key


def deactivate(conn: sqlite3.Connection, code: str, *, now: int) -> bool:
    n = conn.execute("UPDATE partners SET active = 0, updated_at = ? WHERE code = ?", (now, code)).rowcount
    return n > 0


def list_partners(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cols = ("code", "kind", "name", "active", "updated_at")
    rows = conn.execute("SELECT code, kind, name, active, updated_at FROM partners ORDER BY code").fetchall()
    return [{**dict(zip(cols, r, strict=True)), "active": r[3] == 1} for r in rows]


def authenticate(conn: sqlite3.Connection, header: str | None) -> Partner:
    """The active partner whose key the ``Authorization: Bearer <key>`` header carries."""
    if not header:
        raise PartnerError(401, "partner key required: send 'Authorization: Bearer <partner key>'")
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        raise PartnerError(401, "partner key required: send 'Authorization: Bearer <partner key>'")
    row = conn.execute(
        "SELECT code, kind, name FROM partners WHERE key_sha256 = ? AND active = 1", (_sha(cred.strip()),)
    ).fetchone()
    if row is None:
        raise PartnerError(401, "unknown or revoked partner key")
    return Partner(str(row[0]), str(row[1]), str(row[2]))


def fulfils(conn: sqlite3.Connection, partner: Partner, order_no: str) -> int | None:
    """The order's id when ``partner`` fulfils a line of it, else None."""
    if partner.kind == "supplier":
        sql = (
            "SELECT o.order_id FROM orders o JOIN drop_ships d ON d.order_id = o.order_id"
            " WHERE o.order_no = ? AND d.supplier = ?"
        )
    else:
        sql = (
            "SELECT o.order_id FROM orders o JOIN process_lines p ON p.order_id = o.order_id"
            " WHERE o.order_no = ? AND p.partner = ? ORDER BY o.order_id LIMIT 1"
        )
    row = conn.execute(sql, (order_no, partner.code)).fetchone()
    return int(row[0]) if row else None


def _answer(conn: sqlite3.Connection, order_id: int, partner: Partner, event: PartnerEvent) -> dict[str, Any]:
    status, order_no = conn.execute(
        "SELECT status, order_no FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    units = [u for u in tracker.work_units(conn, order_id) if u["partner"] == partner.code]
    return {
        "order_no": order_no,
        "event_id": event.event_id,
        "type": event.type,
        "partner": partner.code,
        "status": status,
        "work_units": units,
    }


def apply_event(
    conn: sqlite3.Connection, partner: Partner, order_no: str, event: PartnerEvent, *, fp: bytes, now: int
) -> tuple[int, dict[str, Any], bool]:
    """(HTTP status, answer, replayed) for ``event`` on ``order_no`` - in the caller's write job.
    The same event sent to two workers at once (PostgreSQL): the second's record of the event
    id waits for the first's commit and collides (or its effect finds the order moved on);
    its effect is undone and it answers as a repeat (the first's answer)."""
    try:
        with savepoint(conn, "partner_event"):
            return _apply_once(conn, partner, order_no, event, fp=fp, now=now)
    except _RACED:
        stored = _stored_event(conn, partner, event, fp)
        if stored is None:
            raise
        return stored


_RACED: tuple[type[Exception], ...] = (*IntegrityError, PartnerError)


def _stored_event(
    conn: sqlite3.Connection, partner: Partner, event: PartnerEvent, fp: bytes
) -> tuple[int, dict[str, Any], bool] | None:
    row = conn.execute(
        "SELECT fingerprint, status, answer FROM partner_events WHERE partner = ? AND event_key = ?",
        (partner.code, event.event_id),
    ).fetchone()
    if row is None:
        return None
    if bytes(row[0]) != fp:
        raise PartnerError(422, f"event_id {event.event_id!r} was already used for another event")
    return int(row[1]), json.loads(row[2]), True


def _apply_once(
    conn: sqlite3.Connection, partner: Partner, order_no: str, event: PartnerEvent, *, fp: bytes, now: int
) -> tuple[int, dict[str, Any], bool]:
    stored = _stored_event(conn, partner, event, fp)
    if stored is not None:
        return stored
    order_id = fulfils(conn, partner, order_no)
    if order_id is None:
        raise PartnerError(403, f"partner {partner.code!r} does not fulfil order {order_no!r}")
    actor = f"partner:{partner.code}"
    try:
        with lifecycle.coalesce_status(conn):
            if partner.kind == "supplier":
                _supplier_event(conn, order_id, partner, event, actor=actor, now=now)
            else:
                _3pl_event(conn, order_id, partner, event, actor=actor, now=now)
    except (tracker.StepError, ordertypes.OrderTypeError, lifecycle.IllegalTransition) as e:
        raise PartnerError(409, str(e)) from None
    answer = _answer(conn, order_id, partner, event)
    conn.execute(
        "INSERT INTO partner_events (partner, event_key, order_id, fingerprint, status, answer, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (partner.code, event.event_id, order_id, fp, 201, json.dumps(answer), now),
    )
    return 201, answer, False


def _supplier_event(
    conn: sqlite3.Connection, order_id: int, partner: Partner, event: PartnerEvent, *, actor: str, now: int
) -> None:
    if event.lines is not None:
        raise PartnerError(400, "lines: a drop-ship supplier answers for all its lines of the order")
    if event.type == "delivered":
        text = f"supplier {partner.code} {event.describe()}"
        supplier_delivered(conn, order_id, supplier=partner.code, text=text, actor=actor, now=now)
        return
    detail = event.describe()
    ordertypes.supplier_confirmation(
        conn,
        order_id,
        supplier=partner.code,
        state=event.type,
        ref=event.tracking,
        detail=detail,
        actor=actor,
        now=now,
    )


def supplier_delivered(
    conn: sqlite3.Connection, order_id: int, *, supplier: str, text: str, actor: str, now: int
) -> None:
    """A drop-ship supplier delivered its lines (the partner endpoint, or its gateway's
    ``supplier_confirmation``): ``text`` goes into the history, the lines' ``deliver`` step is
    finished and the order is delivered once every line is. StepError when its lines are not
    shipped yet."""
    lifecycle.record_event(conn, order_id, "partner", detail=text, actor=actor, now=now)
    tracker.finish(
        conn, order_id, "deliver", actor=actor, now=now, partner=supplier, detail=f"delivered by {supplier}"
    )


def _3pl_event(
    conn: sqlite3.Connection, order_id: int, partner: Partner, event: PartnerEvent, *, actor: str, now: int
) -> None:
    lifecycle.record_event(
        conn, order_id, "partner", detail=f"3PL {partner.code} {event.describe()}", actor=actor, now=now
    )
    if event.type == "refused":
        return  # the order stays where it is: the desk decides (central/PARTNERS.md)
    step = {"confirmed": "partner_confirm", "shipped": "ship", "delivered": "deliver"}[event.type]
    lines = list(event.lines) if event.lines is not None else None
    text = f"{event.type} by {partner.code}" + (
        f": carrier {event.carrier} tracking {event.tracking}" if event.type == "shipped" else ""
    )
    tracker.finish(
        conn, order_id, step, actor=actor, now=now, line_nos=lines, partner=partner.code, detail=text
    )
