"""POS sales, goods receipts and stock over the gateway's local HTTP (``protocols/POS.md``).

:class:`PosService` owns the store-stock side: each POS transaction, receipt or count is one
``db.write`` job (stock movement + duplicate marker + any reorder record in the outbox), and
the till gets its 201 only after that job's COMMIT. :func:`add_routes` puts the endpoints on
the gateway's aiohttp app::

    pos = PosService(db=db, outbox=box, customer=cfg.customer)
    add_routes(app, pos)
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric

from gateway.outbox import Outbox
from gateway.stock import (
    LEAD_DAYS,
    Applied,
    ConflictingRepeat,
    StockBook,
    StockError,
    StockLevel,
    UnknownItem,
)
from gateway.stock import stock_level as _stock_level
from gateway.stock import stock_levels as _stock_levels
from protocols import pos as codec
from protocols.pos import GoodsReceipt, PosFormatError, PosTransaction
from runtime.metrics import counter, labelled
from runtime.sqlitedb import DurableDB

log = logging.getLogger(__name__)

MAX_COUNT = 10_000_000


@dataclass
class PosCounters:
    transactions: int = 0  # applied (first time)
    duplicates: int = 0  # repeats answered with the first result
    lines: int = 0  # Sale/Return/Void lines applied
    receipts: int = 0
    counts: int = 0
    reorders: int = 0  # replenishment orders raised
    refused: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind

    def to_json(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "duplicates": self.duplicates,
            "lines": self.lines,
            "receipts": self.receipts,
            "counts": self.counts,
            "reorders": self.reorders,
            "refused": dict(self.refused),
        }


class WrongStore(StockError):
    pass


class PosService:
    def __init__(
        self,
        *,
        db: DurableDB,
        outbox: Outbox,
        customer: str,
        store_id: str | None = None,
        lead_days: int = LEAD_DAYS,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        """``customer``: the store's customer code at central (reorders are ordered for it).
        ``store_id``: if set, transactions naming another ``RetailStoreID`` are refused."""
        self.db = db
        self.outbox = outbox
        self.store_id = store_id
        self.book = StockBook(outbox=outbox, customer=customer, lead_days=lead_days, today=today)
        self.counters = PosCounters()
        self.on_till: Callable[[str], None] | None = None  # a till was heard from (fleet status)

    def refused(self, kind: str, e: Exception) -> None:
        self.counters.refused[kind] += 1
        log.info("pos refused (%s): %s", kind, e)

    async def _write(self, fn: Callable[[Any], Applied]) -> Applied:
        try:
            result = await self.db.write(fn)
        except UnknownItem as e:
            self.refused("unknown-item", e)
            raise
        except ConflictingRepeat as e:
            self.refused("conflict", e)
            raise
        if not result.duplicate and result.reorders:
            self.counters.reorders += len(result.reorders)
            self.outbox.notify(len(result.reorders))
        return result

    async def submit(self, tx: PosTransaction) -> Applied:
        """Apply one till transaction; durable on return. Raises :class:`StockError`."""
        if self.store_id is not None and tx.retail_store_id != self.store_id:
            e = WrongStore(
                "Transaction.RetailStoreID",
                f"{tx.retail_store_id!r}: this gateway serves store {self.store_id!r}",
            )
            self.refused("wrong-store", e)
            raise e
        result = await self._write(lambda conn: self.book.apply_pos(conn, tx))
        if result.duplicate:
            self.counters.duplicates += 1
            log.info(
                "pos %s/%s: duplicate of %s, not applied again", tx.retail_store_id, tx.workstation_id, tx.key
            )
        else:
            self.counters.transactions += 1
            self.counters.lines += len(tx.lines)
        if self.on_till is not None:
            self.on_till(tx.workstation_id)
        return result

    async def receive(self, receipt: GoodsReceipt) -> Applied:
        result = await self._write(lambda conn: self.book.apply_receipt(conn, receipt))
        if result.duplicate:
            self.counters.duplicates += 1
        else:
            self.counters.receipts += 1
        return result

    async def count(self, sku: str, on_hand: int) -> Applied:
        result = await self._write(lambda conn: self.book.count(conn, sku, on_hand))
        self.counters.counts += 1
        return result

    async def level(self, sku: str) -> StockLevel | None:
        return await self.db.read(lambda conn: _stock_level(conn, sku))

    async def levels(self) -> list[dict[str, Any]]:
        return await self.db.read(_stock_levels)

    def metrics(self) -> Iterable[Metric]:
        """Prometheus families for the gateway's collector."""
        c = self.counters
        yield counter("storegate_pos_transactions", "POS transactions applied", c.transactions)
        yield counter("storegate_pos_duplicates", "repeated transactions/receipts", c.duplicates)
        yield counter("storegate_pos_lines", "POS line items applied", c.lines)
        yield counter("storegate_stock_receipts", "goods receipts applied", c.receipts)
        yield counter("storegate_stock_reorders", "safety-stock reorders raised", c.reorders)
        yield labelled(
            CounterMetricFamily,
            "storegate_pos_refused",
            "POS transactions/receipts refused, by kind",
            ["kind"],
            [([k], v) for k, v in sorted(c.refused.items())],
        )


# -- HTTP -----------------------------------------------------------------------------------

POS_KEY = web.AppKey("pos", PosService)


def _error(status: int, fld: str, reason: str) -> web.Response:
    return web.json_response({"error": f"{fld}: {reason}", "field": fld, "reason": reason}, status=status)


def _refusal(pos: PosService, e: Exception) -> web.Response:
    if isinstance(e, PosFormatError):
        pos.refused("malformed", e)
        return _error(400 if e.field == "body" else 422, e.field, e.reason)
    if isinstance(e, ConflictingRepeat):
        return _error(409, e.field, e.reason)
    if isinstance(e, StockError):
        return _error(422, e.field, e.reason)
    raise e


async def _read(request: web.Request) -> bytes:
    """The body; over the limit, a 413 in this API's error shape (aiohttp's own is plain text)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        reason = f"larger than {codec.MAX_BODY} bytes"
        raise web.HTTPRequestEntityTooLarge(
            codec.MAX_BODY,
            request.content_length or 0,
            text=json.dumps({"error": f"body: {reason}", "field": "body", "reason": reason}),
            content_type="application/json",
        ) from None


def _answer(result: Applied) -> web.Response:
    return web.json_response(result.to_json(), status=200 if result.duplicate else 201)


async def post_transaction(request: web.Request) -> web.Response:
    pos = request.app[POS_KEY]
    try:
        tx = codec.decode(await _read(request))
        return _answer(await pos.submit(tx))
    except (PosFormatError, StockError) as e:
        return _refusal(pos, e)


async def post_receipt(request: web.Request) -> web.Response:
    pos = request.app[POS_KEY]
    try:
        receipt = codec.decode_receipt(await _read(request))
        return _answer(await pos.receive(receipt))
    except (PosFormatError, StockError) as e:
        return _refusal(pos, e)


async def put_stock(request: web.Request) -> web.Response:
    pos = request.app[POS_KEY]
    sku = request.match_info["sku"]
    try:
        body = codec.json_object(await _read(request))
        codec.only_fields(body, "body", {"on_hand"}, required={"on_hand"})
        on_hand = codec.integer(body["on_hand"], "on_hand", lo=0, hi=MAX_COUNT)
        result = await pos.count(sku, on_hand)
    except (PosFormatError, StockError) as e:
        return _refusal(pos, e)
    level = await pos.level(sku)
    assert level is not None
    return web.json_response({**level.to_json(), "reorders": [r.to_json() for r in result.reorders]})


async def get_stock(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    level = await request.app[POS_KEY].level(sku)
    if level is None:
        return _error(404, "sku", f"{sku!r} is neither stocked nor in the item master")
    return web.json_response(level.to_json())


async def list_stock(request: web.Request) -> web.Response:
    return web.json_response({"items": await request.app[POS_KEY].levels()})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[POS_KEY].counters.to_json())


def add_routes(app: web.Application, pos: PosService) -> None:
    app[POS_KEY] = pos
    app.router.add_post("/api/pos/transactions", post_transaction)
    app.router.add_get("/api/pos/stats", get_stats)
    app.router.add_post("/api/receipts", post_receipt)
    app.router.add_get("/api/stock", list_stock)
    app.router.add_get("/api/stock/{sku}", get_stock)
    app.router.add_put("/api/stock/{sku}", put_stock)
