"""The allocation hot path's shortcuts keep the answers of the slow path: cached sourcing
rules and customer profiles follow every change, a multi-row stock bump names the row at
fault, and a stored run - packed or legacy JSON - replays to the same trace."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central import demand, inventory
from central.allocation import (
    AllocationResult,
    DemandLine,
    Network,
    OrderDemand,
    SourcingRule,
    allocate,
    encode_inputs,
)
from central.schema import MIGRATIONS
from ops.sqlitedb import apply_migrations, connect


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "central.db")
    apply_migrations(c, [*MIGRATIONS, *inventory.MIGRATIONS])
    yield c
    c.close()


def test_network_follows_rule_changes_and_rollbacks(conn: sqlite3.Connection) -> None:
    inventory.set_sourcing(conn, [SourcingRule("N", "DC-N", 1, preferred=True)])
    first = inventory.load_network(conn)
    assert inventory.load_network(conn) is first  # unchanged rows: the same object
    conn.execute("BEGIN")
    inventory.set_sourcing(conn, [SourcingRule("N", "DC-S", 0)])
    assert [r.location for r in inventory.load_network(conn).rules] == ["DC-N", "DC-S"]
    conn.execute("ROLLBACK")
    assert [r.location for r in inventory.load_network(conn).rules] == ["DC-N"]
    conn.execute("UPDATE alloc_sourcing SET cost = 9")  # raw SQL, no helper: still seen
    assert inventory.load_network(conn).rules[0].cost == 9


def test_profile_follows_master_row(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO customers (code, grade, region, credit_limit, receivables, open_value)"
        " VALUES ('C1', 'A', 'N', 1000, 100, 0)"
    )
    p = demand.load_profiles(conn, ["C1"])["C1"]
    assert (p.grade, p.zone, p.credit) == ("A", "N", 900)
    conn.execute("UPDATE customers SET open_value = 50, grade = 'B' WHERE code = 'C1'")
    p = demand.load_profiles(conn, ["C1"])["C1"]
    assert (p.grade, p.credit) == ("B", 850)


def test_bump_names_the_row_at_fault(conn: sqlite3.Connection) -> None:
    inventory.set_stock(conn, "DC-N", "A", 5)
    inventory.set_stock(conn, "DC-N", "B", 5)
    with pytest.raises(inventory.InventoryError) as e:
        inventory.add_allocations(
            conn, [(1, 1, "DC-N", "A", 2, "r"), (1, 2, "DC-N", "B", 6, "r")], run_id=None, wave_id=None, now=0
        )
    assert (e.value.location, e.value.sku) == ("DC-N", "B")
    with pytest.raises(inventory.InventoryError) as e:
        inventory.add_allocations(
            conn, [(1, 1, "DC-N", "A", 1, "r"), (1, 2, "DC-N", "C", 1, "r")], run_id=None, wave_id=None, now=0
        )
    assert (e.value.sku, e.value.reason) == ("C", "no inventory row")
    conn.execute("DELETE FROM inventory")
    inventory.set_stock(conn, "DC-N", "A", 5)
    inventory.set_stock(conn, "DC-N", "B", 5)
    inventory.add_allocations(
        conn, [(1, 1, "DC-N", "A", 2, "r"), (1, 2, "DC-N", "B", 3, "r")], run_id=None, wave_id=None, now=0
    )
    assert [(r.sku, r.allocated) for r in inventory.stock(conn)] == [("A", 2), ("B", 3)]


def _run() -> tuple[dict[str, Any], AllocationResult]:
    net = Network((SourcingRule("N", "DC-N", 1, preferred=True), SourcingRule("N", "DC-S", 2)))
    orders = [OrderDemand(1, "C1", (DemandLine(1, "A", 3), DemandLine(2, "B", 9)), zone="N")]
    stock = {("DC-N", "A"): 5, ("DC-S", "B"): 4}
    return encode_inputs(orders, stock, network=net), allocate(orders, stock, network=net)


def test_packed_and_legacy_runs_replay(conn: sqlite3.Connection) -> None:
    inventory.set_stock(conn, "DC-N", "A", 5)
    inventory.set_stock(conn, "DC-S", "B", 4)
    inputs, result = _run()
    run_id = inventory.record_run(conn, kind="realtime", inputs=inputs, result=result, now=0)
    assert inventory.replay_run(conn, run_id)["identical"]
    assert inventory.run_trace(conn, run_id) == result.trace_text
    conn.execute(
        "UPDATE alloc_runs SET inputs = ? WHERE run_id = ?", (json.dumps(inputs), run_id)
    )  # a run stored before inputs were packed
    assert inventory.replay_run(conn, run_id)["identical"]
