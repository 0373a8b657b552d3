"""Regional brokers as central's fleet sees them (ops/BROKER.md, "Regional brokers").

A store behind a regional broker reaches central through that broker's bridge. When the
regional broker dies (or its link to the centre breaks), its stores' Wills die with it: the
last status central has of each is a retained ``online`` that nobody will ever correct. What
does reach central is the bridge's own Will, ``0`` on ``sg/v1/bridge/<region>/state``
(retained; ``1`` when the bridge is connected). On a ``0`` central marks every store of that
region ``offline`` in its fleet, with an event naming the region, so the dashboard does not
show a dead region's stores online forever. On ``1`` it only records the event: the stores'
statuses come through the bridge again (the regional broker hands the bridge their retained
statuses when it subscribes) and set each store's state as usual.

Which stores a region carries is in the regions file that ``storegate bridge-init`` writes
(``<etc>/regions.toml``, no secrets), named by central's ``regions_file``; it is read at each
bridge state message, so adding a store to a region needs no restart of central.
"""

from __future__ import annotations

import logging
import sqlite3
import tomllib
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from protocols import topics
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)


class RegionsFileError(ValueError):
    pass


def load_regions(path: Path) -> dict[str, tuple[str, ...]]:
    """``{region: (gateway, ...)}`` from ``[regions] eu = ["store-101", ...]``."""
    try:
        raw = tomllib.loads(path.read_text()).get("regions", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RegionsFileError(f"regions file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise RegionsFileError(f"regions file {path}: [regions] is not a table")
    out: dict[str, tuple[str, ...]] = {}
    for region, gws in raw.items():
        try:
            topics.check_region(region)
            if not isinstance(gws, list) or not all(isinstance(g, str) for g in gws):
                raise topics.TopicError(f"region {region!r}: expected a list of gateway ids")
            out[region] = tuple(topics.check_gateway_id(g) for g in gws)
        except topics.TopicError as e:
            raise RegionsFileError(f"regions file {path}: {e}") from None
    return out


def region_down(conn: sqlite3.Connection, region: str, gateways: tuple[str, ...], now: int) -> list[str]:
    """Mark the region's stores that central last saw online ``offline``; return them."""
    marked: list[str] = []
    for gw in gateways:
        row = conn.execute("SELECT state FROM fleet_gateways WHERE gateway = ?", (gw,)).fetchone()
        if row is None or row[0] == "offline":
            continue
        conn.execute(
            "UPDATE fleet_gateways SET state = 'offline', state_since_ms = ? WHERE gateway = ?", (now, gw)
        )
        conn.execute(
            "INSERT INTO fleet_events (at, gateway, event, detail) VALUES (?, ?, ?, ?)",
            (now, gw, "gateway offline", f"bridge of region {region} down: status unknown"),
        )
        marked.append(gw)
    return marked


def region_up(conn: sqlite3.Connection, region: str, gateways: tuple[str, ...], now: int) -> None:
    for gw in gateways:
        if conn.execute("SELECT 1 FROM fleet_gateways WHERE gateway = ?", (gw,)).fetchone() is not None:
            conn.execute(
                "INSERT INTO fleet_events (at, gateway, event, detail) VALUES (?, ?, ?, ?)",
                (now, gw, "bridge up", f"bridge of region {region} connected"),
            )


class Regions:
    """Handles ``sg/v1/bridge/<region>/state`` for the consumer (``on_bridge_state``)."""

    def __init__(self, db: DurableDB, regions_file: Path, on_change: Callable[[], Awaitable[None]]) -> None:
        self.db = db
        self.regions_file = regions_file
        self.on_change = on_change
        self.states: dict[str, str] = {}  # region -> "up" | "down", as last told

    async def on_bridge_state(self, region: str, payload: bytes) -> None:
        if payload not in (b"0", b"1"):
            log.warning("bridge state of region %s ignored: %r is neither 0 nor 1", region, payload[:20])
            return
        try:
            gateways = load_regions(self.regions_file).get(region)
        except RegionsFileError as e:
            log.error("bridge of region %s is %s, but %s", region, "up" if payload == b"1" else "down", e)
            return
        if gateways is None:
            log.warning("bridge state of region %s: the region is not in %s", region, self.regions_file)
            return
        self.states[region] = "up" if payload == b"1" else "down"
        if payload == b"0":
            marked = await self.db.write(partial(region_down, region=region, gateways=gateways, now=now_ms()))
            log.warning(
                "bridge of region %s is down: %d store(s) marked offline (%s)",
                region,
                len(marked),
                ", ".join(marked[:10]) + (" ..." if len(marked) > 10 else ""),
            )
        else:
            await self.db.write(partial(region_up, region=region, gateways=gateways, now=now_ms()))
            log.info("bridge of region %s is up", region)
        await self.on_change()
