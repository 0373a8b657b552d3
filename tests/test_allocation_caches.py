"""The allocation hot path's shortcuts keep the answers of the slow path: cached sourcing
rules and customer profiles follow every change, a multi-row stock bump names the row at
fault, and a stored run - packed or legacy JSON - replays to the same trace. The database-level
tests run on SQLite and PostgreSQL (``central_backend``); on PostgreSQL no stock is kept between
batches (other workers change it), so what is read always follows every change."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from central.allocate import demand, inventory
from central.allocate.allocation import (
    AllocationResult,
    CompanyPolicy,
    DemandLine,
    Network,
    OrderDemand,
    PriorityRules,
    SourcingRule,
    allocate,
    encode_inputs,
)
from central.schema import MIGRATIONS
from protocols.frozen import quick_init
from runtime.dbapi import dialect
from runtime.sqlitedb import insert_rows
from tests.db_conn import open_conn


@pytest.fixture
def conn(central_backend: str) -> Iterator[sqlite3.Connection]:
    c: sqlite3.Connection = open_conn(central_backend, [*MIGRATIONS, *inventory.MIGRATIONS])
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
    if dialect(conn) == "sqlite":  # a run stored before inputs were packed (none on PostgreSQL)
        conn.execute("UPDATE alloc_runs SET inputs = ? WHERE run_id = ?", (json.dumps(inputs), run_id))
        assert inventory.replay_run(conn, run_id)["identical"]


def test_inputs_packer_packs_what_pack_inputs_packs() -> None:
    net = Network((SourcingRule("N", "DC-N", 1, preferred=True), SourcingRule("*", "ST-1", 5, transfer=True)))
    rules, company = PriorityRules(("grade", "special")), CompanyPolicy(backorders=False)
    packer = inventory.InputsPacker(network=net, rules=rules, company=company)
    orders = [
        OrderDemand(1, "C1", (DemandLine(1, "A", 3),), zone="N", special=frozenset({"urgent"})),
        OrderDemand(2, "C2", (DemandLine(1, "B", 1), DemandLine(2, "A", 2)), delay_days=3, received_at=9),
    ]
    cases = [([], {}), (orders[:1], {("DC-N", "A"): 5}), (orders, {("ST-1", "B"): 1, ("DC-N", "A"): 0})]
    for ds, stock in cases:
        inputs = encode_inputs(ds, stock, network=net, rules=rules, company=company, title="t")
        assert packer.pack(ds, stock, title="t") == inventory.pack_inputs(inputs)


def _kept(conn: sqlite3.Connection, skus: list[str]) -> dict[tuple[str, str], int]:
    stock = inventory.take_stock(conn)
    stock.read(conn, skus)
    out = stock.of(skus)
    inventory.keep_stock(conn, stock)
    return out


def test_kept_stock_follows_every_change_and_rollback(conn: sqlite3.Connection, central_backend: str) -> None:
    inventory.set_stock(conn, "DC-N", "A", 5)
    assert _kept(conn, ["A", "B"]) == {("DC-N", "A"): 5}
    kept = inventory.take_stock(conn)
    inventory.keep_stock(conn, kept)
    # nothing changed: the same one on SQLite; on PostgreSQL never kept (other workers write)
    assert (inventory.take_stock(conn) is kept) == (dialect(conn) == "sqlite")
    inventory.keep_stock(conn, kept)
    conn.execute("UPDATE inventory SET on_hand = 7")  # raw SQL on this connection
    assert _kept(conn, ["A"]) == {("DC-N", "A"): 7}
    inventory.set_stock(conn, "DC-S", "B", 2)  # a new row for a sku known to have none
    assert _kept(conn, ["A", "B"]) == {("DC-N", "A"): 7, ("DC-S", "B"): 2}
    held = inventory.reserve(conn, "DC-N", "A", 2, ref="r", now=0)  # allocated moves (in _bump)
    assert _kept(conn, ["A"]) == {("DC-N", "A"): 5}
    inventory.release_reservation(conn, held)
    assert _kept(conn, ["A"]) == {("DC-N", "A"): 7}
    other = open_conn(central_backend, [])  # a commit by another connection (another worker's)
    other.execute("UPDATE inventory SET on_hand = 9 WHERE sku = 'A'")
    other.close()
    assert _kept(conn, ["A"]) == {("DC-N", "A"): 9}
    # writes the kept stock reflects, then rolled back: to a savepoint, and the whole transaction
    for begin, undo in (("SAVEPOINT job", "ROLLBACK TO job"), ("BEGIN", "ROLLBACK")):
        conn.execute(begin)
        stock = inventory.take_stock(conn)
        stock.read(conn, ["A"])
        inventory.bump(conn, {("DC-N", "A"): 4})
        stock.avail[("DC-N", "A")] -= 4
        inventory.keep_stock(conn, stock)
        assert _kept(conn, ["A"]) == {("DC-N", "A"): 5}
        conn.execute(undo)
        if begin.startswith("SAVEPOINT"):
            conn.execute("RELEASE job")
        conn.execute("UPDATE inventory SET bin = 'x' WHERE sku = 'B'")  # as many row changes again
        assert _kept(conn, ["A"]) == {("DC-N", "A"): 9}


def test_quick_init_keeps_the_dataclass() -> None:
    d = OrderDemand(7, "C1", (DemandLine(1, "A", 2),), zone="N", credit=3)
    assert (d.order_id, d.customer, d.zone, d.credit, d.grade, d.special) == (
        7,
        "C1",
        "N",
        3,
        "C",
        frozenset(),
    )
    assert d == OrderDemand(order_id=7, customer="C1", lines=(DemandLine(1, "A", 2),), zone="N", credit=3)
    assert hash(d) == hash(dataclasses.replace(d))
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.zone = "S"  # type: ignore[misc]
    with pytest.raises(TypeError):
        OrderDemand(7)  # type: ignore[call-arg]

    @dataclasses.dataclass(slots=True)
    class Loose:
        x: int

    with pytest.raises(TypeError):
        quick_init(Loose)


def test_kept_network_follows_rule_changes(conn: sqlite3.Connection) -> None:
    inventory.set_sourcing(conn, [SourcingRule("N", "DC-N", 1, preferred=True)])
    kept = inventory.take_stock(conn)
    kept.network = inventory.load_network(conn)
    inventory.keep_stock(conn, kept)
    assert inventory.take_stock(conn).network is (kept.network if dialect(conn) == "sqlite" else None)
    inventory.keep_stock(conn, kept)
    conn.execute("UPDATE alloc_sourcing SET cost = 9")  # raw SQL
    assert inventory.take_stock(conn).network is None


def test_insert_rows_leaves_what_executemany_leaves() -> None:
    for n in (0, 1, 2, 3, 10, 16, 17, 31, 50):
        c = sqlite3.connect(":memory:")
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b TEXT)")
        rows = [(i, f"x{i}") for i in range(n)]
        insert_rows(c, "INSERT INTO t (a, b)", rows)
        assert c.execute("SELECT id, a, b FROM t ORDER BY id").fetchall() == [
            (i + 1, i, f"x{i}") for i in range(n)
        ]
        assert c.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence").fetchone()[0] == n
        c.close()
