"""End to end (issue 18, items 3 and 6): a drop-ship order entered at a store's gateway walks a
process definition imported with ``storegate process import``; the supplier confirms and ships
at its own gateway (``supplier_confirmation`` records over a real Mosquitto) and reports the
delivery over central's partner REST endpoint with a key from ``storegate partner add`` - all
into the one order's history, with the partner named, between real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ops.broker import Mosquitto
from tests.central_fixtures import SOON
from tests.conftest import wait_for
from tests.procs import ROOT, basic_auth, central_db, central_proc, gateway_proc
from tests.test_drop_ship import gw_status, seed_central, storegate_supplier

DEADLINE = 30.0
MASTER = """
[[definitions]]
name = "drop-ship-confirmed"
order_types = ["drop-ship"]
steps = ["pass_to_supplier", "partner_confirm", "ship", "deliver"]
"""


def storegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def history(tmp: Path, record_id: str) -> list[tuple[str, str, str]]:
    conn = central_db(tmp)
    try:
        return [
            (str(e), str(d), str(a))
            for e, d, a in conn.execute(
                "SELECT e.event, e.detail, e.actor FROM order_events e JOIN orders o USING (order_id)"
                " WHERE o.record_id = ? ORDER BY e.id",
                (record_id,),
            )
        ]
    finally:
        conn.close()


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=basic_auth()), timeout=10) as r:
        return json.loads(r.read())


async def test_drop_ship_through_supplier_gateway_and_partner_rest_into_one_history(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_proc(tmp_path, broker.port)
    seed_central(tmp_path, None)
    db = str(tmp_path / "central" / "central.db")
    master = tmp_path / "process.toml"
    master.write_text(MASTER.replace('"ship", "deliver"', '"deliver", "ship"'))
    done = storegate("process", "import", str(master), "--db", db)
    assert done.returncode == 1 and "impossible order: 'ship' cannot come after 'deliver'" in done.stderr, (
        done
    )
    master.write_text(MASTER)
    done = storegate("process", "import", str(master), "--db", db)
    assert done.returncode == 0 and json.loads(done.stdout)["version"] == 1, done.stderr
    done = storegate("partner", "add", "SUP1", "--kind", "supplier", "--name", "Dairy", "--db", db)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    shown = storegate("process", "show", "--db", db)
    assert json.loads(shown.stdout)["definitions"][0]["name"] == "drop-ship-confirmed", shown.stderr

    store = gateway_proc(tmp_path, broker.port, "store-1")
    sup = gateway_proc(tmp_path, broker.port, "sup-1")
    try:
        for p in (central, store, sup):
            await asyncio.to_thread(p.start)
        body = {
            "customer": "S001",
            "order_type": "drop-ship",
            "requested_date": SOON,
            "lines": [{"sku": "MILK", "qty": 12}],
        }
        status, made = await asyncio.to_thread(store.post, "/api/orders", body)
        assert status == 201, made
        rid = str(made["id"])

        def has(event: tuple[str, str, str]) -> bool:
            return event in history(tmp_path, rid)

        await wait_for(
            lambda: any(e[0] == "released" for e in history(tmp_path, rid)), timeout=DEADLINE, what="released"
        )
        conn = central_db(tmp_path)
        try:
            (no,) = conn.execute("SELECT order_no FROM orders WHERE record_id = ?", (rid,)).fetchone()
        finally:
            conn.close()

        # the supplier confirms at its gateway: over the broker into the order's history
        code, out, err = await asyncio.to_thread(storegate_supplier, sup, "confirm", no, "--ref", "AB-1")
        assert code == 0, err
        confirmed = (
            "work unit finished",
            "partner_confirm: line 1 (drop-ship-confirmed v1, partner SUP1)",
            "gateway:sup-1",
        )
        await wait_for(
            lambda: has(confirmed), timeout=DEADLINE, what="the partner_confirm work unit finished"
        )
        status, out = await asyncio.to_thread(sup.post, f"/api/supplier/orders/{no}/ship", {"ref": "DN-77"})
        assert status == 201, out
        await wait_for(
            lambda: has(("shipped", "every supplier shipped", "gateway:sup-1")),
            timeout=DEADLINE,
            what="shipped",
        )

        # ... and reports the delivery over central's partner endpoint, with its key
        url = f"{central.url}/api/partner/orders/{no}/events"
        event = {"event_id": "SUP1-DLV-1", "type": "delivered", "note": "signed by J. Smith"}
        status, out = await asyncio.to_thread(post, url, event, {"Authorization": f"Bearer {key}"})
        assert (status, out["status"]) == (201, "delivered"), out
        status, again = await asyncio.to_thread(post, url, event, {"Authorization": f"Bearer {key}"})
        assert (status, again) == (201, out)  # the same event once

        hist = [e for e in history(tmp_path, rid) if e[2] != "system" or e[0] == "released"]
        assert [(e, a) for e, _d, a in hist] == [
            ("released", "system"),
            ("supplier", "gateway:sup-1"),
            ("work unit finished", "gateway:sup-1"),
            ("work unit started", "gateway:sup-1"),
            ("supplier", "gateway:sup-1"),
            ("work unit finished", "gateway:sup-1"),
            ("work unit started", "gateway:sup-1"),
            ("shipped", "gateway:sup-1"),
            ("partner", "partner:SUP1"),
            ("delivered", "partner:SUP1"),
            ("work unit finished", "partner:SUP1"),
        ]
        assert hist[1][1] == "supplier SUP1 confirmed ref AB-1"
        assert hist[8][1] == "supplier SUP1 delivered; note: signed by J. Smith (event SUP1-DLV-1)"
        order = await asyncio.to_thread(get, f"{central.url}/api/orders/{no}")
        assert order["lines"][0]["process"] == {
            "definition": "drop-ship-confirmed",
            "version": 1,
            "step": "done",
            "steps": ["pass_to_supplier", "partner_confirm", "ship", "deliver"],
            "partner": "SUP1",
        }
        assert order["channel"] != "rest"  # entered at the store's gateway, reported by REST: one record
        await wait_for(
            lambda: gw_status(tmp_path, "store-1", rid) == "delivered",
            timeout=DEADLINE,
            what="the store hears delivered",
        )

        # a second order, answered at the supplier's gateway to the end: confirm, ship, deliver
        status, made = await asyncio.to_thread(
            store.post, "/api/orders", {**body, "lines": [{"sku": "BREAD", "qty": 2}]}
        )
        assert status == 201, made
        rid2 = str(made["id"])
        await wait_for(
            lambda: any(e[0] == "released" for e in history(tmp_path, rid2)),
            timeout=DEADLINE,
            what="2nd released",
        )
        conn = central_db(tmp_path)
        try:
            (no2,) = conn.execute("SELECT order_no FROM orders WHERE record_id = ?", (rid2,)).fetchone()
        finally:
            conn.close()

        async def listed(state: str) -> bool:
            code, out, _ = await asyncio.to_thread(storegate_supplier, sup, "list", "--state", state)
            return code == 0 and no2 in {o["order_no"] for o in out["orders"]}

        await wait_for(lambda: listed("received"), timeout=DEADLINE, what="2nd at the supplier's gateway")
        code, out, err = await asyncio.to_thread(storegate_supplier, sup, "deliver", no2)
        assert code == 1 and "cannot be delivered now" in err, (out, err)  # not shipped yet
        for action, extra in (
            ("confirm", ()),
            ("ship", ("--ref", "1Z999", "--detail", "UPS")),
            ("deliver", ()),
        ):
            code, out, err = await asyncio.to_thread(storegate_supplier, sup, action, no2, *extra)
            assert code == 0, err

        def has2(event: tuple[str, str, str]) -> bool:
            return event in history(tmp_path, rid2)

        await wait_for(
            lambda: has2(("delivered", "delivered by SUP1", "gateway:sup-1")),
            timeout=DEADLINE,
            what="2nd delivered",
        )
        assert ("partner", "supplier SUP1 delivered", "gateway:sup-1") in history(tmp_path, rid2)
        assert ("supplier", "supplier SUP1 shipped ref 1Z999: UPS", "gateway:sup-1") in history(
            tmp_path, rid2
        )
    finally:
        for p in (sup, store, central):
            p.kill()
