"""REST for process definitions (``central/PROCESS.md``) and partners (``central/PARTNERS.md``).

- ``POST /api/process/import`` (supervisor): the master as TOML (``Content-Type: application/toml``
  or ``text/plain``) or JSON (``application/json``); 201 a new version, 200 the same master as
  the latest (no new version), 400 it does not parse, 422 ``{"error", "errors": [{"definition",
  "field", "reason"}, ...]}`` every problem, nothing stored.
- ``GET /api/process`` and ``GET /api/process/{version}`` (viewer).
- ``POST /api/orders/{no}/steps/{step}`` (order_desk): a person finished a step
  (``vas``, ``schedule_service``, ``partner_confirm``, ``ship``, ``deliver``) for the order's
  lines at it (``{"lines": [1], "detail", "carrier", "tracking"}``, all optional); 409 when no
  line is at that step.
- ``GET /api/partners`` (viewer), ``POST /api/partners`` (supervisor, ``{"code", "kind",
  "name"}``: 201 with the partner's new key, shown once), ``DELETE /api/partners/{code}``.
- ``POST /api/partner/orders/{no}/events``: a partner's event, authenticated by the partner's
  own key (a principal apart from the REST users), idempotent by ``event_id``.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

from aiohttp import web

from central.orders import orders, repo
from central.process import definitions, partners, tracker
from central.web.api import DB_KEY, HttpError, _body, _json, _str_field, _user, _write, requires
from central.web.auth import Role
from protocols.idempotency import HEADER, REPLAYED_HEADER, fingerprint, parse_key
from protocols.partner_events import parse_partner_event
from runtime.clock import now_ms

MAX_MASTER = 1024 * 1024


def _process_error(e: definitions.ProcessError) -> web.Response:
    parse = len(e.errors) == 1 and str(e.errors[0]["reason"]).startswith("not valid ")
    return _json({"error": str(e), "errors": e.errors}, status=400 if parse else 422)


@requires(Role.SUPERVISOR)
async def import_process(request: web.Request) -> web.Response:
    """The process master, TOML or JSON by ``Content-Type`` (or ``?format=toml|json``)."""
    fmt = request.query.get("format") or ("json" if request.content_type == "application/json" else "toml")
    if fmt not in ("toml", "json"):
        raise HttpError(400, f"format: {fmt!r} is not toml or json")
    raw = await request.content.read(MAX_MASTER + 1)
    if len(raw) > MAX_MASTER:
        raise HttpError(413, f"process master over {MAX_MASTER} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "process master is not UTF-8") from None
    user = _user(request)
    try:
        out = await _write(
            request, partial(definitions.import_master, text=text, fmt=fmt, actor=user.name, now=now_ms())
        )
    except definitions.ProcessError as e:
        return _process_error(e)
    return _json(out, status=200 if out["unchanged"] else 201)


@requires(Role.VIEWER)
async def show_process(request: web.Request) -> web.Response:
    raw = request.match_info.get("version")
    version = None
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise HttpError(400, f"version: {raw!r} is not a number")
        version = int(raw)
    out = await request.app[DB_KEY].read(partial(definitions.show, version=version))
    if out is None:
        raise HttpError(404, f"no process version {version}")
    return _json(out)


def _lines_field(body: dict[str, Any]) -> list[int] | None:
    v = body.get("lines")
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(n, int) and not isinstance(n, bool) for n in v):
        raise HttpError(400, "lines: expected a non-empty list of line numbers")
    return v


@requires(Role.ORDER_DESK)
async def finish_step(request: web.Request) -> web.Response:
    """A person finished a step of the order's lines (the ship step: carrier and tracking)."""
    key, step = request.match_info["key"], request.match_info["step"]
    body = await _body(request) if request.can_read_body else {}
    unknown = sorted(set(body) - {"lines", "detail", "carrier", "tracking"})
    if unknown:
        raise HttpError(400, f"{unknown[0]}: unknown field; known: lines, detail, carrier, tracking")
    lines = _lines_field(body)
    detail = _str_field(body, "detail", required=False)
    carrier, tracking = (
        _str_field(body, "carrier", required=False),
        _str_field(body, "tracking", required=False),
    )
    if carrier or tracking:
        detail = f"{step}: carrier {carrier} tracking {tracking}" + (f"; {detail}" if detail else "")
    user = _user(request)

    def job(conn: sqlite3.Connection) -> None:
        oid = orders.find(conn, key)
        tracker.finish(conn, oid, step, actor=user.name, now=now_ms(), line_nos=lines, detail=detail)

    try:
        await _write(request, job)
    except tracker.StepError as e:
        raise HttpError(409 if step in definitions.STEPS else 400, str(e)) from None
    return _json(await request.app[DB_KEY].read(partial(repo.get_order, key=key)))


# -- partners ------------------------------------------------------------------------------------


@requires(Role.VIEWER)
async def list_partners(request: web.Request) -> web.Response:
    return _json({"partners": await request.app[DB_KEY].read(partners.list_partners)})


@requires(Role.SUPERVISOR)
async def add_partner(request: web.Request) -> web.Response:
    """``{"code", "kind": "3pl"|"supplier", "name"}`` -> 201 with the new key (shown once)."""
    body = await _body(request)
    code, kind = _str_field(body, "code"), _str_field(body, "kind")
    name = _str_field(body, "name", required=False)
    try:
        key = await _write(
            request, partial(partners.add_partner, code=code, kind=kind, name=name, now=now_ms())
        )
    except partners.PartnerError as e:
        raise HttpError(e.status, e.reason) from None
    return _json({"code": code, "kind": kind, "name": name, "key": key}, status=201)


@requires(Role.SUPERVISOR)
async def delete_partner(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if not await _write(request, partial(partners.deactivate, code=code, now=now_ms())):
        raise HttpError(404, f"no partner {code!r}")
    return _json({"deactivated": code})


async def partner_event(request: web.Request) -> web.Response:
    """A partner's event on an order it fulfils (``protocols/PARTNER-EVENTS.md``)."""
    db = request.app[DB_KEY]
    order_no = request.match_info["no"]
    try:
        partner = await db.read(partial(partners.authenticate, header=request.headers.get("Authorization")))
        key = parse_key(request.headers.getall(HEADER, []))
        event = parse_partner_event(await _body(request))
        if key is not None and key != event.event_id:
            raise HttpError(
                400, f"{HEADER} {key!r} differs from event_id {event.event_id!r}; send one or the same"
            )
        fp = fingerprint(event.to_wire())
        status, answer, replayed = await _write(
            request,
            partial(
                partners.apply_event, partner=partner, order_no=order_no, event=event, fp=fp, now=now_ms()
            ),
        )
    except partners.PartnerError as e:
        resp = _json({"error": e.reason}, status=e.status)
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="Storegate partners"'
        return resp
    resp = _json(answer, status=status)
    if replayed:
        resp.headers[REPLAYED_HEADER] = "true"
    return resp


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/process/import", import_process)
    r.add_get("/api/process", show_process)
    r.add_get("/api/process/{version}", show_process)
    r.add_post("/api/orders/{key}/steps/{step}", finish_step)
    r.add_get("/api/partners", list_partners)
    r.add_post("/api/partners", add_partner)
    r.add_delete("/api/partners/{code}", delete_partner)
    r.add_post("/api/partner/orders/{no}/events", partner_event)
