"""The availability monitor: sales velocity and days of cover per item and location, and a
proposal of alternative sourcing when a fast seller is about to run out.

**Velocity** (units a day) is demand, not supply: the order lines of the stock order types
(``normal``, ``contract``, ``consignment``, ``voucher``; drop-ship lines never touch our stock)
that are not cancelled, counted at the location that serves the ordering customer - the first
source of its zone's sourcing rules (what the allocation engine tries first), so a stock-out
does not hide demand. Two simple moving averages: units in the last ``short_window_days`` (7)
over 7 and in the last ``long_window_days`` (28) over 28; the monitor uses the larger. Why
simple averages: each is one grouped sum over a window of order lines (no per-day series or
state to keep, nothing to replay after a restart, and a person can check the figure by hand);
the larger of the two reacts within days to a surge (the 7-day average) yet does not forget
steady demand in a quiet week (the 28-day one) - it errs towards warning early, which is the
cheap side of a stock-out.

**Days of cover** = projected available / velocity, where projected available is on hand -
allocated + expected receipts not yet booked in (so an accepted proposal's receipt counts at
once). A location and item are **at risk** when velocity >= ``min_velocity`` (a fast seller) and
cover < ``lead_days + safety_days``.

**Proposal** for an at-risk row, aiming at ``target_days`` of cover (need = velocity x
target - projected, at least 1): a **transfer** from another stocking location whose surplus
(available - velocity there x target) covers the need, best surplus first; else a **drop-ship**
source (a location of kind ``supplier`` holding the item) that covers it; else a **supplier
order** from the item master's supplier; with none of these, the largest partial transfer, or
just the alert (kind ``none``).

**Episodes**: one row of ``availability_proposals`` per at-risk spell of a location and item
(``closed_ms`` NULL while it lasts). It opens with its proposal and a ``stock_out_risk`` alert
in the dashboard's ``alerts`` table (``gateway`` = the location, ``device_id`` = the sku); later
ticks only refresh its figures; a person **accepts** it (a transfer or drop-ship becomes a
reservation at the source plus an expected receipt at the location; a supplier order an
expected receipt from the supplier; booking that receipt in takes the transferred units off
the source's on hand, :func:`complete_transfer`) or **dismisses** it - either closes the alert;
the episode ends (and the alert closes, if still open) when the row is no longer at risk. A
dismissed row therefore stays quiet until it recovers and runs low again.

**Cost**: :func:`evaluate` reads every inventory row and the window's order lines grouped by
customer and item (one pass each, O(items x locations + customers x items ordered)) in a read
job, then writes only the episodes that open, change or close in one short write job.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

from central import CentralError
from central.allocate import inventory
from central.allocate.inventory import load_network
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB, Migration

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
ALERT_KIND = "stock_out_risk"
STOCK_ORDER_TYPES = ("normal", "contract", "consignment", "voucher")

MIGRATIONS = [
    Migration(
        "availability_0001",
        """
        CREATE INDEX orders_created ON orders(created_at);
        CREATE TABLE availability_proposals (
            proposal_id INTEGER PRIMARY KEY AUTOINCREMENT,
            location TEXT NOT NULL,
            sku TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open',
            kind TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            qty INTEGER NOT NULL,
            need INTEGER NOT NULL,
            velocity REAL NOT NULL,
            available INTEGER NOT NULL,
            cover_days REAL NOT NULL,
            threshold_days REAL NOT NULL,
            opened_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            closed_ms INTEGER,
            decided_by TEXT NOT NULL DEFAULT '',
            decided_ms INTEGER,
            result TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE UNIQUE INDEX availability_open ON availability_proposals(location, sku)
            WHERE closed_ms IS NULL;
        CREATE INDEX availability_status ON availability_proposals(status, proposal_id);
        """,
    ),
]


class AvailabilityError(CentralError):
    """A proposal that cannot be decided (HTTP 404 unknown, 409 already decided or ended)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AvailabilitySettings:
    enabled: bool = True
    short_window_days: int = 7
    long_window_days: int = 28
    lead_days: float = 3.0  # how long a replenishment takes to arrive
    safety_days: float = 2.0  # cover kept on top of the lead time
    target_days: float = 14.0  # the cover a proposal aims at
    min_velocity: float = 1.0  # units a day from which an item counts as a fast seller

    @property
    def threshold_days(self) -> float:
        return self.lead_days + self.safety_days


@dataclass(frozen=True, slots=True)
class Cover:
    location: str
    sku: str
    on_hand: int
    allocated: int
    incoming: int  # expected receipts not yet booked in
    short_units: int  # demanded in the short window
    long_units: int  # demanded in the long window
    velocity: float  # units a day: the larger of the two averages
    cover_days: float | None  # None: no demand (endless cover)
    at_risk: bool

    @property
    def available(self) -> int:
        return self.on_hand - self.allocated

    @property
    def projected(self) -> int:
        return self.available + self.incoming

    def to_json(self, settings: AvailabilitySettings) -> dict[str, Any]:
        return {
            "location": self.location,
            "sku": self.sku,
            "on_hand": self.on_hand,
            "allocated": self.allocated,
            "available": self.available,
            "incoming": self.incoming,
            f"units_{settings.short_window_days}d": self.short_units,
            f"units_{settings.long_window_days}d": self.long_units,
            f"velocity_{settings.short_window_days}d": round(
                self.short_units / settings.short_window_days, 3
            ),
            f"velocity_{settings.long_window_days}d": round(self.long_units / settings.long_window_days, 3),
            "velocity": round(self.velocity, 3),
            "cover_days": None if self.cover_days is None else round(self.cover_days, 2),
            "threshold_days": settings.threshold_days,
            "at_risk": self.at_risk,
        }


def customer_zones(conn: sqlite3.Connection, customers: Collection[str]) -> dict[str, str]:
    """Each customer's delivery zone as allocation sees it: the customer master's ``region``,
    else ``alloc_customer_profile.zone`` (a customer known only to allocation)."""
    want = sorted(customers)
    out: dict[str, str] = {}
    for k in range(0, len(want), 500):
        part = want[k : k + 500]
        marks = ",".join("?" * len(part))
        out.update(conn.execute(f"SELECT code, region FROM customers WHERE code IN ({marks})", part))
        rest = [c for c in part if c not in out]
        if rest:
            marks = ",".join("?" * len(rest))
            out.update(
                conn.execute(
                    f"SELECT customer, zone FROM alloc_customer_profile WHERE customer IN ({marks})", rest
                )
            )
    return out


def item_suppliers(conn: sqlite3.Connection, skus: Collection[str]) -> dict[str, str]:
    """Each item's supplier from the item master (items without one left out)."""
    want = sorted(skus)
    out: dict[str, str] = {}
    for k in range(0, len(want), 500):
        part = want[k : k + 500]
        marks = ",".join("?" * len(part))
        out.update(
            conn.execute(f"SELECT sku, supplier FROM items WHERE supplier <> '' AND sku IN ({marks})", part)
        )
    return out


def demand(
    conn: sqlite3.Connection, *, now: int, settings: AvailabilitySettings
) -> dict[tuple[str, str], tuple[int, int]]:
    """(short-window units, long-window units) per (serving location, sku)."""
    long_from = now - settings.long_window_days * DAY_MS
    short_from = now - settings.short_window_days * DAY_MS
    types = ",".join("?" * len(STOCK_ORDER_TYPES))
    rows = conn.execute(
        "SELECT o.customer, l.sku, sum(CASE WHEN o.created_at >= ? THEN l.qty ELSE 0 END), sum(l.qty)"
        " FROM orders o JOIN order_lines l ON l.order_id = o.order_id"
        f" WHERE o.created_at >= ? AND o.created_at <= ? AND o.status <> 'cancelled'"
        f" AND o.order_type IN ({types}) AND l.cancelled = 0 AND l.sku IS NOT NULL"
        " GROUP BY o.customer, l.sku ORDER BY o.customer, l.sku",
        (short_from, long_from, now, *STOCK_ORDER_TYPES),
    ).fetchall()
    if not rows:
        return {}
    zones = customer_zones(conn, {r[0] for r in rows})
    net = load_network(conn)
    out: dict[tuple[str, str], tuple[int, int]] = {}
    first_of: dict[str, str | None] = {}
    for customer, sku, short, long_ in rows:
        zone = zones.get(customer, "")
        if zone not in first_of:
            normal, _ = net.candidates(zone)
            first_of[zone] = normal[0][0] if normal else None
        loc = first_of[zone]
        if loc is None:
            continue
        s0, l0 = out.get((loc, sku), (0, 0))
        out[(loc, sku)] = (s0 + int(short), l0 + int(long_))
    return out


def _velocity(units: tuple[int, int], settings: AvailabilitySettings) -> float:
    return max(units[0] / settings.short_window_days, units[1] / settings.long_window_days)


def covers(
    conn: sqlite3.Connection,
    *,
    now: int,
    settings: AvailabilitySettings,
    location: str | None = None,
    sku: str | None = None,
    skus: Collection[str] | None = None,
    dem: dict[tuple[str, str], tuple[int, int]] | None = None,
) -> list[Cover]:
    """Velocity and cover of every (location, sku) with stock or demand - or only those of
    ``location``, ``sku``, the items ``skus`` - ordered by location and sku. ``dem``: the
    :func:`demand` already read."""
    if dem is None:
        dem = demand(conn, now=now, settings=settings)
    where, args = [], []
    if location is not None:
        where.append("location = ?")
        args.append(location)
    if sku is not None:
        where.append("sku = ?")
        args.append(sku)
    chunks: list[list[str]] = [[]]
    if skus is not None:
        want = sorted(skus)
        chunks = [want[k : k + 500] for k in range(0, len(want), 500)]
    stock: dict[tuple[str, str], tuple[int, int]] = {}
    incoming: dict[tuple[str, str], int] = {}
    for chunk in chunks:
        conds, cargs = list(where), list(args)
        if skus is not None:
            conds.append(f"sku IN ({','.join('?' * len(chunk))})")
            cargs += chunk
        cond = f" WHERE {' AND '.join(conds)}" if conds else ""
        for loc, s, oh, al in conn.execute(
            f"SELECT location, sku, on_hand, allocated FROM inventory{cond}", cargs
        ):
            stock[(loc, s)] = (oh, al)
        for loc, s, q in conn.execute(
            "SELECT location, sku, sum(qty) FROM receipts WHERE status = 'expected'"
            f"{''.join(' AND ' + c for c in conds)} GROUP BY location, sku",
            cargs,
        ):
            incoming[(loc, s)] = int(q)
    keys = set(stock)
    keys |= {
        k
        for k in dem
        if (location is None or k[0] == location)
        and (sku is None or k[1] == sku)
        and (skus is None or k[1] in skus)
    }
    threshold = settings.threshold_days
    out = []
    for key in sorted(keys):
        oh, al = stock.get(key, (0, 0))
        units = dem.get(key, (0, 0))
        v = _velocity(units, settings)
        inc = incoming.get(key, 0)
        cover = (oh - al + inc) / v if v > 0 else None
        risk = v >= settings.min_velocity and v > 0 and cover is not None and cover < threshold
        out.append(Cover(key[0], key[1], oh, al, inc, units[0], units[1], v, cover, risk))
    return out


def _ceil(x: float) -> int:
    """Units to cover ``x``: rounded up, after dropping float noise (27/7 x 14 is 54, not 55)."""
    return math.ceil(round(x, 6))


@dataclass(frozen=True, slots=True)
class Proposal:
    kind: str  # transfer, drop_ship, supplier_order, none
    source: str
    qty: int
    need: int


def propose(
    row: Cover,
    same_sku: list[tuple[str, int, float]],
    *,
    settings: AvailabilitySettings,
    supplier_locations: frozenset[str],
    supplier: str | None,
) -> Proposal:
    """The alternative sourcing for one at-risk row (see the module doc); ``same_sku``: every
    location holding the item as (location, available, velocity there)."""
    need = max(1, _ceil(row.velocity * settings.target_days) - row.projected)
    surplus: list[tuple[int, str]] = []
    drop: list[tuple[int, str]] = []
    for loc, avail, vel in same_sku:
        if loc == row.location or avail <= 0:
            continue
        if loc in supplier_locations:
            drop.append((avail, loc))
            continue
        spare = avail - _ceil(vel * settings.target_days)
        if spare > 0:
            surplus.append((spare, loc))
    surplus.sort(key=lambda t: (-t[0], t[1]))
    drop.sort(key=lambda t: (-t[0], t[1]))
    if surplus and surplus[0][0] >= need:
        return Proposal("transfer", surplus[0][1], need, need)
    if drop and drop[0][0] >= need:
        return Proposal("drop_ship", drop[0][1], need, need)
    if supplier:
        return Proposal("supplier_order", supplier, need, need)
    if surplus:
        return Proposal("transfer", surplus[0][1], surplus[0][0], need)
    if drop:
        return Proposal("drop_ship", drop[0][1], drop[0][0], need)
    return Proposal("none", "", 0, need)


def _message(row: Cover, p: Proposal) -> str:
    cover = "no stock" if row.projected <= 0 else f"{row.cover_days:.1f} days of cover"
    what = {
        "transfer": f"propose transfer of {p.qty} from {p.source}",
        "drop_ship": f"propose drop-ship of {p.qty} from {p.source}",
        "supplier_order": f"propose supplier order of {p.qty} from {p.source}",
        "none": "no alternative source",
    }[p.kind]
    return f"{row.sku} at {row.location}: {cover} at {row.velocity:.1f}/day; {what}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one evaluation found: the at-risk rows with their proposals."""

    at_risk: dict[tuple[str, str], tuple[Cover, Proposal]]
    rows: int  # the rows read: the fast sellers' at every location holding them


def _chunks(items: list[str], n: int = 500) -> list[list[str]]:
    return [items[k : k + n] for k in range(0, len(items), n)]


def plan(conn: sqlite3.Connection, *, now: int, settings: AvailabilitySettings) -> Plan:
    """The read half of :func:`evaluate`: each at-risk row with its proposal. Reads only what
    can matter: the stock of the (location, item) pairs selling at ``min_velocity`` or more
    (a slow one cannot be at risk), then, for the items at risk somewhere, every location
    holding them (the transfer sources)."""
    dem = demand(conn, now=now, settings=settings)
    vel = {k: v for k, units in dem.items() if (v := _velocity(units, settings)) > 0}
    fast: dict[str, list[str]] = defaultdict(list)  # location -> its fast skus
    for (loc, sku), v in vel.items():
        if v >= settings.min_velocity:
            fast[loc].append(sku)
    stock: dict[tuple[str, str], tuple[int, int]] = {}
    rows = 0
    for loc in sorted(fast):
        for chunk in _chunks(sorted(fast[loc])):
            marks = ",".join("?" * len(chunk))
            for sku, oh, al in conn.execute(
                f"SELECT sku, on_hand, allocated FROM inventory WHERE location = ? AND sku IN ({marks})",
                (loc, *chunk),
            ):
                stock[(loc, sku)] = (oh, al)
                rows += 1
    incoming = {
        (loc, sku): int(q)
        for loc, sku, q in conn.execute(
            "SELECT location, sku, sum(qty) FROM receipts WHERE status = 'expected' GROUP BY location, sku"
        )
    }
    threshold = settings.threshold_days
    risky = []
    for loc in sorted(fast):
        for sku in sorted(fast[loc]):
            key = (loc, sku)
            v = vel[key]
            oh, al = stock.get(key, (0, 0))
            inc = incoming.get(key, 0)
            cover = (oh - al + inc) / v
            if cover < threshold:
                units = dem[key]
                risky.append(Cover(loc, sku, oh, al, inc, units[0], units[1], v, cover, True))
    out: dict[tuple[str, str], tuple[Cover, Proposal]] = {}
    if not risky:
        return Plan(out, rows)
    holders: dict[str, list[tuple[str, int, float]]] = defaultdict(list)  # sku -> (loc, avail, vel)
    for chunk in _chunks(sorted({r.sku for r in risky})):
        marks = ",".join("?" * len(chunk))
        for loc, sku, oh, al in conn.execute(
            f"SELECT location, sku, on_hand, allocated FROM inventory WHERE sku IN ({marks})", chunk
        ):
            holders[sku].append((loc, oh - al, vel.get((loc, sku), 0.0)))
            rows += 1
    sup_locs = frozenset(c for (c,) in conn.execute("SELECT code FROM locations WHERE kind = 'supplier'"))
    sups = item_suppliers(conn, {r.sku for r in risky})
    for r in risky:
        p = propose(
            r, holders[r.sku], settings=settings, supplier_locations=sup_locs, supplier=sups.get(r.sku)
        )
        out[(r.location, r.sku)] = (r, p)
    return Plan(out, rows)


def apply_plan(
    conn: sqlite3.Connection, found: Plan, *, now: int, settings: AvailabilitySettings
) -> dict[str, int]:
    """The write half: open episodes (proposal + alert) for new at-risk rows, refresh the
    figures of open ones, end those no longer at risk. Returns counts."""
    current = {
        (loc, sku): (pid, status, kind, source, qty, round(cover, 2))
        for pid, loc, sku, status, kind, source, qty, cover in conn.execute(
            "SELECT proposal_id, location, sku, status, kind, source, qty, cover_days"
            " FROM availability_proposals WHERE closed_ms IS NULL ORDER BY proposal_id"
        )
    }
    opened = updated = closed = 0
    for key, (row, p) in sorted(found.at_risk.items()):
        cover = 0.0 if row.cover_days is None else max(0.0, row.cover_days)
        if key not in current:
            # another worker's monitor (a tick, POST /api/availability/evaluate) may have opened
            # the episode meanwhile (PostgreSQL): its row stands, this one opens nothing
            cur = conn.execute(
                "INSERT INTO availability_proposals (location, sku, status, kind, source, qty, need,"
                " velocity, available, cover_days, threshold_days, opened_ms, updated_ms)"
                " VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (location, sku) WHERE closed_ms IS NULL DO NOTHING",
                (
                    *key,
                    p.kind,
                    p.source,
                    p.qty,
                    p.need,
                    row.velocity,
                    row.projected,
                    cover,
                    settings.threshold_days,
                    now,
                    now,
                ),
            )
            if cur.rowcount != 1:
                continue
            conn.execute(
                "INSERT INTO alerts (key, kind, gateway, device_id, severity, message, opened_ms)"
                " VALUES (?, ?, ?, ?, 'warning', ?, ?) ON CONFLICT DO NOTHING",
                (_alert_key(*key), ALERT_KIND, key[0], key[1], _message(row, p), now),
            )
            opened += 1
            continue
        pid, status, kind, source, qty, old_cover = current[key]
        if status != "open" or (kind, source, qty, old_cover) == (p.kind, p.source, p.qty, round(cover, 2)):
            continue  # decided by a person, or nothing new: no write, no second alert
        if not conn.execute(
            "UPDATE availability_proposals SET kind = ?, source = ?, qty = ?, need = ?, velocity = ?,"
            " available = ?, cover_days = ?, updated_ms = ? WHERE proposal_id = ? AND status = 'open'",
            (p.kind, p.source, p.qty, p.need, row.velocity, row.projected, cover, now, pid),
        ).rowcount:
            continue  # decided meanwhile (another worker): a person's decision stands
        conn.execute(
            "UPDATE alerts SET message = ? WHERE key = ? AND closed_ms IS NULL",
            (_message(row, p), _alert_key(*key)),
        )
        updated += 1
    for key in sorted(current.keys() - found.at_risk.keys()):
        pid, status = current[key][0], current[key][1]
        conn.execute(
            "UPDATE availability_proposals SET closed_ms = ?, updated_ms = ?,"
            " status = CASE WHEN status = 'open' THEN 'cleared' ELSE status END WHERE proposal_id = ?",
            (now, now, pid),
        )
        _close_alert(conn, key[0], key[1], now)
        closed += 1
    return {
        "rows": found.rows,
        "at_risk": len(found.at_risk),
        "opened": opened,
        "updated": updated,
        "closed": closed,
    }


def evaluate(conn: sqlite3.Connection, *, now: int, settings: AvailabilitySettings) -> dict[str, int]:
    """Plan and apply in the caller's transaction (a test's or a tool's one-shot)."""
    return apply_plan(conn, plan(conn, now=now, settings=settings), now=now, settings=settings)


def _alert_key(location: str, sku: str) -> str:
    return f"avail:{location}:{sku}"


def _close_alert(conn: sqlite3.Connection, location: str, sku: str, now: int) -> None:
    conn.execute(
        "UPDATE alerts SET closed_ms = ? WHERE key = ? AND closed_ms IS NULL",
        (now, _alert_key(location, sku)),
    )


# -- proposals: list, accept, dismiss --------------------------------------------------------

PROPOSAL_COLUMNS = (
    "proposal_id",
    "location",
    "sku",
    "status",
    "kind",
    "source",
    "qty",
    "need",
    "velocity",
    "available",
    "cover_days",
    "threshold_days",
    "opened_ms",
    "updated_ms",
    "closed_ms",
    "decided_by",
    "decided_ms",
    "result",
    "detail",
)
STATUSES = ("open", "accepted", "dismissed", "cleared")


def list_proposals(
    conn: sqlite3.Connection,
    *,
    current: bool = True,
    status: str | None = None,
    location: str | None = None,
    sku: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Proposals newest first: ``current`` only the episodes still running."""
    where, args = ["1 = 1"], []
    if current:
        where.append("closed_ms IS NULL")
    for col, val in (("status", status), ("location", location), ("sku", sku)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    rows = conn.execute(
        f"SELECT {', '.join(PROPOSAL_COLUMNS)} FROM availability_proposals WHERE {' AND '.join(where)}"
        " ORDER BY proposal_id DESC LIMIT ?",
        (*args, limit),
    )
    return [dict(zip(PROPOSAL_COLUMNS, r, strict=True)) for r in rows]


def get_proposal(conn: sqlite3.Connection, proposal_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {', '.join(PROPOSAL_COLUMNS)} FROM availability_proposals WHERE proposal_id = ?",
        (proposal_id,),
    ).fetchone()
    return None if row is None else dict(zip(PROPOSAL_COLUMNS, row, strict=True))


def _open(conn: sqlite3.Connection, proposal_id: int) -> dict[str, Any]:
    p = get_proposal(conn, proposal_id)
    if p is None:
        raise AvailabilityError(404, f"no availability proposal {proposal_id}")
    if p["status"] != "open" or p["closed_ms"] is not None:
        raise AvailabilityError(
            409,
            f"proposal {proposal_id} is {p['status']}{' and ended' if p['closed_ms'] else ''};"
            " only an open one can be decided",
        )
    return p


TRANSFER_REF = "transfer P{id}"


def _decide(
    conn: sqlite3.Connection, proposal_id: int, status: str, *, actor: str, now: int, detail: str = ""
) -> None:
    """Mark an open proposal decided - only if it still is: of two people (two workers on
    PostgreSQL) deciding it at once, the second's UPDATE waits for the first's commit, then
    matches nothing and is a 409, so a transfer is reserved and expected once."""
    if (
        conn.execute(
            "UPDATE availability_proposals SET status = ?, decided_by = ?, decided_ms = ?, updated_ms = ?,"
            " detail = CASE WHEN ? = '' THEN detail ELSE ? END"
            " WHERE proposal_id = ? AND status = 'open' AND closed_ms IS NULL",
            (status, actor, now, now, detail, detail, proposal_id),
        ).rowcount
        != 1
    ):
        raise AvailabilityError(409, f"proposal {proposal_id} was decided or ended meanwhile")


def accept(
    conn: sqlite3.Connection,
    proposal_id: int,
    *,
    actor: str,
    now: int,
    today: dt.date,
    settings: AvailabilitySettings,
    qty: int | None = None,
) -> dict[str, Any]:
    """Carry out an open proposal through central's own stock mechanisms and record who did:
    a transfer or drop-ship reserves ``qty`` at the source (``ref`` "transfer P<id>") and
    expects it at the location tomorrow; a supplier order expects it from the supplier after
    the lead time. Closes the alert; the episode ends when the cover is back."""
    p = _open(conn, proposal_id)
    if p["kind"] == "none":
        raise AvailabilityError(409, f"proposal {proposal_id} names no source; dismiss it or source by hand")
    n = p["qty"] if qty is None else qty
    if n <= 0:
        raise AvailabilityError(400, f"qty {n} must be positive")
    _decide(conn, proposal_id, "accepted", actor=actor, now=now)
    loc, sku, source = p["location"], p["sku"], p["source"]
    ref = TRANSFER_REF.format(id=proposal_id)
    if p["kind"] in ("transfer", "drop_ship"):
        rid = inventory.reserve(conn, source, sku, n, ref=f"{ref} to {loc}", now=now)
        receipt = inventory.expect_receipt(
            conn, loc, sku, n, today + dt.timedelta(days=1), supplier=source, ref=ref
        )
        result = f"reservation {rid} at {source}, receipt {receipt} at {loc}"
    else:
        due = today + dt.timedelta(days=math.ceil(settings.lead_days))
        receipt = inventory.expect_receipt(conn, loc, sku, n, due, supplier=source, ref=f"P{proposal_id}")
        result = f"receipt {receipt} at {loc} from {source} due {due.isoformat()}"
    conn.execute(
        "UPDATE availability_proposals SET qty = ?, result = ? WHERE proposal_id = ?",
        (n, result, proposal_id),
    )
    _close_alert(conn, loc, sku, now)
    out = get_proposal(conn, proposal_id)
    assert out is not None
    out["receipt_id"] = receipt
    return out


def dismiss(
    conn: sqlite3.Connection, proposal_id: int, *, actor: str, now: int, reason: str
) -> dict[str, Any]:
    p = _open(conn, proposal_id)
    _decide(conn, proposal_id, "dismissed", actor=actor, now=now, detail=reason[:200])
    _close_alert(conn, p["location"], p["sku"], now)
    out = get_proposal(conn, proposal_id)
    assert out is not None
    return out


def complete_transfer(conn: sqlite3.Connection, receipt_id: int) -> tuple[str, int] | None:
    """A transfer's receipt was booked in at its location: take the units off the source -
    its reservation ends (``status`` 'transferred') and its on hand goes down by them.
    Returns (source, units), or None when the receipt is no accepted transfer."""
    row = conn.execute("SELECT ref FROM receipts WHERE receipt_id = ?", (receipt_id,)).fetchone()
    if row is None or not str(row[0]).startswith("transfer P"):
        return None
    res = conn.execute(
        "SELECT alloc_id, location, sku, qty FROM allocations WHERE kind = 'reservation'"
        " AND status = 'allocated' AND ref LIKE ? ORDER BY alloc_id",
        (f"{row[0]} to %",),
    ).fetchone()
    if res is None:
        return None
    alloc_id, source, sku, qty = res
    conn.execute("UPDATE allocations SET status = 'transferred' WHERE alloc_id = ?", (alloc_id,))
    inventory.bump(conn, {(source, sku): -qty})
    inventory.add_stock(conn, source, sku, -qty)
    return source, int(qty)


class Monitor:
    """The monitor as central runs it: on each scheduler tick (``central.schedule``), the plan
    in a read job, then the changes in one short write job."""

    def __init__(self, db: DurableDB, settings: AvailabilitySettings) -> None:
        self.db = db
        self.settings = settings
        self.last: dict[str, int] = {}

    async def tick(self) -> dict[str, int]:
        if not self.settings.enabled:
            return {}
        now = now_ms()
        found = await self.db.read(partial(plan, now=now, settings=self.settings))
        self.last = await self.db.write(partial(apply_plan, found=found, now=now, settings=self.settings))
        if self.last["opened"] or self.last["closed"]:
            log.info("availability: %s", self.last)
        return self.last
