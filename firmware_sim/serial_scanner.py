"""Serial barcode scanner simulator on a real PTY, with ACK/NAK host mode and faults.

The simulator holds the PTY master; the gateway opens the slave (printed at start) as its
serial port. Faults: ``garble`` corrupts the next N transmissions on the wire (first byte
replaced by ``?``, which breaks the prefix or the symbology identifier), ``drop_acks`` loses
the next N ACK/NAK bytes from the host (the scanner then times out and discards the read).

    storegate sim scanner --ack-mode --wait 3 --order 4006381333931:6 --end
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tty
from dataclasses import dataclass

from protocols.barcode import order_texts
from protocols.serial_scanner import (
    ErrorBeep,
    Framing,
    GoodBeep,
    Resend,
    ScannerDevice,
    Terminator,
)

ACK_TIMEOUT_S = 2.0


@dataclass
class Faults:
    garble: int = 0  # corrupt the next N transmissions
    drop_acks: int = 0  # lose the next N ACK/NAK bytes from the host


class SerialScannerSim:
    """One scanner on a PTY master fd. Use ``async with`` (or start()/close())."""

    def __init__(
        self,
        master_fd: int,
        *,
        framing: Framing | None = None,
        ack_mode: bool = False,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        max_naks: int = 3,
        faults: Faults | None = None,
    ) -> None:
        self.fd = master_fd
        self.device = ScannerDevice(framing, ack_mode=ack_mode, max_naks=max_naks)
        self.ack_timeout_s = ack_timeout_s
        self.faults = faults or Faults()
        self.transmissions = 0
        self.verdicts: list[int] = []  # every ACK/NAK byte received (including dropped ones)
        self._events: asyncio.Queue[GoodBeep | ErrorBeep | Resend] = asyncio.Queue()
        self._reading = False

    async def __aenter__(self) -> SerialScannerSim:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        os.set_blocking(self.fd, False)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self._reading = True

    def close(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 256)
        except BlockingIOError:
            return
        except OSError:  # slave closed (EIO on Linux)
            return
        for b in data:
            self.verdicts.append(b)
            if self.faults.drop_acks > 0 and b in (0x06, 0x15):
                self.faults.drop_acks -= 1
                continue
            for ev in self.device.feed(bytes([b])):
                self._events.put_nowait(ev)

    def _send(self, frame: bytes) -> None:
        if self.faults.garble > 0:
            self.faults.garble -= 1
            frame = b"?" + frame[1:]
        self.transmissions += 1
        os.write(self.fd, frame)

    async def scan(self, text: str) -> GoodBeep | ErrorBeep | None:
        """Transmit a read; in host mode wait for the outcome (None without host mode)."""
        self._send(self.device.read(text))
        if not self.device.ack_mode:
            return None
        while True:
            try:
                async with asyncio.timeout(self.ack_timeout_s):
                    ev = await self._events.get()
            except TimeoutError:
                beep = self.device.ack_timeout()
                assert beep is not None
                return beep
            if isinstance(ev, Resend):
                self._send(ev.data)
                continue
            return ev


def open_pty() -> tuple[int, int, str]:
    """A PTY pair in raw mode: (master_fd, slave_fd, slave_name)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


async def _amain(a: argparse.Namespace) -> int:
    master, slave, name = open_pty()
    if a.link:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(a.link)
        os.symlink(name, a.link)
    print(f"scanner on {name}" + (f" (link {a.link})" if a.link else ""), flush=True)
    framing = Framing(bytes.fromhex(a.prefix), bytes.fromhex(a.suffix), Terminator[a.terminator])
    texts = [t.encode().decode("unicode_escape") for t in a.text]
    texts += order_texts(a.order, end=a.end, location=a.location)
    try:
        await asyncio.sleep(a.wait)  # let the gateway open the port (it flushes input on open)
        async with SerialScannerSim(
            master,
            framing=framing,
            ack_mode=a.ack_mode,
            ack_timeout_s=a.ack_timeout,
            faults=Faults(garble=a.garble, drop_acks=a.drop_acks),
        ) as sim:
            for text in texts:
                result = await sim.scan(text)
                print(f"{text!r}: {result or 'sent'}", flush=True)
                await asyncio.sleep(a.interval)
            if a.hold:
                await asyncio.Event().wait()
    finally:
        os.close(master)
        os.close(slave)
        if a.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(a.link)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="storegate sim scanner", description=__doc__.split("\n")[0])
    p.add_argument("--link", default=None, help="also make this symlink to the PTY slave")
    p.add_argument("--prefix", default="", help="prefix bytes in hex, e.g. 02")
    p.add_argument("--suffix", default="", help="suffix bytes in hex, e.g. 03")
    p.add_argument("--terminator", default="CR", choices=["CR", "CRLF"])
    p.add_argument("--ack-mode", action="store_true", help="ACK/NAK host mode")
    p.add_argument("--ack-timeout", type=float, default=ACK_TIMEOUT_S, help="seconds to wait for ACK/NAK")
    p.add_argument("--garble", type=int, default=0, help="corrupt the next N transmissions")
    p.add_argument("--drop-acks", type=int, default=0, help="lose the next N ACK/NAK bytes")
    p.add_argument("--wait", type=float, default=2.0, help="seconds before the first scan")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between scans")
    p.add_argument("--hold", action="store_true", help="keep the PTY open after the scans")
    p.add_argument(
        "--order",
        action="append",
        default=[],
        metavar="GTIN[:QTY]",
        help="scan a shelf label (quantity code first)",
    )
    p.add_argument("--location", default=None, help="store location on the shelf labels (AI 91)")
    p.add_argument("--end", action="store_true", help="scan SG-END after the labels")
    p.add_argument("text", nargs="*", help="raw scans (Python escapes allowed)")
    a = p.parse_args(argv)
    try:
        return asyncio.run(_amain(a))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
