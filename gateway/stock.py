"""Store stock per SKU and the safety-stock reorder.

Everything here runs inside ONE ``db.write`` job per POS transaction / goods receipt /
stock count, so the stock movement, the duplicate marker and any replenishment order record
in the outbox commit together or not at all.

Rules (also in ``protocols/POS.md``):

- a POS sale takes ``Quantity`` off on-hand, a return puts it back, a voided line has no
  effect; on-hand may go negative (the till cannot refuse a sale the books did not expect);
- a goods receipt adds to on-hand and closes the SKU's open reorder (whatever quantity came:
  a short delivery is not waited for, the reorder check below runs again at once);
- after every movement of a SKU: if no reorder is open and
  ``on_hand + on_order <= safety_stock`` (and the item has an ``order_up_to`` level), raise
  ONE ``order`` record (channel ``pos-auto``) for ``order_up_to - (on_hand + on_order)``
  rounded UP to the pack size. While it is open its quantity is the SKU's on-order;
  a partial unique index makes a second open reorder impossible;
- a reorder central rejected (its ack said ``rejected``) is closed the next time the SKU
  moves, so a rejection cannot block replenishment for ever;
- a POS transaction is identified by store/workstation/business day/sequence number, a
  receipt by its ``receipt_id``: a repeat with the same content is answered with the first
  result and changes nothing; a repeat with different content is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from gateway import GatewayError, edge_checks
from gateway.items import Item, lookup_gtin, lookup_sku
from gateway.outbox import Outbox
from protocols.pos import GoodsReceipt, PosTransaction, VoidLine, is_gtin
from protocols.records import MAX_QTY, Channel, OrderBody, OrderLine, OrderType
from runtime.clock import now_ms
from runtime.sqlitedb import Migration

log = logging.getLogger(__name__)

LEAD_DAYS = 1  # requested delivery date of a reorder = today + LEAD_DAYS
RECORD_TYPE = "order"

MIGRATIONS = [
    Migration(
        "stock_0001",
        """
        CREATE TABLE stock (
            sku TEXT PRIMARY KEY,
            on_hand INTEGER NOT NULL DEFAULT 0,
            on_order INTEGER NOT NULL DEFAULT 0,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE stock_reorders (
            record_id TEXT PRIMARY KEY,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            raised_at INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            closed_at INTEGER,
            closed_by TEXT,
            received INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX stock_reorders_one_open ON stock_reorders(sku) WHERE closed_at IS NULL;
        CREATE TABLE pos_transactions (
            tx_key TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            applied_at INTEGER NOT NULL,
            result TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE stock_receipts (
            receipt_id TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            applied_at INTEGER NOT NULL,
            result TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    )
]


class StockError(GatewayError):
    """A POS transaction, receipt or count the store cannot take; nothing was written."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownItem(StockError):
    def __init__(self, field: str, item_id: str) -> None:
        super().__init__(field, f"unknown item {item_id!r} (not in the gateway's item master)")
        self.item_id = item_id


class ConflictingRepeat(StockError):
    """Same transaction key / receipt id as an earlier one, different content."""


@dataclass(frozen=True, slots=True)
class Reorder:
    record_id: str
    sku: str
    qty: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.record_id, "sku": self.sku, "qty": self.qty}


@dataclass(frozen=True, slots=True)
class Applied:
    """What one POS transaction, receipt or count did (or did the first time, for a repeat)."""

    ref: str
    duplicate: bool
    on_hand: dict[str, int]  # sku -> on-hand after
    reorders: tuple[Reorder, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "status": "duplicate" if self.duplicate else "applied",
            "on_hand": self.on_hand,
            "reorders": [r.to_json() for r in self.reorders],
        }


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    on_hand: int
    on_order: int
    open_reorder: str | None
    safety_stock: int
    order_up_to: int
    pack_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "on_hand": self.on_hand,
            "on_order": self.on_order,
            "open_reorder": self.open_reorder,
            "safety_stock": self.safety_stock,
            "order_up_to": self.order_up_to,
            "pack_size": self.pack_size,
        }


def reorder_qty(*, on_hand: int, on_order: int, safety_stock: int, order_up_to: int, pack_size: int) -> int:
    """The replenishment quantity the rule asks for now, 0 for none (pure)."""
    position = on_hand + on_order
    if order_up_to <= 0 or position > safety_stock:
        return 0
    need = order_up_to - position
    if need <= 0:
        return 0
    pack = max(pack_size, 1)
    qty = -(-need // pack) * pack
    return min(qty, (MAX_QTY // pack) * pack)


def _digest(obj: PosTransaction | GoodsReceipt) -> str:
    return hashlib.sha256(json.dumps(asdict(obj), sort_keys=True, default=str).encode()).hexdigest()


class StockBook:
    """Stock movements on a connection inside the caller's write job."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        customer: str,
        lead_days: int = LEAD_DAYS,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        if not customer:
            raise ValueError("customer: the store's customer code at central is needed to raise reorders")
        self.outbox = outbox
        self.customer = customer
        self.lead_days = lead_days
        self.today = today

    # -- POS --------------------------------------------------------------------------------
    def apply_pos(self, conn: sqlite3.Connection, tx: PosTransaction) -> Applied:
        key = str(tx.key)
        digest = _digest(tx)
        prior = self._prior(conn, "pos_transactions", "tx_key", key, digest)
        if prior is not None:
            return prior
        items = self._resolve(conn, tx)
        deltas: dict[str, int] = {}
        for item_id, delta in tx.stock_deltas().items():
            sku = items[item_id].sku
            deltas[sku] = deltas.get(sku, 0) + delta
        result = self._move(conn, deltas, items_by_sku(items.values()), trigger=f"pos:{key}", ref=key)
        self._remember(conn, "pos_transactions", "tx_key", key, digest=digest, result=result)
        log.debug("pos %s applied: %s", key, deltas)
        return result

    def _resolve(self, conn: sqlite3.Connection, tx: PosTransaction) -> dict[str, Item]:
        out: dict[str, Item] = {}
        for ln in tx.lines:
            if isinstance(ln, VoidLine) or ln.item_id in out:
                continue
            item = _lookup(conn, ln.item_id)
            if item is None:
                where = (
                    f"Transaction.RetailTransaction.LineItem(SequenceNumber={ln.sequence_number})"
                    f".{ln.kind.value}.ItemID"
                )
                raise UnknownItem(where, ln.item_id)
            out[ln.item_id] = item
        return out

    # -- goods receipt ------------------------------------------------------------------------
    def apply_receipt(self, conn: sqlite3.Connection, receipt: GoodsReceipt) -> Applied:
        digest = _digest(receipt)
        prior = self._prior(conn, "stock_receipts", "receipt_id", receipt.receipt_id, digest)
        if prior is not None:
            return prior
        deltas: dict[str, int] = {}
        found: list[Item] = []
        for i, ln in enumerate(receipt.lines):
            item = _lookup(conn, ln.item_id)
            if item is None:
                raise UnknownItem(f"lines[{i}].{'gtin' if is_gtin(ln.item_id) else 'sku'}", ln.item_id)
            found.append(item)
            deltas[item.sku] = deltas.get(item.sku, 0) + ln.quantity
        ref = f"receipt:{receipt.receipt_id}"
        now = now_ms()
        for sku, qty in deltas.items():
            closed = conn.execute(
                "UPDATE stock_reorders SET closed_at = ?, closed_by = ?, received = ?"
                " WHERE sku = ? AND closed_at IS NULL RETURNING qty",
                (now, ref, qty, sku),
            ).fetchone()
            if closed is not None:
                conn.execute("UPDATE stock SET on_order = on_order - ? WHERE sku = ?", (closed[0], sku))
        result = self._move(conn, deltas, items_by_sku(found), trigger=ref, ref=receipt.receipt_id)
        self._remember(conn, "stock_receipts", "receipt_id", receipt.receipt_id, digest=digest, result=result)
        return result

    # -- stock count -----------------------------------------------------------------------
    def count(self, conn: sqlite3.Connection, sku: str, on_hand: int) -> Applied:
        """Set on-hand from a physical count (stocktake); the reorder rule runs after it."""
        item = lookup_sku(conn, sku)
        if item is None:
            raise UnknownItem("sku", sku)
        before = _on_hand(conn, sku)
        return self._move(conn, {sku: on_hand - before}, {sku: item}, trigger=f"count:{sku}", ref=sku)

    # -- shared -----------------------------------------------------------------------------
    def _move(
        self,
        conn: sqlite3.Connection,
        deltas: dict[str, int],
        items: dict[str, Item],
        *,
        trigger: str,
        ref: str,
    ) -> Applied:
        now = now_ms()
        on_hand: dict[str, int] = {}
        reorders: list[Reorder] = []
        for sku in sorted(deltas):
            row = conn.execute(
                "INSERT INTO stock (sku, on_hand, on_order, updated_at) VALUES (?, ?, 0, ?)"
                " ON CONFLICT(sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand,"
                " updated_at = excluded.updated_at RETURNING on_hand, on_order",
                (sku, deltas[sku], now),
            ).fetchone()
            on_hand[sku] = row[0]
            r = self._check_reorder(conn, items[sku], row[0], row[1], trigger=trigger, now=now)
            if r is not None:
                reorders.append(r)
        return Applied(ref=ref, duplicate=False, on_hand=on_hand, reorders=tuple(reorders))

    def _check_reorder(
        self, conn: sqlite3.Connection, item: Item, on_hand: int, on_order: int, *, trigger: str, now: int
    ) -> Reorder | None:
        open_row = conn.execute(
            "SELECT r.record_id, r.qty, res.status FROM stock_reorders r"
            " LEFT JOIN record_results res ON res.id = r.record_id"
            " WHERE r.sku = ? AND r.closed_at IS NULL",
            (item.sku,),
        ).fetchone()
        if open_row is not None:
            if open_row[2] != "rejected":
                return None
            conn.execute(
                "UPDATE stock_reorders SET closed_at = ?, closed_by = 'rejected by central'"
                " WHERE record_id = ?",
                (now, open_row[0]),
            )
            on_order -= open_row[1]
            conn.execute("UPDATE stock SET on_order = ? WHERE sku = ?", (on_order, item.sku))
            log.warning("reorder %s for sku=%s was rejected by central; closed", open_row[0], item.sku)
        qty = reorder_qty(
            on_hand=on_hand,
            on_order=on_order,
            safety_stock=item.safety_stock,
            order_up_to=item.order_up_to,
            pack_size=item.pack_size,
        )
        pack = max(item.pack_size, 1)
        qty = min(qty, edge_checks.line_limit(item) // pack * pack)  # the edge's line limit, whole packs
        if qty <= 0:
            return None
        body = OrderBody(
            customer=self.customer,
            channel=Channel.POS_AUTO,
            order_type=OrderType.NORMAL,
            requested_date=self.today() + dt.timedelta(days=self.lead_days),
            lines=(OrderLine(qty=qty, sku=item.sku),),
            note=(
                f"safety-stock reorder: on-hand {on_hand} + on-order {on_order}"
                f" <= safety {item.safety_stock}; up to {item.order_up_to}, pack {item.pack_size}"
            ),
            source_ref=trigger[:64],
        )
        verdict = edge_checks.check_order(conn, body, store_customer=self.customer)
        if not verdict.accepted:
            log.warning(
                "sku=%s reorder not raised: %s", item.sku, "; ".join(r.reason for r in verdict.refusals)
            )
            return None
        rec = self.outbox.add(conn, RECORD_TYPE, body.to_wire())
        edge_checks.record_entry(conn, rec, self.customer, verdict)
        conn.execute(
            "INSERT INTO stock_reorders (record_id, sku, qty, raised_at, trigger) VALUES (?, ?, ?, ?, ?)",
            (rec.id, item.sku, qty, now, trigger),
        )
        conn.execute("UPDATE stock SET on_order = on_order + ? WHERE sku = ?", (qty, item.sku))
        log.info(
            "sku=%s reorder %s qty %d (on-hand %d, on-order %d, safety %d) after %s",
            item.sku,
            rec.id,
            qty,
            on_hand,
            on_order,
            item.safety_stock,
            trigger,
        )
        return Reorder(rec.id, item.sku, qty)

    @staticmethod
    def _prior(conn: sqlite3.Connection, table: str, col: str, key: str, digest: str) -> Applied | None:
        row = conn.execute(f"SELECT digest, result FROM {table} WHERE {col} = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[0] != digest:
            raise ConflictingRepeat(col, f"{key} was already applied with different content")
        d = json.loads(row[1])
        return Applied(
            ref=key,
            duplicate=True,
            on_hand=d["on_hand"],
            reorders=tuple(Reorder(r["id"], r["sku"], r["qty"]) for r in d["reorders"]),
        )

    @staticmethod
    def _remember(
        conn: sqlite3.Connection, table: str, col: str, key: str, *, digest: str, result: Applied
    ) -> None:
        conn.execute(
            f"INSERT INTO {table} ({col}, digest, applied_at, result) VALUES (?, ?, ?, ?)",
            (key, digest, now_ms(), json.dumps(result.to_json())),
        )


def items_by_sku(items: Iterable[Item]) -> dict[str, Item]:
    return {i.sku: i for i in items}


def _lookup(conn: sqlite3.Connection, item_id: str) -> Item | None:
    return lookup_gtin(conn, item_id) if is_gtin(item_id) else lookup_sku(conn, item_id)


def _on_hand(conn: sqlite3.Connection, sku: str) -> int:
    row = conn.execute("SELECT on_hand FROM stock WHERE sku = ?", (sku,)).fetchone()
    return int(row[0]) if row else 0


def stock_level(conn: sqlite3.Connection, sku: str) -> StockLevel | None:
    """Stock and reorder parameters of one SKU; None if neither stocked nor in the item master."""
    item = lookup_sku(conn, sku)
    row = conn.execute("SELECT on_hand, on_order FROM stock WHERE sku = ?", (sku,)).fetchone()
    if item is None and row is None:
        return None
    rid = conn.execute(
        "SELECT record_id FROM stock_reorders WHERE sku = ? AND closed_at IS NULL", (sku,)
    ).fetchone()
    return StockLevel(
        sku=sku,
        on_hand=row[0] if row else 0,
        on_order=row[1] if row else 0,
        open_reorder=rid[0] if rid else None,
        safety_stock=item.safety_stock if item else 0,
        order_up_to=item.order_up_to if item else 0,
        pack_size=item.pack_size if item else 1,
    )


def stock_levels(conn: sqlite3.Connection, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Every SKU in the item master or in stock, with one GTIN of each (for tills and sims)."""
    rows = conn.execute(
        "SELECT k.sku, min(i.gtin), coalesce(s.on_hand, 0), coalesce(s.on_order, 0),"
        " max(i.safety_stock), max(i.order_up_to), max(i.pack_size)"
        " FROM (SELECT sku FROM items UNION SELECT sku FROM stock) k"
        " LEFT JOIN items i ON i.sku = k.sku LEFT JOIN stock s ON s.sku = k.sku"
        " GROUP BY k.sku ORDER BY k.sku LIMIT ?",
        (limit,),
    ).fetchall()
    keys = ("sku", "gtin", "on_hand", "on_order", "safety_stock", "order_up_to", "pack_size")
    return [dict(zip(keys, r, strict=True)) for r in rows]
