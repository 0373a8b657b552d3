"""AS/RS adapter: the DC gateway's TCP client to an automated storage and retrieval system.

Thin I/O over :class:`protocols.asrs.AsrsLink`: connect, feed bytes in, write
``data_to_send()`` out, run the link timers (life telegrams, ack timeout, watchdog), reconnect
with jittered exponential backoff. The business side:

* ``await request_totes(wave_id, [(tote, from_location)], station)`` sends one transport
  request per tote to bring it to the pick station; ``await return_totes(wave_id,
  [(tote, to_location)], station)`` sends them back to storage. Both return when the AS/RS has
  answered every request (accepted or refused with a code); they wait across reconnects, and a
  request resent after a reconnect has no second effect (sequence-number duplicate detection).
* What happens next arrives through ``on_event`` (an async callback): :class:`ToteArrived`,
  :class:`ToteStored`, :class:`ToteMoved`, :class:`TransportFailed`, :class:`Shortage` (the
  source location is empty: stock is missing), :class:`AsrsLinkUp`, :class:`AsrsLinkDown`.
  A ``LOCU``/``ERR_`` from the AS/RS is acked only after ``on_event`` returned, so a callback
  that commits to SQLite makes the ack mean "durable". An exception from ``on_event``
  propagates out of :meth:`AsrsAdapter.run` (the supervisor's boundary).

Pending transports are kept in memory: a gateway restart forgets which wave a tote belonged to
(later ``LOCU`` telegrams then arrive as :class:`ToteMoved`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway import GatewayError
from protocols.asrs import (
    MAX_SEQ,
    Acked,
    AsrsLink,
    DuplicateReceived,
    ErrorCode,
    ErrorReport,
    LinkDown,
    LinkEvent,
    LinkFailed,
    LinkUp,
    LocationUpdate,
    ProtocolViolation,
    Received,
    Resent,
    TransportRequest,
)
from runtime.retry import TaskGroup

log = logging.getLogger(__name__)

__all__ = [
    "AsrsAdapter",
    "AsrsEvent",
    "AsrsLinkDown",
    "AsrsLinkUp",
    "AsrsTiming",
    "Shortage",
    "ToteArrived",
    "ToteMoved",
    "ToteStored",
    "TransportFailed",
    "TransportResult",
]


@dataclass(frozen=True, slots=True)
class AsrsTiming:
    """Timing of the link; tests make these small."""

    ack_timeout: float = 3.0
    max_resends: int = 3
    life_interval: float = 10.0
    life_misses: int = 3
    connect_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToteArrived:
    device_id: str
    wave_id: str
    tote: str
    station: str


@dataclass(frozen=True, slots=True)
class ToteStored:
    device_id: str
    wave_id: str
    tote: str
    location: str


@dataclass(frozen=True, slots=True)
class ToteMoved:
    """A location update we were not waiting for (e.g. after a gateway restart)."""

    device_id: str
    tote: str
    location: str


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The AS/RS refused a request (``RES_`` code) or an accepted transport failed (``ERR_``)."""

    device_id: str
    wave_id: str | None
    tote: str | None
    location: str | None
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Shortage:
    """Stock is missing: the AS/RS found the tote's source location empty."""

    device_id: str
    wave_id: str | None
    tote: str
    location: str


@dataclass(frozen=True, slots=True)
class AsrsLinkUp:
    device_id: str


@dataclass(frozen=True, slots=True)
class AsrsLinkDown:
    device_id: str
    reason: str


AsrsEvent = ToteArrived | ToteStored | ToteMoved | TransportFailed | Shortage | AsrsLinkUp | AsrsLinkDown


@dataclass(frozen=True, slots=True)
class TransportResult:
    tote: str
    code: int

    @property
    def accepted(self) -> bool:
        return self.code == ErrorCode.OK


class AsrsAdapterError(GatewayError):
    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(f"{device_id}: {reason}")
        self.device_id = device_id
        self.reason = reason


def describe(code: int) -> str:
    try:
        return ErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"AS/RS error {code:08d}"


@dataclass(slots=True)
class _Transport:
    wave_id: str
    kind: Literal["fetch", "return"]
    source: str
    target: str


class _Dropped(Exception):
    """Internal: the current connection must end (reason in args[0])."""


class AsrsAdapter:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        on_event: Callable[[AsrsEvent], Awaitable[None]],
        device_id: str = "asrs-1",
        local_id: str = "GW001",
        remote_id: str = "ASRS1",
        timing: AsrsTiming | None = None,
        first_seq: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.device_id = device_id
        self.timing = timing or AsrsTiming()
        self._on_event = on_event
        self._link = AsrsLink(
            local=local_id,
            remote=remote_id,
            ack_timeout=self.timing.ack_timeout,
            max_resends=self.timing.max_resends,
            life_interval=self.timing.life_interval,
            life_misses=self.timing.life_misses,
            # A restart must not reuse the sequence the AS/RS acked last (it would be taken as a
            # duplicate): continue a persisted one, or start at a random one.
            first_seq=first_seq if first_seq is not None else random.randint(1, MAX_SEQ),
        )
        self._writer: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self._answers: dict[int, asyncio.Future[int]] = {}
        self._transports: dict[str, _Transport] = {}
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._link.is_connected

    @property
    def next_sequence(self) -> int:
        """Persist this and pass it back as ``first_seq`` to continue the sequence after a restart."""
        return self._link.next_sequence

    # --- business API ------------------------------------------------------------------------

    async def request_totes(
        self, wave_id: str, totes: Sequence[tuple[str, str]], station: str
    ) -> list[TransportResult]:
        """Bring each ``(tote, from_location)`` to ``station``; returns the AS/RS's answers."""
        return await self._transport(wave_id, "fetch", [(t, src, station) for t, src in totes])

    async def return_totes(
        self, wave_id: str, totes: Sequence[tuple[str, str]], station: str
    ) -> list[TransportResult]:
        """Send each ``(tote, to_location)`` from ``station`` back to storage."""
        return await self._transport(wave_id, "return", [(t, station, dst) for t, dst in totes])

    async def _transport(
        self, wave_id: str, kind: Literal["fetch", "return"], moves: list[tuple[str, str, str]]
    ) -> list[TransportResult]:
        loop = asyncio.get_running_loop()
        futures: list[tuple[str, asyncio.Future[int]]] = []
        now = time.time()
        for tote, source, target in moves:
            req = TransportRequest(tote, source, target, _stamp(now))  # FieldError on a bad id
            self._transports[tote] = _Transport(wave_id, kind, source, target)
            seq = self._link.send(req, now)
            fut: asyncio.Future[int] = loop.create_future()
            self._answers[seq] = fut
            futures.append((tote, fut))
            log.debug(
                "%s: wave %s %s %s %s->%s seq %d", self.device_id, wave_id, kind, tote, source, target, seq
            )
        self._flush()
        return [TransportResult(tote, await fut) for tote, fut in futures]

    # --- connection loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with jittered exponential backoff; runs until cancelled."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timing.connect_timeout):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "%s: connect to %s:%d failed (%s); retry in %.2fs",
                    self.device_id,
                    self.host,
                    self.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            reason = "closed"
            try:
                reason = await self._serve(reader, writer)
            finally:
                self._writer = None
                writer.transport.abort()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                events = self._link.disconnected(reason)
            await self._handle(events)
            self.reconnects += 1
            await asyncio.sleep(self._backoff(0))

    def _backoff(self, attempt: int) -> float:
        cap = min(self.timing.backoff_max, self.timing.backoff_initial * 2**attempt)
        return random.uniform(cap / 2, cap)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        self._writer = writer
        log.info("%s: connected to %s:%d", self.device_id, self.host, self.port)
        await self._handle(self._link.connected(time.time()))
        self._flush()
        reason = ""
        try:
            async with TaskGroup() as tg:
                tg.create_task(self._read_loop(reader), name=f"{self.device_id}-asrs-read")
                tg.create_task(self._timer_loop(), name=f"{self.device_id}-asrs-timer")
        except* _Dropped as eg:
            reason = str(eg.exceptions[0])
        if not reason:
            raise AsrsAdapterError(self.device_id, "connection tasks ended without a reason")
        log.warning("%s: link down: %s", self.device_id, reason)
        return reason

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(4096)
            except OSError as exc:
                raise _Dropped(f"read error: {exc}") from exc
            if not data:
                raise _Dropped("AS/RS closed the connection")
            await self._handle(self._link.receive_data(data, time.time()))
            self._flush()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._link.next_deadline()
            if deadline is None:
                raise _Dropped("link failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    await self._wake.wait()
            await self._handle(self._link.tick(time.time()))
            self._flush()

    def _flush(self) -> None:
        data = self._link.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
        self._wake.set()  # deadlines may have moved

    # --- link events -----------------------------------------------------------------------

    async def _handle(self, events: list[LinkEvent]) -> None:
        for ev in events:
            match ev:
                case Acked(seq=seq, body=TransportRequest() as req, code=code):
                    await self._on_answer(seq, req, code)
                case Received(seq=seq, body=body):
                    code = await self._on_report(body)
                    self._link.ack(seq, code, time.time())
                    self._flush()
                case LinkFailed(reason=reason):
                    raise _Dropped(reason)
                case LinkUp():
                    await self._on_event(AsrsLinkUp(self.device_id))
                case LinkDown(reason=reason):
                    await self._on_event(AsrsLinkDown(self.device_id, reason))
                case Resent(seq=seq, attempt=attempt):
                    log.info("%s: resent seq %d (attempt %d)", self.device_id, seq, attempt)
                case DuplicateReceived(seq=seq):
                    log.info("%s: duplicate seq %d re-acked", self.device_id, seq)
                case ProtocolViolation(reason=reason):
                    log.warning("%s: %s", self.device_id, reason)
                case _:
                    log.debug("%s: %s", self.device_id, ev)

    async def _on_answer(self, seq: int, req: TransportRequest, code: int) -> None:
        fut = self._answers.pop(seq, None)
        if code != ErrorCode.OK:
            tr = self._transports.pop(req.tote, None)
            wave = tr.wave_id if tr else None
            log.warning("%s: wave %s tote %s refused: %s", self.device_id, wave, req.tote, describe(code))
            await self._on_event(
                TransportFailed(self.device_id, wave, req.tote, req.source, code, describe(code))
            )
            if code == ErrorCode.LOCATION_EMPTY:
                await self._on_event(Shortage(self.device_id, wave, req.tote, req.source))
        if fut is not None and not fut.done():
            fut.set_result(code)

    async def _on_report(self, body: TransportRequest | LocationUpdate | ErrorReport) -> int:
        match body:
            case LocationUpdate(tote=tote, location=location):
                tr = self._transports.get(tote)
                if tr is None or tr.target != location:
                    await self._on_event(ToteMoved(self.device_id, tote, location))
                    return ErrorCode.OK
                del self._transports[tote]
                if tr.kind == "fetch":
                    await self._on_event(ToteArrived(self.device_id, tr.wave_id, tote, location))
                else:
                    await self._on_event(ToteStored(self.device_id, tr.wave_id, tote, location))
                return ErrorCode.OK
            case ErrorReport(tote=tote, location=location, code=code):
                tr = self._transports.pop(tote, None) if tote else None
                wave = tr.wave_id if tr else None
                log.warning(
                    "%s: wave %s tote %s failed at %s: %s",
                    self.device_id,
                    wave,
                    tote,
                    location,
                    describe(code),
                )
                await self._on_event(
                    TransportFailed(self.device_id, wave, tote, location, code, describe(code))
                )
                if code == ErrorCode.LOCATION_EMPTY and tote and location:
                    await self._on_event(Shortage(self.device_id, wave, tote, location))
                return ErrorCode.OK
            case TransportRequest():
                return ErrorCode.UNKNOWN_TYPE  # the AS/RS does not send us work


def _stamp(now: float) -> datetime:
    return datetime.fromtimestamp(int(now), UTC).replace(tzinfo=None)
