"""Local pick execution at the DC gateway: pick tasks from central -> lit carts (+ AS/RS
totes) -> results back up, with or without central and the broker.

* ``pick_task`` downlink records are stored in SQLite by the inbox handler
  (:meth:`PickExecutor.apply_task`), in the same transaction that remembers the record id
  and before the ack, so a re-sent task is stored once and picked once.
* :class:`PickExecutor` gives every order of a wave a cart position (tag) - kept in SQLite,
  so a restart lights the same tote positions - and feeds the unfinished tasks of each
  position to its :class:`gateway.ptl.PtlCart` in the wave's storage-location sequence.
* A task that names an AS/RS tote is lit only once the tote is at the pick station: the
  executor asks the AS/RS for the totes the open tasks need and sends each back to storage
  when no open task needs it any more. A tote whose location the AS/RS finds empty turns its
  tasks into short results (key ``asrs``); other AS/RS refusals are retried after
  ``tote_retry_s``. Tote movements go up as ``tote_event`` records.
* Each result is committed to ``pick_tasks`` together with its ``pick_result`` outbox record
  (record id ``pick:<task id>``) in one transaction, so it goes up at once, durably, exactly
  once; a task already finished is never fed to a cart again, also after a restart.

Wiring (``gateway/app.py``): add :data:`MIGRATIONS`; when the config has carts,
``executor = PickExecutor(db=db, outbox=box, config=cfg.picking)``,
``executor.register(inbox)`` and run ``executor.run()`` in the gateway's TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.asrs import (
    AsrsAdapter,
    AsrsEvent,
    AsrsLinkDown,
    AsrsLinkUp,
    AsrsTiming,
    Shortage,
    ToteArrived,
    ToteMoved,
    ToteStored,
    TransportFailed,
)
from gateway.inbox import Inbox, InboxRejected
from gateway.outbox import Outbox
from gateway.ptl import DEFAULT_PORT, PickResult, PickTask, PtlCart
from protocols import ptl
from protocols.asrs import ErrorCode
from protocols.envelope import Record
from protocols.picking import (
    PICK_RESULT,
    PICK_TASK,
    TOTE_EVENT,
    PickKey,
    PickOutcome,
    PickResultBody,
    ToteEventBody,
    ToteEventKind,
    parse_pick_task,
    result_record_id,
)
from protocols.records import RecordSchemaError
from runtime.clock import now_ms
from runtime.retry import TaskGroup
from runtime.sqlitedb import DurableDB, Migration, StorageFull

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # the feed loop also wakes on new tasks, results and tote events

MIGRATIONS = [
    Migration(
        "picking_0001",
        """
        CREATE TABLE pick_tasks (
            task_id TEXT PRIMARY KEY,
            wave TEXT NOT NULL,
            seq INTEGER NOT NULL,
            order_no TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            location TEXT NOT NULL,
            bin TEXT NOT NULL,
            sku TEXT NOT NULL,
            qty INTEGER NOT NULL,
            tote TEXT NOT NULL DEFAULT '',
            tote_location TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'pending',
            picked INTEGER,
            outcome TEXT,
            key TEXT,
            reason TEXT NOT NULL DEFAULT '',
            cart TEXT,
            node INTEGER,
            received_at INTEGER NOT NULL,
            done_at INTEGER
        ) WITHOUT ROWID;
        CREATE INDEX pick_tasks_open ON pick_tasks(state, wave, seq);
        CREATE TABLE pick_slots (
            wave TEXT NOT NULL,
            order_no TEXT NOT NULL,
            cart TEXT NOT NULL,
            node INTEGER NOT NULL,
            PRIMARY KEY (wave, order_no)
        ) WITHOUT ROWID;
        CREATE TABLE pick_totes (
            tote TEXT PRIMARY KEY,
            home TEXT NOT NULL,
            wave TEXT NOT NULL,
            state TEXT NOT NULL,
            code INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )
]


# -- config -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CartConfig:
    """One pick-to-light cart controller; its positions are tags 1..``nodes``."""

    cart_id: str
    host: str
    port: int = DEFAULT_PORT
    nodes: int = 12
    colour: str = "green"  # red, green, orange, blue, pink, cyan
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    relight_guard_s: float = 0.3

    def __post_init__(self) -> None:
        if self.colour.upper() not in ptl.Colour.__members__:
            names = ", ".join(c.name.lower() for c in ptl.Colour)
            raise ValueError(f"cart {self.cart_id}: colour {self.colour!r} is not one of {names}")
        if not 1 <= self.nodes <= ptl.MAX_NODE:
            raise ValueError(f"cart {self.cart_id}: nodes {self.nodes} not in 1..{ptl.MAX_NODE}")


@dataclass(frozen=True, slots=True)
class AsrsConfig:
    host: str
    port: int
    station: str = "PS01"
    device_id: str = "asrs-1"
    local_id: str = "GW001"
    remote_id: str = "ASRS1"
    ack_timeout_s: float = 3.0
    life_interval_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class PickingConfig:
    carts: list[CartConfig] = field(default_factory=list)
    asrs: AsrsConfig | None = None
    tote_retry_s: float = 30.0  # after an AS/RS refusal other than "location empty"


# -- store ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredTask:
    task_id: str
    wave: str
    seq: int
    order_no: str
    sku: str
    qty: int
    tote: str
    tote_location: str
    cart: str | None
    node: int | None


_TASK_SQL = (
    "SELECT t.task_id, t.wave, t.seq, t.order_no, t.sku, t.qty, t.tote, t.tote_location, s.cart, s.node"
    " FROM pick_tasks t LEFT JOIN pick_slots s ON s.wave = t.wave AND s.order_no = t.order_no"
)


def open_tasks(conn: sqlite3.Connection) -> list[StoredTask]:
    return [
        StoredTask(*r) for r in conn.execute(_TASK_SQL + " WHERE t.state = 'pending' ORDER BY t.wave, t.seq")
    ]


def task_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every stored task with its state and result (for views and tests)."""
    cols = ("task_id", "wave", "seq", "order_no", "sku", "qty", "tote", "state", "picked", "outcome", "key")
    return [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(f"SELECT {', '.join(cols)} FROM pick_tasks ORDER BY wave, seq")
    ]


class PickExecutor:
    """Stores pick tasks, lights them on the carts (after the AS/RS brought their totes),
    reports results durably. ``await run()`` until cancelled."""

    def __init__(self, *, db: DurableDB, outbox: Outbox, config: PickingConfig) -> None:
        if not config.carts:
            raise ValueError("picking needs at least one cart")
        self.db = db
        self.outbox = outbox
        self.config = config
        self.carts: dict[str, PtlCart] = {}
        self._colour: dict[str, ptl.Colour] = {}
        self._positions: list[tuple[str, int]] = []
        for c in config.carts:
            self.carts[c.cart_id] = PtlCart(
                cart_id=c.cart_id,
                host=c.host,
                port=c.port,
                on_result=self._on_cart_result,
                reconnect_min_s=c.reconnect_min_s,
                reconnect_max_s=c.reconnect_max_s,
                relight_guard_s=c.relight_guard_s,
            )
            self._colour[c.cart_id] = ptl.Colour[c.colour.upper()]
            self._positions += [(c.cart_id, n) for n in range(1, c.nodes + 1)]
        self.asrs: AsrsAdapter | None = None
        self.station = ""
        if config.asrs is not None:
            a = config.asrs
            self.station = a.station
            self.asrs = AsrsAdapter(
                host=a.host,
                port=a.port,
                on_event=self._on_asrs_event,
                device_id=a.device_id,
                local_id=a.local_id,
                remote_id=a.remote_id,
                timing=AsrsTiming(
                    ack_timeout=a.ack_timeout_s,
                    life_interval=a.life_interval_s,
                    backoff_initial=a.backoff_initial_s,
                    backoff_max=a.backoff_max_s,
                ),
            )
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self.stored = 0
        self.fed = 0
        self.results = 0
        self.shorts = 0

    # -- inbox ------------------------------------------------------------------------------

    def register(self, inbox: Inbox) -> None:
        inbox.register(PICK_TASK, self.apply_task)
        inbox.listeners.append(self._on_downlink)

    def apply_task(self, conn: sqlite3.Connection, rec: Record) -> None:
        """Inbox handler (runs in the inbox's transaction): store one task."""
        try:
            t = parse_pick_task(rec.body)
        except RecordSchemaError as e:
            raise InboxRejected(e.reason) from None
        if t.task_id != rec.id:
            raise InboxRejected(f"record id {rec.id!r} is not the task id {t.task_id!r}")
        conn.execute(
            "INSERT OR IGNORE INTO pick_tasks (task_id, wave, seq, order_no, line_no, location, bin, sku,"
            " qty, tote, tote_location, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.task_id,
                t.wave,
                t.seq,
                t.order_no,
                t.line_no,
                t.location,
                t.bin,
                t.sku,
                t.qty,
                t.tote,
                t.tote_location,
                now_ms(),
            ),
        )
        self.stored += 1

    def _on_downlink(self, records: tuple[Record, ...]) -> None:
        if any(r.type == PICK_TASK for r in records):
            self._wake.set()

    # -- run --------------------------------------------------------------------------------

    async def run(self) -> None:
        async with TaskGroup() as tg:
            self._tg = tg
            for cart in self.carts.values():
                tg.create_task(cart.run(), name=f"ptl:{cart.cart_id}")
            if self.asrs is not None:
                tg.create_task(self.asrs.run(), name=f"asrs:{self.asrs.device_id}")
            tg.create_task(self._feed_loop(), name="pick-executor")

    async def _feed_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.feed_once()
            except StorageFull as e:
                log.warning("picking: feed postponed: %s", e)
                await self.db.wait_writable()
                continue
            try:
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def feed_once(self) -> None:
        """One pass: give orders positions, fetch and return totes, light what can be lit."""
        plan = await self.db.write(self._plan)
        for wave, totes in plan.fetch.items():
            self._spawn(self._fetch(wave, totes), f"asrs-fetch:{wave}")
        for wave, totes in plan.back.items():
            self._spawn(self._return(wave, totes), f"asrs-return:{wave}")
        by_cart: dict[str, list[PickTask]] = {}
        for t in plan.tasks:
            if t.cart is None or t.node is None or t.cart not in self.carts:
                continue
            if t.tote and plan.totes.get(t.tote) != "at_station":
                continue
            cart = self.carts[t.cart]
            if cart.state(t.task_id) is not None:
                continue  # already given to the cart (lit, queued, or finished this run)
            by_cart.setdefault(t.cart, []).append(
                PickTask(
                    task_id=t.task_id,
                    order_id=t.order_no,
                    node=t.node,
                    sku=t.sku,
                    qty=min(t.qty, ptl.MAX_QUANTITY),
                    colour=self._colour[t.cart],
                )
            )
        for cart_id, batch in by_cart.items():
            self.fed += self.carts[cart_id].add_tasks(batch)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None:
            coro.close()
            raise RuntimeError("picking: run() is not running")
        self._tg.create_task(coro, name=name)

    def _plan(self, conn: sqlite3.Connection) -> _Plan:
        self._assign_slots(conn)
        tasks = open_tasks(conn)
        fetch: dict[str, list[tuple[str, str]]] = {}
        back: dict[str, list[tuple[str, str]]] = {}
        if self.asrs is not None:
            fetch, back = self._plan_totes(conn, tasks)
        totes = {r[0]: r[1] for r in conn.execute("SELECT tote, state FROM pick_totes")}
        return _Plan(tasks, totes, fetch, back)

    def _assign_slots(self, conn: sqlite3.Connection) -> None:
        waiting = conn.execute(
            "SELECT t.wave, t.order_no, min(t.seq) FROM pick_tasks t WHERE t.state = 'pending'"
            " AND NOT EXISTS (SELECT 1 FROM pick_slots s WHERE s.wave = t.wave AND s.order_no = t.order_no)"
            " GROUP BY t.wave, t.order_no ORDER BY t.wave, 3"
        ).fetchall()
        if not waiting:
            return
        busy = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT DISTINCT s.cart, s.node FROM pick_slots s JOIN pick_tasks t"
                " ON t.wave = s.wave AND t.order_no = s.order_no WHERE t.state = 'pending'"
            )
        }
        free = [p for p in self._positions if p not in busy]
        for (wave, order_no, _), (cart, node) in zip(waiting, free, strict=False):
            conn.execute(
                "INSERT OR REPLACE INTO pick_slots (wave, order_no, cart, node) VALUES (?, ?, ?, ?)",
                (wave, order_no, cart, node),
            )
            log.info("picking: wave %s order %s -> cart %s position %d", wave, order_no, cart, node)

    # -- AS/RS totes ------------------------------------------------------------------------

    def _plan_totes(
        self, conn: sqlite3.Connection, tasks: list[StoredTask]
    ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
        """Totes to fetch (open tasks need them) and to return (none needs them), per wave."""
        needed: dict[str, tuple[str, str]] = {}
        for t in tasks:
            if t.tote:
                needed.setdefault(t.tote, (t.wave, t.tote_location))
        states = {
            r[0]: (r[1], r[2], r[3], r[4])
            for r in conn.execute("SELECT tote, state, updated_at, home, wave FROM pick_totes")
        }
        now = now_ms()
        retry_ms = self.config.tote_retry_s * 1000
        fetch: dict[str, list[tuple[str, str]]] = {}
        for tote, (wave, home) in needed.items():
            st = states.get(tote)
            if st is None or st[0] in ("stored", "empty") or (st[0] == "failed" and now - st[1] >= retry_ms):
                conn.execute(
                    "INSERT OR REPLACE INTO pick_totes (tote, home, wave, state, updated_at)"
                    " VALUES (?, ?, ?, 'requested', ?)",
                    (tote, home, wave, now),
                )
                fetch.setdefault(wave, []).append((tote, home))
        back: dict[str, list[tuple[str, str]]] = {}
        for tote, (state, updated, home, wave) in states.items():
            if tote in needed:
                continue
            if state == "at_station" or (state == "return_failed" and now - updated >= retry_ms):
                conn.execute(
                    "UPDATE pick_totes SET state = 'returning', updated_at = ? WHERE tote = ?", (now, tote)
                )
                back.setdefault(wave, []).append((tote, home))
        return fetch, back

    async def _fetch(self, wave: str, totes: list[tuple[str, str]]) -> None:
        assert self.asrs is not None
        log.info(
            "picking: wave %s asks %s for %d totes at %s", wave, self.asrs.device_id, len(totes), self.station
        )
        await self.asrs.request_totes(wave, totes, self.station)  # refusals arrive as events

    async def _return(self, wave: str, totes: list[tuple[str, str]]) -> None:
        assert self.asrs is not None
        log.info("picking: wave %s returns %d totes to storage", wave, len(totes))
        await self.asrs.return_totes(wave, totes, self.station)

    async def _on_asrs_event(self, ev: AsrsEvent) -> None:
        """AS/RS events, committed before the adapter acks the telegram."""
        match ev:
            case ToteArrived(wave_id=wave, tote=tote, station=station):
                await self._tote_state(tote, "at_station", ToteEventKind.ARRIVED, station, wave=wave)
            case ToteStored(wave_id=wave, tote=tote, location=loc):
                await self._tote_state(tote, "stored", ToteEventKind.STORED, loc, wave=wave)
            case ToteMoved(tote=tote, location=loc):  # e.g. after our restart
                if loc == self.station:
                    await self._tote_state(tote, "at_station", ToteEventKind.ARRIVED, loc)
                else:
                    await self._tote_state(tote, "stored", ToteEventKind.STORED, loc)
            case Shortage(tote=tote, location=loc):
                await self._write(partial(self._tote_empty, tote, loc))
            case TransportFailed(tote=tote, location=loc, code=code, reason=reason) if tote:
                if code != ErrorCode.LOCATION_EMPTY:  # that one also comes as Shortage
                    await self._tote_failed(tote, loc or "", code, reason)
            case AsrsLinkUp() | AsrsLinkDown():
                log.info("picking: %s", ev)
            case _:
                log.debug("picking: AS/RS event %s", ev)
        self._wake.set()

    async def _tote_state(
        self, tote: str, state: str, kind: ToteEventKind, location: str, *, wave: str | None = None
    ) -> None:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT wave FROM pick_totes WHERE tote = ?", (tote,)).fetchone()
            if row is None:
                log.info("picking: tote %s at %s is not one of ours", tote, location)
                return 0
            w = wave or row[0]
            conn.execute(
                "UPDATE pick_totes SET state = ?, code = 0, reason = '', updated_at = ? WHERE tote = ?",
                (state, now_ms(), tote),
            )
            return self._tote_event(conn, ToteEventBody(w, tote, kind, location, now_ms()))

        await self._write(job)

    async def _tote_failed(self, tote: str, location: str, code: int, reason: str) -> None:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT wave, state FROM pick_totes WHERE tote = ?", (tote,)).fetchone()
            if row is None:
                return 0
            wave, state = row
            new = "return_failed" if state == "returning" else "failed"
            conn.execute(
                "UPDATE pick_totes SET state = ?, code = ?, reason = ?, updated_at = ? WHERE tote = ?",
                (new, code, reason, now_ms(), tote),
            )
            log.warning(
                "picking: tote %s %s at %s: %s (retry in %.0f s)",
                tote,
                new,
                location,
                reason,
                self.config.tote_retry_s,
            )
            return self._tote_event(
                conn, ToteEventBody(wave, tote, ToteEventKind.FAILED, location, now_ms(), code, reason)
            )

        await self._write(job)

    def _tote_empty(self, tote: str, location: str, conn: sqlite3.Connection) -> int:
        """The tote's location is empty: every open task that needs it is short."""
        row = conn.execute("SELECT wave FROM pick_totes WHERE tote = ?", (tote,)).fetchone()
        wave = row[0] if row else ""
        conn.execute(
            "UPDATE pick_totes SET state = 'empty', code = ?, reason = 'location empty', updated_at = ?"
            " WHERE tote = ?",
            (int(ErrorCode.LOCATION_EMPTY), now_ms(), tote),
        )
        reason = f"AS/RS: tote {tote} not at {location} (location empty)"
        rows = conn.execute(
            _TASK_SQL + " WHERE t.state = 'pending' AND t.tote = ? ORDER BY t.wave, t.seq", (tote,)
        ).fetchall()
        bodies = [
            PickResultBody(
                task_id=t.task_id,
                order_no=t.order_no,
                sku=t.sku,
                requested_qty=t.qty,
                picked_qty=0,
                outcome=PickOutcome.SHORT,
                key=PickKey.ASRS,
                ts=now_ms(),
                reason=reason,
            )
            for t in (StoredTask(*r) for r in rows)
        ]
        log.warning("picking: %s; %d tasks short", reason, len(bodies))
        n = self._finish(bodies, conn)
        if wave:
            n += self._tote_event(
                conn,
                ToteEventBody(
                    wave, tote, ToteEventKind.EMPTY, location, now_ms(), int(ErrorCode.LOCATION_EMPTY), reason
                ),
            )
        return n

    def _tote_event(self, conn: sqlite3.Connection, ev: ToteEventBody) -> int:
        self.outbox.add(conn, TOTE_EVENT, ev.to_wire())
        return 1

    # -- results ----------------------------------------------------------------------------

    async def _on_cart_result(self, r: PickResult) -> None:
        """From a cart: commit the result and its outbox record together."""
        picked = r.picked_qty
        body = PickResultBody(
            task_id=r.task_id,
            order_no=r.order_id,
            sku=r.sku,
            requested_qty=r.requested_qty,
            picked_qty=picked,
            outcome=PickOutcome.SHORT if picked < r.requested_qty else PickOutcome.PICKED,
            key=PickKey(r.key),
            ts=r.ts_ms,
            cart=r.cart_id,
            node=r.node,
        )
        await self._write(partial(self._finish, [body]))
        self._wake.set()

    async def _write(self, job: Callable[[sqlite3.Connection], int]) -> None:
        """Run a job that queues outbox records; tell the sync task after the commit. On a full
        disk it waits for room and runs the job again: a pick or an AS/RS telegram is acked only
        once it is recorded, and is never dropped."""
        while True:
            try:
                n = await self.db.write(job)
                break
            except StorageFull as e:
                log.warning("picking: waiting for storage to record a result: %s", e)
                await self.db.wait_writable()
        if n:
            self.outbox.notify(n)

    def _finish(self, bodies: Iterable[PickResultBody], conn: sqlite3.Connection) -> int:
        """Mark tasks done and queue their results (once: a finished task is left alone)."""
        n = 0
        for b in bodies:
            done = conn.execute(
                "UPDATE pick_tasks SET state = 'done', picked = ?, outcome = ?, key = ?, reason = ?,"
                " cart = ?, node = ?, done_at = ? WHERE task_id = ? AND state = 'pending' RETURNING 1",
                (b.picked_qty, b.outcome.value, b.key.value, b.reason, b.cart, b.node, b.ts, b.task_id),
            ).fetchone()
            if done is None:
                log.warning("picking: second result for task %s ignored", b.task_id)
                continue
            self.outbox.add(conn, PICK_RESULT, b.to_wire(), record_id=result_record_id(b.task_id))
            n += 1
            self.results += 1
            self.shorts += b.outcome is PickOutcome.SHORT
        return n


@dataclass(frozen=True, slots=True)
class _Plan:
    tasks: list[StoredTask]
    totes: dict[str, str]
    fetch: dict[str, list[tuple[str, str]]]
    back: dict[str, list[tuple[str, str]]]
