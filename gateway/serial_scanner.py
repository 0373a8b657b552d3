"""Serial barcode scanner adapter (pyserial): frames -> ScanSessions, ACK/NAK host mode.

The port is opened non-blocking and watched with ``loop.add_reader`` (no threads, no
polling). In ACK/NAK host mode every read is answered only after :meth:`ScanSessions.scan`
returned: ACK after the durable commit, NAK for a refused scan or a garbled frame (the
scanner resends up to its NAK limit, then beeps an error). Without host mode refusals are
logged and counted only. If the port fails (USB unplugged) it is reopened after
``reopen_delay_s``.
"""

from __future__ import annotations

import asyncio
import logging

import serial

from gateway.scanner import ScannerCounters, ScanSessions
from protocols.records import Channel
from protocols.serial_scanner import (
    FrameError,
    FrameErrorKind,
    Framing,
    ScannerHost,
    ScanRead,
    Terminator,
)

log = logging.getLogger(__name__)

REOPEN_DELAY_S = 2.0


class SerialScannerAdapter:
    def __init__(
        self,
        *,
        device_id: str,
        port: str,
        sessions: ScanSessions,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
        prefix: bytes = b"",
        suffix: bytes = b"",
        terminator: Terminator | str = Terminator.CR,
        ack_mode: bool = False,
        max_naks: int = 3,
        reopen_delay_s: float = REOPEN_DELAY_S,
    ) -> None:
        self.device_id = device_id
        self.port = port
        self.sessions = sessions
        self.serial_kwargs = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }
        term = terminator if isinstance(terminator, Terminator) else Terminator[terminator.upper()]
        self.framing = Framing(prefix=prefix, suffix=suffix, terminator=term)
        self.ack_mode = ack_mode
        self.max_naks = max_naks
        self.reopen_delay_s = reopen_delay_s
        self.counters = ScannerCounters()
        self.opened = asyncio.Event()
        self.acks_sent = 0
        self.naks_sent = 0

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except (serial.SerialException, OSError) as e:
                self.opened.clear()
                log.error(
                    "serial scanner %s: port %s failed: %s; reopening in %.1fs",
                    self.device_id,
                    self.port,
                    e,
                    self.reopen_delay_s,
                )
                await asyncio.sleep(self.reopen_delay_s)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        ser = serial.Serial(self.port, timeout=0, **self.serial_kwargs)
        host = ScannerHost(self.framing, ack_mode=self.ack_mode, max_naks=self.max_naks)
        chunks: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        fd = ser.fileno()

        def readable() -> None:
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as e:
                loop.remove_reader(fd)
                chunks.put_nowait(e)
                return
            if data:
                chunks.put_nowait(data)

        try:
            loop.add_reader(fd, readable)
            log.info("serial scanner %s: opened %s %s", self.device_id, self.port, self.serial_kwargs)
            self.opened.set()
            while True:
                item = await chunks.get()
                if isinstance(item, Exception):
                    raise item
                for ev in host.feed(item):
                    await self._handle(host, ser, ev)
        finally:
            loop.remove_reader(fd)
            ser.close()

    async def _handle(self, host: ScannerHost, ser: serial.Serial, ev: ScanRead | FrameError) -> None:
        self.counters.reads += 1
        if isinstance(ev, FrameError):
            self.counters.decode_errors[ev.kind.value] += 1
            log.warning("serial scanner %s: bad frame: %s (%r)", self.device_id, ev.reason, ev.raw[:40])
            if self.ack_mode and ev.kind is not FrameErrorKind.UNEXPECTED:
                self._reply(ser, host.nak())
            return
        outcome = await self.sessions.scan(self.device_id, Channel.SCANNER, ev.text)
        if ev.attempt > 1:
            self.counters.retries += 1
            if outcome.accepted:
                self.counters.count(outcome)
        else:
            self.counters.count(outcome)
        if self.ack_mode:
            self._reply(ser, host.ack() if outcome.accepted else host.nak())

    def _reply(self, ser: serial.Serial, byte: bytes) -> None:
        ser.write(byte)
        if byte == b"\x06":
            self.acks_sent += 1
        else:
            self.naks_sent += 1
