"""Sending a change again does not change the order twice (issue 15 item 2, made idempotent as
issue 14 item 2 made order entry).

``POST /api/orders/{id}/changes`` honours ``Idempotency-Key`` and a supplier's confirm / ship /
refuse is named by its order and state, both through ``gateway/idempotency.py`` in the same
database job as the record (``protocols/GATEWAY-HTTP.md``). Tested against the real aiohttp app
on a real SQLite file, ``storegate order --change`` against a real gateway process, and a crash
test: real broker, central and gateway processes, the gateway SIGKILLed under load while
clients resend their unanswered changes with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from central.allocate import inventory
from gateway import supplier
from ops.broker import Mosquitto
from protocols.envelope import Record
from runtime.sqlitedb import DurableDB, connect
from tests.central_fixtures import SOON
from tests.conftest import wait_for
from tests.gateway_http import gateway_http
from tests.procs import ROOT, Proc, central_db, central_settled, gateway_proc
from tests.test_order_change_e2e import central_with_stock

ORDER = {"customer": "S001", "requested_date": "2026-12-01", "lines": [{"sku": "MILK", "qty": 1}]}
ADD = {"action": "add_line", "sku": "MILK", "qty": 2, "reason": "more"}


class Gw:
    def __init__(self, db: DurableDB, client: TestClient[Any, Any]) -> None:
        self.db, self.client = db, client

    async def post(
        self, path: str, body: Any, key: str | None = None, *, headers: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        h: Any = headers if headers is not None else {"Content-Type": "application/json"}
        if key is not None:
            h = {**h, "Idempotency-Key": key}
        r = await self.client.post(path, data=json.dumps(body).encode(), headers=h)
        return r.status, await r.json(), dict(r.headers)

    async def order(self) -> str:
        status, body, _ = await self.post("/api/orders", ORDER)
        assert status == 201, body
        return str(body["id"])

    async def change(
        self, order_id: str, body: dict[str, Any], key: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        return await self.post(f"/api/orders/{order_id}/changes", body, key)

    async def records(self, type: str) -> list[dict[str, Any]]:
        """The bodies of the outbox's records of ``type``, in order."""
        rows = await self.db.read(
            lambda c: c.execute("SELECT packed FROM outbox WHERE type = ? ORDER BY seq", (type,)).fetchall()
        )
        return [msgpack.unpackb(packed)["body"] for (packed,) in rows]

    async def count(self, type: str) -> int:
        n: int = await self.db.read(
            lambda c: c.execute("SELECT count(*) FROM outbox WHERE type = ?", (type,)).fetchone()[0]
        )
        return n


@contextlib.asynccontextmanager
async def gateway(path: Path) -> AsyncIterator[Gw]:
    """The gateway's HTTP app as ``gateway/app.py`` wires it, on a SQLite file."""
    async with gateway_http(path, gateway_id="store-1", customer="S001", suppliers=True) as (db, client):
        yield Gw(db, client)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    async with gateway(tmp_path / "gw.db") as g:
        yield g


# -- order changes, against the real app -----------------------------------------------------


async def test_same_key_twice_is_one_change_and_the_same_answer(gw: Gw) -> None:
    oid = await gw.order()
    s1, b1, h1 = await gw.change(oid, ADD, '"chg-1"')
    s2, b2, h2 = await gw.change(oid, ADD, '"chg-1"')
    assert s1 == 201 and b1["change_seq"] == 1 and b1["order"] == oid
    assert (s2, b2) == (s1, b1)
    assert "Idempotent-Replayed" not in h1 and h2["Idempotent-Replayed"] == "true"
    assert await gw.count("order_change") == 1
    # the same change spelt differently (key order, an empty reason left out) is the same change
    s3, b3, _ = await gw.change(
        oid, {"qty": 2, "sku": "MILK", "action": "add_line", "reason": "more"}, "chg-1"
    )
    assert (s3, b3) == (s1, b1)
    # another key is another change: numbered 2
    s4, b4, _ = await gw.change(oid, ADD, '"chg-2"')
    assert s4 == 201 and b4["change_seq"] == 2 and b4["id"] != b1["id"]
    assert [b["change_seq"] for b in await gw.records("order_change")] == [1, 2]


async def test_same_key_with_another_change_or_order_is_refused_422(gw: Gw) -> None:
    oid, other = await gw.order(), await gw.order()
    s1, b1, _ = await gw.change(oid, ADD, '"k-422"')
    s2, b2, _ = await gw.change(oid, {**ADD, "qty": 3}, '"k-422"')
    s3, b3, _ = await gw.change(other, ADD, '"k-422"')  # the same body for another order
    assert s1 == 201
    assert s2 == s3 == 422
    for b in (b2, b3):
        assert "Idempotency-Key 'k-422' was already used for another change" in b["error"]
        assert b1["id"] in b["error"]
    assert await gw.count("order_change") == 1


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (['"' + "k" * 129 + '"'], "1..128 characters, got 129"),
        (['"unterminated'], "expected a quoted string"),
        (['"a"', '"b"'], "more than one header field"),
    ],
)
async def test_malformed_key_on_a_change_is_refused_400_and_takes_nothing(
    gw: Gw, values: list[str], reason: str
) -> None:
    from multidict import CIMultiDict

    oid = await gw.order()
    headers = CIMultiDict([("Content-Type", "application/json"), *(("Idempotency-Key", v) for v in values)])
    status, body, _ = await gw.post(f"/api/orders/{oid}/changes", ADD, headers=headers)
    assert status == 400 and reason in body["error"]
    assert await gw.count("order_change") == 0


async def test_a_refused_change_is_not_remembered_under_its_key(gw: Gw) -> None:
    oid = await gw.order()
    s1, _, _ = await gw.change("no-such-order", ADD, '"fix-me"')
    s2, _, _ = await gw.change(oid, {**ADD, "qty": 100_000}, '"fix-me-2"')
    s3, b3, _ = await gw.change(oid, ADD, '"fix-me-2"')  # corrected, same key: taken
    assert (s1, s2, s3) == (404, 422, 201) and b3["change_seq"] == 1
    assert await gw.count("order_change") == 1


async def test_concurrent_changes_with_one_key_make_one_change(gw: Gw) -> None:
    oid = await gw.order()
    answers = await asyncio.gather(*(gw.change(oid, ADD, '"same"') for _ in range(40)))
    assert {(s, json.dumps(b, sort_keys=True)) for s, b, _ in answers} == {
        (201, json.dumps(answers[0][1], sort_keys=True))
    }
    assert sum(1 for *_, h in answers if "Idempotent-Replayed" not in h) == 1
    assert await gw.count("order_change") == 1


async def test_change_key_survives_a_restart(tmp_path: Path) -> None:
    async with gateway(tmp_path / "gw.db") as g:
        oid = await g.order()
        s1, b1, _ = await g.change(oid, ADD, '"k-restart"')
    async with gateway(tmp_path / "gw.db") as g:  # a new process on the same file
        s2, b2, h2 = await g.change(oid, ADD, '"k-restart"')
        assert (s2, b2) == (s1, b1) and h2["Idempotent-Replayed"] == "true"
        assert await g.count("order_change") == 1


async def test_change_and_its_key_commit_together_or_not_at_all(gw: Gw) -> None:
    """The change's outbox row, its change_seq and its key row are one transaction: a key row
    that cannot be written takes the change (and its number) with it."""
    oid = await gw.order()
    await gw.db.write(
        lambda c: c.execute(
            "CREATE TEMP TRIGGER refuse_keys BEFORE INSERT ON main.idempotency"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
    )
    r = await gw.client.post(f"/api/orders/{oid}/changes", json=ADD, headers={"Idempotency-Key": '"k1"'})
    assert r.status == 500
    assert await gw.count("order_change") == 0
    await gw.db.write(lambda c: c.execute("DROP TRIGGER temp.refuse_keys"))
    s2, b2, _ = await gw.change(oid, ADD, '"k1"')
    assert s2 == 201 and b2["change_seq"] == 1 and await gw.count("order_change") == 1


# -- a supplier's answer: the order and its new state name it ----------------------------------


async def _drop_ship(gw: Gw, order_no: str) -> None:
    body = {
        "order_no": order_no,
        "supplier": "SUP1",
        "ship_to": "S001",
        "requested_date": "2026-12-01",
        "lines": [{"line_no": 1, "sku": "MILK", "qty": 10}],
    }
    rec = Record(id=f"ds-{order_no}", seq=1, type="drop_ship", ts=1, body=body)
    await gw.db.write(lambda c: supplier.apply_drop_ship(c, rec))


async def test_a_supplier_answer_sent_again_gets_the_first_answer_and_no_second_record(gw: Gw) -> None:
    await _drop_ship(gw, "SO1")
    url = "/api/supplier/orders/SO1"
    s1, b1, h1 = await gw.post(f"{url}/confirm", {"ref": "DN-77"})
    s2, b2, h2 = await gw.post(f"{url}/confirm", {"ref": "DN-77"})
    assert s1 == 201 and b1["state"] == "confirmed"
    assert (s2, b2) == (s1, b1) and "Idempotent-Replayed" not in h1 and h2["Idempotent-Replayed"] == "true"
    assert await gw.count("supplier_confirmation") == 1
    # the next step is its own answer, and a repeat of it is replayed too (without a body here)
    s3, b3, _ = await gw.post(f"{url}/ship", {})
    s4, b4, h4 = await gw.post(f"{url}/ship", {})
    assert s3 == 201 and (s4, b4) == (s3, b3) and h4["Idempotent-Replayed"] == "true"
    # a late repeat of the confirm still gets the confirm's answer; nothing is queued again
    s5, b5, _ = await gw.post(f"{url}/confirm", {"ref": "DN-77"})
    assert (s5, b5) == (s1, b1)
    assert [b["state"] for b in await gw.records("supplier_confirmation")] == ["confirmed", "shipped"]
    # the same step with another ref is no repeat: 422; a step the table forbids is still 409
    s6, b6, _ = await gw.post(f"{url}/confirm", {"ref": "DN-78"})
    assert s6 == 422 and "order SO1 was already confirmed with another ref or detail" in b6["error"]
    await _drop_ship(gw, "SO2")
    assert (await gw.post("/api/supplier/orders/SO2/refuse", {"detail": "no stock"}))[0] == 201
    s7, b7, _ = await gw.post("/api/supplier/orders/SO2/ship", {})
    assert s7 == 409 and "is refused" in b7["error"]
    assert await gw.count("supplier_confirmation") == 3


# -- the CLI -----------------------------------------------------------------------------------


def _cli(gw: Proc, *args: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", "order", "--gateway-url", gw.url, *args]


def test_cli_change_sends_a_key_and_retries_with_it_until_the_gateway_answers(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The gateway is down when ``storegate order --change`` starts; it retries the refused
    connection with the key it printed; the gateway comes up; one change is taken. Run again
    with that key: the first answer, no second change."""
    gw = gateway_proc(tmp_path, broker.port, "store-1")
    gw.start()
    try:
        made = subprocess.run(
            _cli(gw, "--customer", "S001", "--date", SOON, "--line", "MILK=1"),
            check=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        oid = json.loads(made.stdout)["id"]
        gw.kill()
        argv = _cli(gw, "--change", oid, "--add-line", "MILK=2", "--retry-for", "60")
        cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            key_line = cli.stderr.readline() if cli.stderr else ""  # printed before the first attempt
            m = re.search(r'Idempotency-Key: "([^"]+)" \(to send this change again', key_line)
            assert m, key_line
            deadline = time.monotonic() + 20
            retried = ""
            while "retrying" not in retried and time.monotonic() < deadline:
                retried = cli.stderr.readline() if cli.stderr else ""
            assert "retrying" in retried, "the CLI should retry a refused connection"
            gw.start()
            out, err = cli.communicate(timeout=60)
            assert cli.returncode == 0, err
        finally:
            cli.kill()
            cli.wait()
        first = json.loads(out)
        assert first["change_seq"] == 1
        again = subprocess.run(
            [*argv, "--idempotency-key", m.group(1)],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == first and "already taken" in again.stderr
        assert gw.get(f"/api/orders/{oid}/status")["changes"] == 1
    finally:
        gw.kill()


# -- crash: SIGKILL between commit and 201, clients resend with the same key --------------------

ORDERS = 8
ROUNDS = 20
PER_ROUND = 60  # new changes per round (plus the unanswered ones of the round before)
CLIENTS = 24  # concurrent posts: the more in flight, the likelier a kill between commit and 201
DEADLINE_S = 90.0


class ChangingClients:
    """``CLIENTS`` concurrent clients posting ``add_line`` changes (MILK x1) with their keys to
    a gateway process; a change that got no answer is left for the next round."""

    def __init__(self, http: aiohttp.ClientSession, gw: Proc, orders: list[str]) -> None:
        self.http, self.gw, self.orders = http, gw, orders
        self.keys: dict[str, tuple[str, str]] = {}  # change name -> (order id, Idempotency-Key)
        self.answered: dict[str, dict[str, Any]] = {}
        self.replayed: set[str] = set()

    def new(self, name: str) -> str:
        self.keys[name] = (self.orders[len(self.keys) % len(self.orders)], str(uuid.uuid4()))
        return name

    async def post(self, name: str) -> bool:
        oid, key = self.keys[name]
        body = {"action": "add_line", "sku": "MILK", "qty": 1, "reason": name}
        url = f"{self.gw.url}/api/orders/{oid}/changes"
        try:
            async with self.http.post(url, json=body, headers={"Idempotency-Key": f'"{key}"'}) as r:
                got = await r.json()
        except (TimeoutError, aiohttp.ClientError):
            return False
        assert r.status == 201, (r.status, got)
        if r.headers.get("Idempotent-Replayed") == "true":
            self.replayed.add(name)
        assert self.answered.setdefault(name, got) == got, "a repeat got another answer"
        return True

    async def round(self, todo: list[str], *, kill_after: int | None) -> list[str]:
        queue = list(reversed(todo))
        unanswered: list[str] = []
        killed = False

        async def client() -> None:
            nonlocal killed
            while queue:
                name = queue.pop()
                if killed or not await self.post(name):
                    unanswered.append(name)
                elif kill_after is not None and len(self.answered) >= kill_after and not killed:
                    killed = True
                    self.gw.kill()  # SIGKILL while the other clients' posts are in flight

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        assert killed or kill_after is None
        return unanswered


def _central_lines(tmp: Path) -> dict[str, tuple[int, int, int]]:
    """record id -> (open lines, units, change_seq) of each order at central."""
    conn = central_db(tmp)
    try:
        rows = conn.execute(
            "SELECT o.record_id, count(*), sum(l.qty), o.change_seq FROM orders o"
            " JOIN order_lines l USING (order_id) WHERE l.cancelled = 0 GROUP BY o.order_id"
        ).fetchall()
    finally:
        conn.close()
    return {rid: (n, units, seq) for rid, n, units, seq in rows}


@pytest.mark.slow
async def test_gateway_sigkilled_under_resent_changes_applies_each_change_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Clients post add-line changes to a few orders, each change with its own key; the
    gateway is SIGKILLed at a random point of each round (under load: some changes are
    committed and not yet answered), restarted, and every change left without an answer is sent
    again with its key. At the end central's orders hold each change once: 1 + the changes
    made to it lines, and change_seq counts them; and some repeats were answered from their
    key (a kill landed between a commit and its 201)."""
    seed = int(os.environ.get("SG_IDEM_SEED", random.SystemRandom().randrange(2**32)))
    print(f"seed {seed} (SG_IDEM_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    central = central_with_stock(tmp_path, broker.port)
    conn = connect(tmp_path / "central" / "central.db")
    try:  # stock for every line the test adds (the order stays allocated, changes allowed)
        conn.execute("BEGIN IMMEDIATE")
        inventory.set_stock(conn, "DC1", "MILK", 100_000, bin="01-01")
        conn.execute("COMMIT")
    finally:
        conn.close()
    gw = gateway_proc(tmp_path, broker.port, "store-1")
    t0 = time.monotonic()
    hits = resent = 0
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            orders = []
            for _ in range(ORDERS):
                async with http.post(f"{gw.url}/api/orders", json={**ORDER, "requested_date": SOON}) as r:
                    assert r.status == 201, await r.text()
                    orders.append((await r.json())["id"])
            c = ChangingClients(http, gw, orders)
            unanswered: list[str] = []
            for round_no in range(ROUNDS + 1):
                fresh = [c.new(f"chg-{len(c.keys)}") for _ in range(PER_ROUND if round_no < ROUNDS else 0)]
                todo = unanswered + fresh
                resent += len(unanswered)
                kill_after = len(c.answered) + rng.randint(len(todo) // 5, len(todo) * 4 // 5)
                before = len(c.replayed)
                if gw.proc is None:  # killed in the round before
                    await asyncio.to_thread(gw.start)
                unanswered = await c.round(todo, kill_after=kill_after if round_no < ROUNDS else None)
                hits += len(c.replayed) > before
                print(f"round {round_no}: sent {len(todo)}, unanswered {len(unanswered)}")
            assert not unanswered  # the last round ran without a kill

            async def drained() -> bool:
                async with http.get(f"{gw.url}/api/health") as r:
                    return bool((await r.json())["backlog"] == 0)

            await wait_for(drained, timeout=DEADLINE_S, what="the gateway's outbox drained to central")
            await wait_for(
                lambda: central_settled(tmp_path), timeout=DEADLINE_S, what="central processed all"
            )
    finally:
        gw.kill()
        central.kill()
    made = {oid: sum(1 for o, _ in c.keys.values() if o == oid) for oid in orders}
    want = {oid: (1 + n, 1 + n, n) for oid, n in made.items()}
    got = _central_lines(tmp_path)
    print(
        f"{len(c.keys)} changes to {ORDERS} orders, {ROUNDS} kills ({hits} between a commit and its 201),"
        f" {resent} sent again, {len(c.replayed)} answered from their key; {time.monotonic() - t0:.1f} s"
    )
    assert {oid: got.get(oid) for oid in orders} == want, f"seed {seed}"
    seqs = {
        oid: sorted(a["change_seq"] for n, a in c.answered.items() if c.keys[n][0] == oid) for oid in orders
    }
    assert all(s == list(range(1, made[oid] + 1)) for oid, s in seqs.items()), (
        "an answer names another change"
    )
    assert hits, f"seed {seed}: no kill landed between a commit and its 201; the test proved nothing"
