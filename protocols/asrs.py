"""AS/RS link: fixed-length ASCII telegrams modelled on OSIP-style warehouse-control interfaces.

Sans-IO. Two layers:

* the codec: :func:`encode` turns a :class:`Telegram` into bytes, :class:`AsrsDecoder` turns a
  byte stream into :class:`Telegram` / :class:`UnknownTelegram` / :class:`BadTelegram` /
  :class:`FrameError` events (bounded buffer, resync on the next ``###``);
* the link: :class:`AsrsLink`, a stop-and-wait state machine with an explicit transition table
  that numbers data telegrams, waits for each ack, resends on ack timeout, detects duplicates,
  sends life telegrams and runs the life watchdog. The caller passes the clock (``now``, POSIX
  seconds) into every call, feeds received bytes in, and writes :meth:`AsrsLink.data_to_send` out.

The wire format and the link rules are documented in ``protocols/ASRS.md``.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from protocols import ProtocolError

__all__ = [
    "BODY_TYPES",
    "DATA_TYPES",
    "HEADER_LEN",
    "MAX_SEQ",
    "TELEGRAM_LEN",
    "Acked",
    "AsrsDecoder",
    "AsrsError",
    "AsrsLink",
    "BadTelegram",
    "Body",
    "DecodeEvent",
    "DuplicateReceived",
    "ErrorCode",
    "ErrorReport",
    "FieldError",
    "FrameError",
    "Life",
    "LinkDown",
    "LinkEvent",
    "LinkFailed",
    "LinkState",
    "LinkUp",
    "LocalProtocolError",
    "LocationUpdate",
    "ProtocolViolation",
    "Received",
    "Resent",
    "Response",
    "Telegram",
    "TransportRequest",
    "UnknownTelegram",
    "encode",
    "format_date",
    "next_seq",
    "parse_date",
]

SYNC = b"###"
HEADER_LEN = 23  # ### + length(5) + sender(5) + receiver(5) + sequence(5)
TYPE_LEN = 4
PARTNER_LEN = 5
ID_LEN = 20  # tote barcode and location fields
CODE_LEN = 8
DATE_LEN = 14
MAX_SEQ = 99999  # data sequence runs 1..99999 then wraps to 1; 0 is used only by LIFE
LIFE_SEQ = 0
# An unknown type is skipped by its length field up to this payload size; beyond it the header
# is treated as garbage. Keeps the receive buffer bounded.
MAX_UNKNOWN_PAYLOAD = 512
MAX_BUFFER = HEADER_LEN + MAX_UNKNOWN_PAYLOAD

PAD = "_"  # right padding of text fields and partner ids
EMPTY = "*"  # a field with no value is all '*'
ID_RE = re.compile(r"[A-Za-z0-9\-./:]{1,20}")  # a tote barcode or a location
_TEXT_RE = ID_RE
_PARTNER_RE = re.compile(r"[A-Z0-9]{1,5}")
_TYPE_RE = re.compile(rb"[A-Z_]{4}")


class AsrsError(ProtocolError):
    """Base class of AS/RS protocol errors."""


class FieldError(AsrsError):
    """A field value cannot be put on the wire (we broke the format, not the peer)."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class LocalProtocolError(AsrsError):
    """The caller drove the link state machine in a way its transition table forbids."""

    def __init__(self, state: LinkState, trigger: str) -> None:
        super().__init__(f"trigger {trigger} not allowed in state {state.name}")
        self.state = state
        self.trigger = trigger


class ErrorCode(enum.IntEnum):
    """8-digit error codes carried by ``RES_`` and ``ERR_``."""

    OK = 0
    UNKNOWN_TYPE = 10
    MALFORMED = 11
    WRONG_PARTNER = 12
    LOCATION_EMPTY = 20
    LOCATION_BLOCKED = 21
    MALFUNCTION = 22
    UNKNOWN_TOTE = 23
    TARGET_OCCUPIED = 24


# ---------------------------------------------------------------------------------------------
# Telegram bodies


@dataclass(frozen=True, slots=True)
class TransportRequest:
    """``REQ_``: move ``tote`` from ``source`` to ``target``."""

    tote: str
    source: str
    target: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class Response:
    """``RES_``: acknowledges the data telegram whose sequence the header echoes."""

    code: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class LocationUpdate:
    """``LOCU``: ``tote`` is now at ``location``."""

    tote: str
    location: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """``ERR_``: a transport failed after it was accepted; ``tote``/``location`` may be unknown."""

    tote: str | None
    location: str | None
    code: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class Life:
    """``LIFE``: heartbeat, sequence 0, never acked."""

    ts: datetime


Body = TransportRequest | Response | LocationUpdate | ErrorReport | Life

BODY_TYPES: dict[type[Body], str] = {
    TransportRequest: "REQ_",
    Response: "RES_",
    LocationUpdate: "LOCU",
    ErrorReport: "ERR_",
    Life: "LIFE",
}
_BODY_LEN = {
    "REQ_": ID_LEN * 3 + DATE_LEN,
    "RES_": CODE_LEN + DATE_LEN,
    "LOCU": ID_LEN * 2 + DATE_LEN,
    "ERR_": ID_LEN * 2 + CODE_LEN + DATE_LEN,
    "LIFE": DATE_LEN,
}
#: Payload length (type + body) per telegram type, as carried in the header length field.
PAYLOAD_LEN = {t: TYPE_LEN + n for t, n in _BODY_LEN.items()}
#: Fixed total length in bytes per telegram type.
TELEGRAM_LEN = {t: HEADER_LEN + n for t, n in PAYLOAD_LEN.items()}
#: Types that are numbered and must be acked with a ``RES_``.
DATA_TYPES = frozenset({"REQ_", "LOCU", "ERR_"})


@dataclass(frozen=True, slots=True)
class Telegram:
    sender: str
    receiver: str
    seq: int
    body: Body

    @property
    def type(self) -> str:
        return BODY_TYPES[type(self.body)]


# ---------------------------------------------------------------------------------------------
# Field helpers


def format_date(ts: datetime) -> str:
    """``YYYYMMDDHHMISS``; aware datetimes are converted to UTC, naive ones are taken as UTC."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    if not 1000 <= ts.year <= 9999:
        raise FieldError("ts", ts, "year must have four digits")
    return f"{ts.year:04d}{ts.month:02d}{ts.day:02d}{ts.hour:02d}{ts.minute:02d}{ts.second:02d}"


def parse_date(text: str) -> datetime:
    """Inverse of :func:`format_date` (naive UTC); raises ValueError on a bad date."""
    if len(text) != DATE_LEN or not text.isdigit():
        raise ValueError(f"date {text!r} is not YYYYMMDDHHMISS")
    return datetime(
        int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), int(text[12:14])
    )


def _text(name: str, value: str | None) -> str:
    if value is None:
        return EMPTY * ID_LEN
    if not _TEXT_RE.fullmatch(value):
        raise FieldError(name, value, "must be 1-20 chars of A-Z a-z 0-9 - . / :")
    return value.ljust(ID_LEN, PAD)


def _partner(name: str, value: str) -> str:
    if not _PARTNER_RE.fullmatch(value):
        raise FieldError(name, value, "must be 1-5 chars of A-Z 0-9")
    return value.ljust(PARTNER_LEN, PAD)


def _code(value: int) -> str:
    if not 0 <= value <= 99_999_999:
        raise FieldError("code", value, "must fit 8 digits")
    return f"{value:08d}"


def next_seq(seq: int) -> int:
    """The data sequence after ``seq``: 1..99999, then 1 again (0 is reserved for LIFE)."""
    return 1 if seq >= MAX_SEQ else seq + 1


def encode(telegram: Telegram) -> bytes:
    """Encode one telegram. Raises :class:`FieldError` for a value that does not fit the format."""
    body = telegram.body
    ttype = BODY_TYPES[type(body)]
    if not 0 <= telegram.seq <= MAX_SEQ:
        raise FieldError("seq", telegram.seq, f"must be 0..{MAX_SEQ}")
    if (ttype == "LIFE") != (telegram.seq == LIFE_SEQ):
        raise FieldError("seq", telegram.seq, "LIFE and only LIFE uses sequence 0")
    match body:
        case TransportRequest():
            fields = _text("tote", body.tote) + _text("source", body.source) + _text("target", body.target)
        case Response():
            fields = _code(body.code)
        case LocationUpdate():
            fields = _text("tote", body.tote) + _text("location", body.location)
        case ErrorReport():
            fields = _text("tote", body.tote) + _text("location", body.location) + _code(body.code)
        case Life():
            fields = ""
    payload = ttype + fields + format_date(body.ts)
    head = (
        "###"
        + f"{len(payload):05d}"
        + _partner("sender", telegram.sender)
        + _partner("receiver", telegram.receiver)
        + f"{telegram.seq:05d}"
    )
    return (head + payload).encode("ascii")


# ---------------------------------------------------------------------------------------------
# Decoder


@dataclass(frozen=True, slots=True)
class UnknownTelegram:
    """A well-framed telegram of a type we do not know; the link answers ``RES_`` code 10."""

    sender: str
    receiver: str
    seq: int
    type: str


@dataclass(frozen=True, slots=True)
class BadTelegram:
    """A well-framed telegram of a known type with a bad field; the link answers ``RES_`` code 11."""

    sender: str
    receiver: str
    seq: int
    type: str
    reason: str


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes skipped while looking for the next ``###`` (at most 64 of them kept in ``data``)."""

    reason: str
    skipped: int
    data: bytes


DecodeEvent = Telegram | UnknownTelegram | BadTelegram | FrameError


def _unpad_partner(raw: str) -> str | None:
    value = raw.rstrip(PAD)
    return value if _PARTNER_RE.fullmatch(value) and PAD not in value else None


def _untext(name: str, raw: str) -> str:
    value = raw.rstrip(PAD)
    if not _TEXT_RE.fullmatch(value):
        raise ValueError(f"{name} field {raw!r} is not valid text")
    return value


def _untext_optional(name: str, raw: str) -> str | None:
    return None if raw == EMPTY * ID_LEN else _untext(name, raw)


def _uncode(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(f"code {raw!r} is not 8 digits")
    return int(raw)


def _decode_body(ttype: str, fields: str) -> Body:
    """Fields of a known type (without the type); raises ValueError naming the bad field."""
    ts = parse_date(fields[-DATE_LEN:])
    f = [fields[i : i + ID_LEN] for i in range(0, 3 * ID_LEN, ID_LEN)]  # text fields lead
    if ttype == "REQ_":
        return TransportRequest(_untext("tote", f[0]), _untext("source", f[1]), _untext("target", f[2]), ts)
    if ttype == "RES_":
        return Response(_uncode(fields[:CODE_LEN]), ts)
    if ttype == "LOCU":
        return LocationUpdate(_untext("tote", f[0]), _untext("location", f[1]), ts)
    if ttype == "ERR_":
        tote, loc = _untext_optional("tote", f[0]), _untext_optional("location", f[1])
        return ErrorReport(tote, loc, _uncode(fields[2 * ID_LEN : 2 * ID_LEN + CODE_LEN]), ts)
    return Life(ts)


class AsrsDecoder:
    """Stream decoder: ``feed(bytes) -> list[DecodeEvent]``.

    Never raises on peer bytes. Keeps at most :data:`MAX_BUFFER` bytes between calls (one partial
    telegram); anything that does not start a valid header is skipped up to the next ``###`` and
    reported once per skipped run as a :class:`FrameError`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[DecodeEvent]:
        self._buf += data
        events: list[DecodeEvent] = []
        skipped = bytearray()
        reason = ""
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                # Keep a trailing '#' or '##': it may be the start of the next sync.
                keep = len(self._buf) - len(self._buf.rstrip(b"#"))
                keep = min(keep, 2)
                cut = len(self._buf) - keep
                if cut:
                    skipped += self._buf[:cut]
                    reason = reason or "no sync"
                    del self._buf[:cut]
                break
            if start:
                skipped += self._buf[:start]
                reason = reason or "no sync"
                del self._buf[:start]
            if len(self._buf) < HEADER_LEN + TYPE_LEN:
                bad = self._check_partial_header()
                if bad is None:
                    break
            else:
                bad, event, size = self._try_telegram()
                if bad is None:
                    if size == 0:
                        break  # a complete header, waiting for the rest of the telegram
                    if skipped:
                        events.append(FrameError(reason, len(skipped), bytes(skipped[:64])))
                        skipped.clear()
                        reason = ""
                    assert event is not None
                    events.append(event)
                    del self._buf[:size]
                    continue
            # Not a telegram at this sync: skip one byte and look for the next one.
            reason = reason or bad
            skipped += self._buf[:1]
            del self._buf[:1]
        if skipped:
            events.append(FrameError(reason, len(skipped), bytes(skipped[:64])))
        return events

    def _check_partial_header(self) -> str | None:
        """Reject a partial header early if what is there already cannot be valid."""
        b = self._buf
        length = bytes(b[3:8])
        if length and not length.isdigit():
            return "length not digits"
        seq = bytes(b[18:23])
        if seq and not seq.isdigit():
            return "sequence not digits"
        return None

    def _try_telegram(self) -> tuple[str | None, DecodeEvent | None, int]:
        """At a sync with a full header and type: (error, event, bytes to consume)."""
        b = self._buf
        length_raw, seq_raw = bytes(b[3:8]), bytes(b[18:23])
        if not length_raw.isdigit():
            return "length not digits", None, 0
        if not seq_raw.isdigit():
            return "sequence not digits", None, 0
        try:
            sender_raw = b[8:13].decode("ascii")
            receiver_raw = b[13:18].decode("ascii")
        except UnicodeDecodeError:
            return "partner not ASCII", None, 0
        sender, receiver = _unpad_partner(sender_raw), _unpad_partner(receiver_raw)
        if sender is None or receiver is None:
            return "bad partner id", None, 0
        type_raw = bytes(b[HEADER_LEN : HEADER_LEN + TYPE_LEN])
        if not _TYPE_RE.fullmatch(type_raw):
            return "bad type", None, 0
        ttype = type_raw.decode("ascii")
        length, seq = int(length_raw), int(seq_raw)
        expected = PAYLOAD_LEN.get(ttype)
        if expected is None:
            if not TYPE_LEN <= length <= MAX_UNKNOWN_PAYLOAD:
                return "bad length for unknown type", None, 0
        elif length != expected:
            return f"{ttype} length {length} != {expected}", None, 0
        total = HEADER_LEN + length
        if expected is not None and b.find(b"#", HEADER_LEN + TYPE_LEN, total) >= 0:
            # Fields never hold '#': a sync inside a fixed-length telegram means it was cut
            # short. Resync there at once instead of waiting for the rest.
            return f"{ttype} cut short", None, 0
        if len(b) < total:
            return None, None, 0
        if expected is None:
            return None, UnknownTelegram(sender, receiver, seq, ttype), total
        raw = bytes(b[HEADER_LEN + TYPE_LEN : total])
        try:
            body = _decode_body(ttype, raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            return None, BadTelegram(sender, receiver, seq, ttype, str(exc)), total
        if (ttype == "LIFE") != (seq == LIFE_SEQ):
            return None, BadTelegram(sender, receiver, seq, ttype, "LIFE and only LIFE uses seq 0"), total
        return None, Telegram(sender, receiver, seq, body), total


# ---------------------------------------------------------------------------------------------
# Link state machine


class LinkState(enum.Enum):
    DOWN = "down"  # no connection
    IDLE = "idle"  # connected, nothing in flight
    AWAIT_ACK = "await_ack"  # connected, one data telegram in flight
    FAILED = "failed"  # resends exhausted or watchdog expired: the caller must disconnect


class _T(enum.Enum):
    CONNECT = "connect"
    SEND = "send"
    ACK = "ack"
    RESEND = "resend"
    GIVE_UP = "give_up"
    WATCHDOG = "watchdog"
    DISCONNECT = "disconnect"


_S = LinkState
TRANSITIONS: dict[tuple[LinkState, _T], LinkState] = {
    (_S.DOWN, _T.CONNECT): _S.IDLE,
    (_S.IDLE, _T.SEND): _S.AWAIT_ACK,
    (_S.AWAIT_ACK, _T.ACK): _S.IDLE,
    (_S.AWAIT_ACK, _T.RESEND): _S.AWAIT_ACK,
    (_S.AWAIT_ACK, _T.GIVE_UP): _S.FAILED,
    (_S.IDLE, _T.WATCHDOG): _S.FAILED,
    (_S.AWAIT_ACK, _T.WATCHDOG): _S.FAILED,
    (_S.DOWN, _T.DISCONNECT): _S.DOWN,
    (_S.IDLE, _T.DISCONNECT): _S.DOWN,
    (_S.AWAIT_ACK, _T.DISCONNECT): _S.DOWN,
    (_S.FAILED, _T.DISCONNECT): _S.DOWN,
}


@dataclass(frozen=True, slots=True)
class LinkUp:
    pass


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """Resends exhausted or life watchdog expired; the caller must drop the connection."""

    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """A new data telegram from the peer; answer it with :meth:`AsrsLink.ack`."""

    seq: int
    body: TransportRequest | LocationUpdate | ErrorReport


@dataclass(frozen=True, slots=True)
class DuplicateReceived:
    """The peer repeated a data telegram we already have; it was re-acked (or will be)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Acked:
    """Our data telegram ``seq`` was acknowledged with ``code`` (0 = accepted)."""

    seq: int
    body: TransportRequest | LocationUpdate | ErrorReport
    code: int


@dataclass(frozen=True, slots=True)
class Resent:
    seq: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Peer bytes we could not use (garbage, bad telegram, stray ack); logged, never fatal."""

    reason: str


LinkEvent = LinkUp | LinkDown | LinkFailed | Received | DuplicateReceived | Acked | Resent | ProtocolViolation
DataBody = TransportRequest | LocationUpdate | ErrorReport


class AsrsLink:
    """One end of an AS/RS link (works the same for the host and for the AS/RS).

    Stop-and-wait: one data telegram in flight; the next leaves when its ack arrives. Resend the
    in-flight telegram (same sequence) every ``ack_timeout`` s; after ``max_resends`` resends
    without an ack the link goes FAILED. A ``LIFE`` leaves every ``life_interval`` s; if nothing
    valid arrives for ``life_interval * life_misses`` s the link goes FAILED. On reconnect the
    in-flight telegram is resent with its original sequence, and the receiver's memory of the
    last acknowledged sequence survives reconnects, so a resend has no second effect.
    """

    def __init__(
        self,
        *,
        local: str,
        remote: str,
        ack_timeout: float = 3.0,
        max_resends: int = 3,
        life_interval: float = 10.0,
        life_misses: int = 3,
        first_seq: int = 1,
    ) -> None:
        _partner("local", local)
        _partner("remote", remote)
        if not 1 <= first_seq <= MAX_SEQ:
            raise FieldError("first_seq", first_seq, f"must be 1..{MAX_SEQ}")
        self.local = local
        self.remote = remote
        self.ack_timeout = ack_timeout
        self.max_resends = max_resends
        self.life_interval = life_interval
        self.life_misses = life_misses
        self.state = LinkState.DOWN
        self._decoder = AsrsDecoder()
        self._out = bytearray()
        self._next_seq = first_seq
        self._queue: deque[tuple[int, DataBody]] = deque()
        self._inflight: tuple[int, DataBody] | None = None
        self._sent_at = 0.0
        self._resends = 0
        self._last_rx = 0.0
        self._next_life = 0.0
        # receiver side: survives reconnects
        self._rx_pending: int | None = None
        self._last_acked: tuple[int, int] | None = None  # (seq, code)

    # -- helpers ---------------------------------------------------------------------------

    def _fire(self, trigger: _T) -> None:
        try:
            self.state = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(self.state, trigger.value) from None

    @property
    def is_connected(self) -> bool:
        return self.state in (LinkState.IDLE, LinkState.AWAIT_ACK)

    @property
    def next_sequence(self) -> int:
        """The sequence the next data telegram gets (persist it to continue after a restart)."""
        return self._next_seq

    @property
    def pending(self) -> int:
        """Data telegrams not yet acked (in flight plus queued)."""
        return len(self._queue) + (self._inflight is not None)

    def _emit(self, seq: int, body: Body) -> None:
        self._out += encode(Telegram(self.local, self.remote, seq, body))

    @staticmethod
    def _stamp(now: float) -> datetime:
        return datetime.fromtimestamp(int(now), UTC).replace(tzinfo=None)

    def _transmit_next(self, now: float) -> None:
        if self.state is not LinkState.IDLE:
            return
        if self._inflight is None and self._queue:
            self._inflight = self._queue.popleft()
        if self._inflight is None:
            return
        self._fire(_T.SEND)
        self._resends = 0
        self._sent_at = now
        self._emit(*self._inflight)

    # -- caller API ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the connection now (and forget)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def connected(self, now: float) -> list[LinkEvent]:
        self._fire(_T.CONNECT)
        self._decoder.reset()
        self._out.clear()
        self._last_rx = now
        self._next_life = now
        self._emit_life_if_due(now)
        self._transmit_next(now)
        return [LinkUp()]

    def disconnected(self, reason: str) -> list[LinkEvent]:
        was = self.state
        self._fire(_T.DISCONNECT)
        self._out.clear()
        return [] if was is LinkState.DOWN else [LinkDown(reason)]

    def send(self, body: DataBody, now: float) -> int:
        """Queue a data telegram; returns its sequence number. Survives disconnects."""
        seq = self._next_seq
        self._next_seq = next_seq(seq)
        self._queue.append((seq, body))
        self._transmit_next(now)
        return seq

    def ack(self, seq: int, code: int, now: float) -> None:
        """Answer the peer's data telegram ``seq`` with ``code``; remembered for duplicates."""
        self._last_acked = (seq, code)
        if self._rx_pending == seq:
            self._rx_pending = None
        if self.is_connected:
            self._emit(seq, Response(code, self._stamp(now)))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (None while down or failed)."""
        if not self.is_connected:
            return None
        deadlines = [self._next_life, self._last_rx + self.life_interval * self.life_misses]
        if self.state is LinkState.AWAIT_ACK:
            deadlines.append(self._sent_at + self.ack_timeout)
        return min(deadlines)

    def tick(self, now: float) -> list[LinkEvent]:
        """Run the timers: life telegram, watchdog, ack timeout and resend."""
        if not self.is_connected:
            return []
        if now >= self._last_rx + self.life_interval * self.life_misses:
            self._fire(_T.WATCHDOG)
            return [LinkFailed(f"no telegram from {self.remote} for {self.life_misses} life intervals")]
        events: list[LinkEvent] = []
        if self.state is LinkState.AWAIT_ACK and now >= self._sent_at + self.ack_timeout:
            assert self._inflight is not None
            if self._resends >= self.max_resends:
                self._fire(_T.GIVE_UP)
                return [LinkFailed(f"seq {self._inflight[0]} unacked after {self._resends} resends")]
            self._fire(_T.RESEND)
            self._resends += 1
            self._sent_at = now
            self._emit(*self._inflight)
            events.append(Resent(self._inflight[0], self._resends))
        self._emit_life_if_due(now)
        return events

    def _emit_life_if_due(self, now: float) -> None:
        if now >= self._next_life:
            self._emit(LIFE_SEQ, Life(self._stamp(now)))
            self._next_life = now + self.life_interval

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        """Feed bytes read from the connection; returns what happened."""
        if not self.is_connected:
            return []  # late bytes after a failure, before the caller closed the connection
        events: list[LinkEvent] = []
        for ev in self._decoder.feed(data):
            match ev:
                case FrameError():
                    events.append(ProtocolViolation(f"skipped {ev.skipped} bytes: {ev.reason}"))
                case UnknownTelegram() | BadTelegram():
                    self._last_rx = now
                    code = ErrorCode.UNKNOWN_TYPE if isinstance(ev, UnknownTelegram) else ErrorCode.MALFORMED
                    why = ev.reason if isinstance(ev, BadTelegram) else "unknown type"
                    events.append(ProtocolViolation(f"{ev.type} seq {ev.seq}: {why}"))
                    if ev.type != "RES_" and ev.seq != LIFE_SEQ:
                        self._emit(ev.seq, Response(code, self._stamp(now)))
                case Telegram():
                    self._last_rx = now
                    events.extend(self._on_telegram(ev, now))
        return events

    def _on_telegram(self, t: Telegram, now: float) -> list[LinkEvent]:
        if (t.sender, t.receiver) != (self.remote, self.local):
            if t.type in DATA_TYPES:
                self._emit(t.seq, Response(ErrorCode.WRONG_PARTNER, self._stamp(now)))
            return [ProtocolViolation(f"{t.type} from {t.sender} to {t.receiver}: not our partners")]
        body = t.body
        match body:
            case Life():
                return []
            case Response():
                if self.state is LinkState.AWAIT_ACK and self._inflight and self._inflight[0] == t.seq:
                    seq, sent = self._inflight
                    self._inflight = None
                    self._fire(_T.ACK)
                    self._transmit_next(now)
                    return [Acked(seq, sent, body.code)]
                return [ProtocolViolation(f"stray ack for seq {t.seq}")]
            case TransportRequest() | LocationUpdate() | ErrorReport():
                if self._last_acked is not None and self._last_acked[0] == t.seq:
                    self._emit(t.seq, Response(self._last_acked[1], self._stamp(now)))
                    return [DuplicateReceived(t.seq)]
                if self._rx_pending == t.seq:
                    return [DuplicateReceived(t.seq)]  # still being handled; ack follows
                self._rx_pending = t.seq
                return [Received(t.seq, body)]
