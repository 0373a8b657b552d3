"""Clients that post orders to a gateway the way a till does: retry on errors and timeouts
with the same ``Idempotency-Key`` until a definite answer, and record every submission in a
:class:`~tests.faults.checker.History`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.faults.checker import History, Outcome, Submission

REQUEST_TIMEOUT_S = 3.0  # a gateway that does not answer in this long: unknown outcome, try again
RETRY_PAUSE_S = 0.1
SUBMIT_PAUSE_S = 0.01  # between one worker's submissions: load, not a flood of the 2-core box
# A 4xx that means "not now" rather than "never": the client keeps trying.
RETRYABLE = frozenset({408, 409, 425, 429})


def order_body(ref: str) -> dict[str, Any]:
    return {
        "customer": "S001",
        "channel": "manual",
        "order_type": "normal",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "SKU-1", "qty": 1}, {"gtin": "04012345678901", "qty": 2}],
        "source_ref": ref,
    }


class Load:
    """``workers`` clients, each submitting new orders one after another to ``url()`` until
    :meth:`stop` - then each finishes the submission it is on (retrying) until
    :meth:`give_up`, after which an unanswered one is indeterminate."""

    def __init__(
        self,
        url: Callable[[], str],
        *,
        prefix: str,
        history: History,
        workers: int = 4,
        pause_s: float = SUBMIT_PAUSE_S,
    ) -> None:
        self.url = url
        self.pause_s = pause_s
        self.prefix = prefix
        self.history = history
        self.workers = workers
        self.errors = 0  # answers that were not 2xx (including no answer)
        self.last_ok_at = 0.0  # monotonic time of the latest acknowledgement
        self.last_error_at = 0.0  # and of the latest error (no answer, or not 2xx)
        # every answer that was not 2xx: (status, whether the body was JSON with an "error")
        self.refusals: Counter[tuple[int, bool]] = Counter()
        self._stopping = asyncio.Event()
        self._giving_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        self._tasks = [
            asyncio.create_task(self._worker(w), name=f"fault-client:{self.prefix}:{w}")
            for w in range(self.workers)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        self._giving_up.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
        for s in self.history.submissions.values():
            if s.outcome is Outcome.PENDING:
                s.outcome = Outcome.INDETERMINATE

    def oks_since(self, t: float) -> bool:
        return self.last_ok_at > t

    def errors_since(self, t: float) -> bool:
        return self.last_error_at > t

    def stop(self) -> None:
        """No new submissions; the ones under way keep retrying."""
        self._stopping.set()

    def give_up(self) -> None:
        self._stopping.set()
        self._giving_up.set()

    def finished(self) -> bool:
        return all(t.done() for t in self._tasks)

    async def _worker(self, w: int) -> None:
        n = 0
        while not self._stopping.is_set():
            await self._submit(self.history.begin(f"{self.prefix}-w{w}-{n}"))
            n += 1
            await asyncio.sleep(self.pause_s)

    async def _submit(self, sub: Submission) -> None:
        assert self._session is not None
        body = order_body(sub.ref)
        while True:
            sub.attempts += 1
            try:
                async with self._session.post(
                    f"{self.url()}/api/orders", json=body, headers={"Idempotency-Key": sub.ref}
                ) as r:
                    status = r.status
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError) as e:
                status, text = None, f"{type(e).__name__}: {e}"
            if status is not None and 200 <= status < 300:
                sub.outcome = Outcome.OK
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    sub.record_id = json.loads(text)["id"]
                self.last_ok_at = time.monotonic()
                return
            self.errors += 1
            self.last_error_at = time.monotonic()
            if status is not None:
                self.refusals[status, _has_reason(text)] += 1
            sub.detail = f"{status}: {text[:200]}"
            if status is not None and 400 <= status < 500 and status not in RETRYABLE:
                sub.outcome = Outcome.FAILED
                return
            if self._giving_up.is_set():
                sub.outcome = Outcome.INDETERMINATE
                return
            await asyncio.sleep(RETRY_PAUSE_S)


def _has_reason(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str) and bool(doc["error"])
