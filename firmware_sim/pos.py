"""A POS till posting its transactions to a gateway over HTTP (``protocols/POS.md``).

It builds realistic baskets (1-5 lines, mostly sales, some returns, now and then a line the
cashier voids) with :mod:`protocols.pos`, posts them at a rate, and resends a transaction
until it gets an answer, as a real till does (the gateway recognises the repeat). Fault
injection: resend an answered transaction (duplicate), send broken JSON, sell an item the
gateway does not know. ``storegate sim pos --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from protocols import pos
from protocols.pos import PosTransaction, ReturnLine, SaleLine, VoidLine

log = logging.getLogger(__name__)

RETRY_S = 0.5  # a till resends an unanswered transaction after this long
MAX_TRIES = 20
UNKNOWN_ITEM = "SKU-NOT-IN-MASTER"


@dataclass(frozen=True, slots=True)
class PosFaults:
    duplicate_rate: float = 0.0  # resend an answered transaction
    malformed_rate: float = 0.0  # send a body that is not valid JSON
    unknown_item_rate: float = 0.0  # sell an item the gateway does not know


@dataclass
class PosStats:
    sent: int = 0
    applied: int = 0  # 201
    duplicates: int = 0  # 200
    refused: dict[int, int] = field(default_factory=dict)  # 4xx status -> count
    retries: int = 0
    failed: int = 0  # no answer after MAX_TRIES
    reorders: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def merge(self, other: PosStats) -> None:
        self.sent += other.sent
        self.applied += other.applied
        self.duplicates += other.duplicates
        for k, v in other.refused.items():
            self.refused[k] = self.refused.get(k, 0) + v
        self.retries += other.retries
        self.failed += other.failed
        self.reorders += other.reorders
        self.latencies_ms += other.latencies_ms

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        return {
            "sent": self.sent,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "retries": self.retries,
            "failed": self.failed,
            "reorders": self.reorders,
            "latency_ms_p50": pct(0.5),
            "latency_ms_p99": pct(0.99),
        }


class PosTerminal:
    def __init__(
        self,
        *,
        url: str,
        store_id: str,
        workstation_id: str,
        items: Sequence[str],
        rng: random.Random | None = None,
        faults: PosFaults = PosFaults(),
        business_day: dt.date | None = None,
        start_seq: int | None = None,
        return_rate: float = 0.05,
        void_rate: float = 0.05,
        max_qty: int = 3,
    ) -> None:
        if not items:
            raise ValueError("items: the till needs at least one ItemID to sell")
        self.url = url.rstrip("/")
        self.store_id = store_id
        self.workstation_id = workstation_id
        self.items = list(items)
        self.rng = rng or random.Random()
        self.faults = faults
        self.business_day = business_day or dt.date.today()
        self.seq = start_seq if start_seq is not None else int(time.time() * 1000) % 10**12
        self.return_rate = return_rate
        self.void_rate = void_rate
        self.max_qty = max_qty
        self.stats = PosStats()
        self.last: PosTransaction | None = None

    def next_transaction(self) -> PosTransaction:
        rng = self.rng
        lines: list[pos.LineItem] = []
        n = rng.randint(1, 5)
        for i in range(1, n + 1):
            item = UNKNOWN_ITEM if rng.random() < self.faults.unknown_item_rate else rng.choice(self.items)
            qty = rng.randint(1, self.max_qty)
            if rng.random() < self.return_rate:
                lines.append(ReturnLine(len(lines) + 1, item, qty, reason_code="customer"))
            else:
                lines.append(SaleLine(len(lines) + 1, item, qty))
            if i < n and rng.random() < self.void_rate:  # the cashier takes the line back (never the last)
                lines.append(VoidLine(len(lines) + 1, lines[-1].sequence_number))
        self.seq += 1
        return PosTransaction(
            retail_store_id=self.store_id,
            workstation_id=self.workstation_id,
            sequence_number=self.seq,
            business_day_date=self.business_day,
            end_date_time=dt.datetime.now(dt.UTC).replace(microsecond=0),
            lines=tuple(lines),
        )

    async def post(self, http: aiohttp.ClientSession, data: bytes) -> tuple[int, dict[str, Any]]:
        """Send one body until the gateway answers; (status, JSON answer). Status 0: gave up."""
        for attempt in range(MAX_TRIES):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(RETRY_S)
            t0 = time.perf_counter()
            try:
                async with http.post(
                    f"{self.url}/api/pos/transactions",
                    data=data,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    body = await r.json(content_type=None)
                    self.stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    return r.status, body if isinstance(body, dict) else {}
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as e:
                log.warning("till %s: no answer (%s), resending", self.workstation_id, e)
        self.stats.failed += 1
        return 0, {}

    def _count(self, status: int, answer: dict[str, Any]) -> None:
        if status == 201:
            self.stats.applied += 1
            self.stats.reorders += len(answer.get("reorders", []))
        elif status == 200:
            self.stats.duplicates += 1
        elif status:
            self.stats.refused[status] = self.stats.refused.get(status, 0) + 1
            log.info("till %s: refused %d: %s", self.workstation_id, status, answer.get("error"))

    async def send_one(self, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        rng = self.rng
        if rng.random() < self.faults.malformed_rate:
            data = pos.encode(self.next_transaction())[: rng.randint(1, 40)]
        elif self.last is not None and rng.random() < self.faults.duplicate_rate:
            data = pos.encode(self.last)
        else:
            self.last = self.next_transaction()
            data = pos.encode(self.last)
        self.stats.sent += 1
        status, answer = await self.post(http, data)
        self._count(status, answer)
        return status, answer

    async def run(
        self,
        http: aiohttp.ClientSession,
        *,
        rate: float,
        count: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> PosStats:
        """Post transactions as a Poisson stream of ``rate`` per second until ``count`` are
        sent or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while (count is None or n < count) and not (stop is not None and stop.is_set()):
            await self.send_one(http)
            n += 1
            next_at += self.rng.expovariate(rate) if rate > 0 else 0.0
            delay = next_at - loop.time()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    try:
                        async with asyncio.timeout(delay):
                            await stop.wait()
                    except TimeoutError:
                        pass
        return self.stats


async def fetch_item_ids(http: aiohttp.ClientSession, url: str) -> list[str]:
    """ItemIDs the gateway knows (GTIN where it has one), from ``GET /api/stock``."""
    async with http.get(f"{url.rstrip('/')}/api/stock") as r:
        r.raise_for_status()
        listing = await r.json()
    return [i["gtin"] or i["sku"] for i in listing["items"]]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="storegate sim pos",
        description="Simulate POS tills posting sales/returns/voids to a gateway (POSLog-shaped JSON).",
    )
    p.add_argument("--url", default="http://127.0.0.1:8081", help="gateway HTTP base URL")
    p.add_argument("--store", default="store-001", help="RetailStoreID (default store-001)")
    p.add_argument("--tills", type=int, default=1, help="number of tills POS-01.. (default 1)")
    p.add_argument("--rate", type=float, default=1.0, help="transactions per second per till")
    p.add_argument("--count", type=int, help="transactions per till, then stop")
    p.add_argument("--duration", type=float, help="seconds to run (default: until --count or Ctrl-C)")
    p.add_argument("--item", action="append", help="ItemID to sell (repeat; default: GET /api/stock)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--duplicate-rate", type=float, default=0.0, help="fault: resend an answered transaction")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="fault: send broken JSON")
    p.add_argument("--unknown-rate", type=float, default=0.0, help="fault: sell an unknown item")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def _run(a: argparse.Namespace) -> int:
    rng = random.Random(a.seed)
    faults = PosFaults(a.duplicate_rate, a.malformed_rate, a.unknown_rate)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        items = a.item or await fetch_item_ids(http, a.url)
        if not items:
            print("the gateway knows no items (item master empty); pass --item", flush=True)
            return 1
        tills = [
            PosTerminal(
                url=a.url,
                store_id=a.store,
                workstation_id=f"POS-{i + 1:02d}",
                items=items,
                rng=random.Random(rng.random()),
                faults=faults,
            )
            for i in range(a.tills)
        ]
        tasks = [asyncio.create_task(t.run(http, rate=a.rate, count=a.count, stop=stop)) for t in tills]
        if a.duration:
            await asyncio.wait(tasks, timeout=a.duration)
            stop.set()
        await asyncio.gather(*tasks)
    total = PosStats()
    for t in tills:
        total.merge(t.stats)
    print(json.dumps(total.summary()), flush=True)
    return 0 if total.failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    a = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(_run(a))
    except KeyboardInterrupt:
        return 130
