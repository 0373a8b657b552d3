"""Store stock and the safety-stock reorder (gateway/stock.py) on a real SQLite file."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import stock
from gateway.app import migrations as gateway_migrations
from gateway.items import Item, upsert_items
from gateway.outbox import Outbox
from gateway.stock import Applied, ConflictingRepeat, StockBook, UnknownItem, reorder_qty
from protocols import pos
from protocols.envelope import Ack, AckStatus
from protocols.pos import GoodsReceipt, PosTransaction, ReceiptLine, ReturnLine, SaleLine, VoidLine
from protocols.records import parse_order
from runtime.sqlitedb import DurableDB

DAY = dt.date(2026, 3, 14)
PEN = Item(gtin="4006381333931", sku="SKU-PEN", pack_size=6, safety_stock=5, order_up_to=20)
MILK = Item(gtin="96385074", sku="SKU-MILK", pack_size=1, safety_stock=2, order_up_to=10)
LOOSE = Item(gtin="5901234123457", sku="SKU-LOOSE")  # no reorder parameters


def migrations() -> list:  # type: ignore[type-arg]
    names = {m.name for m in gateway_migrations()}
    return [*gateway_migrations(), *(m for m in stock.MIGRATIONS if m.name not in names)]


class Store:
    def __init__(self, db: DurableDB) -> None:
        self.db = db
        self.outbox = Outbox(db)
        self.book = StockBook(outbox=self.outbox, customer="S001", today=lambda: DAY)
        self.seq = 0

    async def sell(self, *lines: tuple[str, int], ws: str = "POS-01", seq: int | None = None) -> Applied:
        if seq is None:
            self.seq += 1
            seq = self.seq
        tx = make_tx(
            seq,
            [
                SaleLine(i + 1, item, q) if q > 0 else ReturnLine(i + 1, item, -q)
                for i, (item, q) in enumerate(lines)
            ],
            ws=ws,
        )
        return await self.db.write(lambda c: self.book.apply_pos(c, tx))

    async def receive(self, rid: str, *lines: tuple[str, int]) -> Applied:
        r = GoodsReceipt(rid, tuple(ReceiptLine(i, q) for i, q in lines))
        return await self.db.write(lambda c: self.book.apply_receipt(c, r))

    async def count(self, sku: str, n: int) -> Applied:
        return await self.db.write(lambda c: self.book.count(c, sku, n))

    async def level(self, sku: str) -> stock.StockLevel:
        lv = await self.db.read(lambda c: stock.stock_level(c, sku))
        assert lv is not None
        return lv

    async def orders(self) -> list[dict]:  # type: ignore[type-arg]
        rows = await self.db.read(lambda c: c.execute("SELECT packed FROM outbox ORDER BY seq").fetchall())
        return [msgpack.unpackb(r[0])["body"] for r in rows]


def make_tx(seq: int, lines: list[pos.LineItem], ws: str = "POS-01") -> PosTransaction:
    return PosTransaction(
        retail_store_id="store-001",
        workstation_id=ws,
        sequence_number=seq,
        business_day_date=DAY,
        end_date_time=dt.datetime(2026, 3, 14, 10, tzinfo=dt.UTC),
        lines=tuple(lines),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = DurableDB(tmp_path / "gw.db", migrations=migrations())
    await db.open()
    await db.write(lambda c: upsert_items(c, [PEN, MILK, LOOSE]))
    try:
        yield Store(db)
    finally:
        await db.close()


# -- the rule, pure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (6, 0, 5, 20, 6, 0),  # above safety stock
        (5, 0, 5, 20, 6, 18),  # at safety: 15 -> 18
        (4, 0, 5, 20, 6, 18),  # 16 -> 18
        (2, 0, 5, 20, 6, 18),  # 18 exactly
        (-3, 0, 5, 20, 6, 24),  # negative on-hand: 23 -> 24
        (2, 3, 5, 20, 1, 15),  # on-order counts
        (0, 0, 0, 0, 1, 0),  # item not managed
        (0, 0, 10, 5, 1, 5),  # up-to below safety: orders up to the level
        (10, 0, 10, 5, 1, 0),  # nothing needed to reach up-to
        (-(10**9), 0, 5, 20, 7, 99_995),  # capped at the order line limit, still a pack multiple
    ],
)
def test_reorder_qty(case: tuple[int, int, int, int, int, int]) -> None:
    on_hand, on_order, safety, up_to, pack, qty = case
    got = reorder_qty(
        on_hand=on_hand, on_order=on_order, safety_stock=safety, order_up_to=up_to, pack_size=pack
    )
    assert got == qty


@given(
    st.integers(-1000, 1000),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(1, 1000),
    st.integers(1, 48),
)
def test_reorder_qty_reaches_the_level_with_whole_packs(
    on_hand: int, on_order: int, safety: int, up_to: int, pack: int
) -> None:
    qty = reorder_qty(
        on_hand=on_hand, on_order=on_order, safety_stock=safety, order_up_to=up_to, pack_size=pack
    )
    position = on_hand + on_order
    if position > safety or position >= up_to:
        assert qty == 0
    else:
        assert qty % pack == 0
        assert position + qty >= up_to > position + qty - pack


# -- movements ------------------------------------------------------------------------------


async def test_sales_decrement_and_the_reorder_is_raised_once_at_the_threshold(store: Store) -> None:
    await store.count("SKU-PEN", 12)
    r = await store.sell(("SKU-PEN", 3), (PEN.gtin, 3))  # SKU and GTIN name the same item
    assert r.on_hand == {"SKU-PEN": 6} and r.reorders == ()
    r = await store.sell(("SKU-PEN", 1))  # 5 <= safety 5: order 15 -> 18 (pack 6)
    assert r.on_hand == {"SKU-PEN": 5}
    [reorder] = r.reorders
    assert (reorder.sku, reorder.qty) == ("SKU-PEN", 18)
    [order] = await store.orders()
    parsed = parse_order(order)
    assert parsed.channel == "pos-auto" and parsed.order_type == "normal" and parsed.customer == "S001"
    assert parsed.requested_date == DAY + dt.timedelta(days=1)
    assert [(ln.sku, ln.qty) for ln in parsed.lines] == [("SKU-PEN", 18)]
    assert parsed.source_ref == "pos:store-001/POS-01/2026-03-14/2"
    lv = await store.level("SKU-PEN")
    assert (lv.on_hand, lv.on_order, lv.open_reorder) == (5, 18, reorder.record_id)
    for _ in range(4):  # further drops: no second reorder while one is open
        r = await store.sell(("SKU-PEN", 1))
        assert r.reorders == ()
    assert len(await store.orders()) == 1
    assert (await store.level("SKU-PEN")).on_hand == 1


async def test_receipt_closes_on_order_and_a_later_drop_raises_a_new_one(store: Store) -> None:
    await store.count("SKU-MILK", 3)
    [first] = (await store.sell(("SKU-MILK", 1))).reorders  # 2 <= 2: order 8
    assert first.qty == 8
    r = await store.receive("DN-1", (MILK.gtin, 8))
    assert r.on_hand == {"SKU-MILK": 10} and r.reorders == ()
    lv = await store.level("SKU-MILK")
    assert (lv.on_order, lv.open_reorder) == (0, None)
    assert (await store.sell(("SKU-MILK", 7))).reorders == ()  # 3 > 2
    [second] = (await store.sell(("SKU-MILK", 1))).reorders
    assert second.qty == 8 and second.record_id != first.record_id
    assert len(await store.orders()) == 2


async def test_short_delivery_closes_the_reorder_and_orders_the_rest(store: Store) -> None:
    await store.count("SKU-MILK", 0)  # 0 <= 2: order 10
    assert (await store.level("SKU-MILK")).on_order == 10
    r = await store.receive("DN-2", ("SKU-MILK", 1))  # only 1 came: 1 <= 2, order 9 more
    assert [x.qty for x in r.reorders] == [9]
    lv = await store.level("SKU-MILK")
    assert (lv.on_hand, lv.on_order) == (1, 9)


async def test_returns_and_voids(store: Store) -> None:
    await store.count("SKU-MILK", 9)
    tx = make_tx(50, [SaleLine(1, "SKU-MILK", 4), ReturnLine(2, "SKU-MILK", 1), VoidLine(3, 1)])
    r = await store.db.write(lambda c: store.book.apply_pos(c, tx))
    assert r.on_hand == {"SKU-MILK": 10}


async def test_duplicate_transaction_is_not_applied_twice(store: Store) -> None:
    await store.count("SKU-MILK", 3)
    first = await store.sell(("SKU-MILK", 1), seq=900)
    again = await store.sell(("SKU-MILK", 1), seq=900)
    assert not first.duplicate and again.duplicate
    assert again.reorders == first.reorders and len(first.reorders) == 1
    assert (await store.level("SKU-MILK")).on_hand == 2
    assert len(await store.orders()) == 1
    other_till = await store.sell(("SKU-MILK", 1), seq=900, ws="POS-02")  # another key
    assert not other_till.duplicate
    with pytest.raises(ConflictingRepeat):
        await store.sell(("SKU-MILK", 2), seq=900)
    assert (await store.level("SKU-MILK")).on_hand == 1


async def test_unknown_item_refuses_the_whole_transaction(store: Store) -> None:
    await store.count("SKU-MILK", 5)
    with pytest.raises(UnknownItem) as ei:
        await store.sell(("SKU-MILK", 1), ("SKU-NOPE", 1), seq=77)
    assert ei.value.item_id == "SKU-NOPE" and "SequenceNumber=2" in ei.value.field
    assert (await store.level("SKU-MILK")).on_hand == 5
    assert (
        await store.db.read(lambda c: c.execute("SELECT count(*) FROM pos_transactions").fetchone()[0]) == 0
    )
    with pytest.raises(UnknownItem):
        await store.receive("DN-9", ("4000000000006", 1))


async def test_items_without_reorder_parameters_never_reorder(store: Store) -> None:
    r = await store.sell(("SKU-LOOSE", 5))
    assert r.on_hand == {"SKU-LOOSE": -5} and r.reorders == ()


async def test_a_rejected_reorder_is_closed_at_the_next_movement(store: Store) -> None:
    await store.count("SKU-MILK", 3)
    [first] = (await store.sell(("SKU-MILK", 1))).reorders
    await store.outbox.apply_acks([Ack(id=first.record_id, status=AckStatus.REJECTED, reason="no credit")])
    [second] = (await store.sell(("SKU-MILK", 1))).reorders
    assert second.record_id != first.record_id and second.qty == 9  # 1 + 0 -> up to 10
    closed_by = await store.db.read(
        lambda c: c.execute(
            "SELECT closed_by FROM stock_reorders WHERE record_id = ?", (first.record_id,)
        ).fetchone()[0]
    )
    assert closed_by == "rejected by central"


async def test_second_open_reorder_is_impossible_in_the_schema(store: Store) -> None:
    def two(c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO stock_reorders (record_id, sku, qty, raised_at, trigger) VALUES ('a', 'X', 1, 0, '')"
        )
        c.execute(
            "INSERT INTO stock_reorders (record_id, sku, qty, raised_at, trigger) VALUES ('b', 'X', 1, 0, '')"
        )

    with pytest.raises(sqlite3.IntegrityError):
        await store.db.write(two)
