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
    """True while the current task is being cancelled. A reconnect loop asks it before taking
    an MQTT error for a lost link: a TaskGroup that is cancelled while a child fails hands
    back that child's error, not the cancellation (the child's error "has priority"), and
    retrying then would swallow the stop - the task would reconnect and run on forever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
