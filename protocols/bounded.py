"""Bounds on what a peer sends: how deep a decoded document nests, how long a reason gets,
and how a value from the wire is quoted in a reason.

Every decoder of untrusted input in this project goes through these, so one hostile value
(a map nested a thousand deep, a 5,000-digit number, a megabyte of text) can cost only a
bounded amount of time and memory and can never raise anything but the decoder's own error:

- :func:`value_repr` quotes a value in a reason: at most :data:`MAX_VALUE_REPR` characters,
  nesting shown :data:`REPR_LEVELS` deep, any value (however deep, however big) in constant
  work; it never raises.
- :func:`bounded_reason` cuts a reason to :data:`MAX_REASON` characters; the error classes of
  the wire decoders (``EnvelopeError``, ``RecordSchemaError``) pass their reason through it.
- :func:`nests_deeper` says whether a decoded document nests more than a limit, without
  recursion (a Python-level ``repr``, ``==``, ``json.dumps`` or ``msgpack.packb`` of a
  document about 1,000 deep raises ``RecursionError`` or ``ValueError``).
- :func:`json_loads` reads JSON with a size limit, a nesting limit and numbers kept to what a
  business value can be (integers that fit a signed 64-bit SQLite integer, finite floats: no
  5,000-digit integers, no ``1e309``, no ``NaN``); anything else is a :class:`JsonError`
  naming the problem.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Iterable
from itertools import islice
from typing import Any

from protocols import ProtocolError

MAX_REASON = 400  # characters of a reason (an ack's, a quarantine row's, an HTTP error's)
MAX_VALUE_REPR = 60  # characters of one value quoted in a reason
REPR_LEVELS = 2  # nesting levels shown when a container is quoted (deeper: {...} / [...])
MAX_DEPTH = 32  # containers nested in a document (an order is 3 deep: body, lines, a line)
MAX_NAMES = 5  # field names listed in one reason (the rest are counted)
MAX_INT_DIGITS = 19  # digits of an integer in JSON: a signed 64-bit one (what SQLite stores)
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
_TRUNCATED = "..."


class JsonError(ProtocolError):
    """A JSON document refused; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


def bounded_reason(reason: str, limit: int = MAX_REASON) -> str:
    """``reason`` cut to ``limit`` characters (``...`` marks the cut)."""
    if len(reason) <= limit:
        return reason
    if limit <= len(_TRUNCATED):
        return reason[:limit]
    return reason[: limit - len(_TRUNCATED)] + _TRUNCATED


class _WireRepr(reprlib.Repr):
    """``reprlib`` quoting of decoded values: few levels and items, short strings, and no
    huge work on a huge value (an integer too long to print in decimal, a long bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = REPR_LEVELS
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = self.maxlong = MAX_VALUE_REPR

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * MAX_VALUE_REPR:  # decimal printing is quadratic, and limited
            return f"<integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_bytes(self, x: bytes, level: int) -> str:
        s = repr(x[: self.maxstring])
        return s if len(x) <= self.maxstring else s + _TRUNCATED

    repr_bytearray = repr_bytes

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        # reprlib sorts every key first (work and memory by the map's size): take the first
        # few in the order they came instead
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in islice(x.items(), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"

    def repr_instance(self, x: object, level: int) -> str:
        try:
            s = repr(x)
        except Exception:  # a value whose repr fails is still quoted, by its type
            return f"<{type(x).__name__}>"
        return s if len(s) <= self.maxother else s[: self.maxother] + _TRUNCATED


_REPR = _WireRepr()


def value_repr(v: object, limit: int = MAX_VALUE_REPR) -> str:
    """``repr(v)`` for a reason: bounded in depth and length, for any value; never raises."""
    if isinstance(v, str) and len(v) <= limit:  # the common case: a short text, as repr shows it
        s = repr(v)
    else:
        try:
            s = _REPR.repr(v)
        except Exception:  # reprlib dispatches on type names; an odd subclass must not escape
            s = f"<{type(v).__name__}>"
    return bounded_reason(s, limit)


def names(keys: Iterable[object], *, most: int = MAX_NAMES) -> str:
    """Field names from the wire for a reason ("unknown field a, b"): sorted, text shown as is
    (anything else as :func:`value_repr`), at most ``most`` of them, the rest counted."""
    shown = sorted(k if type(k) is str and len(k) <= MAX_VALUE_REPR else value_repr(k) for k in keys)
    more = len(shown) - most
    text = ", ".join(shown[:most])
    return f"{text} and {more} more" if more > 0 else text


def nests_deeper(doc: object, limit: int = MAX_DEPTH) -> bool:
    """Whether ``doc`` (decoded msgpack or JSON: dicts, lists and scalars) has more than
    ``limit`` containers nested, ``doc`` itself counted. Level by level, no recursion."""
    level: list[Any] = [doc] if type(doc) is dict or type(doc) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            v
            for c in level
            for v in (c.values() if type(c) is dict else c)
            if type(v) is dict or type(v) is list
        ]
    return False


# A JSON string (to its closing quote, or to the end of an unterminated one: a match never
# fails, so the scan stays linear) or one bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|[\[{]|[\]}]', re.DOTALL)


def _json_nests_deeper(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:  # cannot nest deeper: no scan
        return False
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c != '"':
            depth -= 1
    return False


def _int(s: str) -> int:
    digits = len(s) - (s[0] == "-")
    if digits > MAX_INT_DIGITS:  # refused before any conversion (quadratic in the digits)
        raise JsonError(f"an integer of {digits} digits is out of range (a signed 64-bit integer)")
    v = int(s)
    if not MIN_INT <= v <= MAX_INT:
        raise JsonError(f"integer {s} is out of range (a signed 64-bit integer)")
    return v


def _float(s: str) -> float:
    f = float(s)
    if not math.isfinite(f):
        raise JsonError(f"number {bounded_reason(s, MAX_VALUE_REPR)} is out of range")
    return f


def _constant(s: str) -> float:
    raise JsonError(f"{s} is not a JSON number")


def json_loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """One JSON document, bounded: at most ``max_bytes`` long (UTF-8), containers nested at
    most ``max_depth`` deep, integers in the signed 64-bit range, finite numbers only (no
    ``NaN``, ``Infinity``, ``1e309``). Raises :class:`JsonError` with the reason."""
    if len(data) > max_bytes:
        raise JsonError(f"larger than {max_bytes} bytes")
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode()
        except UnicodeDecodeError as e:
            raise JsonError(f"not UTF-8: {e.reason} at byte {e.start}") from None
    if _json_nests_deeper(text, max_depth):
        raise JsonError(f"nested too deeply (more than {max_depth} levels)")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise JsonError(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # cannot happen after the scan above; kept as the last bound
        raise JsonError(f"nested too deeply (more than {max_depth} levels)") from None
