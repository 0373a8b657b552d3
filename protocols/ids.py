"""Record ids as both sides make them: the 32 hex chars of a UUIDv7 (RFC 9562) - 48 bits of
creation time in ms, the version and variant bits, 74 random bits.

Time-ordered ids keep the indexes keyed by them append-mostly (a gateway's outbox and
record results, central's downlink outbox): a commit of many records dirties a few index
pages at the end instead of one random page per record, which is most of what such a commit
writes and fsyncs. A peer may use any unique id of 1-64 chars (``protocols/WIRE.md``)."""

from __future__ import annotations

import os
import time

RAND_BYTES = 10  # random bytes one id takes (74 of their 80 bits are used)
_RAND_MASK = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_FIXED = (0x7 << 76) | (0x2 << 62)


def uuid7_hex(ms: int, rand: bytes) -> str:
    """The id for creation time ``ms`` (Unix ms) and :data:`RAND_BYTES` random bytes."""
    return f"{(ms << 80) | (int.from_bytes(rand, 'big') & _RAND_MASK) | _FIXED:032x}"


def new_record_id(ms: int | None = None) -> str:
    return uuid7_hex(time.time_ns() // 1_000_000 if ms is None else ms, os.urandom(RAND_BYTES))


def new_record_ids(n: int, ms: int) -> list[str]:
    """``n`` ids for creation time ``ms``, from one read of the system's random source."""
    return uuid7_hexes(ms, os.urandom(RAND_BYTES * n))


# the hex digit that holds the variant bits (10) and two random bits, by the random digit
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def uuid7_hexes(ms: int, rand: bytes) -> list[str]:
    """``uuid7_hex(ms, chunk)`` for each :data:`RAND_BYTES` chunk of ``rand``, built as text:
    the 20 hex digits of a chunk give the id's last 20, its first becoming the version (7)
    and its fifth keeping two random bits beside the variant - a fifth of the time of
    building each 128-bit number (one batch of ids shares its time prefix)."""
    head = f"{ms:012x}7"
    h = rand.hex()
    var = _VARIANT
    return [f"{head}{h[k + 1 : k + 4]}{var[h[k + 4]]}{h[k + 5 : k + 20]}" for k in range(0, len(h), 20)]
