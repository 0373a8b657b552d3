"""Users and roles for the REST API.

Roles: ``viewer`` (read orders, masters and stock), ``order_desk`` (a viewer who also enters
and changes orders, deposits, vouchers, supplier confirmations, reservations),
``inventory_controller`` (a viewer who also sets counted on hand and books receipts: the
stock writes; not an order desk), ``supervisor`` (everything: approve or reject held orders,
change masters, move orders by hand, manage users' scopes). :meth:`Role.allows` is this table.

A user's **scope** (``user_scopes``) says which slice of the stock it sees: all of it (no
rows: head office, planners, every user made before scopes existed), a list of locations (a
store user: its own locations and the locations that serve them, see
``central.web.visibility``), or one supplier code (a supplier user: the stock of the items
it supplies, wherever they are). :func:`set_scope` / :func:`get_scope`.

A request authenticates with ``Authorization: Bearer <token>`` or HTTP Basic
(``name:password``). Tokens are random and stored only as their SHA-256; passwords as
PBKDF2-SHA256 with a per-user salt.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import enum
import hashlib
import hmac
import json
import secrets
import sqlite3
import sys
import time
from dataclasses import dataclass

from central import CentralError

PBKDF2_ITERATIONS = 200_000


class Role(enum.StrEnum):
    VIEWER = "viewer"
    ORDER_DESK = "order_desk"
    INVENTORY_CONTROLLER = "inventory_controller"
    SUPERVISOR = "supervisor"

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may (the role table above)."""
        return needed in _INCLUDES[self]


_INCLUDES: dict[Role, frozenset[Role]] = {
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.ORDER_DESK: frozenset({Role.VIEWER, Role.ORDER_DESK}),
    Role.INVENTORY_CONTROLLER: frozenset({Role.VIEWER, Role.INVENTORY_CONTROLLER}),
    Role.SUPERVISOR: frozenset(Role),
}


class ScopeKind(enum.StrEnum):
    ALL = "all"
    LOCATIONS = "locations"
    SUPPLIER = "supplier"


@dataclass(frozen=True, slots=True)
class Scope:
    """What a user may see: ``kind`` all, locations (``values``: its own location codes) or
    supplier (``values``: the one supplier code)."""

    kind: ScopeKind = ScopeKind.ALL
    values: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        if self.kind is ScopeKind.LOCATIONS:
            return {"kind": self.kind.value, "locations": list(self.values)}
        if self.kind is ScopeKind.SUPPLIER:
            return {"kind": self.kind.value, "supplier": self.values[0]}
        return {"kind": self.kind.value}


ALL = Scope()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role


class AuthError(CentralError):
    """No or bad credentials (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str, *, salt: bytes | None = None, iterations: int | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    n = iterations or PBKDF2_ITERATIONS
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, n)
    return f"pbkdf2_sha256${n}${salt.hex()}${dk.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        algo, n, salt, dk = stored.split("$")
    except ValueError:
        return False
    if algo != "pbkdf2_sha256":
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(n))
    return hmac.compare_digest(got.hex(), dk)


def add_user(conn: sqlite3.Connection, name: str, role: Role | str, *, password: str | None = None) -> str:
    """Create or replace a user; returns a new API token (shown once, stored hashed)."""
    role = Role(role)
    if not name or len(name) > 64:
        raise AuthError(f"user name {name!r}: 1..64 characters")
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO users (name, role, token_sha256, password_hash, created_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET role = excluded.role, token_sha256 = excluded.token_sha256,"
        " password_hash = excluded.password_hash, created_at = excluded.created_at",
        (
            name,
            role.value,
            _sha(token),
            hash_password(password) if password else None,
            time.time_ns() // 10**6,
        ),
    )
    return token


def authenticate(conn: sqlite3.Connection, header: str | None) -> User:
    """The user named by an ``Authorization`` header, or AuthError saying why not."""
    if not header:
        raise AuthError("authentication required: send 'Authorization: Bearer <token>' or Basic")
    scheme, _, cred = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        row = conn.execute(
            "SELECT name, role FROM users WHERE token_sha256 = ?", (_sha(cred.strip()),)
        ).fetchone()
        if row is None:
            raise AuthError("unknown or revoked token")
        return User(row[0], Role(row[1]))
    if scheme == "basic":
        try:
            name, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError("malformed Basic credentials") from None
        row = conn.execute("SELECT role, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or row[1] is None or not check_password(password, row[1]):
            raise AuthError("wrong user name or password")
        return User(name, Role(row[0]))
    raise AuthError(f"unsupported authorization scheme {scheme!r}; use Bearer or Basic")


class ScopeError(CentralError):
    """A scope that cannot be stored (HTTP 400); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_SCOPE_LOCATIONS = 200


def get_scope(conn: sqlite3.Connection, name: str) -> Scope:
    """The user's scope; a user with no scope rows sees everything."""
    rows = conn.execute(
        "SELECT kind, value FROM user_scopes WHERE name = ? ORDER BY kind, value", (name,)
    ).fetchall()
    if not rows:
        return ALL
    kind = ScopeKind(rows[0][0])
    return Scope(kind, tuple(v for _, v in rows))


def user_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None


def set_scope(conn: sqlite3.Connection, name: str, scope: Scope) -> Scope:
    """Replace the user's scope. Locations must be in the locations master, a supplier code
    must be some item's supplier or a location of kind supplier; the user must exist."""
    if not user_exists(conn, name):
        raise ScopeError(f"no user {name!r}")
    values = tuple(sorted(set(scope.values)))
    if scope.kind is ScopeKind.LOCATIONS:
        if not values:
            raise ScopeError("locations: name at least one location (or use kind all)")
        if len(values) > MAX_SCOPE_LOCATIONS:
            raise ScopeError(f"locations: at most {MAX_SCOPE_LOCATIONS}, got {len(values)}")
        known = set()
        for k in range(0, len(values), 500):
            part = values[k : k + 500]
            marks = ",".join("?" * len(part))
            known |= {c for (c,) in conn.execute(f"SELECT code FROM locations WHERE code IN ({marks})", part)}
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ScopeError(f"locations: {unknown[0]!r} is not in the locations master")
    elif scope.kind is ScopeKind.SUPPLIER:
        if len(values) != 1 or not values[0]:
            raise ScopeError("supplier: exactly one supplier code")
        (sup,) = values
        hit = (
            conn.execute("SELECT 1 FROM items WHERE supplier = ?", (sup,)).fetchone()
            or conn.execute("SELECT 1 FROM locations WHERE code = ? AND kind = 'supplier'", (sup,)).fetchone()
        )
        if hit is None:
            raise ScopeError(f"supplier: {sup!r} supplies no item and is no supplier location")
    elif values:
        raise ScopeError("kind all takes no values")
    conn.execute("DELETE FROM user_scopes WHERE name = ?", (name,))
    conn.executemany(
        "INSERT INTO user_scopes (name, kind, value) VALUES (?, ?, ?)",
        [(name, scope.kind.value, v) for v in values],
    )
    return Scope(scope.kind, values)


def list_users(conn: sqlite3.Connection) -> list[dict[str, object]]:
    """Every user with its role and scope (never a token or password hash)."""
    scopes: dict[str, list[tuple[str, str]]] = {}
    for name, kind, value in conn.execute(
        "SELECT name, kind, value FROM user_scopes ORDER BY name, kind, value"
    ):
        scopes.setdefault(name, []).append((kind, value))
    out: list[dict[str, object]] = []
    for name, role, created in conn.execute("SELECT name, role, created_at FROM users ORDER BY name"):
        rows = scopes.get(name)
        scope = Scope(ScopeKind(rows[0][0]), tuple(v for _, v in rows)) if rows else ALL
        out.append({"name": name, "role": role, "created_at": created, "scope": scope.to_json()})
    return out


def parse_scope(body: dict[str, object]) -> Scope:
    """``{"kind": "all"}``, ``{"kind": "locations", "locations": [...]}`` or
    ``{"kind": "supplier", "supplier": "SUP1"}`` (``kind`` may be left out when the other key
    says it)."""
    raw_kind = body.get("kind") or (
        "locations" if "locations" in body else "supplier" if "supplier" in body else None
    )
    if not isinstance(raw_kind, str) or raw_kind not in ScopeKind.__members__.values():
        raise ScopeError(f"kind: one of {', '.join(ScopeKind)}")
    kind = ScopeKind(raw_kind)
    extra = set(body) - {"kind", "locations", "supplier"}
    if extra:
        raise ScopeError(f"unknown field {sorted(extra)[0]!r}")
    if kind is ScopeKind.LOCATIONS:
        locs = body.get("locations")
        if not isinstance(locs, list) or not all(isinstance(x, str) and x for x in locs):
            raise ScopeError("locations: expected a list of location codes")
        if "supplier" in body:
            raise ScopeError("a scope is locations or a supplier, not both")
        return Scope(kind, tuple(locs))
    if kind is ScopeKind.SUPPLIER:
        sup = body.get("supplier")
        if not isinstance(sup, str) or not sup:
            raise ScopeError("supplier: expected a supplier code")
        if "locations" in body:
            raise ScopeError("a scope is locations or a supplier, not both")
        return Scope(kind, (sup,))
    if "locations" in body or "supplier" in body:
        raise ScopeError("kind all takes no locations or supplier")
    return ALL


def main(argv: list[str] | None = None) -> int:
    """``storegate users add NAME --role ROLE [--password PW] --db PATH|URL``: prints the token;
    ``storegate users scope NAME (--locations A,B | --supplier CODE | --all) --db PATH|URL``;
    ``storegate users list --db PATH|URL`` (``--db``: central's SQLite file, or its PostgreSQL
    database as a ``postgresql://`` URL)."""
    from central.schema import MIGRATIONS  # noqa: PLC0415 - CLI only
    from runtime import dbapi  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="storegate users", description="Central REST API users.")
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="create or replace a user and print a new API token")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password", help="also allow HTTP Basic with this password")
    DB_HELP = "central database file or postgresql:// URL"
    add.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    sc = sub.add_parser("scope", help="set what a user sees: its locations, a supplier, or all")
    sc.add_argument("name")
    which = sc.add_mutually_exclusive_group(required=True)
    which.add_argument("--locations", help="comma-separated location codes (a store user)")
    which.add_argument("--supplier", help="a supplier code (a supplier user)")
    which.add_argument("--all", action="store_true", help="everything (head office, planners)")
    sc.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    ls = sub.add_parser("list", help="users with their roles and scopes")
    ls.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    args = p.parse_args(argv)
    conn = dbapi.connect(args.db, migrations=MIGRATIONS)
    out: str
    try:
        dbapi.begin(conn)
        try:
            if args.cmd == "add":
                out = add_user(conn, args.name, args.role, password=args.password)
            elif args.cmd == "scope":
                if args.locations is not None:
                    scope = Scope(
                        ScopeKind.LOCATIONS, tuple(x.strip() for x in args.locations.split(",") if x.strip())
                    )
                elif args.supplier is not None:
                    scope = Scope(ScopeKind.SUPPLIER, (args.supplier,))
                else:
                    scope = ALL
                stored = set_scope(conn, args.name, scope)
                out = f"{args.name}: {json.dumps(stored.to_json())}"
            else:
                out = "\n".join(json.dumps(u) for u in list_users(conn))
        except (AuthError, ScopeError) as e:
            conn.execute("ROLLBACK")
            print(f"error: {e}", file=sys.stderr)
            return 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    if out:
        print(out)
    return 0
