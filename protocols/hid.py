"""USB-HID keyboard-wedge scanner: Linux ``struct input_event`` records -> scanned lines.

Sans-IO. :class:`HidDecoder` takes the raw bytes read from ``/dev/input/eventN`` (or a FIFO /
file holding the same records) and returns :class:`ScanLine` / :class:`HidError` events.
:func:`encode_text` does the reverse (what a scanner types for a text) for simulators and tests.
The key codes below are copied from linux/input-event-codes.h so this module does not import
evdev. Wire format and choices: ``protocols/HID-SCANNER.md``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from protocols import ProtocolError

__all__ = [
    "EVENT",
    "LAYOUTS",
    "HidDecoder",
    "HidError",
    "HidErrorKind",
    "InputEvent",
    "ScanLine",
    "Terminator",
    "encode_text",
    "pack_event",
    "unpack_events",
]

EVENT = struct.Struct("llHHi")  # 64-bit Linux: timeval(sec, usec), type, code, value = 24 bytes
EVENT_SIZE = EVENT.size
MAX_LINE = 256

# Event types and codes (linux/input-event-codes.h)
EV_SYN, EV_KEY, EV_MSC = 0x00, 0x01, 0x04
SYN_REPORT, SYN_DROPPED = 0, 3
KEY_UP, KEY_DOWN, KEY_HOLD = 0, 1, 2

KEY_ESC, KEY_BACKSPACE, KEY_TAB, KEY_ENTER = 1, 14, 15, 28
KEY_LEFTCTRL, KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTALT = 29, 42, 54, 56
KEY_CAPSLOCK, KEY_NUMLOCK = 58, 69
KEY_KPENTER, KEY_RIGHTCTRL, KEY_RIGHTALT = 96, 97, 100
KEY_KP0 = 82
_KEYPAD_DIGITS = {82: 0, 79: 1, 80: 2, 81: 3, 75: 4, 76: 5, 77: 6, 71: 7, 72: 8, 73: 9}
_KEYPAD_CHARS = {55: "*", 74: "-", 78: "+", 83: ".", 98: "/"}
_SHIFTS = {KEY_LEFTSHIFT, KEY_RIGHTSHIFT}
_CTRLS = {KEY_LEFTCTRL, KEY_RIGHTCTRL}
_ALTS = {KEY_LEFTALT}  # right Alt is AltGr on most layouts: not an Alt+numpad key

# Main-block keys: code -> (unshifted, shifted) for the US layout.
_US: dict[int, tuple[str, str]] = {
    2: ("1", "!"), 3: ("2", "@"), 4: ("3", "#"), 5: ("4", "$"), 6: ("5", "%"),
    7: ("6", "^"), 8: ("7", "&"), 9: ("8", "*"), 10: ("9", "("), 11: ("0", ")"),
    12: ("-", "_"), 13: ("=", "+"),
    16: ("q", "Q"), 17: ("w", "W"), 18: ("e", "E"), 19: ("r", "R"), 20: ("t", "T"),
    21: ("y", "Y"), 22: ("u", "U"), 23: ("i", "I"), 24: ("o", "O"), 25: ("p", "P"),
    26: ("[", "{"), 27: ("]", "}"),
    30: ("a", "A"), 31: ("s", "S"), 32: ("d", "D"), 33: ("f", "F"), 34: ("g", "G"),
    35: ("h", "H"), 36: ("j", "J"), 37: ("k", "K"), 38: ("l", "L"),
    39: (";", ":"), 40: ("'", '"'), 41: ("`", "~"), 43: ("\\", "|"),
    44: ("z", "Z"), 45: ("x", "X"), 46: ("c", "C"), 47: ("v", "V"), 48: ("b", "B"),
    49: ("n", "N"), 50: ("m", "M"), 51: (",", "<"), 52: (".", ">"), 53: ("/", "?"),
    57: (" ", " "),
}  # fmt: skip

# German (T1) layout: only the keys that differ from US. AltGr characters are not decoded.
_DE = _US | {
    3: ("2", '"'), 4: ("3", "§"), 7: ("6", "&"), 8: ("7", "/"), 9: ("8", "("),
    10: ("9", ")"), 11: ("0", "="), 12: ("ß", "?"), 13: ("\u00b4", "`"),
    21: ("z", "Z"), 44: ("y", "Y"), 26: ("ü", "Ü"), 27: ("+", "*"),
    39: ("ö", "Ö"), 40: ("ä", "Ä"), 41: ("^", "°"), 43: ("#", "'"),
    51: (",", ";"), 52: (".", ":"), 53: ("-", "_"), 86: ("<", ">"),
}  # fmt: skip

LAYOUTS: dict[str, dict[int, tuple[str, str]]] = {"us": _US, "de": _DE}


class Terminator(enum.StrEnum):
    ENTER = "enter"
    TAB = "tab"


_TERMINATOR_KEYS = {Terminator.ENTER: {KEY_ENTER, KEY_KPENTER}, Terminator.TAB: {KEY_TAB}}


@dataclass(frozen=True, slots=True)
class InputEvent:
    sec: int
    usec: int
    type: int
    code: int
    value: int

    @property
    def timestamp(self) -> float:
        return self.sec + self.usec / 1_000_000


@dataclass(frozen=True, slots=True)
class ScanLine:
    text: str
    timestamp: float  # kernel time of the terminator key press


class HidErrorKind(enum.StrEnum):
    TOO_LONG = "too-long"
    UNMAPPED_KEY = "unmapped-key"
    DROPPED = "events-dropped"  # SYN_DROPPED: the kernel lost events, the line is garbled
    BAD_ALT_CODE = "bad-alt-code"


@dataclass(frozen=True, slots=True)
class HidError:
    kind: HidErrorKind
    reason: str
    partial: str = ""  # what had been decoded of the discarded line


class HidConfigError(ProtocolError):
    pass


def pack_event(sec: int, usec: int, type_: int, code: int, value: int) -> bytes:
    return EVENT.pack(sec, usec, type_, code, value)


def unpack_events(data: bytes) -> Iterator[InputEvent]:
    """Whole records in ``data`` (a trailing partial record is ignored)."""
    for off in range(0, len(data) - EVENT_SIZE + 1, EVENT_SIZE):
        yield InputEvent(*EVENT.unpack_from(data, off))


class HidDecoder:
    """Key events -> lines. Key-down (1) types a character; key-up (0) only matters for
    modifiers; auto-repeat (2) is ignored (a scanner never holds a key, so a repeat means a
    stuck key, not a character). Supports both shifts, Caps Lock, keypad digits, Ctrl+key
    control characters (Ctrl+] = GS) and Alt+numpad decimal codes (Alt+0,2,9 = GS)."""

    def __init__(
        self,
        *,
        layout: str = "us",
        terminator: Terminator | str = Terminator.ENTER,
        gs_substitute: str | None = None,
        max_line: int = MAX_LINE,
    ) -> None:
        if layout not in LAYOUTS:
            raise HidConfigError(f"layout {layout!r}: known layouts {', '.join(sorted(LAYOUTS))}")
        if gs_substitute is not None and len(gs_substitute) != 1:
            raise HidConfigError("gs_substitute: one character")
        self.layout = layout
        self._keys = LAYOUTS[layout]
        try:
            self.terminator = Terminator(terminator)
        except ValueError:
            raise HidConfigError(f"terminator {terminator!r}: enter or tab") from None
        self._term_keys = _TERMINATOR_KEYS[self.terminator]
        self.gs_substitute = gs_substitute
        self.max_line = max_line
        self._raw = bytearray()
        self._line: list[str] = []
        self._shift: set[int] = set()
        self._ctrl: set[int] = set()
        self._alt: set[int] = set()
        self._alt_digits = ""
        self._caps = False
        self._overflow = False
        self._unmapped: list[int] = []
        self._dropped = False
        self.events_seen = 0

    def feed(self, data: bytes) -> list[ScanLine | HidError]:
        self._raw += data
        whole = len(self._raw) - len(self._raw) % EVENT_SIZE
        out: list[ScanLine | HidError] = []
        for ev in unpack_events(bytes(self._raw[:whole])):
            self.events_seen += 1
            r = self.feed_event(ev)
            if r is not None:
                out.append(r)
        del self._raw[:whole]  # at most EVENT_SIZE - 1 bytes stay buffered
        return out

    def feed_event(self, ev: InputEvent) -> ScanLine | HidError | None:
        if ev.type == EV_SYN and ev.code == SYN_DROPPED:
            self._dropped = True
            return None
        if ev.type != EV_KEY:
            return None
        code, value = ev.code, ev.value
        if code in _SHIFTS or code in _CTRLS or code in _ALTS:
            group = self._shift if code in _SHIFTS else self._ctrl if code in _CTRLS else self._alt
            if value == KEY_DOWN:
                group.add(code)
            elif value == KEY_UP:
                group.discard(code)
                if group is self._alt and not self._alt and self._alt_digits:
                    return self._finish_alt_code()
            return None
        if value != KEY_DOWN:
            return None
        if code in self._term_keys:
            return self._end_line(ev.timestamp)
        if code == KEY_CAPSLOCK:
            self._caps = not self._caps
            return None
        if code == KEY_NUMLOCK:
            return None
        if self._alt and code in _KEYPAD_DIGITS:
            self._alt_digits += str(_KEYPAD_DIGITS[code])
            return None
        ch = self._char(code)
        if ch is None:
            self._unmapped.append(code)
            return None
        self._append(ch)
        return None

    def _char(self, code: int) -> str | None:
        if code in _KEYPAD_DIGITS:
            return str(_KEYPAD_DIGITS[code])
        if code in _KEYPAD_CHARS:
            return _KEYPAD_CHARS[code]
        if code == KEY_ENTER:  # Enter when Tab terminates
            return "\n"
        if code == KEY_TAB:
            return "\t"
        pair = self._keys.get(code)
        if pair is None:
            return None
        base, shifted = pair
        if self._ctrl:
            up = base.upper()
            if len(up) == 1 and "@" <= up <= "_":
                return chr(ord(up) & 0x1F)
            return None
        shift = bool(self._shift)
        if self._caps and base.isalpha():
            shift = not shift
        return shifted if shift else base

    def _finish_alt_code(self) -> HidError | None:
        digits, self._alt_digits = self._alt_digits, ""
        n = int(digits)
        if n > 255:
            self._unmapped.append(-n)
            return None
        self._append(chr(n))
        return None

    def _append(self, ch: str) -> None:
        if self.gs_substitute is not None and ch == self.gs_substitute:
            ch = "\x1d"
        if len(self._line) >= self.max_line:
            self._overflow = True
            return
        self._line.append(ch)

    def _end_line(self, ts: float) -> ScanLine | HidError | None:
        text = "".join(self._line)
        overflow, unmapped, dropped = self._overflow, self._unmapped, self._dropped
        self._line, self._overflow, self._unmapped, self._dropped = [], False, [], False
        self._alt_digits = ""
        if dropped:
            return HidError(HidErrorKind.DROPPED, "kernel dropped input events mid-line", text)
        if overflow:
            return HidError(HidErrorKind.TOO_LONG, f"line longer than {self.max_line} characters", text)
        if unmapped:
            codes = ", ".join(str(c) if c >= 0 else f"alt+{-c}" for c in unmapped[:5])
            return HidError(
                HidErrorKind.UNMAPPED_KEY,
                f"key code(s) {codes} not in layout {self.layout!r} (layout mismatch?)",
                text,
            )
        if not text:
            return None  # a stray terminator
        return ScanLine(text, ts)


def _reverse(layout: str) -> dict[str, tuple[int, bool]]:
    rev: dict[str, tuple[int, bool]] = {}
    for code, (base, shifted) in sorted(LAYOUTS[layout].items()):
        rev.setdefault(base, (code, False))
        rev.setdefault(shifted, (code, True))
    return rev


def encode_text(
    text: str,
    *,
    layout: str = "us",
    terminator: Terminator | str = Terminator.ENTER,
    gs_substitute: str | None = None,
    start: float = 0.0,
    step_us: int = 1000,
    shift_key: int = KEY_LEFTSHIFT,
) -> bytes:
    """The input_event records a keyboard-wedge scanner produces when it reads ``text``.

    GS (0x1D) is typed as ``gs_substitute`` when given, else as Alt + keypad 0 2 9.
    Each key press and release is followed by a SYN_REPORT, as the kernel delivers them.
    """
    rev = _reverse(layout)
    t_us = int(start * 1_000_000)
    out = bytearray()

    def key(code: int, value: int) -> None:
        nonlocal t_us
        s, us = divmod(t_us, 1_000_000)
        out.extend(pack_event(s, us, EV_KEY, code, value))
        out.extend(pack_event(s, us, EV_SYN, SYN_REPORT, 0))
        t_us += step_us

    def tap(code: int) -> None:
        key(code, KEY_DOWN)
        key(code, KEY_UP)

    for c in text:
        ch = gs_substitute if c == "\x1d" and gs_substitute is not None else c
        if ch in rev:
            code, shifted = rev[ch]
            if shifted:
                key(shift_key, KEY_DOWN)
            tap(code)
            if shifted:
                key(shift_key, KEY_UP)
        elif ord(ch) < 256:  # Alt + keypad decimal code
            key(KEY_LEFTALT, KEY_DOWN)
            for d in f"{ord(ch):03d}":
                tap(next(c for c, v in _KEYPAD_DIGITS.items() if v == int(d)))
            key(KEY_LEFTALT, KEY_UP)
        else:
            raise ValueError(f"{ch!r} cannot be typed on layout {layout!r}")
    tap(KEY_TAB if Terminator(terminator) is Terminator.TAB else KEY_ENTER)
    return bytes(out)
