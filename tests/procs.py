"""Real processes for crash tests: central and gateways started as ``storegate`` children,
so a test can SIGKILL them at any point."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ops.broker import free_port

ROOT = Path(__file__).resolve().parent.parent


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s")


class Proc:
    """One ``storegate KIND`` child. ``host`` is where its HTTP port answers; ``prefix`` is put
    before the command (``ip netns exec NS`` runs it in a network namespace: ``ip`` execs the
    command, so the child's pid is still the storegate process a SIGKILL is meant for)."""

    def __init__(
        self,
        kind: str,
        config: Path,
        http_port: int,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.config = config
        self.http_port = http_port
        self.log = log
        self.env = env or {}
        self.host = host
        self.prefix = prefix
        self.args = args  # after --config (``--worker I`` for a central worker)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, *, wait: bool = True) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "ops.cli",
                    "-v",
                    self.kind,
                    "--config",
                    str(self.config),
                    *self.args,
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            _wait_http(f"{self.url}/api/health", self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


VIEWER = ("ops-viewer", "viewer-pass")  # a dashboard user every test central has


def seed_viewer(db_path: Path, db_url: str | None = None) -> None:
    """Create central's database with a viewer user before the process starts (at ``db_url``,
    a PostgreSQL database, when given)."""
    from central.migrations import all_migrations
    from central.web import auth
    from runtime.sqlitedb import apply_migrations, connect

    if db_url is not None:
        _seed_viewer_pg(db_url)
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(db_path, synchronous="NORMAL")
    try:
        apply_migrations(conn, all_migrations())
        iterations, auth.PBKDF2_ITERATIONS = auth.PBKDF2_ITERATIONS, 1_000  # the hash names its count
        try:
            auth.add_user(conn, VIEWER[0], auth.Role.VIEWER, password=VIEWER[1])
        finally:
            auth.PBKDF2_ITERATIONS = iterations
    finally:
        conn.close()


def _seed_viewer_pg(url: str) -> None:
    from central.migrations import all_migrations
    from central.web import auth
    from runtime import pgdb

    conn = pg_connect(url)
    try:
        pgdb.apply_migrations(conn, all_migrations())
        conn.learn_identity()
        iterations, auth.PBKDF2_ITERATIONS = auth.PBKDF2_ITERATIONS, 1_000
        try:
            auth.add_user(conn, VIEWER[0], auth.Role.VIEWER, password=VIEWER[1])  # type: ignore[arg-type]
        finally:
            auth.PBKDF2_ITERATIONS = iterations
    finally:
        conn.close()


def pg_connect(url: str) -> Any:
    """A ``runtime.pgdb.PgConnection`` in autocommit (each statement its own transaction)."""
    import psycopg

    from runtime.pgdb import PgConnection

    return PgConnection(psycopg.connect(url, autocommit=True))


def basic_auth(user: tuple[str, str] = VIEWER) -> dict[str, str]:
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def central_proc(
    tmp: Path, broker_port: int, *, env: dict[str, str] | None = None, db_url: str | None = None
) -> Proc:
    """``db_url``: central's database on PostgreSQL (``[database] url``), else its SQLite file."""
    seed_viewer(tmp / "central" / "central.db", db_url)
    port = free_port()
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n[broker]\nport = {broker_port}\nclient_id = "central-test"\n'
        f"[http]\nport = {port}\n" + (f'[database]\nurl = "{db_url}"\n' if db_url else "")
    )
    return Proc("central", cfg, port, tmp / "central.log", env)


def gateway_proc(tmp: Path, broker_port: int, gw: str, *, ack_timeout_s: float = 2.0) -> Proc:
    port = free_port()
    cfg = tmp / f"{gw}.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{tmp / gw}"\n'
        f"[mqtt]\nport = {broker_port}\n[http]\nport = {port}\n[sync]\nack_timeout_s = {ack_timeout_s}\n"
    )
    return Proc("gateway", cfg, port, tmp / f"{gw}.log")


def central_db(tmp: Path, db_url: str | None = None) -> sqlite3.Connection:
    """Read-only view of a central's SQLite file (WAL: safe beside the running writer), or a
    connection to its PostgreSQL database at ``db_url`` (the same SQL, see runtime.pgdb)."""
    if db_url is not None:
        conn: sqlite3.Connection = pg_connect(db_url)
        return conn
    return sqlite3.connect(f"file:{tmp / 'central' / 'central.db'}?mode=ro", uri=True, timeout=10)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def central_settled(tmp: Path, db_url: str | None = None) -> bool:
    """True when central has processed everything it received (its work queue is empty)."""
    conn = central_db(tmp, db_url)
    try:
        return conn.execute("SELECT count(*) FROM work_queue").fetchone()[0] == 0
    finally:
        conn.close()
