"""Batch waves, picking, shorts, receipts and back orders give the same results on SQLite and
on PostgreSQL (issue 17).

The same masters (scarce stock on some items, customers with every shortage policy), the same
orders (received through ``ingest.apply_envelope``, waiting for a wave) and the same steps, each
its own write job of the database's group commit: a wave per zone, its release to the DCs'
gateways, pick results from them (confirmations and shorts, reallocated or back-ordered),
goods received (back orders released), the delay limits passing, documents and shortage
reports. Every table ends with the same rows on both backends, and every step answers the
same; only clock readings and random record ids differ, and are blanked.
"""

from __future__ import annotations

import datetime as dt
import random
from functools import partial
from pathlib import Path
from typing import Any

from central import wiring
from central.allocate import shortage, waves
from central.fulfil import documents, picking
from central.intake.ingest import apply_envelope
from central.migrations import all_migrations
from ops import bench_allocation as bench
from protocols import topics
from protocols.envelope import Envelope, Record
from protocols.picking import result_record_id
from runtime.dbapi import open_db
from tests.central_dump import dump
from tests.pg import pg_database

NOW = 1_800_000_000_000
TODAY = dt.datetime.now(dt.UTC).date()  # what the orders' requested dates are made from
POLICIES = ("backorder", "next-order", "none", "all-at-once")


def _seed(conn: Any) -> list[str]:
    names = bench._seed_masters(conn, skus=40)
    rng = random.Random(11)
    conn.executemany(  # scarce stock on some items: short lines, back orders, reallocation
        "UPDATE inventory SET on_hand = ? WHERE sku = ? AND location = ?",
        [(rng.randint(0, 25), s, loc) for s in names[:15] for loc in bench.LOCS],
    )
    conn.executemany(  # each DC picks through its own gateway
        "UPDATE locations SET gateway = ? WHERE code = ?", [(loc.lower(), loc) for loc in bench.LOCS]
    )
    conn.executemany(  # every shortage policy, and delay limits
        "UPDATE customers SET backorder_policy = ?, backorder_limit_days = ? WHERE code = ?",
        [(POLICIES[c % 4], 3 if c % 4 == 3 else None, f"C{c}") for c in range(bench.CUSTOMERS)],
    )
    return names


def _pick_results(tasks: list[dict[str, Any]]) -> list[Envelope]:
    """Each DC gateway's answers to its tasks: most picked in full, every fifth short by a part."""
    by_gw: dict[str, list[Record]] = {}
    for i, t in enumerate(tasks):
        short = (t["qty"] + 1) // 2 if i % 5 == 2 else 0
        picked = t["qty"] - short
        body = {
            "task_id": t["task_id"],
            "order_no": f"SO{t['order_id']:08d}",
            "sku": t["sku"],
            "requested_qty": t["qty"],
            "picked_qty": picked,
            "outcome": "short" if short else "picked",
            "key": "shortage" if short else "confirm",
            "ts": 1,
        }
        recs = by_gw.setdefault(t["gateway"], [])
        recs.append(Record(result_record_id(t["task_id"]), len(recs) + 1, "pick_result", 1, body))
    return [Envelope(gw=gw, sent=0, records=tuple(recs)) for gw, recs in sorted(by_gw.items())]


async def _run(target: str) -> tuple[dict[str, list[Any]], list[Any]]:
    hub = wiring.hub(waves.AllocationSettings(realtime=False, batch=waves.BatchRules(("zone",))))
    db = open_db(target, migrations=all_migrations(), on_connect=hub.attach)
    answers: list[Any] = []
    async with db:
        names = await db.write(_seed)
        for env in bench._envelopes(orders=120, lines=4, names=names, rng=random.Random(5)):
            got = await db.write(
                lambda c, e=env: apply_envelope(c, topic_gw=e.gw, topic=topics.uplink(e.gw), env=e)
            )
            answers.append([(a.id, a.status, a.reason, a.ref) for a in got])
        made = await db.write(lambda c: waves.run_wave(c, cutoff=2**62, now=NOW, today=TODAY))
        answers.append(made)
        assert len(made) == 3, "a wave per zone"
        for w in made:
            answers.append(await db.write(lambda c, w=w: picking.release_wave(c, w["wave_id"], now=NOW + 1)))
        tasks = await db.read(picking.tasks)
        for env in _pick_results(tasks):
            got = await db.write(
                lambda c, e=env: apply_envelope(c, topic_gw=e.gw, topic=topics.uplink(e.gw), env=e)
            )
            answers.append([(a.id, a.status, a.reason, a.ref) for a in got])
        for sku in names[:15:3]:  # goods in: back orders released
            answers.append(
                await db.write(
                    lambda c, s=sku: shortage.receive(
                        c, now=NOW + 3, today=TODAY, location="DC-N", sku=s, qty=30
                    )
                )
            )
        later = TODAY + dt.timedelta(days=10)
        answers.append(await db.write(lambda c: shortage.expire_delays(c, today=later, now=NOW + 4)))
        for w in made:
            answers.append(await db.read(lambda c, w=w: documents.pick_list(c, w["wave_id"], fmt="csv")))
        for by in shortage.REPORT_BY:
            answers.append(await db.read(lambda c, by=by: shortage.report(c, by, status=None)))
        return await db.read(partial(dump, pick_task_ids=True)), answers


async def test_waves_picks_and_back_orders_leave_the_same_rows_on_sqlite_and_postgresql(
    tmp_path: Path,
) -> None:
    lite, lite_answers = await _run(str(tmp_path / "central.db"))
    with pg_database() as url:
        pg, pg_answers = await _run(url)
    # the run exercises what it is for
    assert {s["action"] for s in lite["shortages"]} >= {"backorder", "ship_with_next", "cut"}
    assert any(s["status"] == "filled" for s in lite["shortages"]), "back orders released by receipts"
    assert any(t["short"] for t in lite["pick_tasks"]) and any(
        t["status"] == "sent" for t in lite["pick_tasks"]
    )
    assert {o["status"] for o in lite["orders"]} >= {"released", "picked"}
    for i, (a, b) in enumerate(zip(pg_answers, lite_answers, strict=True)):
        assert a == b, f"step {i} answers differently on PostgreSQL"
    assert sorted(pg) == sorted(lite), "the same tables"
    for t in sorted(lite):
        assert pg[t] == lite[t], f"table {t} differs between SQLite and PostgreSQL"
