"""Users and roles for the REST API.

Roles, each including the ones before it: ``viewer`` (read orders and masters),
``order_desk`` (enter and change orders, deposits, vouchers, supplier confirmations),
``supervisor`` (approve or reject held orders, change masters, move orders by hand).

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
    SUPERVISOR = "supervisor"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


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


def main(argv: list[str] | None = None) -> int:
    """``storegate users add NAME --role ROLE [--password PW] --db PATH|URL``: prints the token
    (``--db``: central's SQLite file, or its PostgreSQL database as a ``postgresql://`` URL)."""
    from central.schema import MIGRATIONS  # noqa: PLC0415 - CLI only
    from runtime import dbapi  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="storegate users", description="Central REST API users.")
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="create or replace a user and print a new API token")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password", help="also allow HTTP Basic with this password")
    add.add_argument(
        "--db", default="var/central/central.db", help="central database file or postgresql:// URL"
    )
    args = p.parse_args(argv)
    conn = dbapi.connect(args.db, migrations=MIGRATIONS)
    try:
        dbapi.begin(conn)
        try:
            token = add_user(conn, args.name, args.role, password=args.password)
        except AuthError as e:
            conn.execute("ROLLBACK")
            print(f"error: {e}", file=sys.stderr)
            return 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    print(token)
    return 0
