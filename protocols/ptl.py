"""Pick-to-light frames, modelled on ATOP ABLEPick-style controllers over TCP. Sans-IO.

Wire shape (all frames, both directions; see ``protocols/PICK-TO-LIGHT.md``)::

    LEN_L LEN_H | PORT | 0x00 0x00 0x00 | SUBCMD | NODE | DATA...

``LEN`` is the whole frame length in bytes, little-endian, including itself, so a frame with no
data has ``LEN = 8``. ``PORT`` is 0x60 (port 1) or 0x61 (port 2). ``NODE`` is a tag address
0x01-0xFA, or 0xFC for broadcast. There is no checksum (TCP is trusted).

:class:`Decoder` turns bytes into messages for one direction (``Direction.TO_HOST``: tag replies,
what the gateway reads; ``Direction.TO_TAG``: host commands, what a controller reads).
A frame that is well delimited but wrong (unknown subcommand, wrong data length, bad node) becomes
a :class:`BadFrame` event and decoding goes on. A length or port byte that cannot be a frame start
means the stream lost its framing; there are no sync bytes to find it again, so the decoder raises
:class:`FramingError` (carrying the events decoded before it) and the adapter reconnects.
:func:`encode` serves both directions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, NoReturn

from protocols import ProtocolError

HEADER_LEN = 8
MAX_FRAME_LEN = 256
DIGITS = 6
BROADCAST = 0xFC
MIN_NODE = 0x01
MAX_NODE = 0xFA
MAX_QUANTITY = 999_999
_ALL_DOTS = (1 << DIGITS) - 1


class PtlError(ProtocolError):
    """Base class of pick-to-light codec errors."""


class LocalProtocolError(PtlError):
    """We tried to encode something the protocol cannot carry."""


class RemoteProtocolError(PtlError):
    """The peer sent something we cannot decode."""


class FramingError(RemoteProtocolError):
    """The byte stream lost its framing (absurd length or port byte); reconnect to resync.

    ``head`` holds the first bytes of the offending frame; ``events`` the messages decoded
    from the same ``feed`` call before it (handle them, then drop the connection)."""

    def __init__(self, reason: str, head: bytes, events: list[Message]) -> None:
        super().__init__(f"{reason} (head {head.hex(' ')})")
        self.reason = reason
        self.head = head
        self.events = events


class Port(enum.IntEnum):
    P1 = 0x60
    P2 = 0x61


class Colour(enum.IntEnum):
    RED = 0x00
    GREEN = 0x01
    ORANGE = 0x02
    BLUE = 0x03
    PINK = 0x04
    CYAN = 0x05


class FlashRate(enum.IntEnum):
    """Data byte of the 12H flash-interval command (guess: 0/1/2 in vendor order)."""

    S0_25 = 0x00
    S0_5 = 0x01
    S1 = 0x02


class Direction(enum.Enum):
    TO_TAG = "to_tag"
    TO_HOST = "to_host"


def _check_digits(digits: str) -> str | None:
    if len(digits) != DIGITS:
        return f"digits must be {DIGITS} characters, got {len(digits)}"
    if not all(0x20 <= ord(c) <= 0x7E for c in digits):
        return "digits must be printable ASCII"
    return None


def _decode_digits(data: bytes) -> str | None:
    if not all(0x20 <= b <= 0x7E for b in data):
        return None
    return data.decode("ascii")


def quantity_digits(qty: int) -> str:
    """A quantity as the six display characters, right-aligned with spaces."""
    if not 0 <= qty <= MAX_QUANTITY:
        raise LocalProtocolError(f"quantity {qty} does not fit {DIGITS} digits")
    return str(qty).rjust(DIGITS)


def digits_quantity(digits: str) -> int | None:
    """The quantity shown by six display characters, or None if they are not a number."""
    s = digits.strip(" ")
    return int(s) if s.isascii() and s.isdigit() else None


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class _Frame:
    """Common part: the tag address and controller port. Subclasses set SUBCMD and DIRECTION."""

    SUBCMD: ClassVar[int]
    DIRECTION: ClassVar[Direction]
    DATA_LEN: ClassVar[int | None] = 0  # None: any length

    node: int
    port: Port = Port.P1

    def data(self) -> bytes:
        return b""

    def check(self) -> str | None:
        """Why this message cannot go on the wire, or None."""
        return None


# Host -> tag -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShowDigits(_Frame):
    """00H: light the tag with six characters (left to right) and a decimal-point bitmap
    (bit i = point after character i counted from the left)."""

    SUBCMD = 0x00
    DIRECTION = Direction.TO_TAG
    DATA_LEN = 7
    digits: str = " " * DIGITS
    dots: int = 0

    @classmethod
    def quantity(cls, node: int, qty: int, *, port: Port = Port.P1) -> ShowDigits:
        return cls(node=node, port=port, digits=quantity_digits(qty))

    def data(self) -> bytes:
        return self.digits.encode("ascii") + bytes([self.dots])

    def check(self) -> str | None:
        if not 0 <= self.dots <= _ALL_DOTS:
            return f"dots bitmap {self.dots:#x} out of range"
        return _check_digits(self.digits)


@dataclass(frozen=True, slots=True)
class Clear(_Frame):
    """01H: turn the tag off."""

    SUBCMD = 0x01
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class Flash(_Frame):
    """11H: make the lit display flash."""

    SUBCMD = 0x11
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class SetFlashRate(_Frame):
    """12H: flash interval."""

    SUBCMD = 0x12
    DIRECTION = Direction.TO_TAG
    DATA_LEN = 1
    rate: FlashRate = FlashRate.S0_5

    def data(self) -> bytes:
        return bytes([self.rate])


@dataclass(frozen=True, slots=True)
class ShowAddress(_Frame):
    """13H: show the tag's own address (installation aid)."""

    SUBCMD = 0x13
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class ResetTag(_Frame):
    """14H: reset the tag; it answers 0EH ResetOk."""

    SUBCMD = 0x14
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class DisableShortageKey(_Frame):
    SUBCMD = 0x15
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class StockMode(_Frame):
    SUBCMD = 0x19
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class PickMode(_Frame):
    SUBCMD = 0x1A
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class DisableConfirm(_Frame):
    SUBCMD = 0x1B
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class EnableConfirm(_Frame):
    SUBCMD = 0x1C
    DIRECTION = Direction.TO_TAG


@dataclass(frozen=True, slots=True)
class AdjustableDigits(_Frame):
    """1EH: bitmap of the characters the picker may change with the up/down keys
    (bit i = character i from the left)."""

    SUBCMD = 0x1E
    DIRECTION = Direction.TO_TAG
    DATA_LEN = 1
    mask: int = _ALL_DOTS

    def data(self) -> bytes:
        return bytes([self.mask])

    def check(self) -> str | None:
        return None if 0 <= self.mask <= _ALL_DOTS else f"digit mask {self.mask:#x} out of range"


@dataclass(frozen=True, slots=True)
class SetColour(_Frame):
    """1FH config, DATA[0] = 00 (colour), DATA[1] = colour. Other config types are not used."""

    SUBCMD = 0x1F
    DIRECTION = Direction.TO_TAG
    DATA_LEN = 2
    colour: Colour = Colour.GREEN

    def data(self) -> bytes:
        return bytes([0x00, self.colour])


# Tag -> host -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Confirmed(_Frame):
    """06H: the picker pressed confirm; ``digits`` is what the tag showed then (the quantity,
    possibly adjusted up or down by the picker)."""

    SUBCMD = 0x06
    DIRECTION = Direction.TO_HOST
    DATA_LEN = DIGITS
    digits: str = " " * DIGITS

    @property
    def quantity(self) -> int | None:
        return digits_quantity(self.digits)

    def data(self) -> bytes:
        return self.digits.encode("ascii")

    def check(self) -> str | None:
        return _check_digits(self.digits)


@dataclass(frozen=True, slots=True)
class Shortage(_Frame):
    """07H: the picker pressed the shortage key; ``digits`` is what the tag showed then
    (the quantity actually found, if the picker adjusted it down first)."""

    SUBCMD = 0x07
    DIRECTION = Direction.TO_HOST
    DATA_LEN = DIGITS
    digits: str = " " * DIGITS

    @property
    def quantity(self) -> int | None:
        return digits_quantity(self.digits)

    def data(self) -> bytes:
        return self.digits.encode("ascii")

    def check(self) -> str | None:
        return _check_digits(self.digits)


@dataclass(frozen=True, slots=True)
class TagStatus(_Frame):
    """09H: status of all tags; the layout is vendor-specific and kept raw."""

    SUBCMD = 0x09
    DIRECTION = Direction.TO_HOST
    DATA_LEN = None
    raw: bytes = b""

    def data(self) -> bytes:
        return self.raw

    def check(self) -> str | None:
        if HEADER_LEN + len(self.raw) > MAX_FRAME_LEN:
            return f"status data of {len(self.raw)} bytes exceeds MAX_FRAME_LEN"
        return None


@dataclass(frozen=True, slots=True)
class TagTimeout(_Frame):
    """0AH: the tag did not answer the controller in time."""

    SUBCMD = 0x0A
    DIRECTION = Direction.TO_HOST


@dataclass(frozen=True, slots=True)
class Malfunction(_Frame):
    """0BH: the tag reports a malfunction; DATA[0] is a vendor code."""

    SUBCMD = 0x0B
    DIRECTION = Direction.TO_HOST
    DATA_LEN = 1
    code: int = 0

    def data(self) -> bytes:
        return bytes([self.code])

    def check(self) -> str | None:
        return None if 0 <= self.code <= 0xFF else f"malfunction code {self.code} is not a byte"


@dataclass(frozen=True, slots=True)
class IllegalCommand(_Frame):
    """0CH: the controller refused a command; DATA[0] is the refused subcommand."""

    SUBCMD = 0x0C
    DIRECTION = Direction.TO_HOST
    DATA_LEN = 1
    subcmd: int = 0

    def data(self) -> bytes:
        return bytes([self.subcmd])

    def check(self) -> str | None:
        return None if 0 <= self.subcmd <= 0xFF else f"subcommand {self.subcmd} is not a byte"


@dataclass(frozen=True, slots=True)
class ButtonHeld(_Frame):
    """0DH: a key was held down while a command arrived; the command was not applied."""

    SUBCMD = 0x0D
    DIRECTION = Direction.TO_HOST


@dataclass(frozen=True, slots=True)
class ResetOk(_Frame):
    """0EH: the tag finished a reset (it is dark now)."""

    SUBCMD = 0x0E
    DIRECTION = Direction.TO_HOST


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A delimited frame that did not decode; the stream is still in sync."""

    frame: bytes
    reason: str


Command = (
    ShowDigits
    | Clear
    | Flash
    | SetFlashRate
    | ShowAddress
    | ResetTag
    | DisableShortageKey
    | StockMode
    | PickMode
    | DisableConfirm
    | EnableConfirm
    | AdjustableDigits
    | SetColour
)
Reply = Confirmed | Shortage | TagStatus | TagTimeout | Malfunction | IllegalCommand | ButtonHeld | ResetOk
Message = Command | Reply | BadFrame

COMMANDS: tuple[type[_Frame], ...] = (
    ShowDigits,
    Clear,
    Flash,
    SetFlashRate,
    ShowAddress,
    ResetTag,
    DisableShortageKey,
    StockMode,
    PickMode,
    DisableConfirm,
    EnableConfirm,
    AdjustableDigits,
    SetColour,
)
REPLIES: tuple[type[_Frame], ...] = (
    Confirmed,
    Shortage,
    TagStatus,
    TagTimeout,
    Malfunction,
    IllegalCommand,
    ButtonHeld,
    ResetOk,
)
_TABLES: dict[Direction, dict[int, type[_Frame]]] = {
    Direction.TO_TAG: {c.SUBCMD: c for c in COMMANDS},
    Direction.TO_HOST: {c.SUBCMD: c for c in REPLIES},
}


def _valid_node(node: int) -> bool:
    return MIN_NODE <= node <= MAX_NODE or node == BROADCAST


# --------------------------------------------------------------------------- encode


def encode(msg: Command | Reply) -> bytes:
    """One frame for ``msg``. Raises :class:`LocalProtocolError` if it cannot be carried."""
    if not _valid_node(msg.node):
        raise LocalProtocolError(f"node {msg.node:#x} is not a tag address (01-FA) or broadcast (FC)")
    reason = msg.check()
    if reason is not None:
        raise LocalProtocolError(f"{type(msg).__name__}: {reason}")
    data = msg.data()
    length = HEADER_LEN + len(data)
    return bytes([length & 0xFF, length >> 8, Port(msg.port), 0, 0, 0, msg.SUBCMD, msg.node]) + data


def _decode_frame(frame: bytes, table: dict[int, type[_Frame]]) -> Message:
    port = Port(frame[2])
    subcmd, node, data = frame[6], frame[7], frame[HEADER_LEN:]
    cls = table.get(subcmd)
    if cls is None:
        return BadFrame(frame, f"unknown subcommand {subcmd:#04x}")
    if not _valid_node(node):
        return BadFrame(frame, f"node {node:#04x} is not a tag address")
    if cls.DATA_LEN is not None and len(data) != cls.DATA_LEN:
        return BadFrame(frame, f"{cls.__name__} carries {cls.DATA_LEN} data bytes, got {len(data)}")
    msg: Message
    if cls is ShowDigits:
        digits = _decode_digits(data[:DIGITS])
        if digits is None:
            return BadFrame(frame, "non-printable display characters")
        if data[DIGITS] > _ALL_DOTS:
            return BadFrame(frame, f"dots bitmap {data[DIGITS]:#04x} out of range")
        msg = ShowDigits(node=node, port=port, digits=digits, dots=data[DIGITS])
    elif cls is Confirmed or cls is Shortage:
        digits = _decode_digits(data)
        if digits is None:
            return BadFrame(frame, "non-printable display characters")
        msg = Confirmed(node, port, digits) if cls is Confirmed else Shortage(node, port, digits)
    elif cls is SetFlashRate:
        if data[0] not in FlashRate._value2member_map_:
            return BadFrame(frame, f"unknown flash rate {data[0]:#04x}")
        msg = SetFlashRate(node, port, FlashRate(data[0]))
    elif cls is AdjustableDigits:
        if data[0] > _ALL_DOTS:
            return BadFrame(frame, f"digit mask {data[0]:#04x} out of range")
        msg = AdjustableDigits(node, port, data[0])
    elif cls is SetColour:
        if data[0] != 0x00:
            return BadFrame(frame, f"unsupported config type {data[0]:#04x}")
        if data[1] not in Colour._value2member_map_:
            return BadFrame(frame, f"unknown colour {data[1]:#04x}")
        msg = SetColour(node, port, Colour(data[1]))
    elif cls is TagStatus:
        msg = TagStatus(node, port, bytes(data))
    elif cls is Malfunction:
        msg = Malfunction(node, port, data[0])
    elif cls is IllegalCommand:
        msg = IllegalCommand(node, port, data[0])
    else:
        msg = cls(node, port)  # type: ignore[assignment]
    return msg


# --------------------------------------------------------------------------- decode


class Decoder:
    """Incremental decoder for one direction of one connection.

    ``feed`` keeps a partial frame between calls; its buffer never holds more than
    ``max_frame - 1`` bytes after a call. After a :class:`FramingError` the decoder is
    closed and every further ``feed`` raises the same error: make a new one on reconnect.
    """

    def __init__(self, direction: Direction, *, max_frame: int = MAX_FRAME_LEN) -> None:
        if max_frame < HEADER_LEN or max_frame > 0xFFFF:
            raise ValueError(f"max_frame {max_frame} out of range")
        self.direction = direction
        self.max_frame = max_frame
        self._table = _TABLES[direction]
        self._buf = bytearray()
        self._error: FramingError | None = None
        self.frames = 0
        self.bad_frames = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        if self._error is not None:
            raise FramingError(self._error.reason, self._error.head, [])
        buf = self._buf
        buf += data
        out: list[Message] = []
        start = 0
        n = len(buf)
        try:
            while n - start >= 2:
                length = buf[start] | buf[start + 1] << 8
                if length < HEADER_LEN or length > self.max_frame:
                    self._fail(f"absurd frame length {length}", buf, start, out)
                if n - start >= 3 and buf[start + 2] not in Port._value2member_map_:
                    self._fail(f"bad port byte {buf[start + 2]:#04x}", buf, start, out)
                if n - start < length:
                    break
                frame = bytes(buf[start : start + length])
                start += length
                msg = _decode_frame(frame, self._table)
                self.frames += 1
                if isinstance(msg, BadFrame):
                    self.bad_frames += 1
                out.append(msg)
        finally:
            del buf[:start]
        return out

    def _fail(self, reason: str, buf: bytearray, start: int, out: list[Message]) -> NoReturn:
        head = bytes(buf[start : start + HEADER_LEN])
        buf.clear()
        self._error = FramingError(reason, head, out)
        raise self._error


__all__ = [
    "BROADCAST",
    "MAX_FRAME_LEN",
    "MAX_QUANTITY",
    "AdjustableDigits",
    "BadFrame",
    "ButtonHeld",
    "Clear",
    "Colour",
    "Command",
    "Confirmed",
    "Decoder",
    "Direction",
    "DisableConfirm",
    "DisableShortageKey",
    "EnableConfirm",
    "Flash",
    "FlashRate",
    "FramingError",
    "IllegalCommand",
    "LocalProtocolError",
    "Malfunction",
    "Message",
    "PickMode",
    "Port",
    "PtlError",
    "RemoteProtocolError",
    "Reply",
    "ResetOk",
    "ResetTag",
    "SetColour",
    "SetFlashRate",
    "Shortage",
    "ShowAddress",
    "ShowDigits",
    "StockMode",
    "TagStatus",
    "TagTimeout",
    "digits_quantity",
    "encode",
    "quantity_digits",
]
