"""Central's Prometheus metrics: live counters plus figures read from the database every
few seconds (orders by status, gateways by state, open alerts, shortages, fill rate)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from central import fleet as fleet_mod
from central import ingest
from central.consumer import Consumer
from ops.metrics import counter, gauge, labelled
from ops.sqlitedb import DurableDB

REFRESH_S = 5.0


def read_kpis(conn: sqlite3.Connection) -> dict[str, Any]:
    f = fleet_mod.fulfilment(conn)
    return {
        "orders_by_status": f["orders_by_status"],
        "fill_rate": f["fill_rate"],
        "open_shortages": f["open_shortages"],
        "gateways_by_state": dict(conn.execute("SELECT state, count(*) FROM fleet_gateways GROUP BY state")),
        "open_alerts": conn.execute("SELECT count(*) FROM alerts WHERE closed_ms IS NULL").fetchone()[0],
        "downlink_pending": conn.execute("SELECT count(*) FROM downlink_outbox").fetchone()[0],
        "quarantined": conn.execute("SELECT count(*) FROM quarantine").fetchone()[0],
        # received (acked) and not processed yet: growing means processing is not keeping up
        "work_queue": conn.execute("SELECT coalesce(sum(count - done), 0) FROM work_queue").fetchone()[0],
    }


@dataclass(slots=True)
class CentralMetrics:
    db: DurableDB
    consumer: Consumer
    kpis: dict[str, Any] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            self.kpis = await self.db.read(read_kpis)
            await asyncio.sleep(REFRESH_S)

    def collect(self) -> Iterable[Metric]:
        s = self.consumer.stats
        yield counter("storegate_central_messages", "MQTT messages received", s.messages)
        yield counter("storegate_central_records", "records received", s.records)
        yield labelled(
            CounterMetricFamily,
            "storegate_central_acks",
            "acks sent by status",
            ["status"],
            [(["accepted"], s.accepted), (["duplicate"], s.duplicates), (["rejected"], s.rejected)],
        )
        yield counter(
            "storegate_central_quarantined_messages", "undecodable messages", s.quarantined_messages
        )
        yield counter(
            "storegate_central_internal_errors",
            "internal errors: a record or message failed by a bug (logged with its traceback)",
            ingest.INTERNAL_ERRORS[0],
        )
        yield counter(
            "storegate_central_downlink_sent", "downlink records published", self.consumer.downlink.sent
        )
        yield gauge(
            "storegate_central_mqtt_connected",
            "1 while an MQTT session with the broker is up",
            int(self.consumer.link_up),
        )
        yield counter("storegate_central_mqtt_reconnects", "MQTT reconnects", s.reconnects)
        yield counter(
            "storegate_central_mqtt_restarts",
            "times the MQTT loop ended by something else than a lost link and was started again",
            s.restarts,
        )
        yield gauge(
            "storegate_central_storage_full",
            "1 while central's disk is full (nothing taken, nothing acked)",
            int(self.db.storage_full is not None),
        )
        yield counter(
            "storegate_central_storage_refused_messages",
            "messages not taken nor acked because the disk was full (the gateways send them again)",
            s.storage_refused,
        )
        proc = self.consumer.processor
        yield counter(
            "storegate_central_processed_records", "records processed after receipt", proc.processed
        )
        yield counter("storegate_central_processing_jobs", "processing transactions committed", proc.jobs)
        yield counter(
            "storegate_central_processing_seconds",
            "writer time spent processing (its rate near 1: processing is saturated)",
            proc.busy_s,
        )
        k = self.kpis
        if not k:
            return
        yield labelled(
            GaugeMetricFamily,
            "storegate_orders",
            "orders by status",
            ["status"],
            [([st], n) for st, n in k["orders_by_status"].items()],
        )
        yield labelled(
            GaugeMetricFamily,
            "storegate_gateways",
            "gateways by state",
            ["state"],
            [([st], n) for st, n in k["gateways_by_state"].items()],
        )
        yield gauge("storegate_open_alerts", "open alerts", k["open_alerts"])
        yield gauge(
            "storegate_downlink_pending", "downlink records awaiting a gateway ack", k["downlink_pending"]
        )
        yield gauge("storegate_quarantine_records", "records in quarantine", k["quarantined"])
        yield gauge(
            "storegate_central_work_queue_records", "records received and not yet processed", k["work_queue"]
        )
        if k["open_shortages"] is not None:
            yield gauge("storegate_open_shortages", "open shortage lines", k["open_shortages"])
        if k["fill_rate"] is not None:
            yield gauge("storegate_fill_rate", "allocated / demanded units", k["fill_rate"])
