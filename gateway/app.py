"""The gateway process: config, durable store, MQTT sync and local HTTP under one TaskGroup."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway import inbox, items, outbox
from gateway.http import create_app
from gateway.inbox import Inbox
from gateway.outbox import Outbox
from gateway.sync import MqttSettings, Sync
from ops import config
from ops.sqlitedb import DurableDB, Migration
from protocols.topics import GATEWAY_ID_RE

log = logging.getLogger(__name__)


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


def load_config(path: Path | str) -> GatewayConfig:
    cfg = config.load(GatewayConfig, path)
    if not GATEWAY_ID_RE.match(cfg.gateway_id):
        raise config.ConfigError("gateway_id", f"{cfg.gateway_id!r} is not a valid gateway id (a-z 0-9 _ -)")
    return cfg


def migrations() -> list[Migration]:
    return [*outbox.MIGRATIONS, *inbox.MIGRATIONS, *items.MIGRATIONS]


async def serve(cfg: GatewayConfig) -> None:
    db = DurableDB(cfg.data_dir / f"{cfg.gateway_id}.db", migrations=migrations())
    await db.open()
    box = Outbox(db)
    inb = Inbox(db)
    inb.register(items.MASTER_RECORD, items.apply_master_items)
    sync = Sync(
        on_records=inb.handle,
        gateway_id=cfg.gateway_id,
        outbox=box,
        mqtt=cfg.mqtt,
        window=cfg.sync.window,
        batch_records=cfg.sync.batch_records,
        ack_timeout=cfg.sync.ack_timeout_s,
    )
    runner = web.AppRunner(create_app(gateway_id=cfg.gateway_id, outbox=box, sync=sync), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.http.host, cfg.http.port).start()
        log.info("gw=%s order entry on http://%s:%d/api/orders", cfg.gateway_id, cfg.http.host, cfg.http.port)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sync.run(), name=f"sync:{cfg.gateway_id}")
    finally:
        await runner.cleanup()
        await db.close()
