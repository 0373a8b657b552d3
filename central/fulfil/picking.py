"""Pick work at central: allocations -> pick tasks down to the DC gateways; results back.

Release (:func:`release_wave`, :func:`release_order`): every open order allocation of the
orders that has no task yet becomes one pick task with a stable id (``PT`` + the allocation
id, so releasing again changes nothing), sequenced in storage-location order (location,
bin, sku, order, line) per gateway, and is queued durably on the downlink of the gateway
that serves the allocating location (``locations.gateway``, DC locations only). Orders go
``allocated -> released`` through :mod:`central.orders.lifecycle`. Stock in an AS/RS storage tote
(:func:`set_tote`) names the tote on the task, so the gateway has it brought to the station.

Results (``pick_result`` uplink, record id ``pick:<task id>``, exactly once through
:mod:`central.intake.ingest`): the picked units leave stock (``on_hand`` and ``allocated`` both
drop; the allocation row becomes ``picked`` with the picked quantity). A short means the
location did not hold the units: they are written off at that location (``on_hand`` drops
by the short quantity too) and the short quantity goes through the allocation engine with
the order's own customer preference and the company policy, with the short location left
out: it is reallocated from another location (a new pick task goes down at once), or
becomes a back order / ship-with-next / cut / delay / cancel in the shortage file - nobody
types it in. When no task of a released order is open any more, the order is ``picked``.

All functions run inside the caller's write transaction; none commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from central import CentralError, downlink
from central.allocate import demand, inventory, shortage
from central.allocate.allocation import DemandLine, allocate, encode_inputs
from central.hub import hub_of
from central.intake.ingest import Context, Rejected
from central.orders import lifecycle
from protocols.envelope import Record
from protocols.picking import (
    PICK_TASK,
    PickTaskBody,
    parse_pick_result,
    parse_tote_event,
    result_record_id,
)
from protocols.records import RecordSchemaError
from runtime.clock import now_ms
from runtime.sqlitedb import Migration

log = logging.getLogger(__name__)

MIGRATIONS = [
    Migration(
        "picking_0001",
        """
        CREATE TABLE pick_tasks (
            task_id TEXT PRIMARY KEY,
            alloc_id INTEGER NOT NULL UNIQUE,
            wave TEXT NOT NULL,
            wave_id INTEGER,
            seq INTEGER NOT NULL,
            order_id INTEGER NOT NULL,
            line_no INTEGER NOT NULL,
            gateway TEXT NOT NULL,
            location TEXT NOT NULL,
            bin TEXT NOT NULL DEFAULT '',
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL CHECK (qty > 0),
            tote TEXT NOT NULL DEFAULT '',
            tote_location TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'sent',
            picked INTEGER NOT NULL DEFAULT 0,
            short INTEGER NOT NULL DEFAULT 0,
            key TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            cart TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL DEFAULT '',
            released_at INTEGER NOT NULL,
            done_at INTEGER
        ) WITHOUT ROWID;
        CREATE INDEX pick_tasks_order ON pick_tasks(order_id, status);
        CREATE INDEX pick_tasks_wave ON pick_tasks(wave, seq);
        CREATE TABLE pick_totes (
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            tote TEXT NOT NULL,
            tote_location TEXT NOT NULL,
            PRIMARY KEY (location, sku)
        ) WITHOUT ROWID;
        CREATE TABLE tote_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            gateway TEXT NOT NULL,
            wave TEXT NOT NULL,
            tote TEXT NOT NULL,
            event TEXT NOT NULL,
            location TEXT NOT NULL,
            code INTEGER NOT NULL,
            reason TEXT NOT NULL,
            at INTEGER NOT NULL
        );
        """,
    )
]

TASK_COLS = (
    "task_id",
    "wave",
    "seq",
    "order_id",
    "line_no",
    "gateway",
    "location",
    "bin",
    "sku",
    "qty",
    "tote",
    "status",
    "picked",
    "short",
    "key",
    "reason",
    "cart",
    "action",
)


class PickingError(CentralError):
    pass


class UnknownWave(PickingError):
    def __init__(self, wave_id: int) -> None:
        super().__init__(f"no wave {wave_id}")
        self.wave_id = wave_id


def task_id_for(alloc_id: int) -> str:
    return f"PT{alloc_id:010d}"


def set_tote(conn: sqlite3.Connection, location: str, sku: str, *, tote: str, tote_location: str) -> None:
    """``sku`` at ``location`` sits in AS/RS storage tote ``tote`` at ``tote_location``."""
    conn.execute(
        "INSERT INTO pick_totes (location, sku, tote, tote_location) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (location, sku) DO UPDATE SET tote = excluded.tote,"
        " tote_location = excluded.tote_location",
        (location, sku, tote, tote_location),
    )


# -- release ----------------------------------------------------------------------------------


def release_wave(conn: sqlite3.Connection, wave_id: int, *, now: int | None = None) -> dict[str, Any]:
    """Release every allocated order of a wave to the pickers; returns a summary."""
    if conn.execute("SELECT 1 FROM waves WHERE wave_id = ?", (wave_id,)).fetchone() is None:
        raise UnknownWave(wave_id)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT order_id FROM wave_orders WHERE wave_id = ? ORDER BY order_id", (wave_id,)
        )
    ]
    out = _release(conn, ids, wave=f"W{wave_id}", wave_id=wave_id, now=now or now_ms())
    conn.execute("UPDATE waves SET status = 'released' WHERE wave_id = ?", (wave_id,))
    return out


def release_order(conn: sqlite3.Connection, order_id: int, *, now: int | None = None) -> dict[str, Any]:
    """Release one allocated order (real-time allocation) to the pickers."""
    return _release(conn, [order_id], wave=f"O{order_id}", wave_id=None, now=now or now_ms())


def _pickable(conn: sqlite3.Connection, location: str) -> str | None:
    row = conn.execute(
        "SELECT gateway FROM locations WHERE code = ? AND kind = 'dc' AND active = 1", (location,)
    ).fetchone()
    return None if row is None or not row[0] else str(row[0])


def _release(
    conn: sqlite3.Connection, order_ids: Sequence[int], *, wave: str, wave_id: int | None, now: int
) -> dict[str, Any]:
    """Tasks for the open allocations (without a task) of ``order_ids``; orders in status
    ``allocated`` become ``released``. Orders in other statuses (held, cancelled, not yet
    allocated) are left alone; an already released or picked order only gets tasks for
    allocations made since (a reallocation or a released back order)."""
    if not order_ids:
        return {"wave": wave, "tasks": 0, "orders": 0, "gateways": {}, "skipped": []}
    marks = ",".join("?" * len(order_ids))
    statuses = {
        r[0]: r[1]
        for r in conn.execute(
            f"SELECT order_id, status FROM orders WHERE order_id IN ({marks})", list(order_ids)
        )
    }
    live = [oid for oid in order_ids if statuses.get(oid) in ("allocated", "released", "picked")]
    if not live:
        return {"wave": wave, "tasks": 0, "orders": 0, "gateways": {}, "skipped": []}
    marks = ",".join("?" * len(live))
    rows = conn.execute(
        "SELECT a.alloc_id, a.order_id, a.line_no, a.location, coalesce(i.bin, ''), a.sku, a.qty,"
        " coalesce(t.tote, ''), coalesce(t.tote_location, ''), o.order_no"
        " FROM allocations a JOIN orders o ON o.order_id = a.order_id"
        " LEFT JOIN inventory i ON i.location = a.location AND i.sku = a.sku"
        " LEFT JOIN pick_totes t ON t.location = a.location AND t.sku = a.sku"
        f" WHERE a.order_id IN ({marks}) AND a.kind = 'order' AND a.status = 'allocated'"
        " AND NOT EXISTS (SELECT 1 FROM pick_tasks p WHERE p.alloc_id = a.alloc_id)",
        live,
    ).fetchall()
    rows.sort(key=lambda r: (r[3], r[4], r[5], r[1], r[2], r[0]))
    seq_base: dict[str, int] = {}
    per_gw: dict[str, int] = {}
    skipped: list[dict[str, Any]] = []
    tasked: set[int] = set()
    for alloc_id, oid, ln, loc, bin_, sku, qty, tote, tote_loc, order_no in rows:
        gw = _pickable(conn, loc)
        if gw is None:
            skipped.append({"order_id": oid, "line_no": ln, "location": loc, "sku": sku, "qty": qty})
            lifecycle.record_event(
                conn,
                oid,
                "pick-skipped",
                detail=f"line {ln} {sku} x{qty} at {loc}: not a DC with a gateway; pick it by hand",
                actor="picking",
                now=now,
            )
            continue
        if gw not in seq_base:
            seq_base[gw] = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM pick_tasks WHERE wave = ? AND gateway = ?", (wave, gw)
            ).fetchone()[0]
        seq_base[gw] += 1
        body = PickTaskBody(
            task_id=task_id_for(alloc_id),
            wave=wave,
            seq=seq_base[gw],
            order_no=order_no,
            line_no=ln,
            location=loc,
            bin=bin_,
            sku=sku,
            qty=qty,
            tote=tote,
            tote_location=tote_loc,
        )
        conn.execute(
            "INSERT INTO pick_tasks (task_id, alloc_id, wave, wave_id, seq, order_id, line_no, gateway,"
            " location, bin, sku, qty, tote, tote_location, released_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                body.task_id,
                alloc_id,
                wave,
                wave_id,
                body.seq,
                oid,
                ln,
                gw,
                loc,
                bin_,
                sku,
                qty,
                tote,
                tote_loc,
                now,
            ),
        )
        downlink.enqueue(conn, gateway=gw, type=PICK_TASK, body=body.to_wire(), record_id=body.task_id)
        per_gw[gw] = per_gw.get(gw, 0) + 1
        tasked.add(oid)
    for oid in live:
        if oid in tasked and statuses[oid] == "allocated":
            n = conn.execute("SELECT count(*) FROM pick_tasks WHERE order_id = ?", (oid,)).fetchone()[0]
            lifecycle.transition(
                conn,
                oid,
                lifecycle.Status.RELEASED,
                actor="picking",
                detail=f"{n} pick tasks in {wave}",
                now=now,
            )
    log.info("released %s: %d tasks for %d orders %s", wave, sum(per_gw.values()), len(tasked), per_gw)
    return {
        "wave": wave,
        "tasks": sum(per_gw.values()),
        "orders": len(tasked),
        "gateways": per_gw,
        "skipped": skipped,
    }


# -- results ----------------------------------------------------------------------------------


def apply_pick_result(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    """A pick confirmed or short at a DC gateway (see the module doc)."""
    try:
        res = parse_pick_result(rec.body)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    if rec.id != result_record_id(res.task_id):
        raise Rejected(f"record id {rec.id!r} must be {result_record_id(res.task_id)!r}")
    row = conn.execute(
        "SELECT p.alloc_id, p.order_id, p.line_no, p.gateway, p.location, p.sku, p.qty, p.status,"
        " p.wave, p.wave_id, o.order_no FROM pick_tasks p JOIN orders o ON o.order_id = p.order_id"
        " WHERE p.task_id = ?",
        (res.task_id,),
    ).fetchone()
    if row is None:
        raise Rejected(f"unknown pick task {res.task_id!r}")
    alloc_id, oid, ln, gw, loc, sku, qty, status, wave, wave_id, order_no = row
    if gw != ctx.gateway:
        raise Rejected(f"pick task {res.task_id} belongs to gateway {gw!r}, not {ctx.gateway!r}")
    if status != "sent":
        raise Rejected(f"pick task {res.task_id} already has a result ({status})")
    if res.requested_qty != qty or res.sku != sku:
        raise Rejected(
            f"pick task {res.task_id} is {sku} x{qty}, result names {res.sku} x{res.requested_qty}"
        )
    picked = min(res.picked_qty, qty)
    if res.picked_qty > qty:
        log.warning(
            "gw=%s task %s: %d picked for %d asked; %d counted", gw, res.task_id, res.picked_qty, qty, qty
        )
    short = qty - picked
    # the units leave the location: picked ones into the tote, short ones were never there
    conn.execute(
        "UPDATE inventory SET on_hand = on_hand - ?, allocated = allocated - ?"
        " WHERE location = ? AND sku = ?",
        (qty, qty, loc, sku),
    )
    after = inventory.on_hand(conn, loc, sku) or 0
    inventory.audit_stock(
        conn,
        actor=f"gateway:{gw}",
        action="pick",
        location=loc,
        sku=sku,
        before=after + qty,
        after=after,
        now=ctx.now,
        detail=f"task {res.task_id} order {order_no} line {ln}: {picked} picked"
        + (f", {short} short ({res.key.value})" if short else ""),
    )
    if picked:
        conn.execute(
            "UPDATE allocations SET status = 'picked', qty = ? WHERE alloc_id = ?", (picked, alloc_id)
        )
    else:
        conn.execute("UPDATE allocations SET status = 'short' WHERE alloc_id = ?", (alloc_id,))
    action = ""
    if short:
        action = _handle_short(
            conn,
            order_id=oid,
            line_no=ln,
            sku=sku,
            qty=short,
            location=loc,
            wave=wave,
            wave_id=wave_id,
            now=ctx.now,
        )
    conn.execute(
        "UPDATE pick_tasks SET status = ?, picked = ?, short = ?, key = ?, reason = ?, cart = ?, action = ?,"
        " done_at = ? WHERE task_id = ?",
        (res.outcome.value, picked, short, res.key.value, res.reason, res.cart, action, ctx.now, res.task_id),
    )
    detail = f"task {res.task_id} line {ln} {sku}: {picked}/{qty} picked at {loc}"
    if short:
        detail += f", {short} short ({res.key.value}{': ' + res.reason if res.reason else ''}) -> {action}"
    lifecycle.record_event(conn, oid, "pick", detail=detail, actor=f"gateway:{gw}", now=ctx.now)
    if short:
        _release(conn, [oid], wave=wave, wave_id=wave_id, now=ctx.now)  # a reallocation: pick it too
    _maybe_picked(conn, oid, now=ctx.now)
    return str(order_no)


def _handle_short(
    conn: sqlite3.Connection,
    *,
    order_id: int,
    line_no: int,
    sku: str,
    qty: int,
    location: str,
    wave: str,
    wave_id: int | None,
    now: int,
) -> str:
    """Run the short quantity through the engine with the order's preference, the short
    location excluded; store the run (reallocation, shortage file). Returns what became of it."""
    base = demand.load_demands(conn, [order_id])
    if not base:
        return "order gone"
    d = dataclasses.replace(base[0], lines=(DemandLine(line_no, sku, qty),), special=frozenset())
    settings = hub_of(conn).allocation
    network = inventory.load_network(conn)
    stock = {k: v for k, v in inventory.available(conn, {sku}).items() if k != (location, sku)}
    kw: dict[str, Any] = {
        "network": network,
        "rules": settings.priority,
        "company": settings.company,
        "title": f"short pick in {wave}: order {order_id} line {line_no} {sku} x{qty} at {location}",
    }
    result = allocate([d], stock, **kw)
    shortage.settle(
        conn,
        kind="pick-short",
        demands=[d],
        inputs=encode_inputs([d], stock, **kw),
        result=result,
        now=now,
        today=dt.date.today(),
        wave_id=wave_id,
    )
    parts = [f"reallocated {a.qty} from {a.location}" for a in result.allocations]
    parts += [f"{s.qty} {s.action.value}" for s in result.shortfalls]
    return "; ".join(parts) or "nothing"


def _maybe_picked(conn: sqlite3.Connection, order_id: int, *, now: int) -> None:
    row = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None or row[0] != lifecycle.Status.RELEASED:
        return
    open_tasks, picked, short = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'sent'), coalesce(sum(picked), 0), coalesce(sum(short), 0)"
        " FROM pick_tasks WHERE order_id = ?",
        (order_id,),
    ).fetchone()
    if open_tasks:
        return
    lifecycle.transition(
        conn,
        order_id,
        lifecycle.Status.PICKED,
        actor="picking",
        detail=f"{picked} units picked, {short} short",
        now=now,
    )


def apply_tote_event(conn: sqlite3.Connection, ctx: Context, rec: Record) -> str:
    try:
        ev = parse_tote_event(rec.body)
    except RecordSchemaError as e:
        raise Rejected(e.reason) from None
    conn.execute(
        "INSERT INTO tote_events (gateway, wave, tote, event, location, code, reason, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ctx.gateway, ev.wave, ev.tote, ev.event.value, ev.location, ev.code, ev.reason, ctx.now),
    )
    return ev.tote


# -- views ------------------------------------------------------------------------------------


def tasks(
    conn: sqlite3.Connection, *, order_id: int | None = None, wave: str | None = None
) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(TASK_COLS)} FROM pick_tasks WHERE 1=1"
    args: list[Any] = []
    if order_id is not None:
        sql += " AND order_id = ?"
        args.append(order_id)
    if wave is not None:
        sql += " AND wave = ?"
        args.append(wave)
    return [
        dict(zip(TASK_COLS, r, strict=True)) for r in conn.execute(sql + " ORDER BY gateway, wave, seq", args)
    ]
