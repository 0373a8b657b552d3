"""Handheld ordering terminal (HT) adapter: receives order batches over a serial line
(BHT-style block protocol, ``protocols/HANDHELD.md``) and commits them as orders.

Thin I/O around :class:`protocols.bht.Receiver`: the serial fd is watched with
``loop.add_reader`` (no threads), timers are ``loop.call_later``. On the final EOT the whole
batch is committed in ONE ``db.write`` job - orders into the outbox, the batch into
``ht_batches``, invalid lines into ``ht_rejects`` - and only then is the EOT ACKed.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

import serial

from gateway import edge_checks
from gateway.outbox import Outbox
from protocols import bht
from protocols.bht import (
    ORDER_FIELD_LENGTHS,
    Aborted,
    ArmTimer,
    BatchId,
    BhtFile,
    BlockRejected,
    CancelTimer,
    Completed,
    FileReceived,
    Garbage,
    HeadingReceived,
    Receiver,
    RecordError,
    Transmit,
    decode_order_record,
)
from protocols.records import MAX_LINES, Channel, OrderBody, OrderLine, OrderType
from runtime.clock import now_ms
from runtime.retry import TaskGroup
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

REOPEN_DELAY = 2.0  # s between attempts to reopen a lost serial port

MIGRATIONS = [
    Migration(
        "handheld_0001",
        """
        CREATE TABLE ht_batches (
            terminal TEXT NOT NULL,
            batch_id INTEGER NOT NULL,
            file_name TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            committed_at INTEGER NOT NULL,
            record_ids TEXT NOT NULL,
            lines INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            PRIMARY KEY (terminal, batch_id)
        );
        CREATE TABLE ht_rejects (
            terminal TEXT NOT NULL,
            batch_id INTEGER NOT NULL,
            serial INTEGER NOT NULL,
            field TEXT NOT NULL,
            reason TEXT NOT NULL,
            raw TEXT NOT NULL,
            PRIMARY KEY (terminal, batch_id, serial)
        );
        """,
    )
]


class HandheldError(Exception):
    """Base class of the HT adapter's errors."""


class BatchConflict(HandheldError):
    """The batch id was committed before with different content."""

    def __init__(self, batch: BatchId, old_hash: str, new_hash: str) -> None:
        self.batch, self.old_hash, self.new_hash = batch, old_hash, new_hash
        self.reason = (
            f"batch {batch} already committed with different content "
            f"(hash {old_hash[:12]}, now {new_hash[:12]})"
        )
        super().__init__(self.reason)


@dataclass(frozen=True, slots=True)
class Reject:
    serial: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    batch: BatchId
    duplicate: bool
    record_ids: tuple[str, ...]
    lines: int
    rejects: tuple[Reject, ...]


class _LinkDown(Exception):
    pass


class HandheldAdapter:
    """One serial port with an HT cradle. ``await run()`` serves it until cancelled,
    reopening the port after a line error."""

    def __init__(
        self,
        *,
        port: str,
        db: DurableDB,
        outbox: Outbox,
        default_customer: str,
        device_id: str | None = None,
        baudrate: int = 9600,
        receiver_timeout: float = bht.RECEIVER_TIMEOUT,
        linger: float = bht.LINGER,
        reopen_delay: float = REOPEN_DELAY,
    ) -> None:
        self.port = port
        self.db = db
        self.outbox = outbox
        self.default_customer = default_customer
        self.device_id = device_id or port
        self.baudrate = baudrate
        self.receiver_timeout = receiver_timeout
        self.linger = linger
        self.reopen_delay = reopen_delay
        self.counters: collections.Counter[str] = collections.Counter()
        self.connected = asyncio.Event()

    # ------------------------------------------------------------------------ serving

    async def run(self) -> None:
        while True:
            try:
                await self._serve_once()
            except (serial.SerialException, OSError, _LinkDown) as e:
                self.counters["link_errors"] += 1
                log.warning(
                    "HT %s: serial line lost: %s; reopening in %gs",
                    self.device_id,
                    e,
                    self.reopen_delay,
                )
            await asyncio.sleep(self.reopen_delay)  # reconnect backoff, not polling

    async def _serve_once(self) -> None:
        loop = asyncio.get_running_loop()
        ser = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
        link = _Link(self, ser, loop)
        lost: _LinkDown | None = None
        try:
            async with TaskGroup() as tg:  # a commit in flight finishes before we reopen
                link.tg = tg
                loop.add_reader(ser.fileno(), link.readable)
                self.connected.set()
                log.info("HT %s: listening on %s", self.device_id, self.port)
                try:
                    await link.down
                except _LinkDown as e:
                    lost = e
                finally:
                    loop.remove_reader(ser.fileno())
                    self.connected.clear()
                    link.stop_timer()
        finally:
            ser.close()
        if lost is not None:
            raise lost

    # ----------------------------------------------------------------------- the commit

    def _commit_job(self, conn: sqlite3.Connection, file: BhtFile) -> CommitOutcome:
        batch = BatchId.from_file_name(file.name)
        digest = file.digest()
        row = conn.execute(
            "SELECT content_hash, record_ids, lines FROM ht_batches WHERE terminal = ? AND batch_id = ?",
            (batch.terminal, batch.number),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                raise BatchConflict(batch, row[0], digest)
            return CommitOutcome(batch, True, tuple(json.loads(row[1])), row[2], ())

        groups: dict[tuple[str, Any], list[OrderLine]] = {}
        rejects: list[Reject] = []
        for serial_no, raw in enumerate(file.records, start=1):
            try:
                rec = decode_order_record(raw, file.field_lengths)
            except RecordError as e:
                rejects.append(Reject(serial_no, e.field, e.reason))
                continue
            key = (rec.customer or self.default_customer, rec.requested_date)
            line = OrderLine(qty=rec.qty, gtin=rec.gtin)
            # the edge checks every entry applies (item, quantity, this store's customer)
            refused = edge_checks.check_order(
                conn,
                self._body(*key, (line,), file, batch),
                store_customer=self.default_customer,
                credit=False,
            ).refusals
            if refused:
                rejects.append(Reject(serial_no, refused[0].field, refused[0].reason))
                continue
            groups.setdefault(key, []).append(line)

        ids: list[str] = []
        for (customer, date), lines in groups.items():
            for start in range(0, len(lines), MAX_LINES):
                order = self._body(customer, date, tuple(lines[start : start + MAX_LINES]), file, batch)
                rid = f"ht-{batch.terminal}-{batch.number:05d}-{digest[:16]}-{len(ids)}"
                made, verdict = edge_checks.enter_order(
                    conn, self.outbox, order, store_customer=self.default_customer, record_id=rid
                )
                assert made is not None, verdict  # every line passed the same checks above
                ids.append(made.id)
        conn.executemany(
            "INSERT INTO ht_rejects (terminal, batch_id, serial, field, reason, raw)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    batch.terminal,
                    batch.number,
                    r.serial,
                    r.field,
                    r.reason,
                    file.records[r.serial - 1].decode("ascii", "replace"),
                )
                for r in rejects
            ],
        )
        n_lines = sum(len(v) for v in groups.values())
        conn.execute(
            "INSERT INTO ht_batches (terminal, batch_id, file_name, content_hash, committed_at,"
            " record_ids, lines, rejected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.terminal,
                batch.number,
                file.name,
                digest,
                now_ms(),
                json.dumps(ids),
                n_lines,
                len(rejects),
            ),
        )
        return CommitOutcome(batch, False, tuple(ids), n_lines, tuple(rejects))

    @staticmethod
    def _body(
        customer: str, date: dt.date, lines: tuple[OrderLine, ...], file: BhtFile, batch: BatchId
    ) -> OrderBody:
        return OrderBody(
            customer=customer,
            channel=Channel.HANDHELD,
            order_type=OrderType.NORMAL,
            requested_date=date,
            lines=lines,
            note=f"HT upload {file.name}",
            source_ref=str(batch),
        )

    async def commit(self, file: BhtFile) -> CommitOutcome:
        """Durably commit a received batch (returns after COMMIT/fsync)."""
        out = await self.db.write(lambda conn: self._commit_job(conn, file))
        if out.duplicate:
            self.counters["batches_duplicate"] += 1
            log.info("HT %s: batch %s re-uploaded, already committed; not doubled", self.device_id, out.batch)
            return out
        self.outbox.notify(len(out.record_ids))
        self.counters["batches_committed"] += 1
        self.counters["lines_committed"] += out.lines
        self.counters["lines_rejected"] += len(out.rejects)
        for r in out.rejects:
            self.counters[f"reject_{r.field}"] += 1
            log.warning(
                "HT %s: batch %s line %d rejected: %s: %s",
                self.device_id,
                out.batch,
                r.serial,
                r.field,
                r.reason,
            )
        log.info(
            "HT %s: batch %s committed: %d lines in %d orders, %d rejected",
            self.device_id,
            out.batch,
            out.lines,
            len(out.record_ids),
            len(out.rejects),
        )
        return out

    def check_heading(self, h: bht.Heading) -> str | None:
        """Why this heading is not an order file we accept, or None."""
        try:
            BatchId.from_file_name(h.name)
        except RecordError as e:
            return e.reason
        if h.field_lengths != ORDER_FIELD_LENGTHS:
            return f"field lengths {h.field_lengths}, expected {ORDER_FIELD_LENGTHS}"
        return None


class _Link:
    """The I/O for one open serial port: bytes in -> receiver -> bytes out."""

    def __init__(self, adapter: HandheldAdapter, ser: serial.Serial, loop: asyncio.AbstractEventLoop) -> None:
        self.a = adapter
        self.ser = ser
        self.fd = ser.fileno()
        self.loop = loop
        self.rx = Receiver(timeout=adapter.receiver_timeout, linger=adapter.linger)
        self.timer: asyncio.TimerHandle | None = None
        self.down: asyncio.Future[None] = loop.create_future()
        self.tg: asyncio.TaskGroup | None = None

    def fail(self, why: str) -> None:
        if not self.down.done():
            self.down.set_exception(_LinkDown(why))

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(f"read: {e}")
            return
        if not data:
            self.fail("end of file on the port")
            return
        log.debug("HT %s: rx %s", self.a.device_id, data.hex(" "))
        self.handle(self.rx.feed(data))

    def on_timer(self) -> None:
        self.timer = None
        self.handle(self.rx.timer_expired())

    def handle(self, outs: list[bht.Output]) -> None:
        a = self.a
        for o in outs:
            if isinstance(o, Transmit):
                if self.down.done():
                    continue
                try:
                    os.write(self.fd, o.data)
                except OSError as e:
                    self.fail(f"write: {e}")
                log.debug("HT %s: tx %s", a.device_id, o.data.hex(" "))
            elif isinstance(o, ArmTimer):
                self.stop_timer()
                self.timer = self.loop.call_later(o.seconds, self.on_timer)
            elif isinstance(o, CancelTimer):
                self.stop_timer()
            elif isinstance(o, HeadingReceived):
                a.counters["sessions"] += 1
                why = a.check_heading(o.heading)
                if why is not None:
                    a.counters["headings_refused"] += 1
                    log.warning("HT %s: refusing file %r: %s", a.device_id, o.heading.name, why)
                    self.handle(self.rx.abort(why))
            elif isinstance(o, BlockRejected):
                a.counters["naks"] += 1
                log.info("HT %s: NAK: %s", a.device_id, o.reason)
            elif isinstance(o, Garbage):
                a.counters["garbage_bytes"] += len(o.data)
            elif isinstance(o, Aborted):
                a.counters["sessions_aborted"] += 1
                log.warning(
                    "HT %s: session aborted by %s after %d records: %s; nothing committed",
                    a.device_id,
                    o.by,
                    o.records,
                    o.reason,
                )
            elif isinstance(o, Completed):
                log.info("HT %s: %s acknowledged", a.device_id, o.name)
            elif isinstance(o, FileReceived):
                assert self.tg is not None
                self.tg.create_task(self._commit(o.file), name=f"ht-commit:{a.device_id}:{o.file.name}")

    async def _commit(self, file: BhtFile) -> None:
        a = self.a
        try:
            await a.commit(file)
        except BatchConflict as e:
            a.counters["batches_conflict"] += 1
            log.warning("HT %s: refusing %s: %s", a.device_id, file.name, e.reason)
            self.handle(self.rx.refuse(e.reason))
        except StorageFull as e:
            a.counters["commit_errors"] += 1
            log.warning("HT %s: refusing %s: %s", a.device_id, file.name, e)
            self.handle(self.rx.refuse("gateway storage full, send again later"))
        except Exception:  # task boundary: any failure refuses the batch (nothing was committed)
            a.counters["commit_errors"] += 1
            log.exception("HT %s: commit of %s failed", a.device_id, file.name)
            self.handle(self.rx.refuse("commit failed"))
        else:
            self.handle(self.rx.commit_done())


async def rejects(db: DurableDB, terminal: str, batch_number: int) -> list[Reject]:
    """The lines of a committed batch that were refused, with their reasons."""

    def q(conn: sqlite3.Connection) -> list[Reject]:
        rows = conn.execute(
            "SELECT serial, field, reason FROM ht_rejects"
            " WHERE terminal = ? AND batch_id = ? ORDER BY serial",
            (terminal, batch_number),
        ).fetchall()
        return [Reject(*r) for r in rows]

    return await db.read(q)
