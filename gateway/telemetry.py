"""Gateway and device status for the fleet view.

Device adapters register on the :class:`DeviceBoard` and report what they see (seen, errors,
NAKs, battery, firmware). :class:`Telemetry` publishes the gateway's retained status every
``STATUS_INTERVAL_S`` (and at once when its disk fills up or has room again) with its backlog,
oldest unsent age, last sync, clock offset, storage state and the devices.
Telemetry is sampled: business records never travel this way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import retention
from gateway.outbox import Backlog, Outbox
from gateway.sync import Sync
from runtime.clock import now_ms

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0
DEVICE_OFFLINE_AFTER_S = 60.0


@dataclass(slots=True)
class DeviceState:
    id: str
    kind: str
    firmware: str | None = None
    online: bool = False
    last_seen_ms: int | None = None
    reads: int = 0
    errors: int = 0
    naks: int = 0
    battery: int | None = None
    last_error: str | None = None
    offline_after_s: float = DEVICE_OFFLINE_AFTER_S

    def seen(self) -> None:
        self.online = True
        self.last_seen_ms = now_ms()
        self.reads += 1

    def error(self, reason: str) -> None:
        self.errors += 1
        self.last_error = reason

    def nak(self) -> None:
        self.naks += 1

    def connected(self, up: bool) -> None:
        self.online = up
        if up:
            self.last_seen_ms = now_ms()

    def to_wire(self) -> dict[str, Any]:
        online = self.online
        if online and self.last_seen_ms is not None and self.offline_after_s > 0:
            online = (now_ms() - self.last_seen_ms) / 1000 <= self.offline_after_s or self.kind in _LINKED
        return {
            "id": self.id,
            "kind": self.kind,
            "state": "online" if online else "offline",
            "last_seen_ms": self.last_seen_ms,
            "reads": self.reads,
            "errors": self.errors,
            "naks": self.naks,
            "battery": self.battery,
            "firmware": self.firmware,
            "last_error": self.last_error,
        }


# Devices with a permanent link (TCP controllers) are online while the link is up,
# however long since the last press; the others count as offline after a silence.
_LINKED = frozenset({"ptl", "asrs"})


@dataclass(slots=True)
class DeviceBoard:
    """Every device of a gateway: states pushed by adapters (``register``) or read from an
    adapter's own counters when the status is built (``add_source``)."""

    devices: dict[str, DeviceState] = field(default_factory=dict)
    sources: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def add_source(self, device_id: str, fn: Callable[[], dict[str, Any]]) -> None:
        self.sources[device_id] = fn

    def register(self, device_id: str, kind: str, *, firmware: str | None = None) -> DeviceState:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = DeviceState(id=device_id, kind=kind, firmware=firmware)
        return dev

    def snapshot(self) -> list[dict[str, Any]]:
        out = [d.to_wire() for d in self.devices.values()] + [fn() for fn in self.sources.values()]
        return sorted(out, key=lambda d: str(d["id"]))


class Telemetry:
    def __init__(self, *, site: str, outbox: Outbox, board: DeviceBoard, version: str = "") -> None:
        self.site = site
        self.outbox = outbox
        self.board = board
        self.version = version
        self.sync: Sync | None = None
        self.backlog = Backlog(count=0, oldest_ts=None)
        self.acked_below: int | None = None  # the retention watermark (gateway.retention)
        self.started = time.time()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Publish the status now (e.g. the disk just filled up or has room again)."""
        self._wake.set()

    def extra(self) -> dict[str, object]:
        s = self.sync.stats if self.sync else None
        return {
            "site": self.site,
            "version": self.version,
            "uptime_s": round(time.time() - self.started),
            "backlog": self.backlog.count,
            "oldest_age_s": round(self.backlog.oldest_age_s(), 3),
            "last_sync_ms": s.last_sync_ms if s else None,
            "clock_offset_ms": s.clock_offset_ms if s else None,
            "records_sent": s.records_sent if s else 0,
            "rejected": self.outbox.rejected,
            "storage": _storage(self.outbox.db.storage_state()),
            "devices": self.board.snapshot(),
            **({} if self.acked_below is None else {"acked_below": self.acked_below}),
        }

    async def refresh(self) -> None:
        self.backlog = await self.outbox.backlog()
        self.acked_below = await self.outbox.db.read(retention.acked_below)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.refresh()
            if self.sync is not None:
                await self.sync.publish_status()
            try:
                async with asyncio.timeout(STATUS_INTERVAL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass


def _storage(state: dict[str, Any]) -> dict[str, object]:
    """The status record's ``storage``: ``state`` (``ok`` / ``full``), ``since_ms`` (full since),
    ``free_bytes`` on the gateway's data file system, ``reason`` (SQLite's error while full)."""
    return {k: state[k] for k in ("state", "since_ms", "free_bytes", "reason")}
