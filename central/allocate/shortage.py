"""Shortages: the shortage file, and what happens to short quantities over time.

What a shortage *becomes* is decided by the engine (:func:`central.allocate.allocation.resolve_shortage`:
customer preference x company policy -> reallocate / backorder / ship with next order / cut /
delay the whole order / cancel). This module keeps the result:

- :func:`settle` stores an engine run: allocations (via :mod:`central.allocate.inventory`), one row per
  short line in ``shortages`` (the shortage file, with customer, salesperson and supplier for
  the reports), and each order's allocation status.
- :func:`receive` books stock in and releases open back orders for that sku automatically,
  in priority order (special priority ``backorder_refill`` first, then the configured rules).
- Ship-with-next shortages wait for the customer's next order: :func:`refill_demands` turns
  them into extra demand in that order's allocation run (see :mod:`central.allocate.waves`).
- :func:`expire_delays` cancels held orders whose delay time limit has passed
  (``central.schedule`` runs it on a clock, one order at a time).

A shortage row is ``open`` while units are owed (``qty - filled``), then ``filled``,
``cut``, ``cancelled`` or ``expired``.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from central.allocate import demand, inventory
from central.allocate.allocation import (
    OPEN_ACTIONS,
    AllocationResult,
    CompanyPolicy,
    CustomerPref,
    DemandLine,
    OrderDemand,
    PriorityRules,
    ShortageAction,
    Special,
    allocate,
    encode_inputs,
)
from central.promising import promise

log = logging.getLogger(__name__)

SHORTAGE_COLS = (
    "shortage_id",
    "order_id",
    "line_no",
    "sku",
    "qty",
    "filled",
    "action",
    "reason",
    "status",
    "customer",
    "salesperson",
    "supplier",
    "deadline",
    "run_id",
    "created_at",
    "resolved_at",
    "resolution",
)
FILTERS = ("sku", "customer", "salesperson", "supplier", "status", "action", "order_id")
REPORT_BY = ("item", "supplier", "customer", "salesperson")
_CLOSED_STATUS = {ShortageAction.CUT: "cut", ShortageAction.CANCEL: "cancelled"}


def settle(
    conn: sqlite3.Connection,
    *,
    kind: str,
    demands: Sequence[OrderDemand],
    inputs: dict[str, Any],
    result: AllocationResult,
    now: int,
    today: dt.date,
    wave_id: int | None = None,
    refill_ids: Collection[int] = (),
) -> int:
    """Persist one engine run; ``refill_ids`` are demands that re-serve open shortages."""
    run_id = inventory.record_run(conn, kind=kind, inputs=inputs, result=result, now=now, wave_id=wave_id)
    if refill_ids:
        _apply_refills(conn, result, refill_ids, run_id=run_id, now=now, today=today)
    by_id = {d.order_id: d for d in demands}
    new = [o for o in result.outcomes if o.order_id not in refill_ids]
    fresh_short = [s for s in result.shortfalls if s.order_id not in refill_ids]
    if fresh_short:
        skus = {s.sku for s in fresh_short}
        suppliers = _suppliers(conn, skus)
        profiles = demand.load_profiles(conn, {by_id[s.order_id].customer for s in fresh_short})
        rows = []
        for s in fresh_short:
            d = by_id[s.order_id]
            deadline = None
            if s.action is ShortageAction.DELAY and s.delay_days is not None:
                deadline = (today + dt.timedelta(days=s.delay_days)).isoformat()
            closed = s.action not in OPEN_ACTIONS
            rows.append(
                (
                    s.order_id,
                    s.line_no,
                    s.sku,
                    s.qty,
                    s.action.value,
                    s.reason,
                    _CLOSED_STATUS.get(s.action, "open"),
                    d.customer,
                    profiles.get(d.customer, demand.DEFAULT_PROFILE).salesperson,
                    suppliers.get(s.sku, ""),
                    deadline,
                    run_id,
                    now,
                    now if closed else None,
                )
            )
        conn.executemany(
            "INSERT INTO shortages (order_id, line_no, sku, qty, action, reason, status, customer,"
            " salesperson, supplier, deadline, run_id, created_at, resolved_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    for o in new:
        d = by_id[o.order_id]
        deadline = None
        if o.status == "held" and d.delay_days is not None:
            deadline = (today + dt.timedelta(days=d.delay_days)).isoformat()
        demand.set_status(
            conn,
            o.order_id,
            o.status,
            detail=f"{kind} run {run_id}: {o.allocated} allocated, {o.short} short (rank {o.rank})",
            now=now,
            run_id=run_id,
            wave_id=wave_id,
            deadline=deadline,
        )
    return run_id


def _suppliers(conn: sqlite3.Connection, skus: Iterable[str]) -> dict[str, str]:
    return inventory.suppliers(conn, skus)  # the item master's supplier first


def refill_demands(
    conn: sqlite3.Connection,
    *,
    skus: Collection[str] | None = None,
    customers: Collection[str] | None = None,
    actions: Collection[ShortageAction] = (ShortageAction.BACKORDER, ShortageAction.DELAY),
) -> list[OrderDemand]:
    """Open shortages as demand with special priority ``backorder_refill`` (one per order)."""
    sql = (
        "SELECT order_id, line_no, sku, qty - filled FROM shortages WHERE status = 'open'"
        f" AND action IN ({','.join('?' * len(actions))})"
    )
    args: list[Any] = [a.value for a in actions]
    if skus is not None:
        sql += f" AND sku IN ({','.join('?' * len(skus))})"
        args.extend(sorted(skus))
    if customers is not None:
        sql += f" AND customer IN ({','.join('?' * len(customers))})"
        args.extend(sorted(customers))
    owed: dict[int, list[DemandLine]] = {}
    for oid, ln, sku, q in conn.execute(sql + " ORDER BY order_id, line_no, shortage_id", args):
        owed.setdefault(oid, []).append(DemandLine(ln, sku, q))
    if not owed:
        return []
    base = {d.order_id: d for d in demand.load_demands(conn, sorted(owed))}
    out = []
    for oid in sorted(owed):
        d = base.get(oid)
        if d is None:
            continue
        out.append(
            OrderDemand(
                order_id=oid,
                customer=d.customer,
                lines=tuple(owed[oid]),
                grade=d.grade,
                zone=d.zone,
                route=d.route,
                vehicle=d.vehicle,
                special=frozenset({Special.BACKORDER_REFILL.value}),
                value=d.value,
                credit=d.credit,
                allow_split=d.allow_split,
                pref=CustomerPref.BACKORDER,  # what is not filled stays owed, nothing is cut here
                received_at=d.received_at,
            )
        )
    return out


def _apply_refills(
    conn: sqlite3.Connection,
    result: AllocationResult,
    refill_ids: Collection[int],
    *,
    run_id: int,
    now: int,
    today: dt.date,
) -> None:
    got: dict[tuple[int, int], int] = {}
    for a in result.allocations:
        if a.order_id in refill_ids:
            got[(a.order_id, a.line_no)] = got.get((a.order_id, a.line_no), 0) + a.qty
    touched: set[int] = set()
    for (oid, ln), filled in sorted(got.items()):
        qty = filled
        for sid, owed in conn.execute(
            "SELECT shortage_id, qty - filled FROM shortages"
            " WHERE order_id = ? AND line_no = ? AND status = 'open'"
            " ORDER BY shortage_id",
            (oid, ln),
        ).fetchall():
            take = min(owed, qty)
            if take <= 0:
                break
            qty -= take
            done = take == owed
            conn.execute(
                "UPDATE shortages SET filled = filled + ?,"
                " status = CASE WHEN ? <> 0 THEN 'filled' ELSE status END,"
                " resolved_at = CASE WHEN ? <> 0 THEN ? ELSE resolved_at END,"
                " resolution = resolution || ? WHERE shortage_id = ?",
                (take, int(done), int(done), now, f"{take} released by run {run_id}; ", sid),
            )
        touched.add(oid)
    for oid in sorted(touched):
        still = conn.execute(
            "SELECT count(*) FROM shortages WHERE order_id = ? AND status = 'open'", (oid,)
        ).fetchone()[0]
        prev = conn.execute("SELECT status FROM alloc_orders WHERE order_id = ?", (oid,)).fetchone()
        held = prev is not None and prev[0] == "held"
        demand.set_status(
            conn,
            oid,
            ("held" if held else "short") if still else "allocated",
            detail=f"back order released by run {run_id}" + (f"; {still} lines still owed" if still else ""),
            now=now,
            run_id=run_id,
        )


def release_backorders(
    conn: sqlite3.Connection,
    skus: Collection[str],
    *,
    now: int,
    today: dt.date,
    rules: PriorityRules | None = None,
    company: CompanyPolicy | None = None,
) -> int | None:
    """Serve open back orders (and held orders) for ``skus`` from available stock, in
    priority order; return the run id, or None when nothing was owed."""
    refills = refill_demands(conn, skus=skus)
    if not refills:
        return None
    network = inventory.load_network(conn)
    stock = inventory.available(conn, {ln.sku for d in refills for ln in d.lines})
    title = f"back-order release for {', '.join(sorted(skus))}"
    result = allocate(refills, stock, network=network, rules=rules, company=company, title=title)
    inputs = encode_inputs(refills, stock, network=network, rules=rules, company=company, title=title)
    return settle(
        conn,
        kind="release",
        demands=refills,
        inputs=inputs,
        result=result,
        now=now,
        today=today,
        refill_ids={d.order_id for d in refills},
    )


def receive(
    conn: sqlite3.Connection,
    *,
    now: int,
    today: dt.date,
    receipt_id: int | None = None,
    location: str | None = None,
    sku: str | None = None,
    qty: int | None = None,
    rules: PriorityRules | None = None,
    company: CompanyPolicy | None = None,
) -> dict[str, Any]:
    """Book stock in (an expected receipt, or ``location``/``sku``/``qty``) and release
    what is owed for that sku automatically."""
    if receipt_id is not None:
        location, sku, qty = inventory.mark_received(conn, receipt_id, now=now, qty=qty)
    elif location is None or sku is None or qty is None or qty <= 0:
        raise inventory.InventoryError(
            location or "?", sku or "?", "receive needs a receipt or location, sku, qty>0"
        )
    else:
        inventory.add_stock(conn, location, sku, qty)
    run_id = release_backorders(conn, {sku}, now=now, today=today, rules=rules, company=company)
    if receipt_id is not None:  # then the promises kept on this receipt reserve their units
        promise.on_received(conn, receipt_id, now=now)
    log.info("received %d x %s at %s; release run %s", qty, sku, location, run_id)
    return {"location": location, "sku": sku, "qty": qty, "release_run": run_id}


def due_delay_expiries(conn: sqlite3.Connection, today: dt.date, *, limit: int = -1) -> list[tuple[int, str]]:
    """(order id, deadline) of the orders held for delay whose limit is before ``today``."""
    sql = (
        "SELECT order_id, deadline FROM alloc_orders"
        " WHERE status = 'held' AND deadline IS NOT NULL AND deadline < ? ORDER BY deadline, order_id"
    )
    args: list[Any] = [today.isoformat()]
    if limit >= 0:  # negative: all of them
        sql += " LIMIT ?"
        args.append(limit)
    return [(int(r[0]), str(r[1])) for r in conn.execute(sql, args)]


def expire_delay(conn: sqlite3.Connection, order_id: int, *, now: int) -> int:
    """Cancel one order held past its delay limit (its stock given back, shortages expired)."""
    return cancel_order(conn, order_id, reason="delay time limit passed", now=now, status="expired")


def expire_delays(conn: sqlite3.Connection, *, today: dt.date, now: int) -> list[int]:
    """Cancel held orders whose delay limit is before ``today``; return their ids."""
    ids = [oid for oid, _ in due_delay_expiries(conn, today)]
    for oid in ids:
        expire_delay(conn, oid, now=now)
    return ids


def cancel_order(
    conn: sqlite3.Connection, order_id: int, *, reason: str, now: int, status: str = "cancelled"
) -> int:
    """Cancel an order's allocation: give its stock back, close its shortages."""
    released = inventory.release_order(conn, order_id)
    conn.execute(
        "UPDATE shortages SET status = ?, resolved_at = ?, resolution = resolution || ? "
        " WHERE order_id = ? AND status = 'open'",
        (status, now, reason, order_id),
    )
    demand.set_status(conn, order_id, "cancelled", detail=f"{reason}; {released} units given back", now=now)
    return released


def cut(conn: sqlite3.Connection, shortage_id: int, *, now: int, reason: str = "cut by user") -> None:
    cur = conn.execute(
        "UPDATE shortages SET status = 'cut', resolved_at = ?, resolution = resolution || ?"
        " WHERE shortage_id = ? AND status = 'open'",
        (now, reason, shortage_id),
    )
    if cur.rowcount != 1:
        raise inventory.InventoryError("?", "?", f"no open shortage {shortage_id}")


def list_shortages(
    conn: sqlite3.Connection, *, filters: dict[str, str], limit: int = 1000
) -> list[dict[str, Any]]:
    where, args = ["1=1"], []
    for k in FILTERS:
        if k in filters:
            where.append(f"{k} = ?")
            args.append(filters[k])
    rows = conn.execute(
        f"SELECT {', '.join(SHORTAGE_COLS)} FROM shortages WHERE {' AND '.join(where)}"
        " ORDER BY shortage_id LIMIT ?",
        [*args, limit],
    )
    return [dict(zip(SHORTAGE_COLS, r, strict=True)) for r in rows]


def report(
    conn: sqlite3.Connection,
    by: str,
    *,
    status: str | None = "open",
    customers: Collection[str] | None = None,
    skus: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Shortage totals grouped by item, supplier, customer or salesperson; ``customers`` or
    ``skus`` (a user's scope): only those customers' or items' shortages."""
    if by not in REPORT_BY:
        raise ValueError(f"report by {by!r}: one of {', '.join(REPORT_BY)}")
    col = "sku" if by == "item" else by
    conds: list[str] = []
    args: list[Any] = []
    if status is not None:
        conds.append("status = ?")
        args.append(status)
    for name, only in (("customer", customers), ("sku", skus)):
        if only is not None:
            conds.append(f"{name} IN ({','.join('?' * len(only))})" if only else "0 = 1")
            args += sorted(only)
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    rows = conn.execute(
        f"SELECT {col}, count(*), sum(qty - filled), count(DISTINCT order_id)"
        f" FROM shortages {where} GROUP BY {col} ORDER BY sum(qty - filled) DESC, {col}",
        args,
    ).fetchall()
    other_col = "customer" if by in ("item", "supplier") else "sku"
    others: dict[Any, list[str]] = {}
    for k, v in conn.execute(
        f"SELECT {col}, {other_col} FROM shortages {where} GROUP BY {col}, {other_col}"
        f" ORDER BY {col}, {other_col}",
        args,
    ):
        if v:  # as the old group_concat listed them: the non-empty ones
            others.setdefault(k, []).append(v)
    other = "customers" if by in ("item", "supplier") else "items"
    return [
        {by: k, "lines": n, "units": u, "orders": o, other: sorted(others.get(k, []))} for k, n, u, o in rows
    ]
