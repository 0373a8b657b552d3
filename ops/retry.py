"""Reconnect helpers shared by every long-lived link (MQTT, TCP devices)."""

from __future__ import annotations

import asyncio
import random


def backoff_delay(attempt: int, *, lo: float, hi: float) -> float:
    """Full-jitter exponential backoff: uniform in [lo, min(hi, lo * 2**attempt)]."""
    return random.uniform(lo, max(lo, min(hi, lo * 2 ** min(attempt, 30))))


def only(exc: BaseException, kind: type[BaseException]) -> bool:
    """True if ``exc`` is a ``kind``, or an exception group made only of ``kind`` (nested)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(only(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


def stopping() -> bool:
    """True while the current task is being cancelled (``Task.cancelling()``), even where the
    CancelledError itself went astray: ``ops.mqtt.raise_unless_link_lost`` asks it before an
    MQTT error is taken for a lost link (a cancelled TaskGroup hands back a failing child's
    error), ``ops.mqtt.keep_cancel`` after an answer ``asyncio.wait_for`` returned in its place."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
