"""The one wall clock of the processes: milliseconds since the Unix epoch, as stored in every
``*_at``/``ts`` column and sent in every envelope."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in whole milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
