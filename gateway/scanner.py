"""Scan-to-order sessions shared by the serial and HID scanner adapters.

One open session per scanner device, kept in SQLite (``scanner_sessions`` /
``scanner_lines``) so it survives a gateway restart. Every accepted scan is committed before
:meth:`ScanSessions.scan` returns, so an adapter that acknowledges the device after
``scan()`` acknowledges only durable scans. Closing a session (``SG-END`` or the idle timeout)
deletes its lines and adds ONE ``order`` record to the outbox in the same transaction.
Rules: ``protocols/BARCODES.md`` (session rules).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import GatewayError, edge_checks, items
from gateway.outbox import Outbox
from protocols.barcode import (
    DEFAULT_OPTIONS,
    BarcodeError,
    ControlAction,
    ControlCode,
    ParseOptions,
    ScanResult,
    parse_scan,
)
from protocols.envelope import Record
from protocols.records import MAX_LINES, Channel, OrderBody, OrderLine, OrderType
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 15 * 60.0  # an open session with no scan for this long is closed into an order
LEAD_DAYS = 1  # requested delivery date = today + LEAD_DAYS

MIGRATIONS = [
    Migration(
        "scanner_0001",
        """
        CREATE TABLE scanner_sessions (
            device_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            opened_at REAL NOT NULL,
            last_scan_at REAL NOT NULL,
            pending_qty INTEGER
        );
        CREATE TABLE scanner_lines (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL
                REFERENCES scanner_sessions(session_id) ON DELETE CASCADE,
            gtin TEXT NOT NULL,
            sku TEXT,
            qty INTEGER NOT NULL,
            location TEXT,
            raw TEXT NOT NULL,
            scanned_at REAL NOT NULL
        );
        CREATE INDEX scanner_lines_session ON scanner_lines(session_id, id);
        """,
    )
]


class ScanRefused(GatewayError):
    """A scan the session will not take; nothing was written."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    accepted: bool
    action: str = ""  # line / qty / setlast / undo / end / cancel
    code: str = ""  # refusal kind (BarcodeErrorKind value, unknown-gtin, no-line ...)
    reason: str = ""  # refusal reason for a person
    gtin: str | None = None
    qty: int | None = None
    record: Record | None = None  # the order record, when the scan closed a session


@dataclass
class ScannerCounters:
    """Per-adapter counters (Prometheus comes later)."""

    reads: int = 0  # lines/frames decoded from the device
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    decode_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0  # resends of a read we NAKed (serial host mode)
    orders: int = 0

    def count(self, outcome: ScanOutcome) -> None:
        if outcome.accepted:
            self.accepted += 1
            if outcome.record is not None:
                self.orders += 1
        else:
            self.refused[outcome.code] += 1


@dataclass(frozen=True, slots=True)
class OpenLine:
    gtin: str
    sku: str | None
    qty: int
    location: str | None


@dataclass(frozen=True, slots=True)
class OpenSession:
    device_id: str
    session_id: str
    channel: Channel
    pending_qty: int | None
    last_scan_at: float
    lines: tuple[OpenLine, ...]


class ScanSessions:
    """All scanner devices' open sessions on one gateway database.

    ``db`` must have been opened with :data:`MIGRATIONS` (plus the outbox's and items'
    migrations). ``customer`` is the store's customer code at central.
    """

    def __init__(
        self,
        *,
        db: DurableDB,
        outbox: Outbox,
        customer: str,
        options: ParseOptions = DEFAULT_OPTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        lead_days: int = LEAD_DAYS,
        clock: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.customer = customer
        self.options = options
        self.idle_timeout_s = idle_timeout_s
        self.lead_days = lead_days
        self.clock = clock
        self.today = today
        self._changed = asyncio.Event()

    # -- scanning -----------------------------------------------------------------------------

    async def scan(self, device_id: str, channel: Channel, text: str) -> ScanOutcome:
        """Apply one scan; returns after the commit (accepted) or with the refusal."""
        try:
            parsed = parse_scan(text, self.options)
        except BarcodeError as e:
            return self._refused(device_id, e.kind.value, e.reason, text)
        now = self.clock()
        if isinstance(parsed, ControlCode):
            job = self._control_job(device_id, channel, parsed, now)
        else:
            job = self._label_job(device_id, channel, parsed, now)
        try:
            outcome = await self.db.write(job)
        except ScanRefused as e:
            return self._refused(device_id, e.code, e.reason, text)
        except StorageFull as e:  # nothing recorded: the scanner gets its NAK / error beep
            return self._refused(device_id, "storage_full", f"gateway storage full ({e.reason})", text)
        self._changed.set()
        if outcome.record is not None:
            self.outbox.notify()
            log.info(
                "scanner %s: order %s closed (%d lines)",
                device_id,
                outcome.record.id,
                len(outcome.record.body["lines"]),
            )
        else:
            log.debug("scanner %s: %s %s qty=%s", device_id, outcome.action, outcome.gtin, outcome.qty)
        return outcome

    @staticmethod
    def _refused(device_id: str, code: str, reason: str, text: str) -> ScanOutcome:
        log.warning("scanner %s: refused %r: %s (%s)", device_id, text[:80], reason, code)
        return ScanOutcome(False, code=code, reason=reason)

    def _label_job(
        self, device_id: str, channel: Channel, r: ScanResult, now: float
    ) -> Callable[[sqlite3.Connection], ScanOutcome]:
        def job(conn: sqlite3.Connection) -> ScanOutcome:
            item = items.lookup_gtin(conn, r.gtin)
            if item is None:  # a scanner needs the item to beep OK
                raise ScanRefused("unknown-gtin", f"GTIN {r.gtin} is not in the item master")
            sid, pending = _session(conn, device_id, channel, now)
            qty = pending or r.count or 1
            same = conn.execute(
                "SELECT count(*), coalesce(sum(qty), 0) FROM scanner_lines WHERE session_id = ? AND gtin = ?",
                (sid, r.gtin),
            ).fetchone()
            if same[0] == 0:
                (distinct,) = conn.execute(
                    "SELECT count(DISTINCT gtin) FROM scanner_lines WHERE session_id = ?", (sid,)
                ).fetchone()
                if distinct >= MAX_LINES:
                    raise ScanRefused("order-full", f"order full ({MAX_LINES} items) - scan SG-END")
            self._check_line(conn, OrderLine(qty=same[1] + qty, gtin=r.gtin))
            conn.execute(
                "INSERT INTO scanner_lines (session_id, gtin, sku, qty, location, raw, scanned_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, r.gtin, item.sku, qty, r.location, r.raw, now),
            )
            conn.execute(
                "UPDATE scanner_sessions SET pending_qty = NULL, last_scan_at = ? WHERE device_id = ?",
                (now, device_id),
            )
            return ScanOutcome(True, action="line", gtin=r.gtin, qty=qty)

        return job

    def _control_job(
        self, device_id: str, channel: Channel, c: ControlCode, now: float
    ) -> Callable[[sqlite3.Connection], ScanOutcome]:
        def job(conn: sqlite3.Connection) -> ScanOutcome:
            if c.action is ControlAction.QTY:
                _session(conn, device_id, channel, now)
                conn.execute(
                    "UPDATE scanner_sessions SET pending_qty = ?, last_scan_at = ? WHERE device_id = ?",
                    (c.qty, now, device_id),
                )
                return ScanOutcome(True, action="qty", qty=c.qty)
            row = conn.execute(
                "SELECT session_id FROM scanner_sessions WHERE device_id = ?", (device_id,)
            ).fetchone()
            if c.action is ControlAction.CANCEL:
                if row is None:
                    raise ScanRefused("nothing-to-order", "no open order to cancel")
                conn.execute("DELETE FROM scanner_sessions WHERE device_id = ?", (device_id,))
                return ScanOutcome(True, action="cancel")
            if c.action is ControlAction.END:
                rec = self._close(conn, device_id) if row is not None else None
                if rec is None:
                    raise ScanRefused("nothing-to-order", "no lines scanned - nothing to order")
                return ScanOutcome(True, action="end", record=rec)
            last = (
                conn.execute(
                    "SELECT id, gtin, qty FROM scanner_lines WHERE session_id = ? ORDER BY id DESC LIMIT 1",
                    (row[0],),
                ).fetchone()
                if row is not None
                else None
            )
            if last is None:
                raise ScanRefused("no-line", f"{c.action}: no line scanned yet")
            line_id, gtin, old_qty = last
            if c.action is ControlAction.UNDO:
                conn.execute("DELETE FROM scanner_lines WHERE id = ?", (line_id,))
                qty = None
            else:  # SETLAST
                assert c.qty is not None
                (total,) = conn.execute(
                    "SELECT sum(qty) FROM scanner_lines WHERE session_id = ? AND gtin = ?",
                    (row[0], gtin),
                ).fetchone()
                self._check_line(conn, OrderLine(qty=total - old_qty + c.qty, gtin=gtin))
                conn.execute("UPDATE scanner_lines SET qty = ? WHERE id = ?", (c.qty, line_id))
                qty = c.qty
            conn.execute("UPDATE scanner_sessions SET last_scan_at = ? WHERE device_id = ?", (now, device_id))
            return ScanOutcome(True, action=c.action.value.lower(), gtin=gtin, qty=qty)

        return job

    def _body(self, channel: Channel, lines: tuple[OrderLine, ...], source_ref: str = "") -> OrderBody:
        return OrderBody(
            customer=self.customer,
            channel=channel,
            order_type=OrderType.NORMAL,
            requested_date=self.today() + dt.timedelta(days=self.lead_days),
            lines=lines,
            source_ref=source_ref,
        )

    def _check_line(self, conn: sqlite3.Connection, line: OrderLine) -> None:
        """The edge checks on the line this scan would make (its GTIN's total in the session)."""
        v = edge_checks.check_order(
            conn, self._body(Channel.SCANNER, (line,)), store_customer=self.customer, credit=False
        )
        for r in v.refusals:
            code = "qty-too-large" if r.field == "qty" else "unknown-gtin" if r.field == "gtin" else r.field
            raise ScanRefused(code, r.reason)

    def _close(self, conn: sqlite3.Connection, device_id: str) -> Record | None:
        """Turn the device's open session into one order record (or drop it if empty)."""
        row = conn.execute(
            "SELECT session_id, channel FROM scanner_sessions WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            return None
        sid, channel = row
        lines = conn.execute(
            "SELECT gtin, min(sku), sum(qty) FROM scanner_lines WHERE session_id = ?"
            " GROUP BY gtin ORDER BY min(id)",
            (sid,),
        ).fetchall()
        rec = None
        if lines:
            body = self._body(
                Channel(channel), tuple(OrderLine(qty=q, gtin=g, sku=s) for g, s, q in lines), device_id
            )
            # every line passed the edge checks when it was scanned (the clerk had the beep);
            # the credit check runs on the whole order now
            verdict = edge_checks.check_order(conn, body, store_customer=self.customer)
            rec = self.outbox.add(conn, "order", body.to_wire(), record_id=sid)
            edge_checks.record_entry(conn, rec, self.customer, verdict)
            if verdict.credit is not edge_checks.Credit.PASS:
                log.warning(
                    "scanner %s: order %s credit %s: %s",
                    device_id,
                    sid,
                    verdict.credit,
                    verdict.credit_detail,
                )
        conn.execute("DELETE FROM scanner_sessions WHERE device_id = ?", (device_id,))
        return rec

    # -- idle timeout -------------------------------------------------------------------------

    async def close_idle(self) -> list[Record]:
        """Close every session idle for ``idle_timeout_s``; returns the order records."""
        cutoff = self.clock() - self.idle_timeout_s

        def job(conn: sqlite3.Connection) -> list[Record]:
            devices = [
                d
                for (d,) in conn.execute(
                    "SELECT device_id FROM scanner_sessions WHERE last_scan_at <= ?", (cutoff,)
                )
            ]
            return [r for d in devices if (r := self._close(conn, d)) is not None]

        records = await self.db.write(job)
        if records:
            self.outbox.notify(len(records))
            for r in records:
                log.info("scanner %s: idle order %s closed", r.body["source_ref"], r.id)
        return records

    async def next_idle_deadline(self) -> float | None:
        def q(conn: sqlite3.Connection) -> float | None:
            (t,) = conn.execute("SELECT min(last_scan_at) FROM scanner_sessions").fetchone()
            return None if t is None else float(t) + self.idle_timeout_s

        return await self.db.read(q)

    def wake(self) -> None:
        """Make :meth:`run` re-evaluate the idle deadline now (e.g. after a clock change)."""
        self._changed.set()

    async def run(self) -> None:
        """Close idle sessions when they time out (run under the gateway's TaskGroup).
        Also closes, at start, sessions that timed out while the gateway was down."""
        while True:
            self._changed.clear()
            deadline = await self.next_idle_deadline()
            if deadline is not None and deadline <= self.clock():
                try:
                    await self.close_idle()
                except StorageFull as e:  # the sessions stay open; closed once there is room
                    log.warning("scanner sessions: idle close postponed: %s", e)
                    await self.db.wait_writable()
                continue
            timeout = None if deadline is None else deadline - self.clock()
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass

    # -- inspection ---------------------------------------------------------------------------

    async def open_session(self, device_id: str) -> OpenSession | None:
        def q(conn: sqlite3.Connection) -> OpenSession | None:
            row = conn.execute(
                "SELECT session_id, channel, pending_qty, last_scan_at FROM scanner_sessions"
                " WHERE device_id = ?",
                (device_id,),
            ).fetchone()
            if row is None:
                return None
            lines = conn.execute(
                "SELECT gtin, sku, qty, location FROM scanner_lines WHERE session_id = ? ORDER BY id",
                (row[0],),
            ).fetchall()
            return OpenSession(
                device_id, row[0], Channel(row[1]), row[2], row[3], tuple(OpenLine(*ln) for ln in lines)
            )

        return await self.db.read(q)


def _session(
    conn: sqlite3.Connection, device_id: str, channel: Channel, now: float
) -> tuple[str, int | None]:
    row = conn.execute(
        "SELECT session_id, pending_qty FROM scanner_sessions WHERE device_id = ?", (device_id,)
    ).fetchone()
    if row is not None:
        return row[0], row[1]
    sid = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO scanner_sessions (device_id, session_id, channel, opened_at, last_scan_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (device_id, sid, channel.value, now, now),
    )
    return sid, None
