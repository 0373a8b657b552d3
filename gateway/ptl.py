"""Pick-to-light cart adapter: a TCP client of an ABLEPick-style controller.

A cart carries totes for several orders, one tag (node) per tote position. Given pick tasks,
:class:`PtlCart` lights each position with its quantity in the picker's colour, takes the
confirm (with the possibly adjusted quantity) or the shortage key, turns the tag off and lights
the next task for that position, in one write. Every pick or short is handed upward at once to
``on_result`` (the lead wires it to the durable outbox); a failing ``on_result`` is retried
until it succeeds, in order, without holding up the lights.

Each task's lifecycle is the table :data:`TRANSITIONS`. After a controller reconnect (jittered
exponential backoff) every outstanding task is lit again. The protocol's replies name only the
tag, so a reply from a tag with nothing lit, or one arriving faster than a human could have
reacted to the light it would apply to (``relight_guard_s``), is logged and counted, never
applied; a task yields at most one result.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocols import ptl
from runtime.clock import now_ms
from runtime.retry import TaskGroup, backoff_delay

log = logging.getLogger(__name__)

DEFAULT_PORT = 4660  # vendor-specific; a guess for ABLEPick-style controllers, configure it
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5.0
RELIGHT_GUARD_S = 0.3
RESULT_RETRY_S = 1.0
READ_SIZE = 4096


class PtlCartError(Exception):
    """Base class of cart adapter errors."""


class TaskError(PtlCartError):
    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id}: {reason}")
        self.task_id = task_id
        self.reason = reason


class IllegalTransition(TaskError):
    def __init__(self, task_id: str, state: TaskState, trigger: Trigger) -> None:
        super().__init__(task_id, f"no transition from {state} on {trigger}")
        self.state = state
        self.trigger = trigger


class TaskState(enum.StrEnum):
    PENDING = "pending"
    LIT = "lit"
    CONFIRMED = "confirmed"
    SHORT = "short"
    CANCELLED = "cancelled"


class Trigger(enum.StrEnum):
    LIGHT = "light"
    CONFIRM = "confirm"
    SHORTAGE = "shortage"
    CANCEL = "cancel"
    LINK_LOST = "link_lost"


TRANSITIONS: dict[tuple[TaskState, Trigger], TaskState] = {
    (TaskState.PENDING, Trigger.LIGHT): TaskState.LIT,
    (TaskState.PENDING, Trigger.CANCEL): TaskState.CANCELLED,
    (TaskState.LIT, Trigger.CONFIRM): TaskState.CONFIRMED,
    (TaskState.LIT, Trigger.SHORTAGE): TaskState.SHORT,
    (TaskState.LIT, Trigger.CANCEL): TaskState.CANCELLED,
    (TaskState.LIT, Trigger.LINK_LOST): TaskState.PENDING,
}
TERMINAL = frozenset({TaskState.CONFIRMED, TaskState.SHORT, TaskState.CANCELLED})


def next_state(state: TaskState, trigger: Trigger, *, task_id: str = "?") -> TaskState:
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise IllegalTransition(task_id, state, trigger) from None


@dataclass(frozen=True, slots=True)
class PickTask:
    task_id: str
    order_id: str
    node: int
    sku: str
    qty: int
    colour: ptl.Colour = ptl.Colour.GREEN
    port: ptl.Port = ptl.Port.P1

    def __post_init__(self) -> None:
        if not ptl.MIN_NODE <= self.node <= ptl.MAX_NODE:
            raise TaskError(self.task_id, f"node {self.node} is not a tag address 1-250")
        if not 1 <= self.qty <= ptl.MAX_QUANTITY:
            raise TaskError(self.task_id, f"quantity {self.qty} not in 1..{ptl.MAX_QUANTITY}")


class Outcome(enum.StrEnum):
    PICKED = "picked"  # confirm with the full quantity (or more)
    SHORT = "short"  # shortage key, or confirm with a quantity adjusted down


@dataclass(frozen=True, slots=True)
class PickResult:
    """What the picker did for one task; ``task_id`` makes it idempotent upstream."""

    cart_id: str
    task_id: str
    order_id: str
    sku: str
    node: int
    requested_qty: int
    picked_qty: int
    outcome: Outcome
    key: str  # "confirm" or "shortage": the key the picker pressed
    ts_ms: int

    @property
    def short_qty(self) -> int:
        return max(0, self.requested_qty - self.picked_qty)

    def as_body(self) -> dict[str, Any]:
        return {
            "cart": self.cart_id,
            "task_id": self.task_id,
            "order_id": self.order_id,
            "sku": self.sku,
            "node": self.node,
            "requested_qty": self.requested_qty,
            "picked_qty": self.picked_qty,
            "short_qty": self.short_qty,
            "outcome": self.outcome.value,
            "key": self.key,
            "ts": self.ts_ms,
        }


@dataclass(slots=True)
class CartStats:
    connects: int = 0
    connect_failures: int = 0
    framing_errors: int = 0
    bad_frames: int = 0
    stale_replies: int = 0  # confirm/shortage from an unlit tag or inside the relight guard
    unreadable_quantities: int = 0
    duplicate_tasks: int = 0
    tag_timeouts: int = 0
    malfunctions: int = 0
    illegal_commands: int = 0
    buttons_held: int = 0
    results: int = 0
    result_errors: int = 0


@dataclass(slots=True)
class _Task:
    task: PickTask
    state: TaskState = TaskState.PENDING
    lit_at: float = 0.0


_Key = tuple[ptl.Port, int]


@dataclass(slots=True)
class _Link:
    writer: asyncio.StreamWriter
    decoder: ptl.Decoder = field(default_factory=lambda: ptl.Decoder(ptl.Direction.TO_HOST))


def _light_frames(t: PickTask) -> bytes:
    return ptl.encode(ptl.SetColour(t.node, t.port, t.colour)) + ptl.encode(
        ptl.ShowDigits.quantity(t.node, t.qty, port=t.port)
    )


class PtlCart:
    """One cart controller. ``await cart.run()`` until cancelled; feed it ``add_tasks``."""

    def __init__(
        self,
        *,
        cart_id: str,
        host: str,
        port: int = DEFAULT_PORT,
        on_result: Callable[[PickResult], Awaitable[None]],
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        relight_guard_s: float = RELIGHT_GUARD_S,
        result_retry_s: float = RESULT_RETRY_S,
        latency_sink: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cart_id = cart_id
        self.host = host
        self.port = port
        self._on_result = on_result
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.relight_guard_s = relight_guard_s
        self.result_retry_s = result_retry_s
        self._latency_sink = latency_sink
        self._clock = clock
        self.stats = CartStats()
        self.connected = asyncio.Event()
        self._tasks: dict[str, _Task] = {}
        self._queues: dict[_Key, deque[str]] = {}  # outstanding task ids per tag, head first
        self._lit: dict[_Key, str] = {}
        self._link: _Link | None = None
        self._results: asyncio.Queue[PickResult] = asyncio.Queue()
        self._unreported = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ public API

    def add_tasks(self, tasks: Iterable[PickTask]) -> int:
        """Queue tasks (lit at once if the controller is connected). A task id seen before is
        ignored, so a re-sent task is not picked twice. Returns how many were new."""
        added = 0
        touched: set[_Key] = set()
        for t in tasks:
            if t.task_id in self._tasks:
                self.stats.duplicate_tasks += 1
                log.info("cart %s: task %s already known, ignored", self.cart_id, t.task_id)
                continue
            self._tasks[t.task_id] = _Task(t)
            key = (t.port, t.node)
            self._queues.setdefault(key, deque()).append(t.task_id)
            touched.add(key)
            added += 1
        if self._link is not None:
            out = b"".join(self._light_head(key) for key in sorted(touched) if key not in self._lit)
            self._write(out)
        self._poke()
        return added

    def cancel(self, task_id: str) -> bool:
        """Cancel an outstanding task (its tag goes dark, the next one lights). False if the
        task is unknown or already finished."""
        rec = self._tasks.get(task_id)
        if rec is None or rec.state in TERMINAL:
            return False
        key = (rec.task.port, rec.task.node)
        was_lit = rec.state is TaskState.LIT
        self._transition(rec, Trigger.CANCEL)
        self._queues[key].remove(task_id)
        if was_lit:
            del self._lit[key]
            if self._link is not None:
                self._write(ptl.encode(ptl.Clear(rec.task.node, rec.task.port)) + self._light_head(key))
        self._poke()
        return True

    def state(self, task_id: str) -> TaskState | None:
        rec = self._tasks.get(task_id)
        return None if rec is None else rec.state

    @property
    def outstanding(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def lit(self) -> dict[int, str]:
        """Task id lit per node (port 1 and 2 merged; for display and tests)."""
        return {node: tid for (_port, node), tid in self._lit.items()}

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every state change."""
        while not predicate():
            await self._changed.wait()

    async def wait_done(self) -> None:
        """Wait until every task is finished and every result was accepted by ``on_result``."""
        await self.wait_until(lambda: self.outstanding == 0 and self._unreported == 0)

    async def run(self) -> None:
        async with TaskGroup() as tg:
            tg.create_task(self._connection_loop(), name=f"ptl-{self.cart_id}-link")
            tg.create_task(self._report_loop(), name=f"ptl-{self.cart_id}-report")

    # ------------------------------------------------------------------ state machine

    def _transition(self, rec: _Task, trigger: Trigger) -> None:
        new = next_state(rec.state, trigger, task_id=rec.task.task_id)
        log.debug("cart %s: task %s %s -> %s", self.cart_id, rec.task.task_id, rec.state, new)
        rec.state = new

    def _light_head(self, key: _Key) -> bytes:
        """Light the first outstanding task of a tag; the bytes to write (empty if none)."""
        queue = self._queues.get(key)
        if not queue:
            return b""
        rec = self._tasks[queue[0]]
        self._transition(rec, Trigger.LIGHT)
        rec.lit_at = self._clock()
        self._lit[key] = rec.task.task_id
        return _light_frames(rec.task)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _write(self, data: bytes) -> None:
        if data and self._link is not None:
            self._link.writer.write(data)

    # ------------------------------------------------------------------ link

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, lo=self.reconnect_min_s, hi=self.reconnect_max_s)

    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as e:
                self.stats.connect_failures += 1
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "cart %s: connect to %s:%s failed (%s), retry in %.2f s",
                    self.cart_id,
                    self.host,
                    self.port,
                    e,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            try:
                await self._session(reader, writer)
            except (OSError, ptl.FramingError) as e:
                log.warning("cart %s: controller link lost: %s", self.cart_id, e)
            finally:
                self._link_lost()
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(self._backoff(0))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = self._link = _Link(writer)
        self.stats.connects += 1
        log.info("cart %s: connected to controller %s:%s", self.cart_id, self.host, self.port)
        # Re-light everything outstanding: the controller may have reset while we were away.
        self._write(b"".join(self._light_head(key) for key in sorted(self._queues)))
        self.connected.set()
        self._poke()
        while True:
            data = await reader.read(READ_SIZE)
            received = time.perf_counter()
            if not data:
                log.warning("cart %s: controller closed the connection", self.cart_id)
                return
            try:
                events = link.decoder.feed(data)
            except ptl.FramingError as e:
                self.stats.framing_errors += 1
                for ev in e.events:
                    self._handle(ev, received)
                raise
            for ev in events:
                self._handle(ev, received)
            self._poke()

    def _link_lost(self) -> None:
        self._link = None
        self.connected.clear()
        for key, task_id in list(self._lit.items()):
            self._transition(self._tasks[task_id], Trigger.LINK_LOST)
            del self._lit[key]
        self._poke()

    # ------------------------------------------------------------------ replies

    def _handle(self, ev: ptl.Message, received: float) -> None:
        match ev:
            case ptl.Confirmed() | ptl.Shortage():
                self._on_key(ev, received)
            case ptl.BadFrame(frame=frame, reason=reason):
                self.stats.bad_frames += 1
                log.warning("cart %s: bad frame %s: %s", self.cart_id, frame.hex(" "), reason)
            case ptl.TagTimeout(node=node):
                self.stats.tag_timeouts += 1
                log.warning("cart %s: tag %s did not answer the controller", self.cart_id, node)
            case ptl.Malfunction(node=node, code=code):
                self.stats.malfunctions += 1
                log.error("cart %s: tag %s malfunction code %#04x", self.cart_id, node, code)
            case ptl.IllegalCommand(node=node, subcmd=subcmd):
                self.stats.illegal_commands += 1
                log.error(
                    "cart %s: controller refused subcommand %#04x for tag %s", self.cart_id, subcmd, node
                )
            case ptl.ButtonHeld(node=node):
                self.stats.buttons_held += 1
                log.warning("cart %s: tag %s key held, a command was not applied", self.cart_id, node)
            case ptl.ResetOk(node=node, port=port):
                log.info("cart %s: tag %s reset", self.cart_id, node)
                task_id = self._lit.get((port, node))
                if task_id is not None:
                    self._write(_light_frames(self._tasks[task_id].task))
            case _:
                log.debug("cart %s: ignored %r", self.cart_id, ev)

    def _on_key(self, ev: ptl.Confirmed | ptl.Shortage, received: float) -> None:
        key = (ev.port, ev.node)
        kind = "confirm" if isinstance(ev, ptl.Confirmed) else "shortage"
        task_id = self._lit.get(key)
        if task_id is None:
            self.stats.stale_replies += 1
            log.warning("cart %s: %s from tag %s with nothing lit, ignored", self.cart_id, kind, ev.node)
            self._poke()
            return
        rec = self._tasks[task_id]
        age = self._clock() - rec.lit_at
        if age < self.relight_guard_s:
            self.stats.stale_replies += 1
            log.warning(
                "cart %s: %s from tag %s %.3f s after task %s was lit, taken as a repeat, ignored",
                self.cart_id,
                kind,
                ev.node,
                age,
                task_id,
            )
            self._poke()
            return
        qty = ev.quantity
        if qty is None:
            if kind == "confirm":
                self.stats.unreadable_quantities += 1
                log.warning(
                    "cart %s: confirm from tag %s shows %r, not a quantity; task %s stays lit",
                    self.cart_id,
                    ev.node,
                    ev.digits,
                    task_id,
                )
                return
            qty = 0  # shortage key with a blank display: nothing found
        task = rec.task
        self._transition(rec, Trigger.CONFIRM if kind == "confirm" else Trigger.SHORTAGE)
        del self._lit[key]
        self._queues[key].popleft()
        nxt = self._light_head(key)
        self._write(ptl.encode(ptl.Clear(task.node, task.port)) + nxt)
        if nxt and self._latency_sink is not None:
            self._latency_sink(time.perf_counter() - received)
        if qty > task.qty:
            log.warning("cart %s: task %s picked %d > requested %d", self.cart_id, task_id, qty, task.qty)
        result = PickResult(
            cart_id=self.cart_id,
            task_id=task_id,
            order_id=task.order_id,
            sku=task.sku,
            node=task.node,
            requested_qty=task.qty,
            picked_qty=qty,
            outcome=Outcome.SHORT if kind == "shortage" or qty < task.qty else Outcome.PICKED,
            key=kind,
            ts_ms=now_ms(),
        )
        log.info(
            "cart %s: task %s order %s %s %d/%d",
            self.cart_id,
            task_id,
            task.order_id,
            result.outcome,
            qty,
            task.qty,
        )
        self._unreported += 1
        self._results.put_nowait(result)
        self._poke()

    # ------------------------------------------------------------------ upward

    async def _report_loop(self) -> None:
        while True:
            result = await self._results.get()
            while True:
                try:
                    await self._on_result(result)
                    break
                except Exception:  # task boundary: never drop a pick, retry until accepted
                    self.stats.result_errors += 1
                    log.exception(
                        "cart %s: reporting task %s failed, retry in %.2f s",
                        self.cart_id,
                        result.task_id,
                        self.result_retry_s,
                    )
                    await asyncio.sleep(self.result_retry_s)
            self.stats.results += 1
            self._unreported -= 1
            self._poke()


__all__ = [
    "DEFAULT_PORT",
    "TERMINAL",
    "TRANSITIONS",
    "CartStats",
    "IllegalTransition",
    "Outcome",
    "PickResult",
    "PickTask",
    "PtlCart",
    "PtlCartError",
    "TaskError",
    "TaskState",
    "Trigger",
    "next_state",
]
