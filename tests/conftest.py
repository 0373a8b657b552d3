"""Shared fixtures: a real Mosquitto per test on a free loopback port (with the shipped
limits, so a queue limit cannot hide), and helpers to wait on conditions with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path

import pytest

from ops.broker import BrokerConfig, Mosquitto, free_port

os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/bin")
if "/usr/sbin" not in os.environ["PATH"].split(":"):
    os.environ["PATH"] += ":/usr/sbin"

# A test still running after this long is hung: its asyncio tasks' stacks are printed (where
# each coroutine waits - what pytest-timeout's thread dump, which ends the run at 300 s, does
# not show).
HUNG_S = float(os.environ.get("SG_TEST_HUNG_S", "240"))


def _print_asyncio_tasks(item: pytest.Item) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        out = sys.stderr
        print(f"\n=== {item.nodeid} still running after {HUNG_S:.0f} s; its asyncio tasks:", file=out)
        for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
            if loop.is_closed():
                continue
            for task in list(asyncio.all_tasks(loop)):
                print(f"--- {task!r}", file=out)
                task.print_stack(file=out)
        out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    timer = threading.Timer(HUNG_S, _print_asyncio_tasks, args=(item,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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


@pytest.fixture(params=["sqlite", "postgresql"])
def central_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where central's database lives, once per backend (issue 17): a SQLite file path, or
    the URL of a fresh PostgreSQL database (``tests.pg``) dropped after the test."""
    if request.param == "sqlite":
        yield str(tmp_path / "central.db")
        return
    from tests.pg import pg_database

    with pg_database() as url:
        yield url
