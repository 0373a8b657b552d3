"""A whole store against a running gateway, over its HTTP endpoints only: N clerks ordering
from the shelf, POS tills selling, and the goods-in desk receiving deliveries for the
reorders the gateway raised. For the demo and for load. ``storegate sim store --help``.

- clerks post orders to ``/api/orders`` (channel ``manual``: the scanner and handheld
  simulators speak their device protocols over PTYs/event files that a gateway must be
  configured for, so a store scenario against any running gateway uses HTTP);
- tills are :class:`firmware_sim.pos.PosTerminal`;
- the goods-in desk polls ``GET /api/stock`` and, after ``--delivery-delay`` seconds, posts a
  receipt for every open reorder (``POST /api/receipts``), which closes it;
- optionally (``--stock``) every item starts counted at its order-up-to level.

Prints one JSON summary line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from firmware_sim.pos import PosFaults, PosStats, PosTerminal

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    orders_sent: int = 0
    orders_accepted: int = 0
    orders_refused: int = 0
    order_latencies_ms: list[float] = field(default_factory=list)
    receipts: int = 0
    pos: PosStats = field(default_factory=PosStats)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        lat = sorted(self.order_latencies_ms)
        return {
            "elapsed_s": round(elapsed_s, 2),
            "orders_sent": self.orders_sent,
            "orders_accepted": self.orders_accepted,
            "orders_refused": self.orders_refused,
            "order_latency_ms_p50": round(lat[len(lat) // 2], 2) if lat else None,
            "order_latency_ms_p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
            "receipts": self.receipts,
            "pos": self.pos.summary(),
            "pos_tx_per_s": round(self.pos.applied / elapsed_s, 1) if elapsed_s else None,
        }


@dataclass(frozen=True, slots=True)
class StoreScenario:
    url: str
    store_id: str = "store-001"
    customer: str = "S001"
    clerks: int = 2
    order_rate: float = 0.2  # orders per second per clerk
    tills: int = 2
    sale_rate: float = 1.0  # transactions per second per till
    delivery_delay_s: float = 5.0  # reorder -> delivery at the store
    stock_up: bool = False
    faults: PosFaults = field(default_factory=PosFaults)
    seed: int | None = None


async def _get_items(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/stock") as r:
        r.raise_for_status()
        items: list[dict[str, Any]] = (await r.json())["items"]
        return items


async def _wait(stop: asyncio.Event, delay: float) -> None:
    try:
        async with asyncio.timeout(delay):
            await stop.wait()
    except TimeoutError:
        pass


async def clerk(
    http: aiohttp.ClientSession,
    *,
    sc: StoreScenario,
    n: int,
    items: list[dict[str, Any]],
    stats: StoreStats,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    k = 0
    while not stop.is_set():
        picks = rng.sample(items, min(len(items), rng.randint(1, 4)))
        body = {
            "customer": sc.customer,
            "channel": "manual",
            "order_type": "normal",
            "requested_date": (dt.date.today() + dt.timedelta(days=1)).isoformat(),
            "lines": [
                {"gtin": i["gtin"], "qty": rng.randint(1, 12)} if i["gtin"] else {"sku": i["sku"], "qty": 6}
                for i in picks
            ],
            "note": f"clerk {n}",
            "source_ref": f"{sc.store_id}-clerk{n}-{k}",
        }
        k += 1
        stats.orders_sent += 1
        t0 = time.perf_counter()
        try:
            async with http.post(f"{sc.url}/api/orders", json=body) as r:
                await r.read()
                if r.status == 201:
                    stats.orders_accepted += 1
                    stats.order_latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    stats.orders_refused += 1
        except aiohttp.ClientError as e:
            log.warning("clerk %d: %s", n, e)
        await _wait(stop, rng.expovariate(sc.order_rate) if sc.order_rate > 0 else 3600)


async def goods_in(
    http: aiohttp.ClientSession, sc: StoreScenario, stats: StoreStats, stop: asyncio.Event
) -> None:
    """Receive each open reorder ``delivery_delay_s`` after it was first seen."""
    seen: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            for i in await _get_items(http, sc.url):
                if i["on_order"] <= 0:
                    continue
                first = seen.setdefault(i["sku"], loop.time())
                if loop.time() - first < sc.delivery_delay_s:
                    continue
                async with http.get(f"{sc.url}/api/stock/{i['sku']}") as r:
                    level = await r.json()
                rid = f"DN-{level['open_reorder']}"
                body = {"receipt_id": rid, "lines": [{"sku": i["sku"], "qty": level["on_order"]}]}
                async with http.post(f"{sc.url}/api/receipts", json=body) as r:
                    await r.read()
                    if r.status == 201:
                        stats.receipts += 1
                seen.pop(i["sku"], None)
        except aiohttp.ClientError as e:
            log.warning("goods-in: %s", e)
        await _wait(stop, min(1.0, max(0.05, sc.delivery_delay_s / 4)))


async def run_store(
    sc: StoreScenario, *, duration: float, stop: asyncio.Event | None = None
) -> dict[str, Any]:
    stop = stop or asyncio.Event()
    rng = random.Random(sc.seed)
    stats = StoreStats()
    url = sc.url.rstrip("/")
    sc = dataclasses.replace(sc, url=url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        items = await _get_items(http, url)
        if not items:
            raise RuntimeError(f"{url}: the gateway knows no items (item master empty)")
        if sc.stock_up:
            for i in items:
                target = max(i["order_up_to"], i["safety_stock"] + 10)
                async with http.put(f"{url}/api/stock/{i['sku']}", json={"on_hand": target}) as r:
                    r.raise_for_status()
        tills = [
            PosTerminal(
                url=url,
                store_id=sc.store_id,
                workstation_id=f"POS-{n + 1:02d}",
                items=[i["gtin"] or i["sku"] for i in items],
                rng=random.Random(rng.random()),
                faults=sc.faults,
            )
            for n in range(sc.tills)
        ]
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for n in range(sc.clerks):
                tg.create_task(
                    clerk(
                        http,
                        sc=sc,
                        n=n + 1,
                        items=items,
                        stats=stats,
                        rng=random.Random(rng.random()),
                        stop=stop,
                    ),
                    name=f"clerk-{n + 1}",
                )
            for t in tills:
                tg.create_task(t.run(http, rate=sc.sale_rate, stop=stop), name=f"till-{t.workstation_id}")
            tg.create_task(goods_in(http, sc, stats, stop), name="goods-in")
            if duration > 0:
                await _wait(stop, duration)
                stop.set()
        elapsed = time.perf_counter() - t0
    for t in tills:
        stats.pos.merge(t.stats)
    return stats.summary(elapsed)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="storegate sim store",
        description="A store against a running gateway over HTTP: clerks ordering, POS sales, deliveries.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8081", help="gateway HTTP base URL")
    p.add_argument("--store", default="store-001", help="RetailStoreID the tills send")
    p.add_argument("--customer", default="S001", help="customer code on the clerks' orders")
    p.add_argument("--clerks", type=int, default=2)
    p.add_argument("--order-rate", type=float, default=0.2, help="orders per second per clerk")
    p.add_argument("--tills", type=int, default=2)
    p.add_argument("--sale-rate", type=float, default=1.0, help="POS transactions per second per till")
    p.add_argument("--delivery-delay", type=float, default=5.0, help="seconds from reorder to delivery")
    p.add_argument("--stock", action="store_true", help="first count every item up to its order-up-to level")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--duplicate-rate", type=float, default=0.0, help="till fault: resend an answered transaction"
    )
    p.add_argument("--malformed-rate", type=float, default=0.0, help="till fault: send broken JSON")
    p.add_argument("--unknown-rate", type=float, default=0.0, help="till fault: sell an unknown item")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    sc = StoreScenario(
        url=a.url,
        store_id=a.store,
        customer=a.customer,
        clerks=a.clerks,
        order_rate=a.order_rate,
        tills=a.tills,
        sale_rate=a.sale_rate,
        delivery_delay_s=a.delivery_delay,
        stock_up=a.stock,
        faults=PosFaults(a.duplicate_rate, a.malformed_rate, a.unknown_rate),
        seed=a.seed,
    )
    try:
        summary = asyncio.run(run_store(sc, duration=a.duration))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, aiohttp.ClientError) as e:
        print(f"store scenario failed: {e}")
        return 1
    print(json.dumps(summary), flush=True)
    return 0
