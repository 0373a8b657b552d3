"""Figures 8 and 9 of ``storegate bench``: disk per 100k orders, before and after the retention
rule prunes; and a gateway's peak RSS when it restarts into a large downlink backlog.

* ``disk`` (8): N orders go through the real paths on real SQLite files: the gateway's outbox
  (``Outbox.submit``), central's receipt and processing (``ingest.receive_uplink`` +
  ``process_queue``: orders, lines, events, ``processed``...), central's acks applied at the
  gateway (``record_results``), the downlink ``order_status`` records applied by the gateway's
  inbox and acked (central's ``downlink_results``, the gateway's ``inbox``). Sizes are the
  pages in use (``page_count - freelist_count``) after a WAL checkpoint, scaled to 100k orders;
  "after pruning" is the same database once the gateway reported its watermark and the grace
  period and every age bound passed (``central.retention`` / ``gateway.retention``). Freed
  pages stay in the file for reuse (no VACUUM): the file stops growing, it does not shrink.
* ``restart`` (9): central holds 55k ``order_status`` records for a gateway that was killed;
  the gateway process restarts and takes them all (central keeps ``downlink.WINDOW`` messages
  in flight to it); ``VmHWM`` of the gateway once its inbox holds them all.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

from central import downlink, ingest
from central import retention as central_retention
from central.migrations import central_db
from gateway import order_status
from gateway import retention as gateway_retention
from gateway.app import migrations as gateway_migrations
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from ops.bench import (
    FIGURE_TIMEOUT_S,
    SERVICE_START_TIMEOUT_S,
    BenchError,
    Result,
    Row,
    Service,
    Sizes,
    _prefill,
    _proc_status,
    central_running,
    workdir,
)
from ops.broker import BrokerConfig, Mosquitto, free_port
from ops.sqlitedb import DurableDB
from protocols import envelope, topics

GW = "store-disk"
PER = 100_000
FAR_FUTURE_S = 400 * 24 * 3600  # past every grace period and age bound


def _pages_in_use(path: Path) -> dict[str, float]:
    """MB of pages in use, per table/index when SQLite has ``dbstat``, and in all."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (
            conn.execute("PRAGMA page_count").fetchone()[0]
            - conn.execute("PRAGMA freelist_count").fetchone()[0]
        )
        out = {"total": used * page / 1e6, "file": path.stat().st_size / 1e6}
        try:
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                out[str(name)] = size / 1e6
        except sqlite3.OperationalError:  # no dbstat in this SQLite build
            pass
        return out
    finally:
        conn.close()


def _downlink_mark(conn: sqlite3.Connection) -> int:
    """What central's next downlink message to the gateway carries as ``acked_below``."""
    next_seq: int = conn.execute(
        "SELECT seq + 1 FROM sqlite_sequence WHERE name = 'downlink_outbox'"
    ).fetchone()[0]
    return downlink.acked_below(conn, gateway=GW, floor=next_seq)


def _order(n: int) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "handheld",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [
            {"gtin": "04012345678901", "qty": 6},
            {"sku": "SKU-2", "qty": 2},
            {"sku": "SKU-3", "qty": 1},
        ],
        "source_ref": f"HT07-{n:06d}",
    }


async def _flow(tmp: Path, n: int) -> dict[str, Any]:
    gdb = DurableDB(tmp / f"{GW}.db", migrations=gateway_migrations())
    cdb = central_db(tmp / "central.db")
    await gdb.open()
    await cdb.open()
    try:
        box = Outbox(gdb)
        inbox = Inbox(gdb)
        inbox.register(order_status.RECORD, order_status.apply_order_status)
        topic = topics.uplink(GW)
        quick = ingest.quick_checks()
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            await asyncio.gather(*(box.submit("order", _order(start + i)) for i in range(k)))
            rows = await box.pending(after_seq=0, limit=k)
            payload = envelope.encode_raw_records(gw=GW, sent=1, raw_records=[p for _s, _r, p in rows])
            up = envelope.decode_uplink(payload, quick=quick)

            def receive(conn: sqlite3.Connection, up: envelope.Uplink = up) -> list[envelope.Ack]:
                acks = ingest.receive_uplink(conn, topic_gw=GW, topic=topic, up=up)
                ingest.process_queue(conn, limit=None)
                return acks

            await box.apply_acks(await cdb.write(receive))
            # the downlink: order_status records applied at the gateway, acked to central
            down = await cdb.read(partial(downlink.pending, limit=100_000))
            recs = envelope.decode(
                envelope.encode_raw_records(gw=GW, sent=1, raw_records=[p for _s, _g, _i, p in down])
            ).records
            acks = await inbox.handle(recs)
            await cdb.write(partial(downlink.apply_gateway_acks, gateway=GW, acks=acks))
        before = {"central": _pages_in_use(tmp / "central.db"), "gateway": _pages_in_use(tmp / f"{GW}.db")}
        now = int(time.time() * 1000)
        mark = await gdb.read(gateway_retention.acked_below)
        await cdb.write(partial(central_retention.report, gateway=GW, acked_below=mark, now=now))
        later = now + FAR_FUTURE_S * 1000
        t0 = time.perf_counter()
        pruned_c = await central_retention.prune_once(cdb, now=later)
        down_mark = await cdb.read(_downlink_mark)
        pruned_g = await gateway_retention.prune_once(gdb, now=later, downlink_mark=(down_mark, now))
        prune_s = time.perf_counter() - t0
        after = {"central": _pages_in_use(tmp / "central.db"), "gateway": _pages_in_use(tmp / f"{GW}.db")}
    finally:
        await gdb.close()
        await cdb.close()
    return {
        "orders": n,
        "before_mb": before,
        "after_mb": after,
        "pruned": {
            "processed": pruned_c.processed,
            "downlink_results": pruned_c.downlink_results,
            "record_results": pruned_g,
        },
        "prune_s": prune_s,
    }


def bench_disk(sizes: Sizes) -> Result:
    n = sizes.drain_orders
    res = Result()
    with workdir("disk") as tmp:
        r = asyncio.run(_flow(tmp, n))
    res.runs.append(r)
    k = PER / n
    b, a = r["before_mb"], r["after_mb"]

    def part(side: dict[str, float], *names: str) -> float:
        return sum(side.get(x, 0.0) for x in names) * k

    c_hist = ("processed", "downlink_results", "sqlite_autoindex_downlink_results_1", "processed_gw_seq")
    g_hist = ("record_results", "sqlite_autoindex_record_results_1", "inbox")
    res.rows += [
        Row(
            "8",
            "disk per 100k orders: central DB",
            b["central"]["total"] * k,
            "MB",
            "",
            None,
            f"{n} orders; of it processed + downlink_results {part(b['central'], *c_hist):.1f} MB",
        ),
        Row(
            "8",
            "disk per 100k orders: central DB after pruning",
            a["central"]["total"] * k,
            "MB",
            "",
            None,
            f"processed + downlink_results {part(a['central'], *c_hist):.1f} MB;"
            f" pruned in {r['prune_s']:.2f}s",
        ),
        Row(
            "8",
            "disk per 100k orders: gateway DB",
            b["gateway"]["total"] * k,
            "MB",
            "",
            None,
            f"of it record_results + inbox {part(b['gateway'], *g_hist):.1f} MB",
        ),
        Row(
            "8",
            "disk per 100k orders: gateway DB after pruning",
            a["gateway"]["total"] * k,
            "MB",
            "",
            None,
            f"record_results + inbox {part(a['gateway'], *g_hist):.1f} MB",
        ),
    ]
    return res


# -- 9: gateway restarted into a large downlink backlog ----------------------------------------


def _central_count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        n: int = conn.execute(sql).fetchone()[0]
        return n
    finally:
        conn.close()


def _restart_once(tmp: Path, n: int) -> dict[str, Any]:
    gw = "store-restart"
    data = tmp / gw
    gdb = data / f"{gw}.db"
    asyncio.run(_prefill(gdb, n))
    broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp / "broker"))
    http_port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{data}"\n'
        f"[mqtt]\nport = {broker.port}\n[http]\nport = {http_port}\n"
    )
    cdb = tmp / "central" / "central.db"
    broker.start()
    try:
        with central_running(tmp, broker.port):
            gateway = Service("gateway", cfg, http_port, tmp / "gateway.log")
            gateway.start()
            try:
                gateway.wait(lambda d: d["backlog"] == 0, "backlog sent", FIGURE_TIMEOUT_S)
            finally:
                _kill(gateway)
            deadline = time.monotonic() + FIGURE_TIMEOUT_S
            while (
                _central_count(cdb, "SELECT count(*) FROM work_queue")
                # every order's order_status made: waiting, or acked by the gateway before its kill
                or _central_count(
                    cdb,
                    "SELECT (SELECT count(*) FROM downlink_outbox) + (SELECT count(*) FROM downlink_results)",
                )
                < n
            ):
                if time.monotonic() > deadline:
                    raise BenchError("central did not process the orders in time")
                time.sleep(0.2)
            waiting = _central_count(cdb, "SELECT count(*) FROM downlink_outbox")
            gateway.start()
            t0 = time.perf_counter()
            try:
                gateway.wait(lambda d: True, "gateway up", SERVICE_START_TIMEOUT_S)
                while _central_count(cdb, "SELECT count(*) FROM downlink_outbox"):
                    if time.monotonic() > deadline + FIGURE_TIMEOUT_S:
                        raise BenchError("the gateway did not take its downlink backlog in time")
                    time.sleep(0.1)
                elapsed = time.perf_counter() - t0
                status = _proc_status(gateway.pid)
            finally:
                gateway.stop()
    finally:
        broker.kill()
    return {"downlink_waiting": waiting, "hwm_mb": status["VmHWM"] / 1024, "take_s": elapsed}


def _kill(service: Any) -> None:
    """SIGKILL: the gateway goes before central's order_status records reach it."""
    proc = service.proc
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)
    service.proc = None


def bench_restart(sizes: Sizes) -> Result:
    n = min(sizes.rss_records, 55_000)
    res = Result()
    with workdir("restart") as tmp:
        r = _restart_once(tmp, n)
    res.runs.append(r)
    hwm = r["hwm_mb"]
    detail = (
        f"gateway process restarted with {r['downlink_waiting']} downlink records waiting at central,"
        f" all applied in {r['take_s']:.1f}s"
    )
    res.rows.append(
        Row("9", "gateway peak RSS, restart into downlink backlog", hwm, "MB", "<= 80", hwm <= 80, detail)
    )
    return res
