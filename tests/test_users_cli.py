"""``storegate users add`` on central's database - its SQLite file or its PostgreSQL database
(``--db postgresql://...``, issue 17): the token it prints, and the password, open central's
real REST API with the role given; a bad name is refused with its reason and nothing stored."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from tests.central_fixtures import central
from tests.procs import ROOT


def users_add(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "users", "add", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def test_users_add_makes_a_user_central_accepts(tmp_path: Path, central_backend: str) -> None:
    out = users_add("desk", "--role", "order_desk", "--password", "pw", "--db", central_backend)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    bad = users_add("x" * 65, "--role", "viewer", "--db", central_backend)
    assert (bad.returncode, bad.stderr.strip()) == (1, f"error: user name {'x' * 65!r}: 1..64 characters")
    async with central(tmp_path, target=central_backend) as c:
        basic = "Basic " + base64.b64encode(b"desk:pw").decode()
        for header in (f"Bearer {token}", basic):
            async with c.client.get("/api/orders", headers={"Authorization": header}) as r:
                assert r.status == 200, await r.text()
        masters = "/api/masters/customers/import"
        async with c.client.post(
            masters, data="code\nC9\n", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 403  # a supervisor's, not the order desk's
        names = await c.db.read(
            lambda conn: conn.execute("SELECT name, role FROM users ORDER BY name").fetchall()
        )
        assert ("desk", "order_desk") in names and not any(n.startswith("xx") for n, _ in names)
