"""The central process: config, database, MQTT consumer and REST API under one TaskGroup."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from central.api import create_app
from central.consumer import BrokerSettings, Consumer
from central.schema import MIGRATIONS
from ops import config
from ops.sqlitedb import DurableDB

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


def load_config(path: Path | str) -> CentralConfig:
    return config.load(CentralConfig, path)


async def serve(cfg: CentralConfig, *, ready: asyncio.Event | None = None) -> None:
    db = DurableDB(cfg.data_dir / "central.db", migrations=MIGRATIONS)
    await db.open()
    consumer = Consumer(db=db, broker=cfg.broker)
    runner = web.AppRunner(create_app(db=db, consumer=consumer), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
        await site.start()
        log.info("central REST on http://%s:%d/api/health", cfg.http.host, cfg.http.port)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(consumer.run(), name="central-consumer")
            if ready is not None:
                tg.create_task(_set_when(consumer.connected, ready))
    finally:
        await runner.cleanup()
        await db.close()


async def _set_when(src: asyncio.Event, dst: asyncio.Event) -> None:
    await src.wait()
    dst.set()
