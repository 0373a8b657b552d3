"""The central process: config, database, MQTT consumer, REST API, fleet registry and
dashboard under one TaskGroup, wired here: the hub (``central.wiring``: record handlers,
lifecycle hooks, allocation settings) goes to the database's connections and the consumer."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from central import retention, schedule, wiring
from central.allocate import waves
from central.allocate.availability import AvailabilitySettings, Monitor
from central.fleet import AlertThresholds, Fleet
from central.fulfil.release import Releaser, ReleaseSettings
from central.intake import consumer as consumer_mod
from central.intake.consumer import BrokerSettings, Consumer
from central.metrics import CentralMetrics
from central.migrations import central_db
from central.regions import Regions
from central.web import (
    allocation_api,
    availability_api,
    console,
    dashboard,
    fleet_api,
    process_api,
    promise_api,
    release_api,
)
from central.web.api import create_app
from central.workers import Worker
from runtime import config
from runtime.dbapi import is_postgres_url
from runtime.metrics import add_metrics
from runtime.retry import TaskGroup
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """``url = "postgresql://user@host/db"``: central's database on PostgreSQL; empty (the
    default): the SQLite file ``central.db`` in ``data_dir``."""

    url: str = ""

    def __post_init__(self) -> None:
        if self.url and not is_postgres_url(self.url) and not self.url.startswith("sqlite:///"):
            raise ValueError(f"url {self.url!r}: a postgresql:// (or sqlite:///) URL, or none")


@dataclass(frozen=True, slots=True)
class CentralConfig:
    data_dir: Path = Path("var/central")
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    allocation: waves.AllocationSettings = field(default_factory=waves.AllocationSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    schedule: schedule.ScheduleSettings = field(default_factory=schedule.ScheduleSettings)
    # The stores of each regional broker (written by storegate bridge-init): when a region's
    # bridge goes down, its stores are marked offline (central.regions, ops/BROKER.md).
    regions_file: Path | None = None
    availability: AvailabilitySettings = field(default_factory=AvailabilitySettings)


def load_config(path: Path | str) -> CentralConfig:
    return config.load(CentralConfig, path)


def for_worker(cfg: CentralConfig, index: int) -> CentralConfig:
    """Worker ``index`` (from 0) of several on one config: its MQTT client id gets ``-<index>``
    (two clients under one id would throw each other off the broker) and it serves HTTP on
    ``[http] port`` + ``index``. Every worker joins the same share group, so the broker spreads
    the gateways' uplinks over them. Unless ``[broker] session_expiry_s`` is set, a worker's
    MQTT session lasts ``WORKER_SESSION_EXPIRY_S`` after its connection (not a day): the broker
    stops handing a dead worker its part of the uplinks that soon."""
    if index < 0:
        raise ValueError(f"worker index must be 0 or more, got {index}")
    expiry = cfg.broker.session_expiry_s
    if expiry == consumer_mod.SESSION_EXPIRY_S:
        expiry = consumer_mod.WORKER_SESSION_EXPIRY_S
    return dataclasses.replace(
        cfg,
        broker=dataclasses.replace(
            cfg.broker, client_id=f"{cfg.broker.client_id}-{index}", session_expiry_s=expiry
        ),
        http=dataclasses.replace(cfg.http, port=cfg.http.port + index),
    )


def database_target(cfg: CentralConfig) -> Path | str:
    """Where central's database is: the configured URL, or the SQLite file in ``data_dir``."""
    return cfg.database.url or cfg.data_dir / "central.db"


def build_app(
    db: DurableDB, consumer: Consumer, fleet: Fleet, metrics: CentralMetrics, monitor: Monitor | None = None
) -> web.Application:
    app = create_app(db=db, consumer=consumer)
    dashboard.add_routes(app, fleet=fleet, db=db)
    fleet_api.add_routes(app, db=db, backlog_age_s=fleet.thresholds.backlog_age_s)
    allocation_api.add_routes(app)
    release_api.add_routes(app)
    promise_api.add_routes(app)
    process_api.add_routes(app)
    availability_api.add_routes(app, settings=monitor.settings if monitor else None, monitor=monitor)
    console.add_routes(app)
    add_metrics(app, lambda: itertools.chain(metrics.collect(), app[dashboard.FEED_KEY].collect()))
    return app


async def serve(cfg: CentralConfig) -> None:
    """Run one central worker: a single central, or one of several on one database (see
    ``central.workers``; :func:`for_worker` gives each its client id and HTTP port)."""
    hub = wiring.hub(cfg.allocation)  # record handlers, lifecycle hooks, allocation settings
    db = central_db(database_target(cfg), hub)
    await db.open()
    worker = Worker(db, name=cfg.broker.client_id)
    await worker.start()
    fleet = Fleet(db, cfg.alerts)
    regions = Regions(db, cfg.regions_file, fleet.bump) if cfg.regions_file is not None else None
    consumer = Consumer(
        db=db,
        broker=cfg.broker,
        on_status=fleet.on_status,
        hub=hub,
        owner=worker,
        on_bridge_state=regions.on_bridge_state if regions is not None else None,
    )
    metrics = CentralMetrics(db=db, consumer=consumer)
    monitor = Monitor(db, cfg.availability)
    runner = web.AppRunner(build_app(db, consumer, fleet, metrics, monitor), access_log=None)
    await runner.setup()
    releaser = Releaser(
        db, cfg.release, on_release=consumer.downlink.notify, fence=worker.fence("job/release")
    )
    scheduler = schedule.Scheduler(
        db,
        cfg.schedule,
        on_work=consumer.downlink.notify,
        fence=worker.fence("job/schedule"),
        monitors=[monitor.tick],
    )
    # the jobs one worker at a time runs: whichever holds the lease
    worker.job("job/fleet-alerts", fleet.run)
    worker.job("job/release", releaser.run)
    worker.job("job/schedule", scheduler.run)
    worker.job("job/retention", lambda: retention.run(db))
    try:
        await web.TCPSite(runner, cfg.http.host, cfg.http.port).start()
        log.info("central %s: dashboard on http://%s:%d/", worker.name, cfg.http.host, cfg.http.port)
        async with TaskGroup() as tg:
            tg.create_task(worker.run(), name="central-leases")
            tg.create_task(consumer.run(), name="central-consumer")
            tg.create_task(metrics.run(), name="central-metrics")
    finally:
        await runner.cleanup()
        await worker.stop()
        await db.close()
