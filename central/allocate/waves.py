"""Real-time and batch (wave) allocation: which orders are allocated together, and when.

Real time (单一订单分配): :func:`allocate_now` allocates one validated order in the
validating transaction; ``central.wiring`` puts :func:`on_validated` on the hub's
``on_validated`` hooks, which allocates at once when the hub's :class:`AllocationSettings`
say real time.

Batch (批次分配): :func:`run_wave` collects validated, not yet allocated orders received up
to a cut-off, splits them into batches by :class:`BatchRules` (time window / delivery run,
zone, route, processing requirement, vehicle type - any combination, in order), and
allocates each batch together with the priority rules. Batches are served one after the
other in key order, each seeing the stock the earlier ones left. Each batch becomes a wave
with its standard pick time (:mod:`central.fulfil.picktime`).

Open ship-with-next-order shortages of the customers in a batch ride along as
``backorder_refill`` demand in the same run.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from central.allocate import demand, inventory, shortage
from central.allocate.allocation import (
    CompanyPolicy,
    OrderDemand,
    PriorityRules,
    ShortageAction,
    allocate,
    encode_inputs,
)
from central.fulfil import picktime
from central.hub import hub_of
from central.orders import lifecycle, repo
from central.promising import promise, services
from runtime.clock import now_ms
from runtime.dbapi import dialect, is_postgres_url
from runtime.pgdb import PgConnection

BATCH_KEYS = ("window", "run", "zone", "route", "processing", "vehicle")


class WaveRuleError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BatchRules:
    by: tuple[str, ...] = ("run", "zone")
    window_s: int = 3600  # width of a time window, for ``window``

    def __post_init__(self) -> None:
        bad = [k for k in self.by if k not in BATCH_KEYS]
        if bad:
            raise WaveRuleError(f"batch by {bad[0]!r}: one of {', '.join(BATCH_KEYS)}")
        if self.window_s <= 0:
            raise WaveRuleError(f"window_s must be positive, got {self.window_s}")


@dataclass(frozen=True, slots=True)
class AllocationSettings:
    """How allocation runs: ``[allocation]`` of central's config, kept on its hub (``Hub.allocation``)."""

    realtime: bool = True
    batch: BatchRules = field(default_factory=BatchRules)
    priority: PriorityRules = field(default_factory=PriorityRules)
    company: CompanyPolicy = field(default_factory=CompanyPolicy)
    collect_status: tuple[str, ...] = ("validated",)
    standards: picktime.PickStandards = field(default_factory=picktime.PickStandards)


def batch_key(o: OrderDemand, rules: BatchRules) -> str:
    parts = []
    for k in rules.by:
        if k == "window":
            parts.append(f"window={o.received_at // 1000 // rules.window_s * rules.window_s}")
        elif k == "run":
            parts.append(f"run={o.delivery_run or '-'}")
        else:
            parts.append(f"{k}={getattr(o, k) or '-'}")
    return " ".join(parts) or "all"


def make_batches(orders: Sequence[OrderDemand], rules: BatchRules) -> list[tuple[str, list[OrderDemand]]]:
    """Group orders by batch key; batches sorted by key, orders by id inside."""
    groups: dict[str, list[OrderDemand]] = {}
    for o in orders:
        groups.setdefault(batch_key(o, rules), []).append(o)
    return [(k, sorted(groups[k], key=lambda o: o.order_id)) for k in sorted(groups)]


def pending_orders(
    conn: sqlite3.Connection, *, statuses: Sequence[str], cutoff: int | None = None
) -> list[int]:
    sql = (
        f"SELECT o.order_id FROM orders o WHERE o.status IN ({','.join('?' * len(statuses))})"
        " AND NOT EXISTS (SELECT 1 FROM alloc_orders a WHERE a.order_id = o.order_id)"
    )
    args: list[Any] = list(statuses)
    if cutoff is not None:
        sql += " AND o.received_at <= ?"
        args.append(cutoff)
    # PostgreSQL, several workers: each order is claimed by one wave at a time (its row locked
    # till commit; one another worker's wave holds is skipped, not waited for)
    lock = " FOR UPDATE OF o SKIP LOCKED" if dialect(conn) == "postgresql" else ""
    return [r[0] for r in conn.execute(sql + " ORDER BY o.order_id" + lock, args)]


def _allocate_batch(
    conn: sqlite3.Connection,
    demands: list[OrderDemand],
    *,
    kind: str,
    title: str,
    settings: AllocationSettings,
    now: int,
    today: dt.date,
    wave_id: int | None,
) -> tuple[int, Any]:
    customers = {d.customer for d in demands}
    taken = {d.order_id for d in demands}
    refills = [
        r
        for r in shortage.refill_demands(conn, customers=customers, actions=(ShortageAction.SHIP_WITH_NEXT,))
        if r.order_id not in taken
    ]
    everything = demands + refills
    # promises these orders claimed: their reserved stock is this allocation's to take
    promise.free_claimed(conn, [d.order_id for d in demands], now=now)
    network = inventory.load_network(conn)
    stock = inventory.available(conn, {ln.sku for d in everything for ln in d.lines})
    kw: dict[str, Any] = {
        "network": network,
        "rules": settings.priority,
        "company": settings.company,
        "title": title,
    }
    result = allocate(everything, stock, **kw)
    run_id = shortage.settle(
        conn,
        kind=kind,
        demands=everything,
        inputs=encode_inputs(everything, stock, **kw),
        result=result,
        now=now,
        today=today,
        wave_id=wave_id,
        refill_ids={r.order_id for r in refills},
    )
    return run_id, result


def allocate_now(
    conn: sqlite3.Connection,
    order_id: int,
    *,
    now: int,
    today: dt.date | None = None,
    settings: AllocationSettings | None = None,
) -> int:
    """Real-time allocation of one order inside the caller's transaction; return the run id."""
    settings = settings or hub_of(conn).allocation
    today = today or dt.date.today()
    demands = demand.load_demands(conn, [order_id], today=today)
    if not demands:
        raise inventory.InventoryError("?", "?", f"no order {order_id}")
    run_id, _ = _allocate_batch(
        conn,
        demands,
        kind="realtime",
        title=f"real-time order {order_id}",
        settings=settings,
        now=now,
        today=today,
        wave_id=None,
    )
    return run_id


def on_validated(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_validated`` hook: allocate at once in real-time mode, else leave it for a wave -
    unless a service of the order waits for a slot (:func:`central.promising.services.keeps_held`).
    (The one hook, so ``orders.create_batch`` recognises the standard wiring and takes its
    set-based path.)"""
    if services.keeps_held(conn, order_id):
        return  # a service of the order still waits for a slot: held again, nothing allocated
    settings = hub_of(conn).allocation
    if settings.realtime:
        allocate_now(conn, order_id, now=now_ms(), settings=settings)


def on_cancelled(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_cancelled`` hook: give the order's stock back and close what it was owed."""
    now = now_ms()
    inventory.release_order(conn, order_id)
    conn.execute(
        "UPDATE shortages SET status = 'cancelled', resolved_at = ?,"
        " resolution = resolution || 'order cancelled'"
        " WHERE order_id = ? AND status = 'open'",
        (now, order_id),
    )
    conn.execute(
        "UPDATE alloc_orders SET status = 'cancelled', updated_at = ? WHERE order_id = ?", (now, order_id)
    )


def give_back(conn: sqlite3.Connection, order_id: int) -> None:
    """``on_give_back`` hook: undo an order's allocation before a change (it is allocated again
    after it). Its stock goes back, its open shortages close as ``cancelled`` ("order
    changed") and it leaves ``alloc_orders``, so real-time allocation or the next wave takes
    it as new; the order's history says how many units went back."""
    now = now_ms()
    units = inventory.release_order(conn, order_id)
    conn.execute(
        "UPDATE shortages SET status = 'cancelled', resolved_at = ?,"
        " resolution = resolution || 'order changed'"
        " WHERE order_id = ? AND status = 'open'",
        (now, order_id),
    )
    conn.execute("DELETE FROM alloc_orders WHERE order_id = ?", (order_id,))
    lifecycle.record_event(
        conn,
        order_id,
        "allocation given back",
        detail=f"{units} units back to stock for a change; allocated again once it passes the checks",
        actor="allocation",
        now=now,
    )


def run_wave(
    conn: sqlite3.Connection,
    *,
    cutoff: int,
    now: int,
    today: dt.date | None = None,
    settings: AllocationSettings | None = None,
    departure: int | None = None,
) -> list[dict[str, Any]]:
    """Allocate every pending order received up to ``cutoff`` (ms), batch by batch; return
    one summary per wave created."""
    settings = settings or hub_of(conn).allocation
    today = today or dt.date.today()
    ids = pending_orders(conn, statuses=settings.collect_status, cutoff=cutoff)
    demands = demand.load_demands(conn, ids, today=today)
    out = []
    for key, batch in make_batches(demands, settings.batch):
        cur = conn.execute(
            "INSERT INTO waves (batch_key, cutoff, departure, created_at) VALUES (?, ?, ?, ?)",
            (key, cutoff, departure, now),
        )
        wave_id = cur.lastrowid
        assert wave_id is not None
        conn.executemany(
            "INSERT INTO wave_orders (wave_id, order_id) VALUES (?, ?)",
            [(wave_id, d.order_id) for d in batch],
        )
        run_id, result = _allocate_batch(
            conn,
            batch,
            kind="wave",
            title=f"wave {wave_id} [{key}] cut-off {cutoff}",
            settings=settings,
            now=now,
            today=today,
            wave_id=wave_id,
        )
        per_order: dict[int, list[tuple[str, int]]] = {}
        for a in result.allocations:
            per_order.setdefault(a.order_id, []).append((a.sku, a.qty))
        packs = pack_sizes(conn, {a.sku for a in result.allocations})
        seconds = picktime.wave_seconds(per_order.values(), packs, settings.standards)
        conn.execute(
            "UPDATE waves SET run_id = ?, pick_seconds = ? WHERE wave_id = ?", (run_id, seconds, wave_id)
        )
        statuses: dict[str, int] = {}
        for o in result.outcomes:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        out.append(
            {
                "wave_id": wave_id,
                "batch_key": key,
                "run_id": run_id,
                "orders": len(batch),
                "outcomes": statuses,
                "allocated_units": sum(a.qty for a in result.allocations),
                "short_units": sum(s.qty for s in result.shortfalls),
                "pick_seconds": round(seconds, 1),
            }
        )
    return out


def pack_sizes(conn: sqlite3.Connection, skus: set[str]) -> dict[str, picktime.PackSize]:
    """How each item is picked, from the item master: ``pack_size`` eaches to a case and
    ``pick_seconds`` its own time per each (0: the standard). Unknown items: eaches."""
    out = {}
    wanted = sorted(skus)
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        for sku, pack_size, pick_s in conn.execute(
            f"SELECT sku, pack_size, pick_seconds FROM items WHERE sku IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            out[sku] = picktime.PackSize(case_qty=int(pack_size or 1), each_s=float(pick_s or 0))
    return out


def plan(
    conn: sqlite3.Connection,
    *,
    start_ms: int,
    teams: int = 1,
    load_s: float = 0.0,
    wave_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Put waves on ``teams`` picking teams from ``start_ms`` (:func:`picktime.schedule`):
    the given waves, else every wave not released yet. A wave needs a departure to be
    scheduled against; those without one are listed as ``unscheduled``. Times in epoch ms."""
    sql = "SELECT wave_id, pick_seconds, departure FROM waves"
    args: list[Any] = []
    if wave_ids is not None:
        sql += f" WHERE wave_id IN ({','.join('?' * len(wave_ids))})"
        args = list(wave_ids)
    else:
        sql += " WHERE status != 'released'"
    rows = conn.execute(sql + " ORDER BY wave_id", args).fetchall()
    missing = sorted(set(wave_ids or ()) - {r[0] for r in rows})
    if missing:
        raise picktime.PickTimeError(f"no wave {missing[0]}")
    work = [picktime.WaveWork(w, secs, dep // 1000, load_s) for w, secs, dep in rows if dep is not None]
    placed = picktime.schedule(work, start=start_ms // 1000, teams=teams)
    return {
        "start": start_ms,
        "teams": teams,
        "waves": [
            {
                "wave_id": p.wave_id,
                "team": p.team,
                "start": p.start * 1000,
                "finish": p.finish * 1000,
                "departure": p.departure * 1000,
                "slack_s": p.slack_s,
                "late": p.late,
            }
            for p in placed
        ],
        "unscheduled": [{"wave_id": w, "reason": "no departure"} for w, _, dep in rows if dep is None],
    }


def _scope(customers: Collection[str] | None, supplier: str | None) -> tuple[str, list[Any]]:
    """A condition on ``waves``: a wave holding one of the orders the scope sees
    (:func:`central.orders.repo.scope_sql`); empty: every wave."""
    conds, args = repo.scope_sql("o", customers=customers, supplier=supplier)
    if not conds:
        return "", []
    return (
        "EXISTS (SELECT 1 FROM wave_orders wo JOIN orders o ON o.order_id = wo.order_id"
        f" WHERE wo.wave_id = waves.wave_id AND {' AND '.join(conds)})",
        args,
    )


def list_waves(
    conn: sqlite3.Connection,
    *,
    limit: int = 100,
    customers: Collection[str] | None = None,
    supplier: str | None = None,
) -> list[dict[str, Any]]:
    """The newest waves; with ``customers`` or ``supplier`` (a user's scope) only the waves
    holding one of the orders it sees."""
    cond, args = _scope(customers, supplier)
    where = f"WHERE {cond}" if cond else ""
    rows = conn.execute(
        f"SELECT {', '.join(WAVE_COLS)} FROM waves {where} ORDER BY wave_id DESC LIMIT ?", (*args, limit)
    )
    return [dict(zip(WAVE_COLS, r, strict=True)) for r in rows]


def visible_waves(
    conn: sqlite3.Connection,
    wave_ids: Sequence[int],
    *,
    customers: Collection[str] | None = None,
    supplier: str | None = None,
) -> set[int]:
    """Those of ``wave_ids`` that hold one of the orders the scope sees."""
    cond, args = _scope(customers, supplier)
    ids = sorted(set(wave_ids))
    if not ids:
        return set()
    sql = f"SELECT wave_id FROM waves WHERE wave_id IN ({','.join('?' * len(ids))})"
    return {r[0] for r in conn.execute(sql + (f" AND {cond}" if cond else ""), (*ids, *args))}


def get_wave(
    conn: sqlite3.Connection,
    wave_id: int,
    *,
    customers: Collection[str] | None = None,
    supplier: str | None = None,
) -> dict[str, Any] | None:
    """A wave and its orders; with ``customers`` or ``supplier`` (a user's scope) only the
    orders it sees."""
    row = conn.execute(f"SELECT {', '.join(WAVE_COLS)} FROM waves WHERE wave_id = ?", (wave_id,)).fetchone()
    if row is None:
        return None
    w = dict(zip(WAVE_COLS, row, strict=True))
    conds, args = repo.scope_sql("o", customers=customers, supplier=supplier)
    sql = "SELECT order_id FROM wave_orders WHERE wave_id = ? ORDER BY 1"
    if conds:
        sql = (
            "SELECT wo.order_id FROM wave_orders wo JOIN orders o ON o.order_id = wo.order_id"
            f" WHERE wo.wave_id = ? AND {' AND '.join(conds)} ORDER BY 1"
        )
    w["orders"] = [r[0] for r in conn.execute(sql, (wave_id, *args))]
    return w


WAVE_COLS = ("wave_id", "batch_key", "cutoff", "departure", "status", "pick_seconds", "run_id", "created_at")


# -- CLI (``storegate pick-schedule``, parsed in ops.cli) ------------------------------------


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _open_read_only(db: str) -> Any:
    if is_postgres_url(db):
        raw = psycopg.connect(db, autocommit=True, options="-c default_transaction_read_only=on")
        return PgConnection(raw)
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def pick_schedule(
    *,
    db: str,
    teams: int,
    start_ms: int | None,
    load_s: float,
    wave_ids: Sequence[int] | None,
    as_json: bool,
) -> int:
    """Print :func:`plan` for central's database ``db``, a SQLite file or a ``postgresql://``
    URL (opened read only)."""
    start = start_ms if start_ms is not None else now_ms()
    try:
        conn = _open_read_only(db)
        try:
            out = plan(conn, start_ms=start, teams=teams, load_s=load_s, wave_ids=wave_ids)
        finally:
            conn.close()
    except (picktime.PickTimeError, sqlite3.Error, psycopg.Error) as e:
        print(f"error: {db}: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'wave':>6} {'team':>4}  {'start (UTC)':19}  {'finish':19}  {'departure':19}  {'slack_s':>8}")
    for w in out["waves"]:
        times = f"{_iso(w['start'])}  {_iso(w['finish'])}  {_iso(w['departure'])}"
        late = "  LATE" if w["late"] else ""
        print(f"{w['wave_id']:>6} {w['team']:>4}  {times}  {w['slack_s']:>8}{late}")
    for w in out["unscheduled"]:
        print(f"{w['wave_id']:>6}    -  not scheduled: {w['reason']}")
    return 0
