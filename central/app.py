"""The central process: config, database, MQTT consumer, REST API, fleet registry and
dashboard under one TaskGroup, wired here: the hub (``central.wiring``: record handlers,
lifecycle hooks, allocation settings) goes to the database's connections and the consumer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from central import retention, schedule, wiring
from central.allocate import waves
from central.allocate.availability import AvailabilitySettings, Monitor
from central.fleet import AlertThresholds, Fleet
from central.fulfil.release import Releaser, ReleaseSettings
from central.intake.consumer import BrokerSettings, Consumer
from central.metrics import CentralMetrics
from central.migrations import central_db
from central.web import allocation_api, availability_api, console, dashboard, fleet_api, release_api
from central.web.api import create_app
from runtime import config
from runtime.metrics import add_metrics
from runtime.retry import TaskGroup
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class CentralConfig:
    data_dir: Path = Path("var/central")
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    allocation: waves.AllocationSettings = field(default_factory=waves.AllocationSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    schedule: schedule.ScheduleSettings = field(default_factory=schedule.ScheduleSettings)
    availability: AvailabilitySettings = field(default_factory=AvailabilitySettings)


def load_config(path: Path | str) -> CentralConfig:
    return config.load(CentralConfig, path)


def build_app(
    db: DurableDB, consumer: Consumer, fleet: Fleet, metrics: CentralMetrics, monitor: Monitor | None = None
) -> web.Application:
    app = create_app(db=db, consumer=consumer)
    dashboard.add_routes(app, fleet=fleet, db=db)
    fleet_api.add_routes(app, db=db, backlog_age_s=fleet.thresholds.backlog_age_s)
    allocation_api.add_routes(app)
    release_api.add_routes(app)
    availability_api.add_routes(app, settings=monitor.settings if monitor else None, monitor=monitor)
    console.add_routes(app)
    add_metrics(app, metrics.collect)
    return app


async def serve(cfg: CentralConfig) -> None:
    hub = wiring.hub(cfg.allocation)  # record handlers, lifecycle hooks, allocation settings
    db = central_db(cfg.data_dir / "central.db", hub)
    await db.open()
    fleet = Fleet(db, cfg.alerts)
    consumer = Consumer(db=db, broker=cfg.broker, on_status=fleet.on_status, hub=hub)
    metrics = CentralMetrics(db=db, consumer=consumer)
    monitor = Monitor(db, cfg.availability)
    runner = web.AppRunner(build_app(db, consumer, fleet, metrics, monitor), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.http.host, cfg.http.port).start()
        log.info("central dashboard on http://%s:%d/", cfg.http.host, cfg.http.port)
        async with TaskGroup() as tg:
            tg.create_task(consumer.run(), name="central-consumer")
            tg.create_task(fleet.run(), name="central-fleet-alerts")
            tg.create_task(metrics.run(), name="central-metrics")
            releaser = Releaser(db, cfg.release, on_release=consumer.downlink.notify)
            tg.create_task(releaser.run(), name="central-release")
            scheduler = schedule.Scheduler(
                db, cfg.schedule, on_work=consumer.downlink.notify, monitors=[monitor.tick]
            )
            tg.create_task(scheduler.run(), name="central-schedule")
            tg.create_task(retention.run(db), name="central-retention")
    finally:
        await runner.cleanup()
        await db.close()
