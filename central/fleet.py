"""The fleet registry: sites -> gateways -> devices, with history and alerts.

Gateways publish a retained JSON status (``sg/v1/gw/<gw>/status``; the broker publishes
their Last Will ``offline`` when they vanish); its ``storage.state`` ``full`` opens a critical
``storage_full`` alert that closes when a status says ``ok`` again. Central records every
status in SQLite: the current state per gateway and device, a sampled history (backlog,
oldest age) for charts, an event log of state changes, and alerts opened and closed by
thresholds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from central import retention
from protocols.bounded import JsonError, json_loads, value_repr
from protocols.envelope import MAX_PAYLOAD_BYTES
from runtime.clock import now_ms
from runtime.dbapi import columns, dialect, has_table
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 2.0
HISTORY_KEEP_S = 24 * 3600

MIGRATIONS = [
    Migration(
        "fleet_0001",
        """
        CREATE TABLE fleet_gateways (
            gateway TEXT PRIMARY KEY,
            site TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            first_seen_ms INTEGER NOT NULL,
            last_status_ms INTEGER NOT NULL,
            state_since_ms INTEGER NOT NULL,
            backlog INTEGER NOT NULL DEFAULT 0,
            oldest_age_s REAL NOT NULL DEFAULT 0,
            last_sync_ms INTEGER,
            clock_offset_ms INTEGER,
            version TEXT NOT NULL DEFAULT '',
            rejected INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE fleet_devices (
            gateway TEXT NOT NULL,
            device_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            last_seen_ms INTEGER,
            reads INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            naks INTEGER NOT NULL DEFAULT 0,
            battery INTEGER,
            firmware TEXT,
            last_error TEXT,
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (gateway, device_id)
        ) WITHOUT ROWID;
        CREATE TABLE fleet_samples (
            gateway TEXT NOT NULL,
            at INTEGER NOT NULL,
            state TEXT NOT NULL,
            backlog INTEGER NOT NULL,
            oldest_age_s REAL NOT NULL
        );
        CREATE INDEX fleet_samples_gw ON fleet_samples(gateway, at);
        CREATE TABLE fleet_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            gateway TEXT NOT NULL,
            device_id TEXT,
            event TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            gateway TEXT NOT NULL,
            device_id TEXT,
            severity TEXT NOT NULL,
            message TEXT NOT NULL,
            opened_ms INTEGER NOT NULL,
            closed_ms INTEGER
        );
        CREATE UNIQUE INDEX alerts_open ON alerts(key) WHERE closed_ms IS NULL;
        """,
    ),
    Migration(
        "fleet_0002_storage",
        """
        ALTER TABLE fleet_gateways ADD COLUMN storage_state TEXT NOT NULL DEFAULT 'ok';
        ALTER TABLE fleet_gateways ADD COLUMN storage_since_ms INTEGER;
        ALTER TABLE fleet_gateways ADD COLUMN storage_free_bytes INTEGER;
        ALTER TABLE fleet_gateways ADD COLUMN storage_reason TEXT;
        """,
    ),
    Migration(
        # The history's pruning (PRUNE_SAMPLES, every EVALUATE_EVERY_S) finds old rows by ``at``
        # alone: without this index it scanned the whole table in the writer, which at 1,000
        # gateways (200 rows a second, 17M a day) took 0.5 s every 2 s after 6 hours, and all of
        # the writer's time by a day. With it: 0.1 ms.
        "fleet_0003_samples_at",
        """
        CREATE INDEX fleet_samples_at ON fleet_samples(at);
        """,
    ),
    Migration(
        # The dashboard's orders per minute (``orders_per_minute``: the last 30 minutes by
        # channel) scanned every order without it: 0.3 s at 1M orders. With it, an index-only
        # range of the window's orders.
        "fleet_0004_orders_received",
        """
        CREATE INDEX orders_received ON orders(received_at, channel);
        """,
    ),
]
# The history older than HISTORY_KEEP_S goes (``evaluate_alerts``).
PRUNE_SAMPLES = "DELETE FROM fleet_samples WHERE at < ?"


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    gateway_offline_s: float = 120.0
    backlog_age_s: float = 300.0
    device_offline: bool = True
    naks_per_window: int = 5
    rejects_per_window: int = 5
    battery_low_pct: int = 20


class StatusError(ValueError):
    pass


def parse_status(gw: str, payload: bytes) -> dict[str, Any]:
    try:
        doc = json_loads(payload, max_bytes=MAX_PAYLOAD_BYTES)
    except JsonError as e:
        raise StatusError(f"status of {gw}: {e.reason}") from None
    if not isinstance(doc, dict):
        raise StatusError(f"status of {gw} is not a JSON object")
    if doc.get("gw") != gw:
        raise StatusError(f"status on {gw}'s topic names gateway {value_repr(doc.get('gw'))}")
    if doc.get("state") not in ("online", "offline"):
        raise StatusError(f"status of {gw}: state {value_repr(doc.get('state'))} is not online/offline")
    return doc


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v: object) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def apply_status(conn: sqlite3.Connection, gw: str, doc: dict[str, Any], now: int) -> bool:
    """Record one status message; return True if any state changed."""
    state = doc["state"]
    # Every central worker hears every status: on PostgreSQL the gateway's row is locked while
    # one of them applies it, so a change of state is noted (and its event written) once.
    lock = " FOR UPDATE" if dialect(conn) == "postgresql" else ""
    select = "SELECT state, site FROM fleet_gateways WHERE gateway = ?" + lock
    prev = conn.execute(select, (gw,)).fetchone()
    site = str(doc.get("site") or (prev[1] if prev else ""))
    if prev is None:
        made = conn.execute(
            "INSERT INTO fleet_gateways (gateway, site, state, first_seen_ms, last_status_ms, state_since_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gateway) DO NOTHING RETURNING gateway",
            (gw, site, state, now, now, now),
        ).fetchone()
        if made is None:  # another worker's first status of it committed meanwhile
            prev = conn.execute(select, (gw,)).fetchone()
    changed = prev is None or prev[0] != state
    if changed:
        conn.execute("UPDATE fleet_gateways SET state_since_ms = ? WHERE gateway = ?", (now, gw))
        conn.execute(
            "INSERT INTO fleet_events (at, gateway, event, detail) VALUES (?, ?, ?, ?)",
            (now, gw, f"gateway {state}", ""),
        )
    if state == "online":
        conn.execute(
            "UPDATE fleet_gateways SET site = ?, state = ?, last_status_ms = ?, backlog = ?,"
            " oldest_age_s = ?, last_sync_ms = ?, clock_offset_ms = ?, version = ?, rejected = ?"
            " WHERE gateway = ?",
            (
                site,
                state,
                now,
                _int(doc.get("backlog")) or 0,
                _num(doc.get("oldest_age_s")),
                _int(doc.get("last_sync_ms")),
                _int(doc.get("clock_offset_ms")),
                str(doc.get("version") or ""),
                _int(doc.get("rejected")) or 0,
                gw,
            ),
        )
        raw = doc.get("storage")
        storage: dict[str, Any] = raw if isinstance(raw, dict) else {}
        conn.execute(
            "UPDATE fleet_gateways SET storage_state = ?, storage_since_ms = ?, storage_free_bytes = ?,"
            " storage_reason = ? WHERE gateway = ?",
            (
                "full" if storage.get("state") == "full" else "ok",
                _int(storage.get("since_ms")),
                _int(storage.get("free_bytes")),
                storage.get("reason") if isinstance(storage.get("reason"), str) else None,
                gw,
            ),
        )
        for dev in doc.get("devices") or []:
            if isinstance(dev, dict) and isinstance(dev.get("id"), str):
                changed |= _apply_device(conn, gw, dev, now)
        acked_below = _int(doc.get("acked_below"))
        if acked_below is not None and acked_below > 0:
            retention.report(conn, gw, acked_below, now)  # the retention rule of ``processed``
    else:
        conn.execute(
            "UPDATE fleet_gateways SET state = ?, last_status_ms = ? WHERE gateway = ?", (state, now, gw)
        )
    b = conn.execute("SELECT backlog, oldest_age_s FROM fleet_gateways WHERE gateway = ?", (gw,)).fetchone()
    conn.execute(
        "INSERT INTO fleet_samples (gateway, at, state, backlog, oldest_age_s) VALUES (?, ?, ?, ?, ?)",
        (gw, now, state, b[0], b[1]),
    )
    return changed


def _apply_device(conn: sqlite3.Connection, gw: str, dev: dict[str, Any], now: int) -> bool:
    did = dev["id"]
    state = "online" if dev.get("state") == "online" else "offline"
    prev = conn.execute(
        "SELECT state FROM fleet_devices WHERE gateway = ? AND device_id = ?", (gw, did)
    ).fetchone()
    conn.execute(
        "INSERT INTO fleet_devices (gateway, device_id, kind, state, last_seen_ms, reads, errors,"
        " naks, battery, firmware, last_error, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (gateway, device_id) DO UPDATE SET kind = excluded.kind, state = excluded.state,"
        " last_seen_ms = excluded.last_seen_ms, reads = excluded.reads, errors = excluded.errors,"
        " naks = excluded.naks, battery = excluded.battery, firmware = excluded.firmware,"
        " last_error = excluded.last_error, updated_ms = excluded.updated_ms",
        (
            gw,
            did,
            str(dev.get("kind") or "device"),
            state,
            _int(dev.get("last_seen_ms")),
            _int(dev.get("reads")) or 0,
            _int(dev.get("errors")) or 0,
            _int(dev.get("naks")) or 0,
            _int(dev.get("battery")),
            dev.get("firmware") if isinstance(dev.get("firmware"), str) else None,
            dev.get("last_error") if isinstance(dev.get("last_error"), str) else None,
            now,
        ),
    )
    if prev is None or prev[0] != state:
        conn.execute(
            "INSERT INTO fleet_events (at, gateway, device_id, event) VALUES (?, ?, ?, ?)",
            (now, gw, did, f"device {state}"),
        )
        return True
    return False


@dataclass(slots=True)
class _Counters:
    naks: dict[tuple[str, str], int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)


FLEET_ALERT_KINDS = (
    "storage_full",
    "gateway_offline",
    "backlog_age",
    "rejects",
    "device_offline",
    "device_errors",
    "battery_low",
)


def evaluate_alerts(
    conn: sqlite3.Connection, now: int, th: AlertThresholds, last: _Counters
) -> tuple[int, int]:
    """Open alerts whose condition holds, close those whose condition cleared."""
    want: dict[str, tuple[str, str, str | None, str, str]] = {}  # key -> kind, gw, dev, severity, message
    for gw, state, last_ms, oldest, rejected, storage, storage_reason in conn.execute(
        "SELECT gateway, state, last_status_ms, oldest_age_s, rejected, storage_state, storage_reason"
        " FROM fleet_gateways"
    ):
        if state == "online" and storage == "full":
            want[f"storage-full:{gw}"] = (
                "storage_full",
                gw,
                None,
                "critical",
                f"{gw} disk full: new records refused until space returns ({storage_reason or 'no reason'})",
            )
        if state == "offline" and (now - last_ms) / 1000 >= th.gateway_offline_s:
            mins = (now - last_ms) / 60000
            want[f"gw-offline:{gw}"] = (
                "gateway_offline",
                gw,
                None,
                "critical",
                f"{gw} offline for {mins:.1f} min",
            )
        if state == "online" and oldest >= th.backlog_age_s:
            want[f"backlog-age:{gw}"] = (
                "backlog_age",
                gw,
                None,
                "warning",
                f"{gw} oldest unsent record is {oldest:.0f}s old",
            )
        prev_rej = last.rejects.get(gw, rejected)
        if rejected - prev_rej >= th.rejects_per_window:
            want[f"rejects:{gw}"] = (
                "rejects",
                gw,
                None,
                "warning",
                f"{gw}: {rejected - prev_rej} records rejected by central recently",
            )
        last.rejects[gw] = rejected
    for gw, did, kind, state, naks, errors, battery in conn.execute(
        "SELECT d.gateway, d.device_id, d.kind, d.state, d.naks, d.errors, d.battery FROM fleet_devices d"
        " JOIN fleet_gateways g ON g.gateway = d.gateway WHERE g.state = 'online'"
    ):
        if th.device_offline and state == "offline":
            want[f"dev-offline:{gw}:{did}"] = (
                "device_offline",
                gw,
                did,
                "warning",
                f"{kind} {did} at {gw} offline",
            )
        bad = naks + errors
        prev = last.naks.get((gw, did), bad)
        if bad - prev >= th.naks_per_window:
            want[f"dev-naks:{gw}:{did}"] = (
                "device_errors",
                gw,
                did,
                "warning",
                f"{kind} {did} at {gw}: {bad - prev} NAKs/errors recently",
            )
        last.naks[(gw, did)] = bad
        if battery is not None and battery < th.battery_low_pct:
            want[f"battery:{gw}:{did}"] = (
                "battery_low",
                gw,
                did,
                "warning",
                f"{kind} {did} at {gw} battery {battery}%",
            )
    # Only the fleet's own kinds: other monitors (the availability monitor's stock_out_risk)
    # keep their alerts in the same table and open and close them themselves.
    marks = ",".join("?" * len(FLEET_ALERT_KINDS))
    open_keys = {
        k
        for (k,) in conn.execute(
            f"SELECT key FROM alerts WHERE closed_ms IS NULL AND kind IN ({marks})", FLEET_ALERT_KINDS
        )
    }
    # Error-rate alerts stay open until a whole window passes without new errors.
    opened = closed = 0
    for key, (kind, gw, dev, sev, msg) in want.items():
        if key not in open_keys:
            conn.execute(
                "INSERT INTO alerts (key, kind, gateway, device_id, severity, message, opened_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, kind, gw, dev, sev, msg, now),
            )
            opened += 1
        else:
            conn.execute("UPDATE alerts SET message = ? WHERE key = ? AND closed_ms IS NULL", (msg, key))
    for key in open_keys - want.keys():
        conn.execute("UPDATE alerts SET closed_ms = ? WHERE key = ? AND closed_ms IS NULL", (now, key))
        closed += 1
    conn.execute(PRUNE_SAMPLES, (now - HISTORY_KEEP_S * 1000,))
    return opened, closed


# The columns of a gateway's and a device's row as the dashboard and the drill-down show them.
GATEWAY_COLUMNS = (
    "gateway",
    "site",
    "state",
    "last_status_ms",
    "state_since_ms",
    "backlog",
    "oldest_age_s",
    "last_sync_ms",
    "clock_offset_ms",
    "version",
    "rejected",
    "storage_state",
    "storage_since_ms",
    "storage_free_bytes",
    "storage_reason",
)
DEVICE_COLUMNS = (
    "gateway",
    "device_id",
    "kind",
    "state",
    "last_seen_ms",
    "reads",
    "errors",
    "naks",
    "battery",
    "firmware",
    "last_error",
)


def snapshot(conn: sqlite3.Connection, *, history_s: int = 900) -> dict[str, Any]:
    now = now_ms()
    gateways = [
        dict(zip(GATEWAY_COLUMNS, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(GATEWAY_COLUMNS)} FROM fleet_gateways ORDER BY site, gateway"
        )
    ]
    devices: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(
        f"SELECT {', '.join(DEVICE_COLUMNS)} FROM fleet_devices ORDER BY gateway, device_id"
    ):
        d = dict(zip(DEVICE_COLUMNS, r, strict=True))
        devices.setdefault(d["gateway"], []).append(d)
    sites: dict[str, list[dict[str, Any]]] = {}
    for g in gateways:
        g["devices"] = devices.get(g["gateway"], [])
        sites.setdefault(g["site"] or "(unassigned)", []).append(g)
    history: dict[str, list[tuple[int, int, float]]] = {}
    for gw, at, backlog, age in conn.execute(
        "SELECT gateway, at, backlog, oldest_age_s FROM fleet_samples WHERE at >= ? ORDER BY at",
        (now - history_s * 1000,),
    ):
        history.setdefault(gw, []).append((at, backlog, age))
    acols = ("id", "kind", "gateway", "device_id", "severity", "message", "opened_ms")
    alerts = [
        dict(zip(acols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(acols)} FROM alerts WHERE closed_ms IS NULL ORDER BY opened_ms DESC, id DESC"
        )
    ]
    return {
        "now_ms": now,
        "sites": sites,
        "history": history,
        "alerts": alerts,
        "orders_per_minute": orders_per_minute(conn, now),
        "fulfilment": fulfilment(conn),
    }


def orders_per_minute(conn: sqlite3.Connection, now: int, minutes: int = 30) -> dict[str, list[int]]:
    start = now - minutes * 60_000
    out: dict[str, list[int]] = {}
    # Grouped by the minute first: SQLite then reads the window's range of orders_received;
    # grouped by channel first it walked all of orders_channel (every order) for the grouping.
    for channel, bucket, n in conn.execute(
        "SELECT channel, (received_at - ?) / 60000 AS b, count(*) FROM orders WHERE received_at >= ?"
        " GROUP BY b, channel",
        (start, start),
    ):
        series = out.setdefault(channel, [0] * minutes)
        if 0 <= bucket < minutes:
            series[bucket] = n
    return out


def fulfilment(conn: sqlite3.Connection) -> dict[str, Any]:
    """Fill rate and shortages, from whatever the allocation tables hold."""
    by_status = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
    out: dict[str, Any] = {"orders_by_status": by_status, "fill_rate": None, "open_shortages": None}
    if has_table(conn, "shortages"):
        cols = columns(conn, "shortages")
        if "status" in cols:
            out["open_shortages"] = conn.execute(
                "SELECT count(*) FROM shortages WHERE status NOT IN ('closed', 'resolved', 'cancelled')"
            ).fetchone()[0]
        else:
            out["open_shortages"] = conn.execute("SELECT count(*) FROM shortages").fetchone()[0]
    if has_table(conn, "allocations"):
        cols = columns(conn, "allocations")
        if "qty" in cols:
            allocated = conn.execute("SELECT coalesce(sum(qty), 0) FROM allocations").fetchone()[0]
            demanded = (
                conn.execute(
                    "SELECT coalesce(sum(l.qty), 0) FROM order_lines l JOIN orders o USING (order_id)"
                    " WHERE o.order_id IN (SELECT DISTINCT order_id FROM allocations)"
                ).fetchone()[0]
                if "order_id" in cols
                else 0
            )
            out["fill_rate"] = round(allocated / demanded, 4) if demanded else None
    return out


class Fleet:
    """Status in, alerts out; ``changed`` wakes live dashboard streams."""

    def __init__(self, db: DurableDB, thresholds: AlertThresholds | None = None) -> None:
        self.db = db
        self.thresholds = thresholds or AlertThresholds()
        self.version = 0
        self.changed = asyncio.Condition()
        self.bad_status = 0
        self._counters = _Counters()

    async def _bump(self) -> None:
        self.version += 1
        async with self.changed:
            self.changed.notify_all()

    async def bump(self) -> None:
        """Something else changed the fleet's tables (central.regions): wake the live views."""
        await self._bump()

    async def on_status(self, gw: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            doc = parse_status(gw, payload)
        except StatusError as e:
            self.bad_status += 1
            log.warning("gw=%s bad status ignored: %s", gw, e)
            return
        await self.db.write(partial(apply_status, gw=gw, doc=doc, now=now_ms()))
        await self._bump()

    async def evaluate(self) -> tuple[int, int]:
        opened, closed = await self.db.write(
            partial(evaluate_alerts, now=now_ms(), th=self.thresholds, last=self._counters)
        )
        if opened or closed:
            await self._bump()
        return opened, closed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVALUATE_EVERY_S)
            try:
                await self.evaluate()
            except StorageFull as e:  # central's own disk: alerts wait until there is room
                log.warning("fleet alerts not evaluated: %s", e)
                await self.db.wait_writable()

    async def wait_change(self, version: int, within_s: float) -> int:
        """Wait until the version moves past ``version`` (or ``within_s`` passes); return it."""
        try:
            async with asyncio.timeout(within_s), self.changed:
                await self.changed.wait_for(lambda: self.version != version)
        except TimeoutError:
            pass
        return self.version
