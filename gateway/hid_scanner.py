"""USB-HID keyboard-wedge scanner adapter: raw input_event bytes -> HidDecoder -> ScanSessions.

``path`` may be an evdev node (``/dev/input/eventN`` or ``/dev/input/by-id/...``: opened with
python-evdev and grabbed exclusively), a FIFO (test mode: opened read-write so it never sees
EOF between writers) or a regular file (replayed once, then :meth:`run` returns). In every
case the same raw ``struct input_event`` bytes go through the same decoder.
HID scanners have no return channel: refusals are logged and counted only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from pathlib import Path

from gateway.scanner import ScannerCounters, ScanSessions
from protocols.hid import EVENT_SIZE, HidDecoder, HidError, Terminator
from protocols.records import Channel

log = logging.getLogger(__name__)

READ_SIZE = EVENT_SIZE * 64


class HidScannerAdapter:
    def __init__(
        self,
        *,
        device_id: str,
        path: Path | str,
        sessions: ScanSessions,
        layout: str = "us",
        terminator: Terminator | str = Terminator.ENTER,
        gs_substitute: str | None = None,
        max_line: int = 256,
        grab: bool = True,
    ) -> None:
        self.device_id = device_id
        self.path = Path(path)
        self.sessions = sessions
        self.grab = grab
        self.decoder = HidDecoder(
            layout=layout, terminator=terminator, gs_substitute=gs_substitute, max_line=max_line
        )
        self.counters = ScannerCounters()
        self.opened = asyncio.Event()

    async def run(self) -> None:
        """Read until cancelled (device/FIFO) or to the end of a regular file."""
        mode = os.stat(self.path).st_mode
        if stat.S_ISREG(mode):
            await self._replay_file()
            return
        if stat.S_ISCHR(mode):
            await self._run_evdev()
        elif stat.S_ISFIFO(mode):
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            try:
                await self._read_fd(fd)
            finally:
                os.close(fd)
        else:
            raise OSError(f"{self.path}: not an input device, FIFO or file")

    async def _run_evdev(self) -> None:
        import evdev  # noqa: PLC0415 - only this mode needs it

        dev = evdev.InputDevice(str(self.path))
        try:
            if self.grab:
                dev.grab()  # exclusive: scans must not also type into a console
            log.info("hid scanner %s: opened %s (%s)", self.device_id, self.path, dev.name)
            await self._read_fd(dev.fd)
        finally:
            if self.grab:
                with contextlib.suppress(OSError):
                    dev.ungrab()
            dev.close()

    async def _read_fd(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | OSError] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:  # device unplugged (ENODEV)
                loop.remove_reader(fd)
                chunks.put_nowait(e)
                return
            chunks.put_nowait(data)

        loop.add_reader(fd, readable)
        self.opened.set()
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, OSError):
                    log.error("hid scanner %s: read failed: %s", self.device_id, item)
                    raise item
                if not item:
                    loop.remove_reader(fd)
                    return
                await self.feed(item)
        finally:
            loop.remove_reader(fd)

    async def _replay_file(self) -> None:
        loop = asyncio.get_running_loop()
        with self.path.open("rb") as f:
            self.opened.set()
            while chunk := await loop.run_in_executor(None, f.read, READ_SIZE):
                await self.feed(chunk)

    async def feed(self, data: bytes) -> None:
        for ev in self.decoder.feed(data):
            self.counters.reads += 1
            if isinstance(ev, HidError):
                self.counters.decode_errors[ev.kind.value] += 1
                log.warning(
                    "hid scanner %s: line discarded: %s (partial %r)",
                    self.device_id,
                    ev.reason,
                    ev.partial[:40],
                )
                continue
            outcome = await self.sessions.scan(self.device_id, Channel.HID_SCANNER, ev.text)
            self.counters.count(outcome)
