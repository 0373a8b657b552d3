"""What central's tables hold, comparable across runs and backends: the "same rows" tests
(batch vs one by one, SQLite vs PostgreSQL, allocation on both) dump every table with the
clock columns and the ids a run draws blanked, and feed the same mixed envelopes."""

from __future__ import annotations

import random
import re
from typing import Any

import msgpack

from central.allocate import inventory
from ops import bench_allocation as bench
from protocols.envelope import Envelope, Record
from runtime.dbapi import tables

# what the clock sets
TIME_COLS = {
    "at",
    "ts",
    "updated_at",
    "received_at",
    "processed_at",
    "applied_at",
    "done_at",
    "acked_at",
    "created_at",
    "released_at",
    "resolved_at",
}


def mixed_envelopes(names: list[str], rng: random.Random, *, orders: int) -> list[Envelope]:
    """``bench_allocation``'s order envelopes with order changes between new orders (a cancel,
    a new quantity) and repeats of records already processed."""
    envs = bench._envelopes(orders=orders, lines=5, names=names, rng=rng)
    out: list[Envelope] = []
    for k, env in enumerate(envs):
        recs = list(env.records)
        if k % 7 in (3, 4):  # a change to an order of the same message, between new orders
            first = recs[0]
            change: dict[str, Any] = {"order": first.id, "change_seq": 1, "action": "cancel_order"}
            if k % 7 == 4:
                change.update(action="set_qty", line_no=1, qty=2)
            recs.insert(3, Record(f"{first.id}-c1", first.seq, "order_change", first.ts, change))
        if k % 11 == 5 and out:  # a repeat of a record already processed
            recs.insert(1, out[-1].records[0])
        out.append(Envelope(gw=env.gw, sent=0, records=tuple(recs)))
    return out


def dump(conn: Any, *, sort: bool = True, pick_task_ids: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows (``master_version`` left out: PostgreSQL's own), times and drawn ids
    blanked; ``sort`` orders each table's rows (else as the database returns them);
    ``pick_task_ids`` keeps a pick task's downlink id (it is its task id)."""
    out = {}
    for t in tables(conn):
        if t == "master_version":
            continue
        cur = conn.execute(f"SELECT * FROM {t}")
        cols = [d[0] for d in cur.description]
        rows = []
        for raw in cur.fetchall():
            r = {c: (None if c in TIME_COLS else v) for c, v in zip(cols, raw, strict=True)}
            if t == "downlink_outbox":
                p = msgpack.unpackb(r["packed"])
                if not (pick_task_ids and p["type"] == "pick_task"):
                    p["id"] = r["id"] = None
                p["ts"] = None
                p["body"].pop("at", None)
                r["packed"] = p
            if t == "alloc_runs":
                r["inputs"] = inventory.unpack_inputs(r["inputs"])
                for o in r["inputs"]["orders"]:
                    o["received"] = None
                r["trace"] = re.sub(r"received=\d+", "", r["trace"])
                r["digest"] = None
            rows.append(r)
        out[t] = sorted(rows, key=repr) if sort else rows
    return out
