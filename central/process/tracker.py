"""Each order line's walk through its process definition, kept in step with the lifecycle.

When an order is first validated, each line whose facts select an imported definition
(:func:`definitions.select`, the latest master) gets a ``process_lines`` row: the definition,
the version, the partner that fulfils it (the definition's 3PL, or for a drop-ship the item's
supplier) and its current step. A line no imported definition selects is on the built-in
default (version 0, the same in every version) and has no row: its step follows from the
order's status.

A step bound to a status (``allocate``: allocated, ``ship``: shipped...) is finished when the
order reaches that status or a partner/the desk finished it for the line (``process_done``);
``vas``, ``schedule_service`` and ``partner_confirm`` are finished by a person or a partner
(``process_done``), or implicitly when a later status-bound step finishes. A line whose current
step is ``vas`` or ``schedule_service`` is ``waiting``: the release to the DC waits for it.

Work units: the lines of one order with the same definition, version, partner and step are one
unit; a line on another definition is a unit of its own. For lines on an imported definition,
each unit's start and finish is an event in the order's history (``work unit started`` /
``work unit finished``); the default definition's steps are the lifecycle's own status events,
so its history reads exactly as before.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from central import CentralError
from central.orders import lifecycle
from central.orders.lifecycle import Status
from central.process import definitions as defs
from central.process.definitions import STEPS, Definition

RANK = {
    Status.RECEIVED: 0,
    Status.HELD: 0,
    Status.VALIDATED: 1,
    Status.ALLOCATED: 2,
    Status.RELEASED: 3,
    Status.PICKED: 4,
    Status.SHIPPED: 5,
    Status.DELIVERED: 6,
    Status.RETURNED: 7,
}
WAITING_STEPS = frozenset({"vas", "schedule_service"})
DONE, CANCELLED = "done", "cancelled"


class StepError(CentralError):
    """A step cannot be finished now (HTTP 409) - ``reason`` says why."""


@dataclass(slots=True)
class LineState:
    line_no: int
    definition: Definition
    version: int
    partner: str
    cancelled: bool
    step: str  # as stored ("" when the order has no rows)


_STATUS_RANK = {str(k): v for k, v in RANK.items()}
_DONE_RANK = {name: RANK[st.done_at] if st.done_at is not None else None for name, st in STEPS.items()}


def current_step(d: Definition, status: str, done: set[str]) -> str:
    """The first step of ``d`` not finished at ``status`` with ``done`` (finished by hand)."""
    if status == Status.CANCELLED:
        return CANCELLED
    rank = _STATUS_RANK.get(status, 0)
    # a step is over when done, when the status reached its own, or once a later lifecycle
    # step is over (shipped: confirmed and picked)
    later = False
    first = DONE
    for s in reversed(d.steps):
        bound = _DONE_RANK[s]
        finished = later or s in done or (bound is not None and rank >= bound)
        if not finished:
            first = s
        elif bound is not None:
            later = True
    return first


def _order(conn: sqlite3.Connection, order_id: int) -> tuple[str, str, str, str]:
    row = conn.execute(
        "SELECT status, order_type, customer, channel FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    if row is None:
        raise lifecycle.UnknownOrder(order_id)
    return str(row[0]), str(row[1]), str(row[2]), str(row[3])


def _line_facts(conn: sqlite3.Connection, order_id: int) -> list[tuple[int, bool, dict[str, Any]]]:
    """(line_no, cancelled, facts) for every line: what a definition's conditions read."""
    rows = conn.execute(
        "SELECT l.line_no, l.cancelled, i.item_class, i.service, i.supplier, c.grade, o.channel, o.order_type"
        " FROM order_lines l JOIN orders o ON o.order_id = l.order_id"
        " LEFT JOIN item_gtins g ON g.gtin = l.gtin"
        " LEFT JOIN items i ON i.sku = coalesce(l.sku, g.sku)"
        " LEFT JOIN customers c ON c.code = o.customer"
        " WHERE l.order_id = ? ORDER BY l.line_no",
        (order_id,),
    ).fetchall()
    return [
        (
            int(r[0]),
            bool(r[1]),
            {
                "item_class": r[2] or "",
                "service": r[3] or "",
                "supplier": r[4] or "",
                "customer_grade": r[5] or "",
                "channel": r[6],
                "drop_ship": r[7] == defs.DROP_SHIP,
            },
        )
        for r in rows
    ]


def _stored(conn: sqlite3.Connection, order_id: int, otype: str) -> list[LineState]:
    """The lines with a ``process_lines`` row: those on an imported (non-default) definition."""
    stored = conn.execute(
        "SELECT p.line_no, p.definition, p.version, p.partner, p.step, l.cancelled FROM process_lines p"
        " JOIN order_lines l ON l.order_id = p.order_id AND l.line_no = p.line_no"
        " WHERE p.order_id = ? ORDER BY p.line_no",
        (order_id,),
    ).fetchall()
    found: dict[tuple[int, str], Definition] = {}
    for r in stored:
        if (int(r[2]), str(r[1])) not in found:
            found[(int(r[2]), str(r[1]))] = defs.find(conn, int(r[2]), str(r[1]), otype)
    return [
        LineState(int(r[0]), found[(int(r[2]), str(r[1]))], int(r[2]), str(r[3]), bool(r[5]), str(r[4]))
        for r in stored
    ]


def lines(conn: sqlite3.Connection, order_id: int) -> list[LineState]:
    """Every line's definition, version, partner and stored step: its row, else the default
    definition (version 0; a drop-ship line's partner is its item's supplier)."""
    otype = _order(conn, order_id)[1]
    stored = {st.line_no: st for st in _stored(conn, order_id, otype)}
    d = defs.default(otype)
    return [
        stored.get(ln)
        or LineState(ln, d, 0, str(f["supplier"]) if otype == defs.DROP_SHIP else "", cancelled, "")
        for ln, cancelled, f in _line_facts(conn, order_id)
    ]


def _done(conn: sqlite3.Connection, order_id: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for ln, step in conn.execute(
        "SELECT line_no, step FROM process_done WHERE order_id = ? ORDER BY line_no, step", (order_id,)
    ):
        out[int(ln)].add(str(step))
    return out


def _assign(conn: sqlite3.Connection, order_id: int, version: int, otype: str, now: int) -> None:
    """Rows for the lines on an imported definition that have none (a new order, or a line
    added by a change)."""
    have = {r[0] for r in conn.execute("SELECT line_no FROM process_lines WHERE order_id = ?", (order_id,))}
    masters = defs.definitions(conn, version)
    rows = []
    for ln, cancelled, f in _line_facts(conn, order_id):
        if ln in have or cancelled:
            continue
        d = defs.select(masters, otype, f)
        if d.name == defs.DEFAULT:
            continue  # the built-in default: no row, its steps follow the status
        partner = d.partner or (str(f["supplier"]) if otype == defs.DROP_SHIP else "")
        rows.append((order_id, ln, d.name, version, partner, now))
    if rows:
        conn.executemany(
            "INSERT INTO process_lines (order_id, line_no, definition, version, partner, step, waiting,"
            " since) VALUES (?, ?, ?, ?, ?, '', 0, ?)",
            rows,
        )


def on_status(conn: sqlite3.Connection, order_id: int, status: str, actor: str, now: int) -> None:
    """The lifecycle's status hook (``central.wiring``): the lines' steps follow the status."""
    if status == Status.VALIDATED:
        row = conn.execute(
            "SELECT version FROM process_lines WHERE order_id = ? LIMIT 1", (order_id,)
        ).fetchone()
        version = int(row[0]) if row else defs.latest_version(conn)
        if version:
            _assign(conn, order_id, version, _order(conn, order_id)[1], now)
    advance(conn, order_id, actor=actor, now=now)


def advance(conn: sqlite3.Connection, order_id: int, *, actor: str, now: int) -> None:
    """Recompute each line's current step; record the work units that finished and started."""
    if conn.execute("SELECT 1 FROM process_lines WHERE order_id = ? LIMIT 1", (order_id,)).fetchone() is None:
        return  # no rows (version 0): the default definition, whose steps are the status events
    status, otype, _c, _ch = _order(conn, order_id)
    states = _stored(conn, order_id, otype)
    done = _done(conn, order_id)
    finished: dict[tuple[str, str, str, int], list[int]] = defaultdict(list)
    started: dict[tuple[str, str, str, int], list[int]] = defaultdict(list)
    moved = []
    for st in states:
        new = CANCELLED if st.cancelled else current_step(st.definition, status, done.get(st.line_no, set()))
        if new == st.step:
            continue
        moved.append((new, 1 if new in WAITING_STEPS else 0, now, order_id, st.line_no))
        steps = st.definition.steps
        old_i = (
            steps.index(st.step) if st.step in steps else (len(steps) if st.step in (DONE, CANCELLED) else -1)
        )
        new_i = steps.index(new) if new in steps else len(steps)
        key = (st.definition.name, st.partner, st.version)
        if new != CANCELLED:
            for s in steps[max(old_i, 0) : new_i] if old_i < new_i else ():
                finished[(s, *key)].append(st.line_no)
        if new in steps:
            started[(new, *key)].append(st.line_no)
    if moved:
        conn.executemany(
            "UPDATE process_lines SET step = ?, waiting = ?, since = ? WHERE order_id = ? AND line_no = ?",
            moved,
        )
    for kind, groups in (("work unit finished", finished), ("work unit started", started)):
        for (step, name, partner, version), nos in sorted(
            groups.items(), key=lambda kv: (STEPS[kv[0][0]].rank, kv[0])
        ):
            by = f", partner {partner}" if partner else ""
            which = f"line{'s' if len(nos) > 1 else ''} {', '.join(map(str, nos))}"
            detail = f"{step}: {which} ({name} v{version}{by})"
            lifecycle.record_event(conn, order_id, kind, detail=detail, actor=actor, now=now)


def work_units(conn: sqlite3.Connection, order_id: int) -> list[dict[str, Any]]:
    """The order's current work units: lines grouped by definition, version, partner, step."""
    status = _order(conn, order_id)[0]
    done = _done(conn, order_id)
    groups: dict[tuple[str, int, str, str], list[int]] = defaultdict(list)
    for st in lines(conn, order_id):
        step = (
            st.step
            if st.step
            else (
                CANCELLED
                if st.cancelled
                else current_step(st.definition, status, done.get(st.line_no, set()))
            )
        )
        groups[(st.definition.name, st.version, st.partner, step)].append(st.line_no)
    return [
        {"definition": n, "version": v, "partner": p, "step": s, "lines": nos}
        for (n, v, p, s), nos in sorted(groups.items(), key=lambda kv: kv[1][0])
    ]


def line_view(conn: sqlite3.Connection, order_id: int) -> dict[int, dict[str, Any]]:
    """line_no -> {definition, version, step, steps, partner} for ``GET /api/orders/{no}``."""
    status = _order(conn, order_id)[0]
    done = _done(conn, order_id)
    out = {}
    for st in lines(conn, order_id):
        step = (
            st.step
            if st.step
            else (
                CANCELLED
                if st.cancelled
                else current_step(st.definition, status, done.get(st.line_no, set()))
            )
        )
        out[st.line_no] = {
            "definition": st.definition.name,
            "version": st.version,
            "step": step,
            "steps": list(st.definition.steps),
            "partner": st.partner,
        }
    return out


# -- finishing a step by hand or by a partner --------------------------------------------------


SKIPPABLE = frozenset({"partner_confirm", "pick"})  # a partner's shipped says these happened


def record_done(
    conn: sqlite3.Connection,
    order_id: int,
    step: str,
    *,
    partner: str,
    actor: str,
    now: int,
    detail: str = "",
) -> None:
    """``step`` finished for the lines ``partner`` fulfils (a drop-ship supplier's answer,
    ``ordertypes.supplier_confirmation``), where the line's definition has it."""
    for s in lines(conn, order_id):
        if s.partner == partner and not s.cancelled and step in s.definition.steps:
            conn.execute(
                "INSERT INTO process_done (order_id, line_no, step, at, actor, detail)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (order_id, line_no, step) DO NOTHING",
                (order_id, s.line_no, step, now, actor, detail),
            )
    advance(conn, order_id, actor=actor, now=now)


def finish(
    conn: sqlite3.Connection,
    order_id: int,
    step: str,
    *,
    actor: str,
    now: int,
    line_nos: list[int] | None = None,
    partner: str | None = None,
    detail: str = "",
) -> list[int]:
    """Finish ``step`` for the lines at it (those of ``line_nos``, those of ``partner``);
    ``ship`` and ``deliver`` move the order to shipped / delivered once every open line has
    them. Returns the lines finished; StepError when none is at the step."""
    if step not in STEPS:
        raise StepError(f"unknown step {step!r}; known: {', '.join(STEPS)}")
    status, otype, _c, _ch = _order(conn, order_id)
    if STEPS[step].done_at is not None and step not in ("ship", "deliver"):
        raise StepError(
            f"step {step!r} is finished by central itself (the order reaching {STEPS[step].done_at})"
        )
    if otype == defs.DROP_SHIP and step in ("ship", "partner_confirm") and partner is None:
        raise StepError(
            f"{step} of a drop-ship order is the supplier's (POST /api/orders/{{no}}/supplier-confirmation)"
        )
    done = _done(conn, order_id)
    states = [s for s in lines(conn, order_id) if not s.cancelled]
    if partner is not None:
        states = [s for s in states if s.partner == partner]
    if line_nos is not None:
        unknown = sorted(set(line_nos) - {s.line_no for s in states})
        if unknown:
            by = f" fulfilled by {partner}" if partner else ""
            raise StepError(f"line {unknown[0]} is not an open line of this order{by}")
        states = [s for s in states if s.line_no in line_nos]
    skippable = SKIPPABLE if partner is not None else frozenset({"partner_confirm"})
    at = [s for s in states if _reachable(s, status, done, step, skippable)]
    if not at:
        raise StepError(f"no line of this order ({status}) is at step {step!r}")
    for s in at:
        conn.execute(
            "INSERT INTO process_done (order_id, line_no, step, at, actor, detail) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (order_id, line_no, step) DO NOTHING",
            (order_id, s.line_no, step, now, actor, detail),
        )
        done[s.line_no].add(step)
    if step in ("ship", "deliver"):
        _bound(
            conn, order_id, step, status=status, otype=otype, done=done, actor=actor, now=now, detail=detail
        )
    advance(conn, order_id, actor=actor, now=now)
    return [s.line_no for s in at]


def _reachable(
    s: LineState, status: str, done: dict[int, set[str]], step: str, skippable: frozenset[str]
) -> bool:
    """``step`` is in the line's definition, not finished, and only steps its report implies
    (``skippable``: a partner's shipped says it confirmed and picked) stand before it."""
    steps = s.definition.steps
    cur = current_step(s.definition, status, done.get(s.line_no, set()))
    if step not in steps or cur not in steps or steps.index(step) < steps.index(cur):
        return False
    return all(x in skippable for x in steps[steps.index(cur) : steps.index(step)])


def _bound(
    conn: sqlite3.Connection,
    order_id: int,
    step: str,
    *,
    status: str,
    otype: str,
    done: dict[int, set[str]],
    actor: str,
    now: int,
    detail: str,
) -> None:
    """A desk's or partner's ship/deliver: the order's status moves once every open line has it."""
    open_lines = [s for s in lines(conn, order_id) if not s.cancelled and step in s.definition.steps]
    if any(step not in done.get(s.line_no, set()) for s in open_lines):
        return
    text = detail or f"{step} finished by {actor}"
    if step == "ship":
        if status == Status.RELEASED and otype != defs.DROP_SHIP:
            lifecycle.transition(
                conn, order_id, Status.PICKED, actor=actor, detail=f"picked: {text}", now=now
            )
            status = Status.PICKED
        if status not in (Status.PICKED, Status.RELEASED):
            raise StepError(f"order is {status}; ship needs it picked (or released to a partner)")
        lifecycle.transition(conn, order_id, Status.SHIPPED, actor=actor, detail=text, now=now)
    elif step == "deliver":
        if status != Status.SHIPPED:
            raise StepError(f"order is {status}; deliver needs it shipped")
        lifecycle.transition(conn, order_id, Status.DELIVERED, actor=actor, detail=text, now=now)


ITEM_FACTS = ("item_class", "service", "supplier")


class BatchFilter:
    """For the set-based batch path of gateway orders (``orders.create_batch``, normal orders
    only, which skips the lifecycle's hooks): ``filter(customer, channel, skus)`` is true when
    a line of such an order would take an imported definition (that order must go one by one,
    through the hooks). Each definition's conditions are split into the item's and the
    order's, each side remembered (per sku, per customer grade and channel) as the set of
    definitions it lets through; :meth:`read` reads the items a run names at once."""

    def __init__(self, conn: sqlite3.Connection, normal: list[Definition]) -> None:
        self.conn = conn
        self.item_when = [{k: v for k, v in d.when.items() if k in ITEM_FACTS} for d in normal]
        self.order_when = [{k: v for k, v in d.when.items() if k not in ITEM_FACTS} for d in normal]
        self.by_sku: dict[str, frozenset[int]] = {}
        self.by_order: dict[tuple[str, str], frozenset[int]] = {}  # (customer, channel) -> defs
        self.grades: dict[str, str] = {}

    @staticmethod
    def _fits(when: dict[str, Any], facts: dict[str, Any]) -> bool:
        return all(facts.get(k) in v if isinstance(v, list) else facts.get(k) == v for k, v in when.items())

    def read(self, names: Iterable[str]) -> None:
        missing = sorted({s for s in names if s not in self.by_sku})
        if not missing:
            return
        none = frozenset(
            i for i, w in enumerate(self.item_when) if self._fits(w, dict.fromkeys(ITEM_FACTS, ""))
        )
        self.by_sku.update(dict.fromkeys(missing, none))  # an unknown sku: empty facts
        for k in range(0, len(missing), 500):
            part = missing[k : k + 500]
            marks = ",".join("?" * len(part))
            for sku, cls, service, supplier in self.conn.execute(
                f"SELECT sku, item_class, service, supplier FROM items WHERE sku IN ({marks})", part
            ):
                facts = {"item_class": cls or "", "service": service or "", "supplier": supplier or ""}
                self.by_sku[sku] = frozenset(i for i, w in enumerate(self.item_when) if self._fits(w, facts))

    def __call__(self, customer: str, channel: str, skus: list[str]) -> bool:
        if any(s not in self.by_sku for s in skus):
            self.read(skus)
        fits = self.by_order.get((customer, channel))
        if fits is None:
            row = self.conn.execute("SELECT grade FROM customers WHERE code = ?", (customer,)).fetchone()
            facts = {
                "customer_grade": str(row[0] or "") if row else "",
                "channel": channel,
                "drop_ship": False,
            }
            fits = self.by_order[(customer, channel)] = frozenset(
                i for i, w in enumerate(self.order_when) if self._fits(w, facts)
            )
        return bool(fits) and any(not fits.isdisjoint(self.by_sku[s]) for s in skus)


def batch_filter(conn: sqlite3.Connection) -> BatchFilter | None:
    """A :class:`BatchFilter` on the latest master; None when no imported definition is for
    normal orders (the batch path takes every order as before)."""
    version = defs.latest_version(conn)
    normal = [d for d in defs.definitions(conn, version) if "normal" in d.order_types] if version else []
    return BatchFilter(conn, normal) if normal else None
