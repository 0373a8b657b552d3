"""The allocation engine: who gets the stock, from where, and what happens to the rest.

Pure and deterministic. No I/O, no clock, no randomness: inputs are frozen dataclasses
(:class:`OrderDemand`, :class:`Network`, :class:`PriorityRules`, :class:`CompanyPolicy`)
plus a mapping of available quantity per ``(location, sku)``; the output is an
:class:`AllocationResult` with allocations, shortfalls, per-order outcomes and a trace a
person can read. The same inputs give the same result and the same trace, byte for byte;
:func:`encode_inputs` / :func:`decode_inputs` turn the inputs into JSON so a stored run can
be replayed and checked (:func:`trace_digest`).

Steps, per order, in priority order (see ``central/ALLOCATION.md``):

1. Rank: the configured priority rules (default special > grade > value > credit), then
   received time, then order id - a total order, so ties are broken the same way every time.
2. Source from the *normal* candidates for the customer's zone (preferred DC first, then the
   others by cost): one location for the whole order if one can, else per line the first
   location that can fill the line, else - only if the customer allows splitting a line -
   take what each location has in rule order; without split, the best single location.
3. Resolve what is still short by customer preference x company policy: reallocate from
   transfer sources (stores, suppliers) first when the customer will not wait, then
   backorder / ship with next order / cut / delay the whole order / cancel the order.

A cancelled order gives its allocations back before the next order is served.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols.frozen import quick_init

__all__ = [
    "Allocation",
    "AllocationResult",
    "CompanyPolicy",
    "CustomerPref",
    "DemandLine",
    "LocationKind",
    "Network",
    "OrderDemand",
    "OrderOutcome",
    "PriorityRules",
    "ShortageAction",
    "Shortfall",
    "SourcingRule",
    "Special",
    "allocate",
    "decode_inputs",
    "encode_inputs",
    "resolve_shortage",
    "trace_digest",
]


class AllocationInputError(ValueError):
    """Inputs the engine refuses (an unknown rule name, a negative quantity)."""


class Special(enum.StrEnum):
    """Special priority (特殊优先权): orders already promised get stock first."""

    BACKORDER_REFILL = "backorder_refill"
    PROMISED = "promised"
    URGENT = "urgent"


SPECIAL_ORDER: tuple[Special, ...] = (Special.BACKORDER_REFILL, Special.PROMISED, Special.URGENT)
_SPECIAL_RANK = {s.value: i for i, s in enumerate(SPECIAL_ORDER)}
GRADES = ("A", "B", "C")
_GRADE_RANK = {g: i for i, g in enumerate(GRADES)}


class CustomerPref(enum.StrEnum):
    """What the customer wants done with a shortage (customer master 过期订单处理指示)."""

    BACKORDER = "backorder"  # ship what is there, send the rest when it arrives
    SHIP_WITH_NEXT = "ship_with_next"  # ship what is there, the rest with the next order
    CUT = "cut"  # no back orders: delete the short quantity
    DELAY = "delay"  # everything together, late is fine (optionally up to N days)
    CANCEL = "cancel"  # everything together, not late: otherwise cancel the order


class ShortageAction(enum.StrEnum):
    BACKORDER = "backorder"
    SHIP_WITH_NEXT = "ship_with_next"
    CUT = "cut"
    DELAY = "delay"
    CANCEL = "cancel"


#: actions after which the short units are still owed to the customer
OPEN_ACTIONS = frozenset({ShortageAction.BACKORDER, ShortageAction.SHIP_WITH_NEXT, ShortageAction.DELAY})


class LocationKind(enum.StrEnum):
    DC = "dc"
    STORE = "store"
    SUPPLIER = "supplier"


@quick_init
@dataclass(frozen=True, slots=True)
class DemandLine:
    line_no: int
    sku: str
    qty: int


@quick_init
@dataclass(frozen=True, slots=True)
class OrderDemand:
    """One order as the engine sees it (built from the order and customer masters)."""

    order_id: int
    customer: str
    lines: tuple[DemandLine, ...]
    grade: str = "C"
    zone: str = ""
    route: str = ""
    vehicle: str = ""
    processing: str = ""
    delivery_run: str = ""
    special: frozenset[str] = frozenset()
    value: int = 0  # order value, minor units
    credit: int = 0  # credit standing score, higher is better
    allow_split: bool = False
    pref: CustomerPref = CustomerPref.BACKORDER
    delay_days: int | None = None  # DELAY: time limit in days, None = no limit
    received_at: int = 0


@dataclass(frozen=True, slots=True)
class SourcingRule:
    """Location ``location`` may serve zone ``zone`` (``"*"`` = any zone) at ``cost``.

    ``preferred`` marks the zone's own DC; ``transfer`` marks a source used only to
    reallocate a shortage (a store or supplier), never for normal sourcing.
    """

    zone: str
    location: str
    cost: int = 0
    preferred: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class Network:
    rules: tuple[SourcingRule, ...]
    _cache: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def candidates(self, zone: str) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """(normal, transfer) sources for ``zone`` in rule order, each ``(location, why)``."""
        hit = self._cache.get(zone)
        if hit is not None:
            return hit
        rules = [r for r in self.rules if r.zone == zone]
        if not rules:
            rules = [r for r in self.rules if r.zone == "*"]
        rules.sort(key=lambda r: (not r.preferred, r.cost, r.location))
        normal: list[tuple[str, str]] = []
        transfer: list[tuple[str, str]] = []
        seen: set[str] = set()
        for r in rules:
            if r.location in seen:
                continue
            seen.add(r.location)
            if r.transfer:
                transfer.append((r.location, f"transfer from {r.location} cost {r.cost}"))
            elif r.preferred:
                normal.append((r.location, f"preferred for zone {zone or '-'}"))
            else:
                normal.append((r.location, f"next by cost {r.cost}"))
        out = (tuple(normal), tuple(transfer))
        self._cache[zone] = out
        return out


PRIORITY_RULES = ("special", "grade", "value", "credit")


@dataclass(frozen=True, slots=True)
class PriorityRules:
    """Priority rules in the order they apply; ties end with received time, then order id."""

    order: tuple[str, ...] = PRIORITY_RULES

    def __post_init__(self) -> None:
        bad = [r for r in self.order if r not in PRIORITY_RULES]
        if bad or len(set(self.order)) != len(self.order):
            raise AllocationInputError(
                f"priority rules {self.order!r}: each of {', '.join(PRIORITY_RULES)} at most once"
            )


@dataclass(frozen=True, slots=True)
class CompanyPolicy:
    backorders: bool = True  # the company accepts split shipments / back orders
    reallocate: bool = True  # transfer from stores/suppliers rather than cut or cancel


@quick_init
@dataclass(frozen=True, slots=True)
class Allocation:
    order_id: int
    line_no: int
    sku: str
    location: str
    qty: int
    rule: str


@quick_init
@dataclass(frozen=True, slots=True)
class Shortfall:
    order_id: int
    line_no: int
    sku: str
    qty: int
    action: ShortageAction
    reason: str
    delay_days: int | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class OrderOutcome:
    order_id: int
    rank: int
    status: str  # allocated | short | held | cancelled
    allocated: int
    short: int


@quick_init
@dataclass(frozen=True, slots=True)
class AllocationResult:
    allocations: tuple[Allocation, ...]
    shortfalls: tuple[Shortfall, ...]
    outcomes: tuple[OrderOutcome, ...]
    trace: tuple[str, ...]
    remaining: dict[tuple[str, str], int]

    @property
    def trace_text(self) -> str:
        return "\n".join(self.trace)


def resolve_shortage(pref: CustomerPref, company: CompanyPolicy) -> tuple[ShortageAction, str]:
    """Customer preference x company policy -> what happens to a short quantity, and why."""
    if pref is CustomerPref.BACKORDER:
        if company.backorders:
            return ShortageAction.BACKORDER, "customer accepts back order; company allows back orders"
        return ShortageAction.CUT, "customer accepts back order but company does not split shipments"
    if pref is CustomerPref.SHIP_WITH_NEXT:
        if company.backorders:
            return ShortageAction.SHIP_WITH_NEXT, "customer wants the rest with the next order"
        return ShortageAction.CUT, "customer wants the rest with the next order but company does not split"
    if pref is CustomerPref.CUT:
        return ShortageAction.CUT, "customer does not accept back orders"
    if pref is CustomerPref.DELAY:
        return ShortageAction.DELAY, "customer wants everything together and accepts a late delivery"
    return ShortageAction.CANCEL, "customer wants everything together, not late"


def _sort_key(rules: PriorityRules, o: OrderDemand) -> tuple[int, ...]:
    parts: list[int] = []
    for r in rules.order:
        if r == "special":
            parts.append(min((_SPECIAL_RANK.get(s, 99) for s in o.special), default=99))
        elif r == "grade":
            parts.append(_GRADE_RANK.get(o.grade, len(GRADES)))
        elif r == "value":
            parts.append(-o.value)
        else:
            parts.append(-o.credit)
    parts.append(o.received_at)
    parts.append(o.order_id)
    return tuple(parts)


def _describe(rules: PriorityRules, o: OrderDemand) -> str:
    bits = []
    for r in rules.order:
        if r == "special":
            bits.append("special=" + (",".join(sorted(o.special)) or "-"))
        elif r == "grade":
            bits.append(f"grade={o.grade}")
        elif r == "value":
            bits.append(f"value={o.value}")
        else:
            bits.append(f"credit={o.credit}")
    bits.append(f"received={o.received_at}")
    return " ".join(bits)


def allocate(
    orders: Sequence[OrderDemand],
    available: Mapping[tuple[str, str], int],
    *,
    network: Network,
    rules: PriorityRules | None = None,
    company: CompanyPolicy | None = None,
    title: str = "allocation",
) -> AllocationResult:
    """Allocate ``orders`` against ``available`` (not modified); see the module doc."""
    rules = rules or PriorityRules()
    company = company or CompanyPolicy()
    avail: dict[tuple[str, str], int] = dict(available)
    ranked = sorted(orders, key=lambda o: _sort_key(rules, o)) if len(orders) > 1 else list(orders)
    allocs: list[Allocation] = []
    shorts: list[Shortfall] = []
    outcomes: list[OrderOutcome] = []
    trace: list[str] = [
        f"{title}: {len(ranked)} orders; priority {' > '.join(rules.order)} > received > order id;"
        f" company backorders={'yes' if company.backorders else 'no'}"
        f" reallocate={'yes' if company.reallocate else 'no'}"
    ]
    tappend = trace.append
    get = avail.get
    seen_ids: set[int] = set()
    for rank, o in enumerate(ranked, 1):
        if o.order_id in seen_ids:
            raise AllocationInputError(f"order {o.order_id} given twice")
        seen_ids.add(o.order_id)
        tappend(
            f"#{rank} order {o.order_id} customer {o.customer} zone {o.zone or '-'} [{_describe(rules, o)}]"
        )
        normal, transfer = network.candidates(o.zone)
        mine: list[Allocation] = []
        short_lines: list[tuple[DemandLine, int]] = []
        # 1. one location for the whole order, if any can
        whole: tuple[str, str] | None = None
        if len(normal) > 1:
            need: dict[str, int] = {}
            for ln in o.lines:
                need[ln.sku] = need.get(ln.sku, 0) + ln.qty
            for cand in normal:
                loc = cand[0]
                for sku, q in need.items():
                    if get((loc, sku), 0) < q:
                        break
                else:
                    whole = cand
                    break
        if whole is not None:
            loc, why = whole
            rule = f"whole order; {why}"
            tail = f" (whole order from one location; {why})"
            oid = o.order_id
            for ln in o.lines:
                qty = ln.qty
                if qty <= 0:
                    continue
                sku = ln.sku
                avail[(loc, sku)] -= qty
                mine.append(Allocation(oid, ln.line_no, sku, loc, qty, rule))
                tappend(f"  line {ln.line_no} {sku} x{qty}: {loc} {qty}{tail}")
        else:
            for ln in o.lines:
                got = _source_line(o, ln, normal=normal, avail=avail, mine=mine, trace=trace)
                if got < ln.qty:
                    short_lines.append((ln, ln.qty - got))
        # 2. shortages: reallocate, then the customer's preference x company policy
        status = "allocated"
        if short_lines:
            action, why = resolve_shortage(o.pref, company)
            if company.reallocate and transfer and o.pref in (CustomerPref.CUT, CustomerPref.CANCEL):
                still: list[tuple[DemandLine, int]] = []
                for ln, missing in short_lines:
                    left = _transfer(o, ln, missing, transfer=transfer, avail=avail, mine=mine, trace=trace)
                    if left:
                        still.append((ln, left))
                short_lines = still
            if short_lines and action is ShortageAction.CANCEL:
                for a in mine:
                    avail[(a.location, a.sku)] += a.qty
                tappend(f"  => cancel order: {why}; {sum(a.qty for a in mine)} allocated units given back")
                mine = []
                for ln in o.lines:
                    if ln.qty > 0:
                        shorts.append(Shortfall(o.order_id, ln.line_no, ln.sku, ln.qty, action, why))
                status = "cancelled"
            elif short_lines:
                delay = o.delay_days if action is ShortageAction.DELAY else None
                for ln, missing in short_lines:
                    shorts.append(Shortfall(o.order_id, ln.line_no, ln.sku, missing, action, why, delay))
                    tappend(f"  line {ln.line_no} {ln.sku}: short {missing} -> {action.value} ({why})")
                if action is ShortageAction.DELAY:
                    status = "held"
                    limit = f"up to {o.delay_days} days" if o.delay_days is not None else "no time limit"
                    tappend(f"  => whole order held until complete ({limit})")
                else:
                    status = "short"
        allocs.extend(mine)
        n_alloc = sum(a.qty for a in mine)
        n_short = sum(ln.qty for ln in o.lines) - n_alloc
        outcomes.append(OrderOutcome(o.order_id, rank, status, n_alloc, n_short))
        tappend(f"  => {status}: {n_alloc} allocated, {n_short} short")
    return AllocationResult(tuple(allocs), tuple(shorts), tuple(outcomes), tuple(trace), avail)


def _source_line(
    o: OrderDemand,
    ln: DemandLine,
    *,
    normal: tuple[tuple[str, str], ...],
    avail: dict[tuple[str, str], int],
    mine: list[Allocation],
    trace: list[str],
) -> int:
    """Allocate one line from the normal sources; return the quantity allocated."""
    qty = ln.qty
    if qty <= 0:
        trace.append(f"  line {ln.line_no} {ln.sku} x{qty}: nothing to allocate")
        return qty
    sku = ln.sku
    for loc, why in normal:  # first location that fills the whole line: no split
        key = (loc, sku)
        if avail.get(key, 0) >= qty:
            avail[key] -= qty
            mine.append(Allocation(o.order_id, ln.line_no, sku, loc, qty, why))
            trace.append(f"  line {ln.line_no} {sku} x{qty}: {loc} {qty} ({why})")
            return qty
    if o.allow_split:
        got = 0
        parts = []
        for loc, why in normal:
            key = (loc, sku)
            have = avail.get(key, 0)
            if have <= 0:
                continue
            take = min(have, qty - got)
            avail[key] = have - take
            rule = f"split allowed; {why}"
            mine.append(Allocation(o.order_id, ln.line_no, sku, loc, take, rule))
            parts.append(f"{loc} {take} ({rule})")
            got += take
            if got == qty:
                break
        trace.append(
            f"  line {ln.line_no} {sku} x{qty}: " + (" + ".join(parts) or "no stock in zone sources")
        )
        return got
    best: tuple[str, str] | None = None
    best_have = 0
    for cand in normal:  # no split: the single location with the most, earliest rule on ties
        have = avail.get((cand[0], sku), 0)
        if have > best_have:
            best, best_have = cand, have
    if best is None:
        trace.append(f"  line {ln.line_no} {sku} x{qty}: no stock in zone sources")
        return 0
    loc, why = best
    avail[(loc, sku)] = 0
    rule = f"no split allowed: most stock; {why}"
    mine.append(Allocation(o.order_id, ln.line_no, sku, loc, best_have, rule))
    trace.append(f"  line {ln.line_no} {sku} x{qty}: {loc} {best_have} ({rule})")
    return best_have


def _transfer(
    o: OrderDemand,
    ln: DemandLine,
    missing: int,
    *,
    transfer: tuple[tuple[str, str], ...],
    avail: dict[tuple[str, str], int],
    mine: list[Allocation],
    trace: list[str],
) -> int:
    """Reallocate ``missing`` units from transfer sources; return what is still missing."""
    parts = []
    for loc, why in transfer:
        key = (loc, ln.sku)
        have = avail.get(key, 0)
        if have <= 0:
            continue
        take = min(have, missing)
        avail[key] = have - take
        rule = f"reallocated: {why}"
        mine.append(Allocation(o.order_id, ln.line_no, ln.sku, loc, take, rule))
        parts.append(f"{loc} {take}")
        missing -= take
        if not missing:
            break
    if parts:
        trace.append(
            f"  line {ln.line_no} {ln.sku}: reallocated {' + '.join(parts)} (customer will not wait)"
        )
    return missing


def trace_digest(trace: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(trace).encode()).hexdigest()


def encode_inputs(
    orders: Sequence[OrderDemand],
    available: Mapping[tuple[str, str], int],
    *,
    network: Network,
    rules: PriorityRules | None = None,
    company: CompanyPolicy | None = None,
    title: str = "allocation",
) -> dict[str, Any]:
    """The engine's inputs as plain JSON data (stored with every run, for replay)."""
    return {
        "title": title,
        **encode_setting(network=network, rules=rules, company=company),
        "available": encode_available(available),
        "orders": encode_orders(orders),
    }


def encode_setting(
    *, network: Network, rules: PriorityRules | None = None, company: CompanyPolicy | None = None
) -> dict[str, Any]:
    """The part of :func:`encode_inputs` that runs over one network and policy share:
    ``rules``, ``company`` and ``network``, in that order."""
    rules = rules or PriorityRules()
    company = company or CompanyPolicy()
    return {
        "rules": list(rules.order),
        "company": {"backorders": company.backorders, "reallocate": company.reallocate},
        "network": [[r.zone, r.location, r.cost, r.preferred, r.transfer] for r in network.rules],
    }


def encode_available(available: Mapping[tuple[str, str], int]) -> list[list[Any]]:
    return [[loc, sku, q] for (loc, sku), q in sorted(available.items())]


def encode_orders(orders: Sequence[OrderDemand]) -> list[dict[str, Any]]:
    return [
        {
            "id": o.order_id,
            "customer": o.customer,
            "lines": [[ln.line_no, ln.sku, ln.qty] for ln in o.lines],
            "grade": o.grade,
            "zone": o.zone,
            "route": o.route,
            "vehicle": o.vehicle,
            "processing": o.processing,
            "run": o.delivery_run,
            "special": sorted(o.special),
            "value": o.value,
            "credit": o.credit,
            "split": o.allow_split,
            "pref": o.pref.value,
            "delay_days": o.delay_days,
            "received": o.received_at,
        }
        for o in orders
    ]


@dataclass(frozen=True, slots=True)
class Inputs:
    orders: tuple[OrderDemand, ...]
    available: dict[tuple[str, str], int]
    network: Network
    rules: PriorityRules
    company: CompanyPolicy
    title: str

    def run(self) -> AllocationResult:
        return allocate(
            self.orders,
            self.available,
            network=self.network,
            rules=self.rules,
            company=self.company,
            title=self.title,
        )


def decode_inputs(data: Mapping[str, Any]) -> Inputs:
    orders = tuple(
        OrderDemand(
            order_id=int(d["id"]),
            customer=str(d["customer"]),
            lines=tuple(DemandLine(int(a), str(b), int(c)) for a, b, c in d["lines"]),
            grade=str(d["grade"]),
            zone=str(d["zone"]),
            route=str(d["route"]),
            vehicle=str(d["vehicle"]),
            processing=str(d["processing"]),
            delivery_run=str(d["run"]),
            special=frozenset(d["special"]),
            value=int(d["value"]),
            credit=int(d["credit"]),
            allow_split=bool(d["split"]),
            pref=CustomerPref(d["pref"]),
            delay_days=None if d["delay_days"] is None else int(d["delay_days"]),
            received_at=int(d["received"]),
        )
        for d in data["orders"]
    )
    return Inputs(
        orders=orders,
        available={(str(loc), str(sku)): int(q) for loc, sku, q in data["available"]},
        network=Network(
            tuple(
                SourcingRule(str(z), str(loc), int(c), bool(p), bool(t))
                for z, loc, c, p, t in data["network"]
            )
        ),
        rules=PriorityRules(tuple(data["rules"])),
        company=CompanyPolicy(**data["company"]),
        title=str(data["title"]),
    )
