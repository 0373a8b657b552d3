"""Standard pick time (拣取标准时间) and wave scheduling against delivery departures. Pure.

Three stages, as in the reference chapter:

1. a standard time per handling unit: pallet, case, each (:class:`PickStandards`), and an
   item's own time per each where its master sets one (``items.pick_seconds``);
2. per line: the quantity broken into pallets, cases and eaches by the item's pack sizes
   (``items.pack_size`` eaches to a case), times the unit times, plus the line's search time;
3. per order (or wave): the lines plus the paperwork time per order.

:func:`schedule` then places waves on a number of picking teams, latest departure last,
and reports each wave's start, finish and slack against its departure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from central import CentralError

__all__ = [
    "PackSize",
    "PickStandards",
    "PickTimeError",
    "ScheduledWave",
    "WaveWork",
    "line_seconds",
    "order_seconds",
    "schedule",
]


class PickTimeError(CentralError, ValueError):
    """A schedule that cannot be made (no teams, an unknown wave)."""


@dataclass(frozen=True, slots=True)
class PickStandards:
    pallet_s: float = 120.0
    case_s: float = 12.0
    each_s: float = 3.0
    search_s: float = 8.0  # finding the location, per line
    paperwork_s: float = 30.0  # per order


@dataclass(frozen=True, slots=True)
class PackSize:
    """How one item is picked: its pack sizes and its own time per each."""

    case_qty: int = 1  # eaches per case (1 = no cases)
    pallet_qty: int = 0  # eaches per pallet (0 = never picked by pallet)
    each_s: float = 0.0  # the item's standard time per each (0 = the standard ``each_s``)


EACH_ONLY = PackSize()


def units(qty: int, pack: PackSize) -> tuple[int, int, int]:
    """``qty`` eaches as (pallets, cases, eaches)."""
    pallets = qty // pack.pallet_qty if pack.pallet_qty > 0 else 0
    rest = qty - pallets * (pack.pallet_qty if pack.pallet_qty > 0 else 0)
    cases = rest // pack.case_qty if pack.case_qty > 1 else 0
    eaches = rest - cases * (pack.case_qty if pack.case_qty > 1 else 0)
    return pallets, cases, eaches


def line_seconds(qty: int, pack: PackSize, std: PickStandards) -> float:
    p, c, e = units(qty, pack)
    return p * std.pallet_s + c * std.case_s + e * (pack.each_s or std.each_s) + std.search_s


def order_seconds(
    lines: Iterable[tuple[str, int]], packs: Mapping[str, PackSize], std: PickStandards
) -> float:
    """Standard time of one order from its ``(sku, qty)`` lines."""
    return std.paperwork_s + sum(line_seconds(q, packs.get(s, EACH_ONLY), std) for s, q in lines)


def wave_seconds(
    orders: Iterable[Iterable[tuple[str, int]]], packs: Mapping[str, PackSize], std: PickStandards
) -> float:
    return sum(order_seconds(o, packs, std) for o in orders)


@dataclass(frozen=True, slots=True)
class WaveWork:
    wave_id: int
    seconds: float
    departure: int  # epoch seconds the truck leaves
    load_s: float = 0.0  # staging/loading time after picking


@dataclass(frozen=True, slots=True)
class ScheduledWave:
    wave_id: int
    team: int
    start: int
    finish: int
    departure: int
    slack_s: int  # negative: the wave misses its departure

    @property
    def late(self) -> bool:
        return self.slack_s < 0


def schedule(waves: Sequence[WaveWork], *, start: int, teams: int = 1) -> list[ScheduledWave]:
    """Earliest-departure-first onto ``teams`` picking teams starting at ``start``.

    Each wave goes to the team that frees up first (lowest team number on ties); ties between
    waves break on wave id. Deterministic."""
    if teams < 1:
        raise PickTimeError(f"teams must be >= 1, got {teams}")
    free = [start] * teams
    out = []
    for w in sorted(waves, key=lambda w: (w.departure, w.wave_id)):
        team = min(range(teams), key=lambda i: (free[i], i))
        begin = free[team]
        finish = begin + round(w.seconds + w.load_s)
        free[team] = finish
        out.append(ScheduledWave(w.wave_id, team + 1, begin, finish, w.departure, w.departure - finish))
    return out
