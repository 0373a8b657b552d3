"""Handheld ordering terminal (HT) simulator: uploads an order batch over a serial line with the
BHT-style block protocol (``protocols/bht.py``), with fault injection.

The terminal owns one end of a real pseudo-terminal (:class:`Pty`, ``os.openpty``); the gateway
opens the other end (``Pty.name``) with pyserial as if it were a USB-serial cradle. ``--port``
uses an existing serial device instead.

Faults (:class:`Faults`): a corrupted BCC on chosen data blocks (first transmission only, so
the resend after NAK is clean), ACKs lost on the line (the n-th ACK received is dropped), a
cable pull after data block k (the terminal stops sending and gives up, no EOT), and a
duplicate upload (the same batch sent twice).

``storegate sim ht`` -> :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import serial  # the simulator may use pyserial; it never imports gateway code

from protocols import bht
from protocols.bht import (
    ACK,
    ORDER_FIELD_LENGTHS,
    STX,
    Aborted,
    ArmTimer,
    BatchId,
    BhtFile,
    CancelTimer,
    Completed,
    OrderRecord,
    Sender,
    Transmit,
    encode_order_record,
)

log = logging.getLogger(__name__)

DEFAULT_GTINS = ("04006381333931", "09781492053743", "05012345678900")


class Pty:
    """A pseudo-terminal pair in raw mode. The simulator uses ``master``; the device path
    ``name`` is what the gateway opens. Close it when done."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo / line editing before the gateway opens its end
        os.set_blocking(self.master, False)
        self.name = os.ttyname(self.slave)

    def pull_cable(self) -> None:
        """Close the terminal's end: the device side sees a hang-up (reads fail with EIO)."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def close(self) -> None:
        self.pull_cable()
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Faults:
    bad_bcc_blocks: frozenset[int] = frozenset()  # data block serials sent once with a bad BCC
    drop_acks: frozenset[int] = frozenset()  # 1-based index of ACK bytes received that are "lost"
    cable_pull_after: int | None = None  # stop after sending this data block serial


@dataclass(slots=True)
class UploadResult:
    ok: bool
    reason: str = ""
    transmitted: list[bytes] = field(default_factory=list)
    received: bytes = b""
    naks: int = 0


def make_batch(
    terminal: str,
    number: int,
    lines: Sequence[OrderRecord],
) -> BhtFile:
    return BhtFile(
        BatchId(terminal, number).file_name,
        ORDER_FIELD_LENGTHS,
        tuple(encode_order_record(r) for r in lines),
    )


def demo_lines(n: int, *, date: dt.date, gtins: Sequence[str] = DEFAULT_GTINS) -> list[OrderRecord]:
    customers = ("", "C0042")
    return [
        OrderRecord(gtins[i % len(gtins)], 1 + i % 12, date, customers[(i // len(gtins)) % 2])
        for i in range(n)
    ]


class Terminal:
    """One HT on a file descriptor (a PTY master or an opened serial device)."""

    def __init__(
        self,
        fd: int,
        *,
        enq_interval: float = bht.ENQ_INTERVAL,
        on_output: Callable[[bht.Output], None] | None = None,
    ) -> None:
        self.fd = fd
        self.enq_interval = enq_interval
        self.on_output = on_output

    def drain(self) -> bytes:
        """Read and discard whatever is waiting on the line."""
        stale = bytearray()
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            stale += chunk
        if stale:
            log.debug("HT: discarded %d stale bytes", len(stale))
        return bytes(stale)

    async def upload(self, file: BhtFile, faults: Faults = Faults()) -> UploadResult:
        """Send ``file``; returns when the session completes, aborts, or the cable is pulled."""
        loop = asyncio.get_running_loop()
        sender = Sender(file, enq_interval=self.enq_interval)
        done: asyncio.Future[UploadResult] = loop.create_future()
        result = UploadResult(ok=False)
        timer: asyncio.TimerHandle | None = None
        acks_seen = 0
        corrupted: set[int] = set()
        pulled = False

        def handle(outs: list[bht.Output]) -> None:
            nonlocal timer, pulled
            for o in outs:
                if pulled or done.done():
                    return
                if self.on_output is not None:
                    self.on_output(o)
                if isinstance(o, Transmit):
                    data = o.data
                    serial = int(data[1:6]) if data[0] == STX else None
                    if serial in faults.bad_bcc_blocks and serial not in corrupted:
                        corrupted.add(serial)
                        data = data[:-1] + bytes([data[-1] ^ 0x5A])
                        log.info("HT %s: block %s sent with a bad BCC", file.name, serial)
                    result.transmitted.append(data)
                    os.write(self.fd, data)
                    if serial is not None and serial == faults.cable_pull_after:
                        pulled = True
                        log.info("HT %s: cable pulled after block %d", file.name, serial)
                        finish(False, f"cable pulled after block {serial}")
                        return
                elif isinstance(o, ArmTimer):
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_later(o.seconds, lambda: handle(sender.timer_expired()))
                elif isinstance(o, CancelTimer):
                    if timer is not None:
                        timer.cancel()
                        timer = None
                elif isinstance(o, Completed):
                    finish(True, "")
                elif isinstance(o, Aborted):
                    finish(False, o.reason)

        def finish(ok: bool, reason: str) -> None:
            if not done.done():
                result.ok, result.reason = ok, reason
                done.set_result(result)

        def readable() -> None:
            nonlocal acks_seen
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError as e:
                finish(False, f"line error: {e}")
                return
            if pulled:
                return
            kept = bytearray()
            for b in data:
                if b == ACK:
                    acks_seen += 1
                    if acks_seen in faults.drop_acks:
                        log.info("HT %s: ACK #%d lost on the line", file.name, acks_seen)
                        continue
                if b == bht.NAK:
                    result.naks += 1
                kept.append(b)
            result.received += bytes(kept)
            handle(sender.feed(bytes(kept)))

        self.drain()  # like a real terminal: forget what the line said before this session
        loop.add_reader(self.fd, readable)
        try:
            handle(sender.start())
            return await done
        finally:
            loop.remove_reader(self.fd)
            if timer is not None:
                timer.cancel()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="storegate sim ht",
        description="Simulate a handheld ordering terminal uploading an order batch (BHT protocol).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device to send on (e.g. /dev/ttyUSB0)")
    where.add_argument(
        "--pty", action="store_true", help="create a PTY, print its device path for the gateway"
    )
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--terminal", default="HT01", help="terminal id, 4 of 0-9A-Z (default HT01)")
    p.add_argument("--batch", type=int, default=1, help="batch number 1..99999 (default 1)")
    p.add_argument("--lines", type=int, default=5, help="order lines in the batch (default 5)")
    p.add_argument("--gtin", action="append", help="GTINs to order (repeat; default demo items)")
    p.add_argument("--date", type=dt.date.fromisoformat, help="requested date (default tomorrow)")
    p.add_argument(
        "--fault",
        choices=["none", "bad-bcc", "drop-ack", "drop-final-ack", "cable-pull", "duplicate"],
        default="none",
    )
    p.add_argument("--enq-interval", type=float, default=bht.ENQ_INTERVAL)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    date = args.date or dt.date.today() + dt.timedelta(days=1)
    file = make_batch(
        args.terminal, args.batch, demo_lines(args.lines, date=date, gtins=args.gtin or DEFAULT_GTINS)
    )
    n = len(file.records)
    faults = {
        "none": Faults(),
        "duplicate": Faults(),
        "bad-bcc": Faults(bad_bcc_blocks=frozenset({1})),
        "drop-ack": Faults(drop_acks=frozenset({3})),
        "drop-final-ack": Faults(drop_acks=frozenset({n + 3})),
        "cable-pull": Faults(cable_pull_after=max(1, n // 2)),
    }[args.fault]
    with contextlib.ExitStack() as stack:
        if args.pty:
            pty = stack.enter_context(Pty())
            fd = pty.master
            print(f"HT {args.terminal} on {pty.name}", flush=True)
        else:
            ser = stack.enter_context(serial.Serial(args.port, args.baud, timeout=0))
            fd = ser.fileno()
        term = Terminal(fd, enq_interval=args.enq_interval)
        rounds = 2 if args.fault == "duplicate" else 1
        rc = 0
        for i in range(rounds):
            res = await term.upload(file, faults)
            print(f"upload {i + 1}: {'OK' if res.ok else 'FAILED ' + res.reason} ({n} records)")
            rc = rc or (0 if res.ok else 1)
        return rc


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
