"""New orders processed together (``orders.create_batch``, set-based, from ``ingest.process_queue``)
leave exactly the rows one-by-one processing leaves: same ids, history, checks, allocations,
runs (inputs and traces), shortages, status downlink and acks - also when the batch hands
orders back to the one-by-one path (held orders, short stock, ship-with-next customers,
order changes and repeats in the same message) - and when the stock the batch path keeps
between messages changes under it (a stock take or a credit limit set in raw SQL, a job
rolled back after its writes)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from central import wiring
from central.allocate import waves
from central.intake.ingest import apply_envelope
from central.migrations import all_migrations
from central.orders import orders
from ops import bench_allocation as bench
from protocols import topics
from runtime.sqlitedb import apply_migrations, connect
from tests.central_dump import dump, mixed_envelopes


def _run(path: Path, *, together: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    conn = connect(path)
    try:
        apply_migrations(conn, all_migrations())
        names = bench._seed_masters(conn, skus=120)
        rng = random.Random(7)
        conn.executemany(  # scarce stock on some items: short lines go one by one
            "UPDATE inventory SET on_hand = ? WHERE sku = ? AND location = ?",
            [(rng.randint(0, 30), s, loc) for s in names[:40] for loc in bench.LOCS],
        )
        conn.executemany(  # low credit: held orders
            "UPDATE customers SET credit_limit = 3000 WHERE code = ?", [(f"C{c}",) for c in range(0, 200, 17)]
        )
        conn.execute("UPDATE customers SET backorder_policy = 'next-order' WHERE code IN ('C1', 'C2', 'C3')")
        with monkeypatch.context() as m:
            if not together:
                m.setattr(orders, "_create_together", lambda *a, **k: [])
            wiring.hub(waves.AllocationSettings(realtime=True)).attach(conn)
            acks = []
            seen: set[Any] = set()
            for k, env in enumerate(mixed_envelopes(names, random.Random(8), orders=400)):
                topic = topics.uplink(env.gw)
                if k % 13 == 6:  # a job that took this message and then failed: rolled back
                    conn.execute("SAVEPOINT job")
                    apply_envelope(conn, topic_gw=env.gw, topic=topic, env=env)
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                if k % 17 == 8:  # a stock take between messages, in raw SQL: this order runs short
                    skus = [ln["sku"] for ln in env.records[0].body["lines"]]
                    conn.executemany(
                        "UPDATE inventory SET on_hand = allocated + 1 WHERE sku = ?", [(s,) for s in skus]
                    )
                known = [c for r in env.records if (c := r.body.get("customer")) in seen]
                if k % 19 == 10 and known:  # a master change in raw SQL: that order is held
                    conn.execute("UPDATE customers SET credit_limit = 1 WHERE code = ?", (known[0],))
                seen.update(r.body["customer"] for r in env.records if r.type == "order")
                acks += apply_envelope(conn, topic_gw=env.gw, topic=topic, env=env)
        return dump(conn, sort=False), [(a.id, a.status, a.reason, a.ref) for a in acks]
    finally:
        conn.close()


def test_orders_together_leave_the_rows_of_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, one_acks = _run(tmp_path / "one.db", together=False, monkeypatch=monkeypatch)
    calls = []
    real = orders._create_together

    def counting(*a: Any, **k: Any) -> list[orders.Created]:
        made = real(*a, **k)
        calls.append(len(made))
        return made

    monkeypatch.setattr(orders, "_create_together", counting)
    many, many_acks = _run(tmp_path / "many.db", together=True, monkeypatch=monkeypatch)
    assert sum(calls) > 100 and max(calls) > 5  # many orders went through together
    assert many_acks == one_acks
    statuses = {r["status"] for r in one["orders"]}
    assert {"allocated", "held"} <= statuses
    assert one["shortages"] and {"cancelled", "changed"} <= {r["event"] for r in one["order_events"]}
    for t in one:
        assert many[t] == one[t], t


def test_kept_customer_rows_follow_raw_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch path keeps customers' rows between messages: a change to one in raw SQL
    (receivables past the credit limit) is seen by the next order of that customer."""
    conn = connect(tmp_path / "kept.db")
    try:
        apply_migrations(conn, all_migrations())
        names = bench._seed_masters(conn, skus=120)
        wiring.hub(waves.AllocationSettings(realtime=True)).attach(conn)
        seen: set[str] = set()
        target = None
        for env in bench._envelopes(orders=200, lines=5, names=names, rng=random.Random(3)):
            known = [r for r in env.records if r.body["customer"] in seen]
            if known and target is None:
                target = known[0]
                conn.execute(
                    "UPDATE customers SET receivables = 10 * credit_limit WHERE code = ?",
                    (target.body["customer"],),
                )
            seen.update(r.body["customer"] for r in env.records)
            apply_envelope(conn, topic_gw=env.gw, topic=topics.uplink(env.gw), env=env)
        assert target is not None
        rows = conn.execute("SELECT record_id, customer, status FROM orders").fetchall()
        assert tuple(st for rid, _c, st in rows if rid == target.id) == ("held",)
        assert {st for _r, c, st in rows if c != target.body["customer"]} == {"allocated"}
    finally:
        conn.close()
