"""The ``Idempotency-Key`` request header (IETF httpapi draft "The Idempotency-Key HTTP Header
Field"), shared by the gateway's and central's ``POST /api/orders``: how a key is read from the
header and what "the same request" means. Pure: the stores of keys -> answers live with each
side's database (``gateway/idempotency.py``, ``central/idempotency.py``).

- :func:`parse_key`: the draft's form is an RFC 8941 sf-string
  (``Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"``); a bare key of visible ASCII is
  taken as it is; anything else, more than one header field, or an empty or too long key is
  refused with 400.
- :func:`fingerprint`: a request's parsed body in canonical JSON, hashed: JSON spacing, key
  order and defaulted fields do not make two requests different.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on an answer replayed for a repeated key
MAX_KEY = 128  # characters of the key itself (without the quotes of an sf-string)
FINGERPRINT_BYTES = 16  # of the SHA-256: two requests under one key never collide in 128 bits

# RFC 8941 sf-string (section 3.3.3): printable ASCII in double quotes, \" and \\ escaped.
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
# Many clients send the key bare: visible ASCII, no quotes, no spaces.
_BARE = re.compile(r"[\x21\x23-\x2b\x2d-\x7e]+")  # no '"', no ',' (a list of keys is not a key)
_UNESCAPE = re.compile(r"\\([\"\\])")


class IdempotencyError(Exception):
    """A request the idempotency rules refuse; ``status`` is its HTTP status (400 a malformed
    key, 422 a key already used for another request)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_key(values: list[str]) -> str | None:
    """The key from the request's ``Idempotency-Key`` header values (None: no header).

    Raises :class:`IdempotencyError` (400) for more than one header field, an empty or too long
    key, or anything but an sf-string or a bare key of visible ASCII."""
    if not values:
        return None
    if len(values) > 1:
        raise IdempotencyError(400, f"{HEADER}: more than one header field")
    raw = values[0].strip(" \t")
    m = _SF_STRING.fullmatch(raw)
    if m is not None:
        key = _UNESCAPE.sub(r"\1", m.group(1))
    elif _BARE.fullmatch(raw):
        key = raw
    else:
        raise IdempotencyError(
            400, f'{HEADER}: expected a quoted string ("...") or a bare key of visible ASCII characters'
        )
    if not 0 < len(key) <= MAX_KEY:
        raise IdempotencyError(400, f"{HEADER}: 1..{MAX_KEY} characters, got {len(key)}")
    return key


def fingerprint(request: dict[str, Any]) -> bytes:
    """SHA-256 (its first :data:`FINGERPRINT_BYTES`) of the parsed request in canonical JSON:
    what "the same request" means."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()[:FINGERPRINT_BYTES]
