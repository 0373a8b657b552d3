"""A store changes an allocated order over the wire (issue 15, item 2): the clerk's change at
the gateway (``storegate order --change``) goes up as an ``order_change`` record through a real
Mosquitto to a real central process, which gives the allocation back and allocates again; the
order's new status comes back down to the gateway, where ``storegate order --status`` shows
it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from central.allocate import inventory
from central.allocate.allocation import SourcingRule
from central.migrations import all_migrations
from central.orders import masters
from ops.broker import Mosquitto, free_port
from runtime.sqlitedb import apply_migrations, connect
from tests.central_fixtures import CUSTOMERS_CSV, ITEMS_CSV, LOCATIONS_CSV, PRICES_CSV, SOON
from tests.conftest import wait_for
from tests.procs import ROOT, Proc, central_db, gateway_proc, seed_viewer

DEADLINE = 30.0


def central_with_stock(tmp: Path, broker_port: int) -> Proc:
    """Central with the fixture masters, MILK in stock at DC1 and no automatic release (the
    order stays allocated until the test changes it)."""
    db = tmp / "central" / "central.db"
    seed_viewer(db)
    conn = connect(db)
    try:
        apply_migrations(conn, all_migrations())
        conn.execute("BEGIN IMMEDIATE")
        for kind, text in (
            ("locations", LOCATIONS_CSV),
            ("items", ITEMS_CSV),
            ("prices", PRICES_CSV),
            ("customers", CUSTOMERS_CSV),
        ):
            masters.import_csv(conn, kind, text)
        inventory.set_sourcing(conn, [SourcingRule("*", "DC1", 1, preferred=True)])
        inventory.set_stock(conn, "DC1", "MILK", 100, bin="01-01")
        conn.execute("COMMIT")
    finally:
        conn.close()
    port = free_port()
    cfg = tmp / "central.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "central"}"\n[broker]\nport = {broker_port}\nclient_id = "central-test"\n'
        f"[http]\nport = {port}\n[release]\nenabled = false\n"
    )
    return Proc("central", cfg, port, tmp / "central.log")


def storegate_order(gw: Proc, *args: str) -> tuple[int, Any, str]:
    """``storegate order --gateway-url ... ARGS``: (exit code, printed JSON or None, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "order", "--gateway-url", gw.url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    out = json.loads(done.stdout) if done.returncode == 0 else None
    return done.returncode, out, done.stderr


def central_order(tmp: Path, record_id: str) -> tuple[str, int, int]:
    """(status, line 1 qty, MILK units allocated) at central."""
    conn = central_db(tmp)
    try:
        status, qty = conn.execute(
            "SELECT o.status, l.qty FROM orders o JOIN order_lines l USING (order_id)"
            " WHERE o.record_id = ? AND l.line_no = 1",
            (record_id,),
        ).fetchone() or ("", 0)
        (alloc,) = conn.execute(
            "SELECT allocated FROM inventory WHERE location = 'DC1' AND sku = 'MILK'"
        ).fetchone()
        return status, qty, alloc
    finally:
        conn.close()


async def test_a_clerk_changes_an_allocated_order_and_sees_its_new_status(
    broker: Mosquitto, tmp_path: Path
) -> None:
    central = central_with_stock(tmp_path, broker.port)
    gw = gateway_proc(tmp_path, broker.port, "store-1")
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)
        code, made, err = await asyncio.to_thread(
            storegate_order, gw, "--customer", "S001", "--date", SOON, "--line", "MILK=12"
        )
        assert code == 0, err
        rid = made["id"]

        async def status_is(want: str, **fields: Any) -> bool:
            code, view, _ = await asyncio.to_thread(storegate_order, gw, "--status", rid)
            return code == 0 and view["status"] == want and all(view.get(k) == v for k, v in fields.items())

        await wait_for(
            lambda: status_is("allocated"), timeout=DEADLINE, what="the order allocated, seen at the store"
        )
        assert central_order(tmp_path, rid) == ("allocated", 12, 12)

        code, queued, err = await asyncio.to_thread(
            storegate_order, gw, "--change", rid, "--set-qty", "1=30", "--note", "bigger delivery"
        )
        assert code == 0 and queued["change_seq"] == 1, err
        await wait_for(
            lambda: central_order(tmp_path, rid) == ("allocated", 30, 30),
            timeout=DEADLINE,
            what="central gave the allocation back and allocated 30",
        )
        await wait_for(
            lambda: status_is("allocated", changes=1), timeout=DEADLINE, what="the new status at the store"
        )
        _, view, _ = await asyncio.to_thread(storegate_order, gw, "--status", rid)
        assert view["order_no"].startswith("SO") and view["sent"] == "accepted", view

        # a second change is numbered 2; a quantity the edge refuses never leaves the store
        code, _, err = await asyncio.to_thread(storegate_order, gw, "--change", rid, "--set-qty", "1=100000")
        assert code == 1 and "refused (422)" in err and "9999" in err
        code, queued, err = await asyncio.to_thread(storegate_order, gw, "--change", rid, "--cancel-order")
        assert code == 0 and queued["change_seq"] == 2, err
        await wait_for(lambda: status_is("cancelled"), timeout=DEADLINE, what="the cancel seen at the store")
        assert central_order(tmp_path, rid) == ("cancelled", 30, 0)
        code, _, err = await asyncio.to_thread(storegate_order, gw, "--change", "nope", "--cancel-order")
        assert code == 1 and "refused (404)" in err
    finally:
        gw.kill()
        central.kill()
