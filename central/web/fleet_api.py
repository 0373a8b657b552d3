"""Fleet drill-down: the list of gateways (summary first, problems on top, search, paging), one
gateway's detail, one device's detail, the alert history, and the pages that show them.

Every endpoint needs a viewer. A gateway's records and devices are its store's business: a store
user (``central.web.visibility``) sees its own locations' gateways only (403 for another), the
fleet-wide counts, and the stock alerts of what its scope reads; a supplier user no gateway, only
its items' stock alerts. The data comes from the fleet registry (:mod:`central.fleet`:
current status, ``fleet_samples`` history pruned after ``fleet.HISTORY_KEEP_S``, events, alerts)
and from central's own record answers (``processed``) and ``quarantine``. See ops/FLEET.md.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from central import fleet as fleet_mod
from central.allocate.availability import ALERT_KIND
from central.web import visibility
from central.web.api import DB_KEY, USER_KEY, requires
from central.web.auth import Role
from runtime.clock import now_ms
from runtime.sqlitedb import DurableDB

STATIC = Path(__file__).parent / "static"
PAGE_DEFAULT = 50
PAGE_MAX = 500
RECORDS_MAX = 500
HISTORY_DEFAULT_S = 3600
OVERVIEW_TOP = 8
OVERVIEW_ALERTS = 50
STATES = ("problem", "ok", "online", "offline", "disk_full", "backlog_old", "alerting")

# Problems first: disk full, offline, backlog too old, open alerts, then the healthy.
_RANK = """CASE
    WHEN g.state = 'online' AND g.storage_state = 'full' THEN 0
    WHEN g.state = 'offline' THEN 1
    WHEN g.oldest_age_s >= ? THEN 2
    WHEN coalesce(a.n, 0) > 0 THEN 3
    ELSE 4 END"""
_PROBLEMS = {0: "disk_full", 1: "offline", 2: "backlog_old", 3: "alerting", 4: ""}
_STATE_WHERE = {
    "problem": "rank < 4",
    "ok": "rank = 4",
    "online": "state = 'online'",
    "offline": "state = 'offline'",
    "disk_full": "rank = 0",
    "backlog_old": "rank = 2",
    "alerting": "alerts > 0",
}
_GCOLS = fleet_mod.GATEWAY_COLUMNS
_DCOLS = (*fleet_mod.DEVICE_COLUMNS, "updated_ms")
_ACOLS = ("id", "kind", "gateway", "device_id", "severity", "message", "opened_ms", "closed_ms")


class BadQuery(ValueError):
    pass


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


def _int_arg(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= v <= hi:
        raise BadQuery(f"{name} must be within {lo}..{hi}, got {v}")
    return v


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _count(cond: str) -> str:
    """How many rows ``cond`` holds for (SQL's sum of a condition, portable)."""
    return f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END)"


# One ``?`` (in _RANK): the backlog age in seconds from which a backlog counts as old.
_BASE = f"""
    WITH a AS (SELECT gateway, count(*) AS n FROM alerts WHERE closed_ms IS NULL GROUP BY gateway),
    d AS (SELECT gateway, count(*) AS n, {_count("state = 'offline'")} AS off
          FROM fleet_devices GROUP BY gateway),
    g AS (SELECT {", ".join("g." + c for c in _GCOLS)}, coalesce(a.n, 0) AS alerts,
                 coalesce(d.n, 0) AS devices, coalesce(d.off, 0) AS devices_offline, {_RANK} AS rank
          FROM fleet_gateways g LEFT JOIN a ON a.gateway = g.gateway LEFT JOIN d ON d.gateway = g.gateway)
"""
_SUMMARY_KEYS = (
    "gateways",
    "online",
    "offline",
    "disk_full",
    "backlog_old",
    "alerting",
    "problems",
    "backlog",
    "devices",
    "devices_offline",
    "sites",
)


def summary(conn: sqlite3.Connection, backlog_age_s: float) -> dict[str, int]:
    """The fleet in counts: gateways by state and problem, records waiting, devices, alerts."""
    counts = ", ".join(
        _count(c)
        for c in ("state = 'online'", "state = 'offline'", "rank = 0", "rank = 2", "alerts > 0", "rank < 4")
    )
    row = conn.execute(
        _BASE + f"SELECT count(*), {counts}, coalesce(sum(backlog), 0),"
        " coalesce(sum(devices), 0), coalesce(sum(devices_offline), 0), count(DISTINCT site) FROM g",
        (backlog_age_s,),
    ).fetchone()
    out = {k: v or 0 for k, v in zip(_SUMMARY_KEYS, row, strict=True)}
    out["open_alerts"] = conn.execute("SELECT count(*) FROM alerts WHERE closed_ms IS NULL").fetchone()[0]
    return out


def gateway_list(
    conn: sqlite3.Connection,
    *,
    q: str,
    state: str,
    limit: int,
    offset: int,
    backlog_age_s: float,
    gateways: Collection[str] | None = None,
) -> dict[str, Any]:
    """One page of gateways, problems first, plus the fleet's summary (counts by state);
    ``gateways``: only those (a store user's own)."""
    base = _BASE
    params: list[Any] = [backlog_age_s]
    where = []
    if gateways is not None:
        where.append(f"gateway IN ({', '.join('?' * len(gateways))})" if gateways else "0 = 1")
        params += sorted(gateways)
    if q:  # any case: lower() on both sides (SQLite's LIKE ignores ASCII case, PostgreSQL's does not)
        where.append("(lower(gateway) LIKE lower(?) ESCAPE '\\' OR lower(site) LIKE lower(?) ESCAPE '\\')")
        params += [_like(q), _like(q)]
    if state:
        where.append(_STATE_WHERE[state])
    cond = ("WHERE " + " AND ".join(where)) if where else ""
    total = conn.execute(base + f"SELECT count(*) FROM g {cond}", params).fetchone()[0]
    cols = (*_GCOLS, "alerts", "devices", "devices_offline", "rank")
    rows = conn.execute(
        base + f"SELECT {', '.join(cols)} FROM g {cond} ORDER BY rank, oldest_age_s DESC, gateway"
        " LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    items = []
    for r in rows:
        item = dict(zip(cols, r, strict=True))
        item["problem"] = _PROBLEMS[item.pop("rank")]
        item["device_list"] = []
        items.append(item)
    by_gw = {i["gateway"]: i for i in items}
    if by_gw:  # the chips of this page's gateways only
        marks = ", ".join("?" * len(by_gw))
        for gw, did, kind, dstate, battery in conn.execute(
            "SELECT gateway, device_id, kind, state, battery FROM fleet_devices"
            f" WHERE gateway IN ({marks}) ORDER BY gateway, device_id",
            list(by_gw),
        ):
            by_gw[gw]["device_list"].append(
                {"device_id": did, "kind": kind, "state": dstate, "battery": battery}
            )
    return {
        "now_ms": now_ms(),
        "summary": summary(conn, backlog_age_s),
        "total": total,
        "offset": offset,
        "limit": limit,
        "items": items,
    }


ORDER_FIGURES = ("orders_per_minute", "fulfilment", "orders_as_of")


def order_figures(conn: sqlite3.Connection, now: int) -> dict[str, Any]:
    """The overview's order figures: orders per minute by channel (the last 30 min) and
    fulfilment (orders by status, fill rate, open shortages), as of ``now`` (``orders_as_of``).
    Fulfilment counts every order: at a million orders it is the overview's one costly part, so
    the live stream reads it at its own slower cadence (``central.web.dashboard``)."""
    return {
        "orders_per_minute": fleet_mod.orders_per_minute(conn, now),
        "fulfilment": fleet_mod.fulfilment(conn),
        "orders_as_of": now,
    }


def overview(
    conn: sqlite3.Connection,
    *,
    backlog_age_s: float,
    history_s: int = 900,
    top: int = OVERVIEW_TOP,
    orders: bool = True,
) -> dict[str, Any]:
    """What the overview's live stream carries, bounded whatever the fleet's size: the summary,
    the newest open alerts, the backlog history of the ``top`` gateways with most waiting and
    (``orders``) the :func:`order_figures`. The gateways themselves come a page at a time from
    the list."""
    now = now_ms()
    tops = [
        gw
        for (gw,) in conn.execute(
            "SELECT gateway FROM fleet_gateways ORDER BY backlog DESC, oldest_age_s DESC, gateway LIMIT ?",
            (top,),
        )
    ]
    history: dict[str, list[tuple[int, int, float]]] = {gw: [] for gw in tops}
    for gw in tops:
        history[gw] = conn.execute(
            "SELECT at, backlog, oldest_age_s FROM fleet_samples WHERE gateway = ? AND at >= ? ORDER BY at",
            (gw, now - history_s * 1000),
        ).fetchall()
    acols = ("id", "kind", "gateway", "device_id", "severity", "message", "opened_ms")
    alerts = [
        dict(zip(acols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(acols)} FROM alerts WHERE closed_ms IS NULL ORDER BY id DESC LIMIT ?",
            (OVERVIEW_ALERTS,),
        )
    ]
    out = {"now_ms": now, "summary": summary(conn, backlog_age_s), "history": history, "alerts": alerts}
    if orders:
        out.update(order_figures(conn, now))
    return out


def _devices(conn: sqlite3.Connection, gw: str) -> list[dict[str, Any]]:
    return [
        dict(zip(_DCOLS, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(_DCOLS)} FROM fleet_devices WHERE gateway = ?"
            " ORDER BY state = 'online', device_id",
            (gw,),
        )
    ]


def _alerts_where(gw: str | None, dev: str | None, kind: str | None, state: str) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if gw:
        where.append("gateway = ?")
        args.append(gw)
    if dev:
        where.append("device_id = ?")
        args.append(dev)
    if kind:
        where.append("kind = ?")
        args.append(kind)
    if state == "open":
        where.append("closed_ms IS NULL")
    elif state == "closed":
        where.append("closed_ms IS NOT NULL")
    return ("WHERE " + " AND ".join(where)) if where else "", args


def alert_history(
    conn: sqlite3.Connection,
    *,
    gw: str | None = None,
    dev: str | None = None,
    kind: str | None = None,
    state: str = "all",
    limit: int = 100,
    before: int | None = None,
    view: visibility.View | None = None,
) -> dict[str, Any]:
    """Alerts newest first (open and closed); ``next_before`` pages on by id; ``view``: only
    the alerts it sees (:func:`_scope_where`)."""
    cond, args = _alerts_where(gw, dev, kind, state)
    if before is not None:
        cond = (cond + " AND" if cond else "WHERE") + " id < ?"
        args.append(before)
    if view is not None and not view.everything:
        scoped, sargs = _scope_where(view)
        cond = (cond + " AND" if cond else "WHERE") + f" ({scoped})"
        args += sargs
    rows = [
        dict(zip(_ACOLS, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(_ACOLS)} FROM alerts {cond} ORDER BY id DESC LIMIT ?", (*args, limit)
        )
    ]
    kinds = [k for (k,) in conn.execute("SELECT DISTINCT kind FROM alerts ORDER BY kind")]
    return {
        "alerts": rows,
        "kinds": kinds,
        "next_before": rows[-1]["id"] if len(rows) == limit else None,
    }


def _in(col: str, values: Collection[str] | None) -> tuple[str, list[Any]]:
    if values is None:
        return "1 = 1", []
    return (f"{col} IN ({', '.join('?' * len(values))})" if values else "0 = 1"), sorted(values)


def sees_gateway(view: visibility.View, gw: str) -> bool:
    """A gateway's own records, devices, history and fleet alerts: everyone-scoped users any, a
    store user its own locations' gateways, a supplier user none."""
    if view.everything:
        return True
    return view.supplier is None and (view.gateways is None or gw in view.gateways)


def sees_alert(view: visibility.View, alert: dict[str, Any]) -> bool:
    """:func:`_scope_where` for an alert already read: a stock alert by its location and item,
    any other by its gateway."""
    if alert["kind"] == ALERT_KIND:
        return view.everything or view.sees(alert["gateway"], alert["device_id"] or "")
    return sees_gateway(view, alert["gateway"])


def _scope_where(view: visibility.View) -> tuple[str, list[Any]]:
    """The alerts a scoped user sees: its own gateways' fleet alerts (a store user), and the
    availability monitor's stock alerts (``gateway`` the location, ``device_id`` the item) of
    the locations and items it reads."""
    own, own_args = _in("gateway", view.gateways if view.supplier is None else frozenset())
    locs, loc_args = _in("gateway", view.readable)
    skus, sku_args = _in("device_id", view.skus)
    return (
        f"(kind <> ? AND {own}) OR (kind = ? AND {locs} AND {skus})",
        [ALERT_KIND, *own_args, ALERT_KIND, *loc_args, *sku_args],
    )


def gateway_detail(
    conn: sqlite3.Connection, gw: str, *, history_s: int, records: int
) -> dict[str, Any] | None:
    """Status, backlog history, answers given and quarantined records, devices, alerts, events."""
    row = conn.execute(f"SELECT {', '.join(_GCOLS)} FROM fleet_gateways WHERE gateway = ?", (gw,)).fetchone()
    if row is None:
        return None
    now = now_ms()
    out: dict[str, Any] = dict(zip(_GCOLS, row, strict=True))
    out["now_ms"] = now
    out["history"] = conn.execute(
        "SELECT at, backlog, oldest_age_s, state FROM fleet_samples WHERE gateway = ? AND at >= ?"
        " ORDER BY at",
        (gw, now - history_s * 1000),
    ).fetchall()
    out["answers"] = dict(
        conn.execute(
            "SELECT status, count(*) FROM processed WHERE gateway = ? GROUP BY status", (gw,)
        ).fetchall()
    )
    out["quarantined"] = conn.execute("SELECT count(*) FROM quarantine WHERE gateway = ?", (gw,)).fetchone()[
        0
    ]
    rcols = ("record_id", "seq", "type", "status", "reason", "ref", "processed_at")
    out["records"] = [
        dict(zip(rcols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(rcols)} FROM processed WHERE gateway = ?"
            " ORDER BY seq DESC, record_id DESC LIMIT ?",  # seq starts again with a new gateway database
            (gw, records),
        )
    ]
    qcols = ("id", "record_id", "seq", "type", "reason", "topic", "at")
    out["quarantine"] = [
        dict(zip(qcols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(qcols)} FROM quarantine WHERE gateway = ? ORDER BY id DESC LIMIT ?",
            (gw, records),
        )
    ]
    out["devices"] = _devices(conn, gw)
    out["alerts"] = alert_history(conn, gw=gw, limit=100)["alerts"]
    out["events"] = [
        dict(zip(("at", "device_id", "event", "detail"), r, strict=True))
        for r in conn.execute(
            "SELECT at, device_id, event, detail FROM fleet_events WHERE gateway = ?"
            " ORDER BY id DESC LIMIT 200",
            (gw,),
        )
    ]
    return out


def device_detail(conn: sqlite3.Connection, gw: str, dev: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {', '.join(_DCOLS)} FROM fleet_devices WHERE gateway = ? AND device_id = ?", (gw, dev)
    ).fetchone()
    if row is None:
        return None
    out: dict[str, Any] = dict(zip(_DCOLS, row, strict=True))
    out["now_ms"] = now_ms()
    g = conn.execute("SELECT site, state FROM fleet_gateways WHERE gateway = ?", (gw,)).fetchone()
    out["site"], out["gateway_state"] = g if g else ("", "unknown")
    out["alerts"] = alert_history(conn, gw=gw, dev=dev, limit=100)["alerts"]
    out["events"] = [
        dict(zip(("at", "event", "detail"), r, strict=True))
        for r in conn.execute(
            "SELECT at, event, detail FROM fleet_events WHERE gateway = ? AND device_id = ?"
            " ORDER BY id DESC LIMIT 200",
            (gw, dev),
        )
    ]
    return out


def _bad(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _db(request: web.Request) -> DurableDB:
    return request.app[FLEET_API_DB_KEY]


async def _view(request: web.Request) -> visibility.View:
    """The user's scope (users live in central's database, the fleet may have its own)."""
    return await request.app[DB_KEY].read(partial(visibility.view_of, name=request[USER_KEY].name))


def _refused(e: visibility.Refused) -> web.Response:
    return _bad(e.reason, 403)


FLEET_API_DB_KEY = web.AppKey("fleet_api_db", DurableDB)
BACKLOG_AGE_KEY = web.AppKey("fleet_api_backlog_age_s", float)


async def list_gateways(request: web.Request) -> web.Response:
    try:
        limit = _int_arg(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        offset = _int_arg(request, "offset", 0, 0, 10**9)
    except BadQuery as e:
        return _bad(str(e))
    state = request.query.get("state", "")
    if state and state not in STATES:
        return _bad(f"state must be one of {', '.join(STATES)}, got {state[:40]!r}")
    q = request.query.get("q", "").strip()[:100]
    view = await _view(request)
    try:
        view.check_gateway(None, "gateways")
    except visibility.Refused as e:
        return _refused(e)
    page = await _db(request).read(
        partial(
            gateway_list,
            q=q,
            state=state,
            limit=limit,
            offset=offset,
            backlog_age_s=request.app[BACKLOG_AGE_KEY],
            gateways=view.gateways,
        )
    )
    return web.json_response(page, dumps=_dumps)


async def one_gateway(request: web.Request) -> web.Response:
    gw = request.match_info["gw"]
    try:
        history_s = _int_arg(request, "history_s", HISTORY_DEFAULT_S, 60, fleet_mod.HISTORY_KEEP_S)
        records = _int_arg(request, "records", 50, 1, RECORDS_MAX)
    except BadQuery as e:
        return _bad(str(e))
    try:
        (await _view(request)).check_gateway(gw, "gateways")
    except visibility.Refused as e:
        return _refused(e)
    detail = await _db(request).read(partial(gateway_detail, gw=gw, history_s=history_s, records=records))
    if detail is None:
        return _bad(f"no gateway {gw!r} has reported", 404)
    return web.json_response(detail, dumps=_dumps)


async def one_device(request: web.Request) -> web.Response:
    gw, dev = request.match_info["gw"], request.match_info["dev"]
    try:
        (await _view(request)).check_gateway(gw, "gateways")
    except visibility.Refused as e:
        return _refused(e)
    detail = await _db(request).read(partial(device_detail, gw=gw, dev=dev))
    if detail is None:
        return _bad(f"no device {dev!r} at gateway {gw!r} has reported", 404)
    return web.json_response(detail, dumps=_dumps)


async def alerts(request: web.Request) -> web.Response:
    try:
        limit = _int_arg(request, "limit", 100, 1, PAGE_MAX)
        before = _int_arg(request, "before", 0, 0, 2**62) or None
    except BadQuery as e:
        return _bad(str(e))
    state = request.query.get("state", "all")
    if state not in ("open", "closed", "all"):
        return _bad(f"state must be open, closed or all, got {state[:40]!r}")
    rows = await _db(request).read(
        partial(
            alert_history,
            gw=request.query.get("gateway") or None,
            dev=request.query.get("device") or None,
            kind=request.query.get("kind") or None,
            state=state,
            limit=limit,
            before=before,
            view=await _view(request),
        )
    )
    return web.json_response(rows, dumps=_dumps)


def _static(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def serve(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name)

    return serve


def add_routes(app: web.Application, *, db: DurableDB, backlog_age_s: float | None = None) -> None:
    app[FLEET_API_DB_KEY] = db
    app[BACKLOG_AGE_KEY] = (
        backlog_age_s if backlog_age_s is not None else fleet_mod.AlertThresholds().backlog_age_s
    )
    viewer = requires(Role.VIEWER)
    app.router.add_get("/api/fleet/gateways", viewer(list_gateways))
    app.router.add_get("/api/fleet/gateways/{gw}", viewer(one_gateway))
    app.router.add_get("/api/fleet/gateways/{gw}/devices/{dev}", viewer(one_device))
    app.router.add_get("/api/fleet/alerts", viewer(alerts))
    app.router.add_get("/fleet/gateway", viewer(_static("fleet_gateway.html")))
    app.router.add_get("/fleet/device", viewer(_static("fleet_device.html")))
    app.router.add_get("/fleet/alerts", viewer(_static("fleet_alerts.html")))
    app.router.add_get("/fleet/fleet.js", viewer(_static("fleet.js")))
    app.router.add_get("/fleet/fleet.css", viewer(_static("fleet.css")))
