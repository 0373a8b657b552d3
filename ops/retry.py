"""Reconnect helpers shared by every long-lived link (MQTT, TCP devices)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, lo: float, hi: float) -> float:
    """Full-jitter exponential backoff: uniform in [lo, min(hi, lo * 2**attempt)]."""
    return random.uniform(lo, max(lo, min(hi, lo * 2 ** min(attempt, 30))))


def only(exc: BaseException, kind: type[BaseException]) -> bool:
    """True if ``exc`` is a ``kind``, or an exception group made only of ``kind`` (nested)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(only(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)
