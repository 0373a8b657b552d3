"""Simulated AS/RS: a real asyncio TCP server speaking ``protocols/asrs.py`` telegrams.

It keeps a map of storage locations (location -> tote or empty), moves totes on ``REQ_``
after a configurable travel time, reports arrivals with ``LOCU`` and failures with ``ERR_``,
and can inject faults (:class:`AsrsFaults`): lost acks, malfunction, blocked locations,
empty locations (just leave them empty in the map), connection drops and missed life
telegrams. One host connection at a time; a new connection replaces the old one. The link
state (sequence numbers, last acknowledged sequence, queued telegrams) lives in the
simulator, not the connection, so a reconnecting host resyncs exactly like with a real AS/RS.

Run one with ``storegate sim asrs`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from protocols.asrs import (
    AsrsDecoder,
    AsrsLink,
    DuplicateReceived,
    ErrorCode,
    ErrorReport,
    Life,
    LinkEvent,
    LinkFailed,
    LocationUpdate,
    ProtocolViolation,
    Received,
    Response,
    Telegram,
    TransportRequest,
    encode,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 5151  # (guess) no standard port; configurable everywhere
IN_TRANSIT = "IN-TRANSIT"


@dataclass
class AsrsFaults:
    """Fault injection; tests and the CLI change these while the simulator runs."""

    lose_acks: int = 0  # drop the next N outgoing RES_ telegrams (the effect still happens)
    drop_on_request: int = 0  # apply and ack the next N REQ_, then drop the connection unflushed
    malfunction: set[str] = field(default_factory=set)  # totes whose transport fails with ERR_ 22
    blocked: set[str] = field(default_factory=set)  # locations refused with RES_ 21
    silent: bool = False  # send no LIFE telegrams (the host's watchdog should fire)


@dataclass
class AsrsStats:
    requests: int = 0  # new REQ_ telegrams handled (duplicates not counted)
    transports_started: int = 0
    duplicates: int = 0
    acks_lost: int = 0
    connections: int = 0


class AsrsSimulator:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        local_id: str = "ASRS1",
        remote_id: str = "GW001",
        slots: dict[str, str | None] | None = None,
        travel_time: float = 0.0,
        ack_timeout: float = 3.0,
        max_resends: int = 3,
        life_interval: float = 10.0,
        life_misses: int = 3,
        faults: AsrsFaults | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.device_id = local_id
        self.travel_time = travel_time
        self.faults = faults or AsrsFaults()
        self.stats = AsrsStats()
        self.slots: dict[str, str | None] = dict(slots or {})
        self.positions: dict[str, str] = {t: loc for loc, t in self.slots.items() if t is not None}
        self._link = AsrsLink(
            local=local_id,
            remote=remote_id,
            ack_timeout=ack_timeout,
            max_resends=max_resends,
            life_interval=life_interval,
            life_misses=life_misses,
        )
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn_task: asyncio.Task[None] | None = None
        self._dropped = asyncio.Event()
        self._drop_reason = ""
        self._wake = asyncio.Event()
        self._travels: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self._port)
        log.info("%s: AS/RS simulator listening on %s:%d", self.device_id, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in [*self._travels, self._conn_task]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> AsrsSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def drop_connection(self, reason: str = "fault: connection drop") -> None:
        """Abort the current host connection now (fault injection)."""
        self._drop_reason = reason
        if self._writer is not None:
            self._writer.transport.abort()  # nothing more leaves, not even buffered bytes
            self._writer = None
        self._dropped.set()

    # -- connection ------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        old = self._conn_task
        if old is not None:
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old
        self._conn_task = asyncio.current_task()
        try:
            await self._serve(reader, writer)
        finally:
            self._writer = None
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._link.disconnected(self._drop_reason or "closed")
            if self._conn_task is asyncio.current_task():
                self._conn_task = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._dropped.clear()
        self._drop_reason = ""
        self._writer = writer
        log.info("%s: host connected", self.device_id)
        self._handle(self._link.connected(time.time()))
        self._flush()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._read_loop(reader), name=f"{self.device_id}-read"),
                tg.create_task(self._timer_loop(), name=f"{self.device_id}-timer"),
            ]
            await self._dropped.wait()
            for task in tasks:
                task.cancel()
        log.info("%s: host connection closed: %s", self.device_id, self._drop_reason)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(4096)
            except OSError as exc:
                data = b""
                self._drop_reason = f"read error: {exc}"
            if not data:
                self._drop_reason = self._drop_reason or "host closed"
                self._dropped.set()
                return
            self._handle(self._link.receive_data(data, time.time()))
            self._flush()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._link.next_deadline()
            if deadline is None:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    await self._wake.wait()
            self._handle(self._link.tick(time.time()))
            self._flush()

    def _flush(self) -> None:
        data = self._link.data_to_send()
        if not data or self._writer is None or self._writer.is_closing():
            return
        if self.faults.lose_acks or self.faults.silent:
            data = b"".join(encode(t) for t in self._filter(AsrsDecoder().feed(data)))
        self._writer.write(data)
        self._wake.set()

    def _filter(self, events: Iterable[object]) -> Iterable[Telegram]:
        for t in events:
            if not isinstance(t, Telegram):
                continue
            if isinstance(t.body, Life) and self.faults.silent:
                continue
            if isinstance(t.body, Response) and self.faults.lose_acks:
                self.faults.lose_acks -= 1
                self.stats.acks_lost += 1
                log.info("%s: fault: losing ack for seq %d", self.device_id, t.seq)
                continue
            yield t

    # -- behaviour -------------------------------------------------------------------------

    def _handle(self, events: list[LinkEvent]) -> None:
        for ev in events:
            match ev:
                case Received(seq=seq, body=TransportRequest() as req):
                    self.stats.requests += 1
                    code = self._start_transport(req)
                    self._link.ack(seq, code, time.time())
                    if self.faults.drop_on_request:
                        self.faults.drop_on_request -= 1
                        self.drop_connection("fault: connection drop after request")
                case Received(seq=seq):
                    self._link.ack(seq, ErrorCode.UNKNOWN_TYPE, time.time())
                case DuplicateReceived():
                    self.stats.duplicates += 1
                case LinkFailed(reason=reason):
                    self.drop_connection(reason)
                case ProtocolViolation(reason=reason):
                    log.warning("%s: %s", self.device_id, reason)
                case _:
                    log.debug("%s: %s", self.device_id, ev)

    def _start_transport(self, req: TransportRequest) -> int:
        tote, source, target = req.tote, req.source, req.target
        if source in self.faults.blocked or target in self.faults.blocked:
            return ErrorCode.LOCATION_BLOCKED
        if self.positions.get(tote) != source:
            if source in self.slots:
                return ErrorCode.LOCATION_EMPTY
            return ErrorCode.UNKNOWN_TOTE
        if self.slots.get(target) not in (None, tote):
            return ErrorCode.TARGET_OCCUPIED
        self.stats.transports_started += 1
        self.positions[tote] = IN_TRANSIT
        if source in self.slots:
            self.slots[source] = None
        task = asyncio.get_running_loop().create_task(
            self._travel(tote, source, target), name=f"{self.device_id}-travel-{tote}"
        )
        self._travels.add(task)
        task.add_done_callback(self._travels.discard)
        return ErrorCode.OK

    async def _travel(self, tote: str, source: str, target: str) -> None:
        await asyncio.sleep(self.travel_time)  # simulated crane/conveyor travel
        now = time.time()
        stamp = datetime.fromtimestamp(int(now), UTC).replace(tzinfo=None)
        if tote in self.faults.malfunction:
            self.positions[tote] = source  # the crane put it back
            if source in self.slots:
                self.slots[source] = tote
            self._link.send(ErrorReport(tote, source, ErrorCode.MALFUNCTION, stamp), now)
        else:
            self.positions[tote] = target
            if target in self.slots:
                self.slots[target] = tote
            self._link.send(LocationUpdate(tote, target, stamp), now)
        self._flush()


def default_slots(n: int, *, empty: Iterable[str] = ()) -> dict[str, str | None]:
    """``n`` storage locations ``A01-001`` ... each holding tote ``T00001`` ..."""
    slots: dict[str, str | None] = {
        f"A{i // 100 + 1:02d}-{i % 100 + 1:03d}": f"T{i + 1:05d}" for i in range(n)
    }
    for loc in empty:
        slots[loc] = None
    return slots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="storegate sim asrs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})"
    )
    parser.add_argument("--id", default="ASRS1", help="our partner id in telegrams (default ASRS1)")
    parser.add_argument("--peer", default="GW001", help="the host's partner id (default GW001)")
    parser.add_argument("--slots", type=int, default=200, help="storage locations, each with a tote")
    parser.add_argument("--empty", action="append", default=[], metavar="LOC", help="leave LOC empty")
    parser.add_argument("--travel-time", type=float, default=2.0, help="seconds per transport")
    parser.add_argument("--life-interval", type=float, default=10.0, help="seconds between LIFE telegrams")
    parser.add_argument("--ack-timeout", type=float, default=3.0, help="seconds before a resend")
    parser.add_argument("--lose-acks", type=int, default=0, help="fault: lose the next N acks")
    parser.add_argument(
        "--malfunction", action="append", default=[], metavar="TOTE", help="fault: TOTE fails"
    )
    parser.add_argument("--blocked", action="append", default=[], metavar="LOC", help="fault: LOC blocked")
    parser.add_argument("--silent", action="store_true", help="fault: send no LIFE telegrams")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    sim = AsrsSimulator(
        host=args.host,
        port=args.port,
        local_id=args.id,
        remote_id=args.peer,
        slots=default_slots(args.slots, empty=args.empty),
        travel_time=args.travel_time,
        ack_timeout=args.ack_timeout,
        life_interval=args.life_interval,
        faults=AsrsFaults(
            lose_acks=args.lose_acks,
            malfunction=set(args.malfunction),
            blocked=set(args.blocked),
            silent=args.silent,
        ),
    )

    async def serve() -> None:
        async with sim:
            await asyncio.Event().wait()  # until interrupted

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
