"""The gateway process: config, durable store, device adapters, MQTT sync, telemetry and
local HTTP under one TaskGroup."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway import (
    handheld,
    idempotency,
    inbox,
    items,
    order_changes,
    order_status,
    outbox,
    picking,
    retention,
    scanner,
    stock,
    supplier,
)
from gateway.devices import (
    HandheldConfig,
    HidScannerConfig,
    SerialScannerConfig,
    asrs_status,
    build_devices,
    cart_status,
)
from gateway.http import create_app
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.picking import PickExecutor, PickingConfig
from gateway.pos import PosService
from gateway.pos import add_routes as add_pos_routes
from gateway.sync import MqttSettings, Sync
from gateway.telemetry import DeviceBoard, Telemetry
from protocols.topics import GATEWAY_ID_RE
from runtime import config
from runtime.metrics import add_metrics, counter, gauge, labelled
from runtime.retry import TaskGroup
from runtime.sqlitedb import DurableDB, Migration

log = logging.getLogger(__name__)
VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8081


@dataclass(frozen=True, slots=True)
class SyncSettings:
    window: int = 8
    batch_records: int = 1000
    ack_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    customer: str = ""
    data_dir: Path = Path("var/gateway")
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    serial_scanners: list[SerialScannerConfig] = field(default_factory=list)
    hid_scanners: list[HidScannerConfig] = field(default_factory=list)
    handhelds: list[HandheldConfig] = field(default_factory=list)
    picking: PickingConfig = field(default_factory=PickingConfig)  # a DC: carts, AS/RS


def load_config(path: Path | str) -> GatewayConfig:
    cfg = config.load(GatewayConfig, path)
    if not GATEWAY_ID_RE.match(cfg.gateway_id):
        raise config.ConfigError("gateway_id", f"{cfg.gateway_id!r} is not a valid gateway id (a-z 0-9 _ -)")
    return cfg


def migrations() -> list[Migration]:
    return [
        *outbox.MIGRATIONS,
        *inbox.MIGRATIONS,
        *items.MIGRATIONS,
        *order_status.MIGRATIONS,
        *order_changes.MIGRATIONS,
        *supplier.MIGRATIONS,
        *scanner.MIGRATIONS,
        *handheld.MIGRATIONS,
        *picking.MIGRATIONS,
        *stock.MIGRATIONS,
        *idempotency.MIGRATIONS,
        *retention.MIGRATIONS,
    ]


class GatewayMetrics:
    def __init__(
        self, *, outbox: Outbox, sync: Sync, inbox: Inbox, telemetry: Telemetry, pos: PosService
    ) -> None:
        self.outbox, self.sync, self.inbox, self.telemetry, self.pos = outbox, sync, inbox, telemetry, pos

    def collect(self) -> Iterable[Metric]:
        yield from self.pos.metrics()
        s = self.sync.stats
        yield counter(
            "storegate_gateway_records_in", "records committed to the outbox", self.outbox.submitted
        )
        yield counter("storegate_gateway_records_acked", "records acked by central", self.outbox.acked)
        yield counter(
            "storegate_gateway_records_rejected", "records rejected by central", self.outbox.rejected
        )
        yield counter(
            "storegate_gateway_acks_repeated",
            "records central answered 'duplicate' (taken before; an earlier ack was lost)",
            self.outbox.acks_repeated,
        )
        yield counter("storegate_gateway_records_sent", "records published (incl. resends)", s.records_sent)
        yield counter("storegate_gateway_messages_sent", "MQTT messages published", s.messages_sent)
        yield counter("storegate_gateway_acks", "acks received from central", s.acks_received)
        yield counter("storegate_gateway_resends", "times the unacked outbox was sent again", s.resends)
        yield counter("storegate_gateway_reconnects", "MQTT reconnects", s.reconnects)
        yield counter(
            "storegate_gateway_sync_restarts",
            "times the sync loop ended by something else than a lost link and was started again",
            s.restarts,
        )
        yield counter("storegate_gateway_downlink_applied", "downlink records applied", self.inbox.applied)
        yield gauge(
            "storegate_gateway_backlog", "records waiting in the outbox", self.telemetry.backlog.count
        )
        yield gauge(
            "storegate_gateway_oldest_age_seconds",
            "age of the oldest unsent record",
            self.telemetry.backlog.oldest_age_s(),
        )
        yield gauge(
            "storegate_gateway_connected",
            "1 while an MQTT session with the broker is up",
            int(self.sync.link_up),
        )
        if s.last_ack_at is not None:
            yield gauge(
                "storegate_gateway_last_ack_age_seconds",
                "seconds since the last ack from central (absent before the first)",
                time.monotonic() - s.last_ack_at,
            )
        storage = self.outbox.db.storage_state()
        yield gauge(
            "storegate_gateway_storage_full",
            "1 while the gateway's disk is full (new records refused with 507)",
            int(storage["state"] == "full"),
        )
        if storage["free_bytes"] is not None:
            yield gauge(
                "storegate_gateway_storage_free_bytes",
                "bytes free on the gateway's data file system",
                storage["free_bytes"],
            )
        yield counter(
            "storegate_gateway_storage_full_errors",
            "database jobs failed because the disk was full",
            storage["errors"],
        )
        yield counter(
            "storegate_gateway_acks_unapplied",
            "acks from central not applied because the disk was full (the records go again)",
            s.acks_unapplied,
        )
        devs = self.telemetry.board.snapshot()
        yield labelled(
            CounterMetricFamily,
            "storegate_device_errors",
            "device errors (bad input, refusals)",
            ["device", "kind"],
            [([d["id"], d["kind"]], d["errors"]) for d in devs],
        )
        yield labelled(
            CounterMetricFamily,
            "storegate_device_naks",
            "NAKs sent to or from a device",
            ["device", "kind"],
            [([d["id"], d["kind"]], d["naks"]) for d in devs],
        )
        yield labelled(
            GaugeMetricFamily,
            "storegate_device_online",
            "1 while the device is online",
            ["device", "kind"],
            [([d["id"], d["kind"]], int(d["state"] == "online")) for d in devs],
        )


async def serve(cfg: GatewayConfig) -> None:
    db = DurableDB(cfg.data_dir / f"{cfg.gateway_id}.db", migrations=migrations())
    await db.open()
    box = Outbox(db)
    inb = Inbox(db)
    inb.register(items.MASTER_RECORD, items.apply_master_items)
    inb.register(items.STANDING_RECORD, items.apply_customer_standing)
    inb.register(supplier.RECORD, supplier.apply_drop_ship)  # any gateway may serve a supplier
    inb.register(order_status.RECORD, order_status.apply_order_status)
    inb.register(outbox.RECORD_RESULT, outbox.apply_record_result)
    executor = PickExecutor(db=db, outbox=box, config=cfg.picking) if cfg.picking.carts else None
    if executor is not None:
        executor.register(inb)  # only a DC takes pick_task records
    board = DeviceBoard()
    telemetry = Telemetry(site=cfg.customer, outbox=box, board=board, version=VERSION)
    sync = Sync(
        gateway_id=cfg.gateway_id,
        outbox=box,
        mqtt=cfg.mqtt,
        window=cfg.sync.window,
        batch_records=cfg.sync.batch_records,
        ack_timeout=cfg.sync.ack_timeout_s,
        on_records=inb.handle,
        status_extra=telemetry.extra,
    )
    telemetry.sync = sync

    def storage_changed(writable: bool) -> None:
        telemetry.wake()  # the fleet hears of a full disk (and of its end) at once
        if writable:
            sync.storage_writable()

    db.on_storage_change.append(storage_changed)
    sessions, devices = build_devices(
        db=db,
        outbox=box,
        customer=cfg.customer,
        serial_scanners=cfg.serial_scanners,
        hid_scanners=cfg.hid_scanners,
        handhelds=cfg.handhelds,
    )
    for dev in devices:
        board.add_source(dev.id, dev.status)
    if executor is not None:
        for cart_id, cart in executor.carts.items():
            board.add_source(cart_id, cart_status(cart_id, cart))
        if executor.asrs is not None:
            board.add_source(executor.asrs.device_id, asrs_status(executor.asrs))
    app = create_app(gateway_id=cfg.gateway_id, outbox=box, sync=sync, customer=cfg.customer)
    # The POS posts sales here; reorders are raised for this store's customer code.
    pos = PosService(db=db, outbox=box, customer=cfg.customer or cfg.gateway_id)
    pos.on_till = lambda workstation: board.register(f"till-{workstation}", "pos").seen()
    add_pos_routes(app, pos)
    order_changes.add_routes(app, outbox=box, customer=cfg.customer)
    supplier.add_routes(app, outbox=box)
    add_metrics(app, GatewayMetrics(outbox=box, sync=sync, inbox=inb, telemetry=telemetry, pos=pos).collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.http.host, cfg.http.port).start()
        log.info("gw=%s order entry on http://%s:%d/api/orders", cfg.gateway_id, cfg.http.host, cfg.http.port)
        async with TaskGroup() as tg:
            tg.create_task(sync.run(), name=f"sync:{cfg.gateway_id}")
            tg.create_task(telemetry.run(), name=f"telemetry:{cfg.gateway_id}")
            tg.create_task(
                retention.run(db, cfg.gateway_id, lambda: sync.downlink_acked_below),
                name=f"retention:{cfg.gateway_id}",
            )
            if sessions is not None:
                tg.create_task(sessions.run(), name=f"scan-sessions:{cfg.gateway_id}")
            for dev in devices:
                tg.create_task(dev.adapter.run(), name=f"device:{dev.kind}:{dev.id}")
            if executor is not None:
                tg.create_task(executor.run(), name=f"picking:{cfg.gateway_id}")
    finally:
        await runner.cleanup()
        await db.close()
