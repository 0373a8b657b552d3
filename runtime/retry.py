"""Reconnect helpers shared by every long-lived link (MQTT, TCP devices)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

log = logging.getLogger(__name__)

# A supervised loop that crashes is started again after a jittered backoff in this range; the
# backoff starts over once a run has lasted SUPERVISE_RESET_S.
SUPERVISE_MIN_S = 1.0
SUPERVISE_MAX_S = 30.0
SUPERVISE_RESET_S = 60.0


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
    CancelledError itself went astray: ``runtime.mqtt.raise_unless_link_lost`` asks it before an
    MQTT error is taken for a lost link (a cancelled TaskGroup hands back a failing child's
    error), ``runtime.mqtt.keep_cancel`` after an answer ``asyncio.wait_for`` returned in its place.
    Only true to the task's state if every TaskGroup it ran was a :class:`TaskGroup`."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class TaskGroup(asyncio.TaskGroup):
    """``asyncio.TaskGroup`` that leaves its task's cancel count (``Task.cancelling()``) as it
    found it when a child fails after the body is done. Every TaskGroup of the services is
    this one (a test fails on a bare asyncio one in gateway/, central/ or ops/).

    When a child fails, the group cancels its own task to interrupt the body, and undoes that
    cancel (``uncancel()``) in ``__aexit__``. In CPython 3.11 the undo sits at the top of
    ``__aexit__``, before the wait for the other children: a child that fails during that
    wait - the usual case for a link's session, whose body only starts its tasks - leaves the
    task with ``cancelling() == 1`` and nothing pending. ``stopping()`` then reads the lost
    link as a shutdown, and the gateway's sync ended for good on the first broker restart
    (issue 14). CPython gh-116720 (Python 3.13) moved the undo below the wait.

    Here the group does not cancel its task at all once the body is done: the task is then
    only waiting for the children, and the first failure already cancels the others
    (``_abort``), which is all that cancel was for. The count is thus the same on every
    version, whichever side of gh-116720 it is; a cancel from outside is never touched."""

    def _on_task_done(self, task: asyncio.Task[object]) -> None:
        if (
            self._exiting  # type: ignore[attr-defined]
            and not self._aborting  # type: ignore[attr-defined]
            and not task.cancelled()
            and task.exception() is not None
        ):
            self._abort()  # type: ignore[attr-defined]
        super()._on_task_done(task)


async def supervise(
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    *,
    on_restart: Callable[[], None],
) -> NoReturn:
    """Run ``run()`` in a task of its own for ever: whatever ends it - an exception, a
    return, a cancel that did not come from here - is logged (with the traceback) as an
    error, counted by ``on_restart`` and ``run()`` started again after a backoff.

    For the loops a process is worth nothing without (a gateway's sync, central's MQTT side):
    such a loop that ends must not leave the process up, answering and reporting healthy,
    with nothing moving. Cancelling the supervisor cancels the task and waits for it."""
    attempt = 0
    while True:
        started = time.monotonic()
        task = asyncio.create_task(run(), name=name)
        try:
            await asyncio.wait({task})
        finally:
            if not task.done():  # we are being cancelled: the loop stops with us
                task.cancel()
                await asyncio.wait({task})
        if time.monotonic() - started >= SUPERVISE_RESET_S:
            attempt = 0
        delay = backoff_delay(attempt, lo=SUPERVISE_MIN_S, hi=SUPERVISE_MAX_S)
        attempt += 1
        if task.cancelled():
            log.error("%s ended cancelled, but nothing stopped it; restarting in %.1fs", name, delay)
        elif (exc := task.exception()) is not None:
            log.error("%s crashed; restarting in %.1fs", name, delay, exc_info=exc)
        else:
            log.error("%s returned; restarting in %.1fs", name, delay)
        on_restart()
        await asyncio.sleep(delay)
