"""DENSO BHT-style block protocol for handheld ordering terminal (HT) batch upload, sans-IO.

Three layers, none doing I/O (the wire format is specified in ``protocols/HANDHELD.md``):

* frames: :class:`BlockDecoder` (``feed(bytes) -> list[Frame]``, bounded, resynchronising) and
  :func:`encode` for the control characters ENQ/ACK/NAK/EOT, the heading block
  ``SOH heading ETX BCC`` and data blocks ``STX serial data ETX BCC``;
* sessions: :class:`Sender` (the terminal) and :class:`Receiver` (the gateway), two explicit
  state machines with transition tables and an error state. Both are driven by ``feed(bytes)``
  and ``timer_expired()`` and return :data:`Output` lists: bytes to transmit, timer requests
  (:class:`ArmTimer` / :class:`CancelTimer`, durations from the constructor) and events;
* the order file: a batch id in the file name and fixed-width order records
  (:class:`OrderRecord`, :func:`decode_order_record`).

BCC (our choice, see HANDHELD.md): XOR of every byte after SOH/STX up to and including ETX.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import reduce

from biip import ParseError
from biip.gtin import Gtin

from protocols import ProtocolError

__all__ = [
    "ACK",
    "ENQ",
    "EOT",
    "ETX",
    "NAK",
    "ORDER_FIELD_LENGTHS",
    "SOH",
    "STX",
    "Aborted",
    "Ack",
    "ArmTimer",
    "BadBlock",
    "BatchId",
    "BhtError",
    "BhtFile",
    "BlockDecoder",
    "BlockRejected",
    "CancelTimer",
    "Completed",
    "DataBlock",
    "Enq",
    "Eot",
    "FileReceived",
    "Garbage",
    "Heading",
    "HeadingBlock",
    "HeadingReceived",
    "LocalProtocolError",
    "Nak",
    "OrderRecord",
    "Receiver",
    "ReceiverState",
    "RecordError",
    "Sender",
    "SenderState",
    "Transmit",
    "bcc",
    "decode_order_record",
    "encode",
    "encode_order_record",
]

SOH, STX, ETX, EOT, ENQ, ACK, NAK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x15

# Timing and retry limits (DENSO BHT-protocol values). Constructor arguments override them.
ENQ_INTERVAL = 3.0  # s: sender waits this long for a response before (re)sending ENQ
MAX_HANDSHAKE_ENQ = 10  # ENQs sent in phase 1 before the sender gives up with EOT
MAX_SILENCE_ENQ = 9  # ENQs sent after silence in phases 2/3 before EOT
MAX_NAK_RESENDS = 10  # resends of one block after NAK before EOT
RECEIVER_TIMEOUT = 30.0  # s: receiver gives up a session after this much silence
LINGER = 30.0  # s: after the final EOT is answered, a repeated EOT gets the same answer

FILE_NAME_LEN = 12
MAX_SERIAL = 32767
MAX_FIELDS = 16
MAX_FIELD_LEN = 254
MAX_RECORD_LEN = 512
_HEADING_FIXED = FILE_NAME_LEN + 5 + 2
MAX_TEXT = max(_HEADING_FIXED + 3 * MAX_FIELDS, 5 + MAX_RECORD_LEN)  # bytes between SOH/STX and ETX
MAX_GARBAGE_REPORT = 64  # a Garbage event carries at most this many bytes

_CONTROL_NAMES = {SOH: "SOH", STX: "STX", ETX: "ETX", EOT: "EOT", ENQ: "ENQ", ACK: "ACK", NAK: "NAK"}


class BhtError(ProtocolError):
    """Base class for errors of the BHT block protocol."""


class LocalProtocolError(BhtError):
    """We were asked to encode something the protocol cannot carry (our bug, not the peer's)."""


class RecordError(BhtError):
    """A well-framed order record whose content is invalid; ``reason`` is for a person."""

    def __init__(self, field: str, reason: str, raw: bytes = b"") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.raw = raw


def bcc(text: bytes) -> int:
    """Block check character: XOR of ``text``, which is everything after SOH/STX up to
    and including ETX."""
    return reduce(lambda a, b: a ^ b, text, 0)


def _printable(data: bytes) -> bool:
    return all(0x20 <= b <= 0x7E for b in data)


# ---------------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Heading:
    """Heading text: file name (12), record count (5), field count (2), field lengths (3 each)."""

    name: str
    record_count: int
    field_lengths: tuple[int, ...]

    @property
    def record_length(self) -> int:
        return sum(self.field_lengths)


@dataclass(frozen=True, slots=True)
class Enq:
    pass


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nak:
    pass


@dataclass(frozen=True, slots=True)
class Eot:
    pass


@dataclass(frozen=True, slots=True)
class HeadingBlock:
    heading: Heading


@dataclass(frozen=True, slots=True)
class DataBlock:
    serial: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BadBlock:
    """A block that did not decode. ``retryable``: a transmission error (BCC, framing, line
    noise) that a resend may cure -> NAK; otherwise a well-framed block with invalid content."""

    reason: str
    raw: bytes
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes outside any block that are not control characters (counted, then dropped)."""

    data: bytes


Frame = Enq | Ack | Nak | Eot | HeadingBlock | DataBlock | BadBlock | Garbage

_SINGLE: dict[int, Frame] = {ENQ: Enq(), ACK: Ack(), NAK: Nak(), EOT: Eot()}


def _encode_heading(h: Heading) -> bytes:
    name = h.name.encode("ascii", "replace")
    if len(name) != FILE_NAME_LEN or not _printable(name):
        raise LocalProtocolError(f"file name {h.name!r} is not {FILE_NAME_LEN} printable ASCII bytes")
    if not 0 <= h.record_count <= MAX_SERIAL:
        raise LocalProtocolError(f"record count {h.record_count} not in 0..{MAX_SERIAL}")
    if not 1 <= len(h.field_lengths) <= MAX_FIELDS:
        raise LocalProtocolError(f"{len(h.field_lengths)} fields, not 1..{MAX_FIELDS}")
    if any(not 1 <= n <= MAX_FIELD_LEN for n in h.field_lengths) or h.record_length > MAX_RECORD_LEN:
        raise LocalProtocolError(f"field lengths {h.field_lengths} out of range")
    text = (
        name
        + b"%05d%02d" % (h.record_count, len(h.field_lengths))
        + b"".join(b"%03d" % n for n in h.field_lengths)
    )
    return _block(SOH, text)


def _block(start: int, text: bytes) -> bytes:
    body = text + bytes([ETX])
    return bytes([start]) + body + bytes([bcc(body)])


def encode(frame: Frame) -> bytes:
    """Encode a frame for the wire; raises :class:`LocalProtocolError` for what cannot be sent."""
    match frame:
        case Enq():
            return bytes([ENQ])
        case Ack():
            return bytes([ACK])
        case Nak():
            return bytes([NAK])
        case Eot():
            return bytes([EOT])
        case HeadingBlock(heading=h):
            return _encode_heading(h)
        case DataBlock(serial=serial, data=data):
            if not 1 <= serial <= MAX_SERIAL:
                raise LocalProtocolError(f"serial {serial} not in 1..{MAX_SERIAL}")
            if not _printable(data):
                raise LocalProtocolError(f"data block {serial}: control or non-ASCII bytes in data")
            if len(data) > MAX_RECORD_LEN:
                raise LocalProtocolError(f"data block {serial}: {len(data)} bytes > {MAX_RECORD_LEN}")
            return _block(STX, b"%05d" % serial + data)
    raise LocalProtocolError(f"cannot encode {frame!r}")


def _parse_heading(text: bytes) -> Heading:
    if len(text) < _HEADING_FIXED:
        raise ValueError(f"heading of {len(text)} bytes is shorter than {_HEADING_FIXED}")
    name = text[:FILE_NAME_LEN].decode("ascii")
    count_b, nf_b = text[FILE_NAME_LEN : FILE_NAME_LEN + 5], text[FILE_NAME_LEN + 5 : _HEADING_FIXED]
    if not (count_b.isdigit() and nf_b.isdigit()):
        raise ValueError(f"record/field count {count_b!r}/{nf_b!r} is not digits")
    count, nfields = int(count_b), int(nf_b)
    if count > MAX_SERIAL:
        raise ValueError(f"record count {count} > {MAX_SERIAL}")
    if not 1 <= nfields <= MAX_FIELDS:
        raise ValueError(f"field count {nfields} not in 1..{MAX_FIELDS}")
    rest = text[_HEADING_FIXED:]
    if len(rest) != 3 * nfields:
        raise ValueError(f"{nfields} fields need {3 * nfields} bytes of lengths, got {len(rest)}")
    lengths = []
    for i in range(nfields):
        chunk = rest[3 * i : 3 * i + 3]
        if not chunk.isdigit() or not 1 <= int(chunk) <= MAX_FIELD_LEN:
            raise ValueError(f"field {i + 1} length {chunk!r} not in 1..{MAX_FIELD_LEN}")
        lengths.append(int(chunk))
    if sum(lengths) > MAX_RECORD_LEN:
        raise ValueError(f"record length {sum(lengths)} > {MAX_RECORD_LEN}")
    return Heading(name=name, record_count=count, field_lengths=tuple(lengths))


class _D(enum.Enum):
    IDLE = "idle"
    TEXT = "text"
    BCC = "bcc"
    SKIP = "skip"  # an overlong block: drop bytes until ETX or a control character


class BlockDecoder:
    """Bytes -> frames. Keeps partial blocks across ``feed`` calls; holds at most
    ``MAX_TEXT`` bytes; never raises on peer input (bad input becomes BadBlock/Garbage)."""

    def __init__(self) -> None:
        self._state = _D.IDLE
        self._start = 0
        self._text = bytearray()
        self._bad_char = False
        self._garbage = bytearray()
        self._garbage_len = 0

    def _flush_garbage(self, out: list[Frame]) -> None:
        if self._garbage_len:
            out.append(Garbage(bytes(self._garbage)))
            self._garbage.clear()
            self._garbage_len = 0

    def _raw(self) -> bytes:
        return bytes([self._start]) + bytes(self._text[:MAX_GARBAGE_REPORT])

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        for b in data:
            st = self._state
            if st is _D.BCC:
                out.append(self._finish(b))
                self._state = _D.IDLE
                continue
            if st is _D.TEXT or st is _D.SKIP:
                if b == ETX:
                    if st is _D.SKIP:
                        self._state = _D.IDLE
                    else:
                        self._state = _D.BCC
                    continue
                if b in (SOH, STX, ENQ, ACK, NAK, EOT):
                    if st is _D.TEXT:
                        out.append(BadBlock(f"{_CONTROL_NAMES[b]} inside a block", self._raw()))
                    self._state = _D.IDLE
                    # fall through: handle b as if between blocks
                elif st is _D.SKIP:
                    continue
                elif len(self._text) >= MAX_TEXT:
                    out.append(BadBlock(f"block longer than {MAX_TEXT} bytes", self._raw()))
                    self._state = _D.SKIP
                    continue
                else:
                    if not 0x20 <= b <= 0x7E:
                        self._bad_char = True
                    self._text.append(b)
                    continue
            # between blocks
            if b in (SOH, STX):
                self._flush_garbage(out)
                self._state, self._start = _D.TEXT, b
                self._text.clear()
                self._bad_char = False
            elif b in _SINGLE:
                self._flush_garbage(out)
                out.append(_SINGLE[b])
            else:
                if len(self._garbage) < MAX_GARBAGE_REPORT:
                    self._garbage.append(b)
                self._garbage_len += 1
        self._flush_garbage(out)
        return out

    def _finish(self, got: int) -> Frame:
        text = bytes(self._text)
        self._text.clear()
        raw = bytes([self._start]) + text + bytes([ETX, got])
        want = bcc(text + bytes([ETX]))
        if got != want:
            return BadBlock(f"BCC mismatch: got 0x{got:02X}, computed 0x{want:02X}", raw[:80])
        if self._bad_char:
            return BadBlock("control or non-ASCII byte inside a block", raw[:80])
        if self._start == SOH:
            try:
                return HeadingBlock(_parse_heading(text))
            except (ValueError, UnicodeDecodeError) as e:
                return BadBlock(f"bad heading: {e}", raw[:80], retryable=False)
        serial_b = text[:5]
        if len(text) < 5 or not serial_b.isdigit() or not 1 <= int(serial_b) <= MAX_SERIAL:
            return BadBlock(f"bad block serial {serial_b!r}", raw[:80], retryable=False)
        return DataBlock(int(serial_b), text[5:])


# ------------------------------------------------------------------------------ the file


@dataclass(frozen=True, slots=True)
class BhtFile:
    name: str
    field_lengths: tuple[int, ...]
    records: tuple[bytes, ...]

    @property
    def heading(self) -> Heading:
        return Heading(self.name, len(self.records), self.field_lengths)

    def frames(self) -> list[HeadingBlock | DataBlock]:
        fs: list[HeadingBlock | DataBlock] = [HeadingBlock(self.heading)]
        fs.extend(DataBlock(i, r) for i, r in enumerate(self.records, start=1))
        return fs

    def digest(self) -> str:
        """SHA-256 over the heading and the records: equal content, equal digest."""
        h = hashlib.sha256(encode(HeadingBlock(self.heading)))
        for r in self.records:
            h.update(len(r).to_bytes(2, "big"))
            h.update(r)
        return h.hexdigest()


# ------------------------------------------------------------------------ session outputs


@dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)start the single session timer; call ``timer_expired()`` after ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    pass


@dataclass(frozen=True, slots=True)
class Completed:
    name: str


@dataclass(frozen=True, slots=True)
class Aborted:
    reason: str
    by: str  # "sender" / "receiver": which side ended the session
    records: int = 0  # data blocks accepted before the abort


@dataclass(frozen=True, slots=True)
class HeadingReceived:
    heading: Heading


@dataclass(frozen=True, slots=True)
class BlockRejected:
    """The receiver NAKed a block (or a garbled frame)."""

    reason: str


@dataclass(frozen=True, slots=True)
class FileReceived:
    """The final EOT arrived with every record: commit, then call ``commit_done()`` or
    ``refuse(reason)``. No ACK goes out until then."""

    file: BhtFile


Output = (
    Transmit
    | ArmTimer
    | CancelTimer
    | Completed
    | Aborted
    | HeadingReceived
    | BlockRejected
    | FileReceived
    | Garbage
)

_TIMER = "timer"


def _kind(frame: Frame | str) -> str:
    return frame if isinstance(frame, str) else type(frame).__name__


# --------------------------------------------------------------------------------- sender


class SenderState(enum.Enum):
    IDLE = "idle"
    HANDSHAKE = "handshake"  # ENQ sent, waiting for ACK
    SENDING = "sending"  # a heading/data block sent, waiting for ACK/NAK
    CLOSING = "closing"  # final EOT sent, waiting for ACK
    DONE = "done"
    ABORTED = "aborted"  # error state: the session failed; nothing more happens


class Sender:
    """The terminal side of one upload. ``start()`` begins; feed received bytes; call
    ``timer_expired()`` when the last :class:`ArmTimer` runs out."""

    def __init__(
        self,
        file: BhtFile,
        *,
        enq_interval: float = ENQ_INTERVAL,
        max_handshake_enq: int = MAX_HANDSHAKE_ENQ,
        max_silence_enq: int = MAX_SILENCE_ENQ,
        max_nak_resends: int = MAX_NAK_RESENDS,
    ) -> None:
        self.file = file
        self.state = SenderState.IDLE
        self.enq_interval = enq_interval
        self.max_handshake_enq = max_handshake_enq
        self.max_silence_enq = max_silence_enq
        self.max_nak_resends = max_nak_resends
        self._blocks = [encode(f) for f in file.frames()]
        self._index = 0
        self._enqs = 0
        self._naks = 0
        self.abort_reason: str | None = None
        self._decoder = BlockDecoder()

    _TABLE: dict[tuple[SenderState, str], Callable[[Sender], list[Output]]] = {}

    @property
    def block_index(self) -> int:
        """0 = heading, n = data block n (serial), len(records)+1 = the final EOT."""
        return self._index

    def start(self) -> list[Output]:
        if self.state is not SenderState.IDLE:
            raise LocalProtocolError(f"start() in state {self.state.value}")
        self.state = SenderState.HANDSHAKE
        self._enqs = 1
        return [Transmit(bytes([ENQ])), ArmTimer(self.enq_interval)]

    def feed(self, data: bytes) -> list[Output]:
        out: list[Output] = []
        for frame in self._decoder.feed(data):
            out.extend(self._step(frame))
        return out

    def timer_expired(self) -> list[Output]:
        return self._step(_TIMER)

    def _step(self, frame: Frame | str) -> list[Output]:
        handler = self._TABLE.get((self.state, _kind(frame)))
        return handler(self) if handler else []  # anything else is ignored in this state

    # transitions
    def _abort(self, reason: str, *, send_eot: bool, by: str = "sender") -> list[Output]:
        self.state = SenderState.ABORTED
        self.abort_reason = reason
        out: list[Output] = [CancelTimer()]
        if send_eot:
            out.insert(0, Transmit(bytes([EOT])))
        return [*out, Aborted(reason, by=by, records=self._acked())]

    def _acked(self) -> int:
        return max(0, min(self._index - 1, len(self.file.records)))

    def _send_current(self) -> list[Output]:
        if self._index < len(self._blocks):
            self.state = SenderState.SENDING
            return [Transmit(self._blocks[self._index]), ArmTimer(self.enq_interval)]
        self.state = SenderState.CLOSING
        return [Transmit(bytes([EOT])), ArmTimer(self.enq_interval)]

    def _on_handshake_ack(self) -> list[Output]:
        self._index, self._enqs, self._naks = 0, 0, 0
        return self._send_current()

    def _on_handshake_timer(self) -> list[Output]:
        if self._enqs >= self.max_handshake_enq:
            return self._abort(f"no answer to {self._enqs} ENQs", send_eot=True)
        self._enqs += 1
        return [Transmit(bytes([ENQ])), ArmTimer(self.enq_interval)]

    def _on_ack(self) -> list[Output]:
        self._index += 1
        self._enqs, self._naks = 0, 0
        return self._send_current()

    def _on_nak(self) -> list[Output]:
        self._enqs = 0
        self._naks += 1
        if self._naks > self.max_nak_resends:
            return self._abort(f"block {self._index} NAKed {self._naks} times", send_eot=True)
        return self._send_current()

    def _on_silence(self) -> list[Output]:
        if self._enqs >= self.max_silence_enq:
            return self._abort(f"no response after {self._enqs} ENQs", send_eot=True)
        self._enqs += 1
        return [Transmit(bytes([ENQ])), ArmTimer(self.enq_interval)]

    def _on_closing_silence(self) -> list[Output]:
        # Phase 3 differs from phases 1-2: the final EOT itself is repeated, not ENQ, because
        # an ENQ would be answered with the receiver's last response - the ACK of the last
        # data block - which is indistinguishable from the ACK of the EOT.
        if self._enqs >= self.max_silence_enq:
            return self._abort(f"no answer to the final EOT after {self._enqs} repeats", send_eot=False)
        self._enqs += 1
        return [Transmit(bytes([EOT])), ArmTimer(self.enq_interval)]

    def _on_receiver_eot(self) -> list[Output]:
        return self._abort("receiver sent EOT", send_eot=False, by="receiver")

    def _on_closing_ack(self) -> list[Output]:
        self.state = SenderState.DONE
        return [CancelTimer(), Completed(self.file.name)]


_S = SenderState
Sender._TABLE = {
    (_S.HANDSHAKE, "Ack"): Sender._on_handshake_ack,
    (_S.HANDSHAKE, _TIMER): Sender._on_handshake_timer,
    (_S.HANDSHAKE, "Eot"): Sender._on_receiver_eot,
    (_S.SENDING, "Ack"): Sender._on_ack,
    (_S.SENDING, "Nak"): Sender._on_nak,
    (_S.SENDING, _TIMER): Sender._on_silence,
    (_S.SENDING, "Eot"): Sender._on_receiver_eot,
    (_S.CLOSING, "Ack"): Sender._on_closing_ack,
    (_S.CLOSING, "Nak"): Sender._on_nak,
    (_S.CLOSING, _TIMER): Sender._on_closing_silence,
    (_S.CLOSING, "Eot"): Sender._on_receiver_eot,
}


# ------------------------------------------------------------------------------- receiver


class ReceiverState(enum.Enum):
    IDLE = "idle"
    OPEN = "open"  # handshake ACKed, waiting for the heading
    RECEIVING = "receiving"  # heading ACKed, waiting for data blocks or the final EOT
    COMMITTING = "committing"  # final EOT received; the owner is committing the file
    DONE = "done"  # file committed and ACKed; a repeated final EOT is ACKed again (linger)
    REFUSED = "refused"  # error state: file refused; ENQ/EOT are answered EOT until the linger ends


class Receiver:
    """The gateway side. Feed bytes; call ``timer_expired()`` when the last :class:`ArmTimer`
    runs out; after :class:`FileReceived` call ``commit_done()`` or ``refuse(reason)``."""

    def __init__(
        self,
        *,
        timeout: float = RECEIVER_TIMEOUT,
        linger: float = LINGER,
        max_records: int = MAX_SERIAL,
    ) -> None:
        self.state = ReceiverState.IDLE
        self.timeout = timeout
        self.linger = linger
        self.max_records = max_records
        self._decoder = BlockDecoder()
        self._heading: Heading | None = None
        self._records: list[bytes] = []
        self._last_response = ACK

    _TABLE: dict[tuple[ReceiverState, str], Callable[[Receiver, Frame | str], list[Output]]] = {}

    @property
    def records_received(self) -> int:
        return len(self._records)

    def feed(self, data: bytes) -> list[Output]:
        out: list[Output] = []
        for frame in self._decoder.feed(data):
            if isinstance(frame, Garbage):
                out.append(frame)
            handler = self._TABLE.get((self.state, _kind(frame)))
            if handler is not None:
                out.extend(handler(self, frame))
        return out

    def timer_expired(self) -> list[Output]:
        handler = self._TABLE.get((self.state, _TIMER))
        return handler(self, _TIMER) if handler else []

    def commit_done(self) -> list[Output]:
        """The received file is durably committed: ACK the final EOT."""
        if self.state is not ReceiverState.COMMITTING:
            raise LocalProtocolError(f"commit_done() in state {self.state.value}")
        name = self._heading.name if self._heading else ""
        self._reset(ReceiverState.DONE)
        return [Transmit(bytes([ACK])), ArmTimer(self.linger), Completed(name)]

    def refuse(self, reason: str) -> list[Output]:
        """Refuse the received file: answer the final EOT with EOT (and later ENQs too, for
        ``linger`` seconds, so a sender that lost the EOT cannot mistake an ACK)."""
        if self.state is not ReceiverState.COMMITTING:
            raise LocalProtocolError(f"refuse() in state {self.state.value}")
        n = len(self._records)
        self._reset(ReceiverState.REFUSED)
        return [
            Transmit(bytes([EOT])),
            ArmTimer(self.linger),
            Aborted(reason, by="receiver", records=n),
        ]

    def abort(self, reason: str) -> list[Output]:
        """Abort the session in progress (e.g. the heading's layout is not ours): send EOT."""
        if self.state not in (ReceiverState.OPEN, ReceiverState.RECEIVING):
            return []
        return self._abort(reason)

    # transitions
    def _reset(self, state: ReceiverState) -> None:
        self.state = state
        self._heading = None
        self._records = []
        self._last_response = ACK

    def _respond(self, code: int) -> list[Output]:
        self._last_response = code
        return [Transmit(bytes([code])), ArmTimer(self.timeout)]

    def _abort(self, reason: str) -> list[Output]:
        n = len(self._records)
        self._reset(ReceiverState.IDLE)
        return [Transmit(bytes([EOT])), CancelTimer(), Aborted(reason, by="receiver", records=n)]

    def _on_enq_idle(self, _f: Frame | str) -> list[Output]:
        self._reset(ReceiverState.OPEN)
        return self._respond(ACK)

    def _on_enq_repeat(self, _f: Frame | str) -> list[Output]:
        return self._respond(self._last_response)

    def _on_stale_block(self, _f: Frame | str) -> list[Output]:
        # a block outside a session (e.g. our abort EOT was lost): tell the sender to stop
        return [Transmit(bytes([EOT]))]

    def _on_bad(self, f: Frame | str) -> list[Output]:
        assert isinstance(f, BadBlock)
        if not f.retryable:
            return self._abort(f.reason)
        return [*self._respond(NAK), BlockRejected(f.reason)]

    def _on_heading(self, f: Frame | str) -> list[Output]:
        assert isinstance(f, HeadingBlock)
        h = f.heading
        if h.record_count > self.max_records:
            return self._abort(f"{h.record_count} records > {self.max_records}")
        self._heading = h
        self.state = ReceiverState.RECEIVING
        return [*self._respond(ACK), HeadingReceived(h)]

    def _on_heading_again(self, f: Frame | str) -> list[Output]:
        assert isinstance(f, HeadingBlock)
        if f.heading == self._heading and not self._records:
            return self._respond(ACK)  # our ACK to the heading was lost and it was resent
        return self._abort("a second heading in one session")

    def _on_data_early(self, _f: Frame | str) -> list[Output]:
        return self._abort("data block before the heading")

    def _on_data(self, f: Frame | str) -> list[Output]:
        assert isinstance(f, DataBlock) and self._heading is not None
        n = len(self._records)
        if f.serial == n and n > 0 and self._records[-1] == f.data:
            return self._respond(ACK)  # a repeat of the block we already have
        if f.serial != n + 1:
            return self._abort(f"block serial {f.serial}, expected {n + 1}")
        if n >= self._heading.record_count:
            return self._abort(f"more data blocks than the {self._heading.record_count} announced")
        if len(f.data) != self._heading.record_length:
            return self._abort(
                f"block {f.serial}: {len(f.data)} data bytes, heading says {self._heading.record_length}"
            )
        self._records.append(f.data)
        return self._respond(ACK)

    def _on_sender_eot_open(self, _f: Frame | str) -> list[Output]:
        self._reset(ReceiverState.IDLE)
        return [CancelTimer(), Aborted("sender sent EOT before the heading", by="sender")]

    def _on_final_eot(self, _f: Frame | str) -> list[Output]:
        assert self._heading is not None
        h, n = self._heading, len(self._records)
        if n != h.record_count:
            # the sender gave up (EOT) part way; answer EOT so even a confused sender knows
            self._reset(ReceiverState.IDLE)
            return [
                Transmit(bytes([EOT])),
                CancelTimer(),
                Aborted(f"EOT after {n} of {h.record_count} records", by="sender", records=n),
            ]
        self.state = ReceiverState.COMMITTING
        return [CancelTimer(), FileReceived(BhtFile(h.name, h.field_lengths, tuple(self._records)))]

    def _on_timeout(self, _f: Frame | str) -> list[Output]:
        return self._abort(f"no data for {self.timeout:g} s")

    def _on_enq_refused(self, _f: Frame | str) -> list[Output]:
        return [Transmit(bytes([EOT]))]

    def _on_eot_done(self, _f: Frame | str) -> list[Output]:
        return [Transmit(bytes([ACK]))]  # our ACK to the final EOT was lost; it was resent

    def _on_linger_end(self, _f: Frame | str) -> list[Output]:
        self._reset(ReceiverState.IDLE)
        return []


_R = ReceiverState
Receiver._TABLE = {
    (_R.IDLE, "Enq"): Receiver._on_enq_idle,
    (_R.IDLE, "HeadingBlock"): Receiver._on_stale_block,
    (_R.IDLE, "DataBlock"): Receiver._on_stale_block,
    (_R.OPEN, "Enq"): Receiver._on_enq_repeat,
    (_R.OPEN, "HeadingBlock"): Receiver._on_heading,
    (_R.OPEN, "DataBlock"): Receiver._on_data_early,
    (_R.OPEN, "BadBlock"): Receiver._on_bad,
    (_R.OPEN, "Eot"): Receiver._on_sender_eot_open,
    (_R.OPEN, _TIMER): Receiver._on_timeout,
    (_R.RECEIVING, "Enq"): Receiver._on_enq_repeat,
    (_R.RECEIVING, "HeadingBlock"): Receiver._on_heading_again,
    (_R.RECEIVING, "DataBlock"): Receiver._on_data,
    (_R.RECEIVING, "BadBlock"): Receiver._on_bad,
    (_R.RECEIVING, "Eot"): Receiver._on_final_eot,
    (_R.RECEIVING, _TIMER): Receiver._on_timeout,
    # COMMITTING: everything is ignored (ENQs get no answer until the commit is done)
    (_R.DONE, "Enq"): Receiver._on_enq_idle,
    (_R.DONE, "Eot"): Receiver._on_eot_done,
    (_R.DONE, "HeadingBlock"): Receiver._on_stale_block,
    (_R.DONE, "DataBlock"): Receiver._on_stale_block,
    (_R.DONE, _TIMER): Receiver._on_linger_end,
    (_R.REFUSED, "Enq"): Receiver._on_enq_refused,
    (_R.REFUSED, "Eot"): Receiver._on_enq_refused,
    (_R.REFUSED, "HeadingBlock"): Receiver._on_stale_block,
    (_R.REFUSED, "DataBlock"): Receiver._on_stale_block,
    (_R.REFUSED, _TIMER): Receiver._on_linger_end,
}


# ------------------------------------------------------------------------ the order file

ORDER_FIELD_LENGTHS = (14, 6, 8, 10)  # GTIN, quantity, requested date, customer code
ORDER_EXT = ".OD"
_FILE_RE = re.compile(r"^([0-9A-Z]{4})([0-9]{5})\.OD$")
MAX_RECORD_QTY = 999_999


@dataclass(frozen=True, slots=True)
class BatchId:
    """Terminal id (4 of 0-9A-Z) and batch number (1..99999) - the file name ``HT0100017.OD``."""

    terminal: str
    number: int

    @property
    def file_name(self) -> str:
        if not re.fullmatch(r"[0-9A-Z]{4}", self.terminal) or not 1 <= self.number <= 99_999:
            raise LocalProtocolError(f"bad batch id {self.terminal!r}/{self.number}")
        return f"{self.terminal}{self.number:05d}{ORDER_EXT}"

    def __str__(self) -> str:
        return f"{self.terminal}/{self.number:05d}"

    @classmethod
    def from_file_name(cls, name: str) -> BatchId:
        m = _FILE_RE.match(name)
        if not m or int(m.group(2)) == 0:
            raise RecordError("file name", f"{name!r} is not TTTTNNNNN.OD (terminal, batch 00001-99999)")
        return cls(m.group(1), int(m.group(2)))


@dataclass(frozen=True, slots=True)
class OrderRecord:
    gtin: str  # 14 digits, check digit verified
    qty: int  # 1..999999 here; the gateway applies its own upper limit
    requested_date: dt.date
    customer: str = ""  # empty: the store's default customer


def encode_order_record(rec: OrderRecord) -> bytes:
    """Fixed width: GTIN right-aligned zero-padded (14), qty (6), YYYYMMDD (8), customer (10,
    left-aligned, space-padded). Raises LocalProtocolError if a field does not fit."""
    gtin = rec.gtin.rjust(14, "0") if rec.gtin.isdigit() else rec.gtin.ljust(14)
    qty = f"{rec.qty:06d}"
    cust = rec.customer.ljust(10)
    text = gtin + qty + rec.requested_date.strftime("%Y%m%d") + cust
    data = text.encode("ascii", "replace")
    if len(data) != sum(ORDER_FIELD_LENGTHS) or not _printable(data):
        raise LocalProtocolError(f"order record {rec!r} does not fit {ORDER_FIELD_LENGTHS}")
    return data


def split_fields(data: bytes, lengths: Iterable[int]) -> list[str]:
    out, pos = [], 0
    for n in lengths:
        out.append(data[pos : pos + n].decode("ascii", "replace"))
        pos += n
    return out


def decode_order_record(data: bytes, lengths: tuple[int, ...] = ORDER_FIELD_LENGTHS) -> OrderRecord:
    """Parse and check one order record; raises :class:`RecordError` naming the field."""
    if lengths != ORDER_FIELD_LENGTHS:
        raise RecordError("layout", f"field lengths {lengths}, expected {ORDER_FIELD_LENGTHS}")
    if len(data) != sum(lengths):
        raise RecordError("layout", f"{len(data)} bytes, expected {sum(lengths)}", data)
    gtin_s, qty_s, date_s, cust_s = split_fields(data, lengths)
    gtin = gtin_s.strip()
    if not gtin.isdigit() or len(gtin) not in (8, 12, 13, 14):
        raise RecordError("gtin", f"{gtin!r} is not 8, 12, 13 or 14 digits", data)
    try:
        gtin14 = Gtin.parse(gtin).as_gtin_14()
    except ParseError as e:
        raise RecordError("gtin", f"bad check digit: {e}", data) from None
    try:
        qty = int(qty_s.strip())
    except ValueError:
        raise RecordError("qty", f"{qty_s!r} is not a number", data) from None
    if qty <= 0:
        raise RecordError("qty", f"{qty} is not a positive quantity", data)
    if not date_s.isdigit():
        raise RecordError("date", f"{date_s!r} is not YYYYMMDD", data)
    try:
        date = dt.datetime.strptime(date_s, "%Y%m%d").date()
    except ValueError:
        raise RecordError("date", f"{date_s!r} is not a valid YYYYMMDD date", data) from None
    return OrderRecord(gtin=gtin14, qty=qty, requested_date=date, customer=cust_s.strip())
