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
    rand = os.urandom(RAND_BYTES * n)
    return [uuid7_hex(ms, rand[RAND_BYTES * i : RAND_BYTES * (i + 1)]) for i in range(n)]
