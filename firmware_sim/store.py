"""A whole store against a running gateway: N clerks ordering from the shelf, POS tills
selling, the goods-in desk receiving deliveries for the reorders the gateway raised, and -
when the gateway is configured for them - the store's ordering devices on their real
protocols. For the demo and for load. ``storegate sim store --help``.

- clerks post orders to ``/api/orders`` (channel ``manual``), so a store scenario works
  against any running gateway;
- a handheld terminal (``--handheld-fd``: the master end of a PTY whose slave is the
  gateway's ``[[handhelds]]`` port) uploads an order batch now and then with the BHT block
  protocol (:class:`firmware_sim.handheld.Terminal`);
- a serial scanner (``--scanner-fd``: a PTY master, the slave is the gateway's
  ``[[serial_scanners]]`` port, ACK/NAK host mode) scans shelf labels in sessions: a
  quantity code, a label, ... and the "end order" code (:class:`firmware_sim.serial_scanner.
  SerialScannerSim`);
- a USB-HID scanner (``--hid-path``: the FIFO or file of the gateway's ``[[hid_scanners]]``)
  types the same kind of session as the ``struct input_event`` records a keyboard-wedge
  scanner produces (:mod:`firmware_sim.hid_scanner`; there is no /dev/uinput);
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

from firmware_sim import hid_scanner as hid_sim
from firmware_sim.handheld import Terminal, make_batch
from firmware_sim.pos import PosFaults, PosStats, PosTerminal
from firmware_sim.serial_scanner import SerialScannerSim
from protocols.barcode import order_texts
from protocols.bht import OrderRecord
from protocols.serial_scanner import GoodBeep

log = logging.getLogger(__name__)

FIRST_DEVICE_DELAY_S = (1.0, 4.0)  # a device's first order comes this soon (uniform), then at its rate
SCAN_INTERVAL_S = 0.3  # between two scans of one session (a clerk walking the shelf)
HT_UPLOAD_TIMEOUT_S = 90.0  # one batch upload, handshake to final ACK
HT_DAYS_AHEAD = 2  # requested date on handheld lines


@dataclass
class StoreStats:
    orders_sent: int = 0
    orders_accepted: int = 0
    orders_refused: int = 0
    order_latencies_ms: list[float] = field(default_factory=list)
    receipts: int = 0
    pos: PosStats = field(default_factory=PosStats)
    ht_batches_ok: int = 0
    ht_batches_failed: int = 0
    ht_lines: int = 0
    scanner_orders: int = 0
    scans_acked: int = 0
    scans_refused: int = 0
    hid_orders: int = 0

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
            "handheld": {
                "batches_ok": self.ht_batches_ok,
                "batches_failed": self.ht_batches_failed,
                "lines": self.ht_lines,
            },
            "scanner": {
                "orders": self.scanner_orders,
                "acked": self.scans_acked,
                "refused": self.scans_refused,
            },
            "hid": {"orders": self.hid_orders},
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
    handheld_fd: int | None = None  # PTY master of the gateway's handheld port
    terminal: str = "HT01"  # the handheld's terminal id
    scanner_fd: int | None = None  # PTY master of the gateway's serial scanner port
    hid_path: str | None = None  # FIFO/file the gateway's HID scanner adapter reads
    device_rate: float = 0.1  # orders per second per device


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


def _order_specs(items: list[dict[str, Any]], rng: random.Random) -> list[tuple[str, int]]:
    """1-3 distinct items that have a GTIN, each with a quantity: what a clerk orders."""
    with_gtin = [i for i in items if i["gtin"]]
    return [
        (i["gtin"], rng.randint(1, 12)) for i in rng.sample(with_gtin, min(len(with_gtin), rng.randint(1, 3)))
    ]


def _next_delay(sc: StoreScenario, rng: random.Random) -> float:
    return rng.expovariate(sc.device_rate) if sc.device_rate > 0 else 3600


async def handheld(
    fd: int,
    *,
    sc: StoreScenario,
    items: list[dict[str, Any]],
    stats: StoreStats,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """A handheld terminal in its cradle: every so often one order batch over the BHT protocol."""
    term = Terminal(fd)
    batch = 0
    await _wait(stop, rng.uniform(*FIRST_DEVICE_DELAY_S))
    while not stop.is_set():
        batch += 1
        date = dt.date.today() + dt.timedelta(days=HT_DAYS_AHEAD)
        lines = [OrderRecord(gtin, qty, date) for gtin, qty in _order_specs(items, rng)]
        try:
            res = await asyncio.wait_for(
                term.upload(make_batch(sc.terminal, batch, lines)), HT_UPLOAD_TIMEOUT_S
            )
        except TimeoutError:
            res = None
        if res is not None and res.ok:
            stats.ht_batches_ok += 1
            stats.ht_lines += len(lines)
            log.info("%s HT %s: batch %d uploaded (%d lines)", sc.store_id, sc.terminal, batch, len(lines))
        else:
            stats.ht_batches_failed += 1
            log.warning(
                "%s HT %s: batch %d failed: %s",
                sc.store_id,
                sc.terminal,
                batch,
                res.reason if res is not None else "timed out",
            )
        await _wait(stop, _next_delay(sc, rng))


async def serial_scanner(
    fd: int,
    *,
    sc: StoreScenario,
    items: list[dict[str, Any]],
    stats: StoreStats,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """A serial scanner in ACK/NAK host mode: sessions of shelf labels closed by "end order"."""
    async with SerialScannerSim(fd, ack_mode=True) as scanner:
        await _wait(stop, rng.uniform(*FIRST_DEVICE_DELAY_S))
        while not stop.is_set():
            texts = order_texts([f"{g}:{q}" for g, q in _order_specs(items, rng)], end=True)
            ok = True
            for text in texts:
                beep = await scanner.scan(text)
                if isinstance(beep, GoodBeep):
                    stats.scans_acked += 1
                else:
                    ok = False
                    stats.scans_refused += 1
                    log.warning("%s serial scanner: %r refused: %s", sc.store_id, text, beep)
                await asyncio.sleep(SCAN_INTERVAL_S)
            if ok:
                stats.scanner_orders += 1
            await _wait(stop, _next_delay(sc, rng))


async def hid_scanner(
    path: str,
    *,
    sc: StoreScenario,
    items: list[dict[str, Any]],
    stats: StoreStats,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """A keyboard-wedge scanner: each session's key events written to the gateway's event path."""
    await _wait(stop, rng.uniform(*FIRST_DEVICE_DELAY_S))
    while not stop.is_set():
        for text in order_texts([f"{g}:{q}" for g, q in _order_specs(items, rng)], end=True):
            await asyncio.to_thread(hid_sim.write_scans, path, [text])
            await asyncio.sleep(SCAN_INTERVAL_S)
        stats.hid_orders += 1  # no return channel: the gateway logs what it refused
        await _wait(stop, _next_delay(sc, rng))


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
            devices = {
                "handheld": (handheld, sc.handheld_fd),
                "serial-scanner": (serial_scanner, sc.scanner_fd),
            }
            for name, (fn, fd) in devices.items():
                if fd is not None:
                    dev_rng = random.Random(rng.random())
                    tg.create_task(fn(fd, sc=sc, items=items, stats=stats, rng=dev_rng, stop=stop), name=name)
            if sc.hid_path is not None:
                hid_rng = random.Random(rng.random())
                tg.create_task(
                    hid_scanner(sc.hid_path, sc=sc, items=items, stats=stats, rng=hid_rng, stop=stop),
                    name="hid-scanner",
                )
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
    p.add_argument("--handheld-fd", type=int, help="PTY master fd for a handheld terminal (BHT uploads)")
    p.add_argument("--terminal", default="HT01", help="the handheld's terminal id (4 of 0-9A-Z)")
    p.add_argument("--scanner-fd", type=int, help="PTY master fd for a serial scanner (ACK/NAK host mode)")
    p.add_argument("--hid-path", help="FIFO or file for a USB-HID scanner's input_event records")
    p.add_argument("--device-rate", type=float, default=0.1, help="orders per second per device")
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
        handheld_fd=a.handheld_fd,
        terminal=a.terminal,
        scanner_fd=a.scanner_fd,
        hid_path=a.hid_path,
        device_rate=a.device_rate,
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
