"""Process definitions: which steps ("work units") each order line walks through, as data.

A master (TOML or JSON, ``central/PROCESS.md``) lists definitions; each names the order types
it is for, optional line conditions (``when``) and the ordered steps. The master is imported
whole, validated whole (every error reported, nothing stored unless all is well) and stored as
a new **version**; an order keeps the version current when it was first validated. Version 0
is built in: today's fixed lifecycle (:data:`DEFAULT_STEPS`), used for an order type the
master does not cover and for every order before a master is imported.

A line's definition is the first one in the master (file order) whose order types include the
order's type and whose every condition holds for the line; else the default.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tomllib
from dataclasses import dataclass, field
from typing import Any

from central import CentralError
from central.orders.lifecycle import STOCK_TYPES, Status
from runtime.dbapi import IntegrityError
from runtime.sqlitedb import savepoint

ORDER_TYPES = (*sorted(STOCK_TYPES), "cash-sale", "drop-ship")
DROP_SHIP, CASH_SALE = "drop-ship", "cash-sale"
DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STORE_TRIES = 3  # a version number taken by another worker's import meanwhile: number again


@dataclass(frozen=True, slots=True)
class Step:
    """One kind of work unit. ``done_at``: the lifecycle status that finishes it (None: a
    person at the desk or a partner finishes it); ``rank``: where it may stand in a
    definition (never before a step of a higher rank); ``types``: the order types it fits."""

    name: str
    rank: int
    done_at: Status | None
    types: frozenset[str]
    doc: str


_STOCK = frozenset(STOCK_TYPES)
STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("allocate", 10, Status.ALLOCATED, _STOCK, "stock allocated (central)"),
        Step("vas", 20, None, _STOCK, "value-added service (engraving, gift wrap...); release waits for it"),
        Step(
            "schedule_service", 20, None, _STOCK, "a service booked (installation...); release waits for it"
        ),
        Step("release_to_dc", 30, Status.RELEASED, _STOCK, "pick tasks sent to the DC (central)"),
        Step("pass_to_supplier", 30, Status.RELEASED, frozenset({DROP_SHIP}), "drop-ship record sent"),
        Step("partner_confirm", 35, None, _STOCK | {DROP_SHIP}, "the partner (3PL, supplier) confirms"),
        Step("pick", 40, Status.PICKED, _STOCK, "picked at the DC (pick results) or by the 3PL"),
        Step("ship", 50, Status.SHIPPED, _STOCK | {DROP_SHIP}, "shipped: the desk, the supplier or the 3PL"),
        Step("deliver", 60, Status.DELIVERED, _STOCK | {DROP_SHIP}, "delivered to the customer"),
        Step("hand_over", 60, Status.DELIVERED, frozenset({CASH_SALE}), "cash sale handed over"),
    )
}
# Today's lifecycle, per order type: the default definition (version 0). Every definition of a
# type must hold these steps (the lifecycle passes them whatever the master says).
DEFAULT_STEPS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(sorted(STOCK_TYPES), ("allocate", "release_to_dc", "pick", "ship", "deliver")),
    DROP_SHIP: ("pass_to_supplier", "ship", "deliver"),
    CASH_SALE: ("hand_over",),
}
# Line conditions: field -> what it reads (the item master, the customer master, the order).
CONDITIONS = {
    "item_class": "the item master's item_class",
    "service": "the item master's service (a service the item needs)",
    "supplier": "the item master's supplier",
    "customer_grade": "the customer master's grade (A, B, C)",
    "channel": "the order's channel (scanner, handheld, pos-auto, manual, rest, edi, schedule...)",
    "drop_ship": "true for a line of a drop-ship order",
}
FIELDS = ("name", "order_types", "when", "steps", "partner")


class ProcessError(CentralError):
    """A master that cannot be imported: ``errors`` holds one reason per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0]
        where = f"definition {first['definition']!r}: " if first.get("definition") is not None else ""
        super().__init__(
            f"{where}{first['reason']}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    order_types: tuple[str, ...]
    steps: tuple[str, ...]
    when: dict[str, Any] = field(default_factory=dict)
    partner: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "order_types": list(self.order_types),
            "steps": list(self.steps),
        }
        if self.when:
            out["when"] = self.when
        if self.partner:
            out["partner"] = self.partner
        return out

    def matches(self, facts: dict[str, Any]) -> bool:
        for key, want in self.when.items():
            got = facts.get(key)
            if isinstance(want, list):
                if got not in want:
                    return False
            elif got != want:
                return False
        return True


def default(order_type: str) -> Definition:
    return Definition(DEFAULT, (order_type,), DEFAULT_STEPS.get(order_type, DEFAULT_STEPS["normal"]))


# -- parsing and validation ----------------------------------------------------------------------


def parse_text(text: str, fmt: str) -> dict[str, Any]:
    """The master as data; ``fmt`` is ``toml`` or ``json``. ProcessError when it does not parse."""
    try:
        raw = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise ProcessError(
            [{"definition": None, "field": None, "reason": f"not valid {fmt.upper()}: {e}"}]
        ) from None
    if not isinstance(raw, dict):
        raise ProcessError(
            [{"definition": None, "field": None, "reason": "expected an object with 'definitions'"}]
        )
    return raw


def validate(raw: dict[str, Any], *, partners: dict[str, str]) -> list[Definition]:
    """Every definition of the master, or ProcessError listing every problem (nothing half).
    ``partners``: code -> kind of the active partners (a definition's ``partner`` must be a 3PL)."""
    errors: list[dict[str, Any]] = []

    def err(where: str | int | None, fld: str | None, reason: str) -> None:
        errors.append({"definition": where, "field": fld, "reason": reason})

    extra = sorted(set(raw) - {"definitions"})
    if extra:
        err(None, extra[0], f"unknown top-level key {extra[0]!r}; expected only 'definitions'")
    items = raw.get("definitions")
    if not isinstance(items, list) or not items:
        err(None, "definitions", "expected a non-empty list of definitions")
        raise ProcessError(errors)
    out: list[Definition] = []
    seen_names: set[str] = set()
    seen_keys: dict[tuple[str, str], str] = {}
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            err(i, None, "expected an object (a table)")
            continue
        name = d.get("name")
        where: str | int = name if isinstance(name, str) and name else i
        for k in sorted(set(d) - set(FIELDS)):
            err(where, k, f"unknown field {k!r}; known: {', '.join(FIELDS)}")
        if not isinstance(name, str) or not NAME.match(name):
            err(
                where,
                "name",
                "expected 1-64 characters of A-Z a-z 0-9 _ . - (starting with a letter or digit)",
            )
        elif name == DEFAULT:
            err(where, "name", f"{DEFAULT!r} is the built-in definition; choose another name")
        elif name in seen_names:
            err(where, "name", f"duplicate definition name {name!r}")
        else:
            seen_names.add(name)
        types = d.get("order_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            err(where, "order_types", f"expected a non-empty list of order types ({', '.join(ORDER_TYPES)})")
            types = []
        for t in types:
            if t not in ORDER_TYPES:
                err(where, "order_types", f"unknown order type {t!r}; known: {', '.join(ORDER_TYPES)}")
        types = [t for t in types if t in ORDER_TYPES]
        when = d.get("when", {})
        if not isinstance(when, dict):
            err(where, "when", "expected a table of conditions")
            when = {}
        for k, v in when.items():
            if k not in CONDITIONS:
                err(where, f"when.{k}", f"unknown condition field {k!r}; known: {', '.join(CONDITIONS)}")
            elif k == "drop_ship":
                if not isinstance(v, bool):
                    err(where, f"when.{k}", "expected true or false")
            elif not (isinstance(v, str) and v) and not (
                isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
            ):
                err(where, f"when.{k}", "expected a text or a non-empty list of texts")
        partner = d.get("partner", "")
        if not isinstance(partner, str):
            err(where, "partner", "expected a partner code")
            partner = ""
        elif partner and partners.get(partner) != "3pl":
            err(where, "partner", f"{partner!r} is not an active 3PL partner (partners master)")
        steps = d.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            err(where, "steps", f"expected a non-empty list of steps ({', '.join(STEPS)})")
            steps = []
        _check_steps(where, steps, types, partner, err)
        key_when = json.dumps(when, sort_keys=True)
        for t in types:
            other = seen_keys.get((t, key_when))
            if other is not None:
                err(
                    where,
                    "when",
                    f"same order type {t!r} and conditions as {other!r}, which comes first: never used",
                )
            else:
                seen_keys[(t, key_when)] = str(where)
        out.append(Definition(str(name), tuple(types), tuple(steps), dict(when), partner))
    if errors:
        raise ProcessError(errors)
    return out


def _check_steps(where: str | int, steps: list[str], types: list[str], partner: str, err: Any) -> None:
    seen: set[str] = set()
    last: Step | None = None
    for s in steps:
        step = STEPS.get(s)
        if step is None:
            err(where, "steps", f"unknown step {s!r}; known: {', '.join(STEPS)}")
            continue
        if s in seen:
            err(where, "steps", f"duplicate step {s!r}")
            continue
        seen.add(s)
        if last is not None and step.rank < last.rank:
            err(where, "steps", f"impossible order: {s!r} cannot come after {last.name!r}")
        last = step if last is None or step.rank >= last.rank else last
        for t in types:
            if t not in step.types:
                err(where, "steps", f"step {s!r} does not fit order type {t!r}")
        if s == "partner_confirm" and not partner and any(t != DROP_SHIP for t in types):
            err(
                where,
                "steps",
                "step 'partner_confirm' needs a partner (a 3PL) unless the order type is drop-ship",
            )
    for t in types:
        for need in DEFAULT_STEPS[t]:
            if need not in seen:
                err(where, "steps", f"missing step {need!r}: every {t!r} order passes it")


def canonical(defs: list[Definition]) -> str:
    return json.dumps({"definitions": [d.to_json() for d in defs]}, sort_keys=True, separators=(",", ":"))


# -- storage: versions --------------------------------------------------------------------------


def latest_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(version) FROM process_versions").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def partner_kinds(conn: sqlite3.Connection) -> dict[str, str]:
    return {
        str(c): str(k)
        for c, k in conn.execute("SELECT code, kind FROM partners WHERE active = 1 ORDER BY code")
    }


def import_master(conn: sqlite3.Connection, text: str, *, fmt: str, actor: str, now: int) -> dict[str, Any]:
    """Validate and store the master as a new version (all or none). The same master as the
    latest version again: no new version (``"unchanged": true``)."""
    if fmt not in ("toml", "json"):
        raise ProcessError([{"definition": None, "field": None, "reason": f"format {fmt!r}: toml or json"}])
    defs = validate(parse_text(text, fmt), partners=partner_kinds(conn))
    for attempt in range(STORE_TRIES):
        try:
            with savepoint(conn, "process_import"):
                return _store(conn, defs, actor=actor, now=now)
        except IntegrityError:
            # another worker (PostgreSQL) stored the same next version meanwhile: its commit is
            # seen now, so the next try numbers after it (or finds the same master unchanged)
            if attempt + 1 == STORE_TRIES:
                raise
    raise AssertionError("unreachable")


def _store(conn: sqlite3.Connection, defs: list[Definition], *, actor: str, now: int) -> dict[str, Any]:
    body = canonical(defs)
    digest = hashlib.sha256(body.encode()).hexdigest()
    latest = latest_version(conn)
    if latest:
        row = conn.execute("SELECT digest FROM process_versions WHERE version = ?", (latest,)).fetchone()
        if row is not None and row[0] == digest:
            return {"version": latest, "definitions": [d.name for d in defs], "unchanged": True}
    version = latest + 1
    conn.execute(
        "INSERT INTO process_versions (version, imported_at, imported_by, digest) VALUES (?, ?, ?, ?)",
        (version, now, actor, digest),
    )
    conn.executemany(
        "INSERT INTO process_definitions (version, position, name, body) VALUES (?, ?, ?, ?)",
        [(version, i, d.name, json.dumps(d.to_json(), sort_keys=True)) for i, d in enumerate(defs)],
    )
    return {"version": version, "definitions": [d.name for d in defs], "unchanged": False}


def _from_json(body: str) -> Definition:
    d = json.loads(body)
    return Definition(
        d["name"], tuple(d["order_types"]), tuple(d["steps"]), d.get("when", {}), d.get("partner", "")
    )


def definitions(conn: sqlite3.Connection, version: int) -> list[Definition]:
    """The definitions of ``version`` in master order (version 0: none; the defaults apply)."""
    return [
        _from_json(b)
        for (b,) in conn.execute(
            "SELECT body FROM process_definitions WHERE version = ? ORDER BY position", (version,)
        )
    ]


def find(conn: sqlite3.Connection, version: int, name: str, order_type: str) -> Definition:
    """Definition ``name`` of ``version`` (``default``: the built-in one for ``order_type``)."""
    if name == DEFAULT:
        return default(order_type)
    row = conn.execute(
        "SELECT body FROM process_definitions WHERE version = ? AND name = ?", (version, name)
    ).fetchone()
    return _from_json(row[0]) if row else default(order_type)


def select(defs: list[Definition], order_type: str, facts: dict[str, Any]) -> Definition:
    for d in defs:
        if order_type in d.order_types and d.matches(facts):
            return d
    return default(order_type)


def show(conn: sqlite3.Connection, version: int | None = None) -> dict[str, Any] | None:
    """A version of the master (default: the latest) with its definitions and the defaults."""
    v = latest_version(conn) if version is None else version
    row = conn.execute(
        "SELECT imported_at, imported_by FROM process_versions WHERE version = ?", (v,)
    ).fetchone()
    if row is None and v != 0:
        return None
    return {
        "version": v,
        "imported_at": row[0] if row else None,
        "imported_by": row[1] if row else None,
        "definitions": [d.to_json() for d in definitions(conn, v)],
        "defaults": {t: list(s) for t, s in DEFAULT_STEPS.items()},
        "versions": [r[0] for r in conn.execute("SELECT version FROM process_versions ORDER BY version")],
    }
