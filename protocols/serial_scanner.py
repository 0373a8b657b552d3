"""Serial (RS-232 / USB-CDC) barcode scanner: framing and the optional ACK/NAK host mode.

Sans-IO. A read travels as ``prefix + data + suffix + terminator`` (terminator CR or CRLF).
In ACK/NAK host mode the scanner waits after each read for ACK (0x06, good beep) or NAK
(0x15): on NAK it resends the same frame; on the ``max_naks``-th NAK (3) it beeps an error and
discards the read; when no answer comes within its timeout it discards the read without retry.

* :class:`ScannerHost` - the gateway side: ``feed(bytes) -> [ScanRead | FrameError]``, then
  ``ack()`` / ``nak()`` give the byte to send back.
* :class:`ScannerDevice` - the scanner side (simulators): ``read(text) -> frame bytes``,
  ``feed(bytes from host) -> [GoodBeep | ErrorBeep | Resend]``, ``ack_timeout()``.

Wire format and examples: ``protocols/SERIAL-SCANNER.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocols import ProtocolError

__all__ = [
    "ACK",
    "NAK",
    "ErrorBeep",
    "FrameError",
    "Framing",
    "GoodBeep",
    "HostState",
    "Resend",
    "ScanRead",
    "ScannerDevice",
    "ScannerHost",
    "SerialScannerError",
    "Terminator",
]

ACK = 0x06
NAK = 0x15
MAX_FRAME = 512
MAX_NAKS = 3


class SerialScannerError(ProtocolError):
    """Local misuse of a state machine (a bug in the caller, not peer garbage)."""


class Terminator(enum.Enum):
    CR = b"\r"
    CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Framing:
    prefix: bytes = b""
    suffix: bytes = b""
    terminator: Terminator = Terminator.CR
    max_frame: int = MAX_FRAME  # bytes between terminators; longer is discarded with an error

    def __post_init__(self) -> None:
        for name, v in (("prefix", self.prefix), ("suffix", self.suffix)):
            if b"\r" in v or b"\n" in v or bytes([ACK]) in v or bytes([NAK]) in v:
                raise SerialScannerError(f"{name} {v!r} must not contain CR, LF, ACK or NAK")

    def encode(self, text: str) -> bytes:
        data = text.encode("latin-1")
        if b"\r" in data or b"\n" in data:
            raise SerialScannerError(f"{text!r}: a read cannot contain CR or LF")
        return self.prefix + data + self.suffix + self.terminator.value


@dataclass(frozen=True, slots=True)
class ScanRead:
    text: str
    attempt: int = 1  # >1: the scanner resent a read we NAKed


class FrameErrorKind(enum.StrEnum):
    TOO_LONG = "too-long"
    BAD_PREFIX = "bad-prefix"
    BAD_SUFFIX = "bad-suffix"
    UNEXPECTED = "unexpected"  # a read while the previous one still awaits our ACK/NAK


@dataclass(frozen=True, slots=True)
class FrameError:
    kind: FrameErrorKind
    reason: str
    raw: bytes = b""


class _Framer:
    def __init__(self, framing: Framing) -> None:
        self.f = framing
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[ScanRead | FrameError]:
        out: list[ScanRead | FrameError] = []
        self._buf += data
        term = self.f.terminator.value
        while True:
            i = self._buf.find(term)
            if i < 0:
                if len(self._buf) > self.f.max_frame + len(term):
                    if not self._skipping:
                        out.append(
                            FrameError(
                                FrameErrorKind.TOO_LONG,
                                f"no terminator within {self.f.max_frame} bytes",
                                bytes(self._buf[:32]),
                            )
                        )
                    self._skipping = True
                    # keep a possible partial terminator only
                    del self._buf[: len(self._buf) - (len(term) - 1)]
                return out
            frame = bytes(self._buf[:i])
            del self._buf[: i + len(term)]
            if self._skipping:
                self._skipping = False
                continue
            ev = self._frame(frame)
            if ev is not None:
                out.append(ev)

    def _frame(self, frame: bytes) -> ScanRead | FrameError | None:
        if self.f.terminator is Terminator.CR:
            frame = frame.lstrip(b"\n")  # a scanner set to CRLF talking to a CR host
        if not frame:
            return None
        if len(frame) > self.f.max_frame:
            return FrameError(FrameErrorKind.TOO_LONG, f"{len(frame)} bytes > {self.f.max_frame}", frame[:32])
        p, s = self.f.prefix, self.f.suffix
        if p and not frame.startswith(p):
            return FrameError(FrameErrorKind.BAD_PREFIX, f"frame does not start with {p!r}", frame)
        frame = frame[len(p) :]
        if s and not frame.endswith(s):
            return FrameError(FrameErrorKind.BAD_SUFFIX, f"frame does not end with {s!r}", frame)
        if s:
            frame = frame[: -len(s)]
        return ScanRead(frame.decode("latin-1"))


class HostState(enum.Enum):
    READY = "ready"
    AWAITING_VERDICT = "awaiting-verdict"  # a read was delivered; caller owes ack() or nak()


class ScannerHost:
    """Gateway side. Without ``ack_mode`` it only deframes; with it, every ScanRead or
    FrameError must be answered with :meth:`ack` or :meth:`nak` (FrameError: always nak)."""

    def __init__(
        self, framing: Framing | None = None, *, ack_mode: bool = False, max_naks: int = MAX_NAKS
    ) -> None:
        self.framing = framing or Framing()
        self.ack_mode = ack_mode
        self.max_naks = max_naks  # the scanner's setting: after this many NAKs it gives up
        self.state = HostState.READY
        self._framer = _Framer(self.framing)
        self._pending: ScanRead | None = None
        self._last_nak: tuple[str, int] | None = None

    def feed(self, data: bytes) -> list[ScanRead | FrameError]:
        events = self._framer.feed(data)
        if not self.ack_mode:
            return events
        out: list[ScanRead | FrameError] = []
        for ev in events:
            if self.state is HostState.AWAITING_VERDICT:
                # The scanner broke host mode (sent before our answer). Report it; the pending
                # read still gets its verdict; this one is dropped and the scanner will time out.
                out.append(
                    FrameError(
                        FrameErrorKind.UNEXPECTED,
                        "read arrived before ACK/NAK of the previous one",
                        ev.text.encode("latin-1") if isinstance(ev, ScanRead) else ev.raw,
                    )
                )
                continue
            if isinstance(ev, ScanRead):
                attempt = 1
                if self._last_nak is not None and self._last_nak[0] == ev.text:
                    attempt = self._last_nak[1] + 1
                read = ScanRead(ev.text, attempt)
                self._pending = read
                out.append(read)
            else:
                self._pending = None
                out.append(ev)
            self.state = HostState.AWAITING_VERDICT
        return out

    def _verdict(self, byte: int) -> bytes:
        if not self.ack_mode:
            raise SerialScannerError("ack()/nak() only in ACK/NAK host mode")
        if self.state is not HostState.AWAITING_VERDICT:
            raise SerialScannerError("no read is awaiting ACK/NAK")
        p = self._pending
        resend_expected = byte == NAK and p is not None and p.attempt < self.max_naks
        self._last_nak = (p.text, p.attempt) if resend_expected and p is not None else None
        self._pending = None
        self.state = HostState.READY
        return bytes([byte])

    def ack(self) -> bytes:
        return self._verdict(ACK)

    def nak(self) -> bytes:
        return self._verdict(NAK)


# -- scanner side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoodBeep:
    text: str


@dataclass(frozen=True, slots=True)
class ErrorBeep:
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resend:
    data: bytes  # the frame to transmit again
    attempt: int


class DeviceState(enum.Enum):
    IDLE = "idle"
    AWAITING_ACK = "awaiting-ack"


class ScannerDevice:
    """Scanner side of the framing and host mode (used by the simulator)."""

    def __init__(
        self, framing: Framing | None = None, *, ack_mode: bool = False, max_naks: int = MAX_NAKS
    ) -> None:
        self.framing = framing or Framing()
        self.ack_mode = ack_mode
        self.max_naks = max_naks
        self.state = DeviceState.IDLE
        self._text = ""
        self._frame = b""
        self._naks = 0
        self.stray_bytes = 0

    def read(self, text: str) -> bytes:
        """A successful decode: the bytes to transmit."""
        if self.state is DeviceState.AWAITING_ACK:
            raise SerialScannerError("previous read still awaits ACK/NAK")
        frame = self.framing.encode(text)
        if self.ack_mode:
            self.state = DeviceState.AWAITING_ACK
            self._text, self._frame, self._naks = text, frame, 0
        return frame

    def feed(self, data: bytes) -> list[GoodBeep | ErrorBeep | Resend]:
        out: list[GoodBeep | ErrorBeep | Resend] = []
        for b in data:
            if self.state is not DeviceState.AWAITING_ACK or b not in (ACK, NAK):
                self.stray_bytes += 1
                continue
            if b == ACK:
                out.append(GoodBeep(self._text))
                self.state = DeviceState.IDLE
                continue
            self._naks += 1
            if self._naks >= self.max_naks:
                out.append(ErrorBeep(self._text, f"NAK {self._naks} times"))
                self.state = DeviceState.IDLE
            else:
                out.append(Resend(self._frame, self._naks + 1))
        return out

    def ack_timeout(self) -> ErrorBeep | None:
        """The I/O layer's ACK deadline passed: discard the read (no retry)."""
        if self.state is not DeviceState.AWAITING_ACK:
            return None
        self.state = DeviceState.IDLE
        return ErrorBeep(self._text, "no ACK/NAK from host")
