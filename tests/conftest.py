"""Shared fixtures: a real Mosquitto per test on a free loopback port (with the shipped
limits, so a queue limit cannot hide), and helpers to wait on conditions with a deadline."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ops.broker import BrokerConfig, Mosquitto, free_port

os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/bin")
if "/usr/sbin" not in os.environ["PATH"].split(":"):
    os.environ["PATH"] += ":/usr/sbin"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp_path / "broker"))
    b.start()
    try:
        yield b
    finally:
        b.kill()


async def wait_for(
    cond: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``cond`` until true; fail with ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                r = cond()
                if asyncio.iscoroutine(r):
                    r = await r
                if r:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
