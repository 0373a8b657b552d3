"""A Jepsen-style checker for order submissions: what clients were told against what central holds.

Every client submission has a unique reference (the order's ``source_ref``, also sent as its
``Idempotency-Key``) and ends in one of three outcomes:

* ``ok`` - the gateway acknowledged it (2xx): it must reach central exactly once;
* ``failed`` - the gateway refused it for good (a 4xx that is not "try again"): it must never
  reach central;
* ``indeterminate`` - the client gave up without a definite answer (timeouts, connection
  resets, 5xx until the end of the round): it may reach central once or not at all, never twice.

After the round, central's ``orders`` (source ref, record id) are read and compared:

* lost - acknowledged to the client, absent at central;
* duplicated - present at central more than once (whatever the client was told);
* unexpected - present at central but never submitted, or submitted and refused;
* misnamed - acknowledged with a record id, present once at central under another one (a
  retry answered as a new order while the first one went through).

The checker is pure: it takes the history and central's rows, so it is tested on its own
(tests/faults/test_checker.py) and a scenario only has to collect the two.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    INDETERMINATE = "indeterminate"


@dataclass(slots=True)
class Submission:
    ref: str
    outcome: Outcome = Outcome.PENDING
    attempts: int = 0
    record_id: str | None = None  # what the acknowledging answer named
    detail: str = ""  # the last status or error seen, for a failure message


@dataclass(slots=True)
class History:
    """Every submission of one round, in the order they began."""

    submissions: dict[str, Submission] = field(default_factory=dict)

    def begin(self, ref: str) -> Submission:
        if ref in self.submissions:
            raise ValueError(f"reference {ref!r} submitted twice: references must be unique")
        sub = self.submissions[ref] = Submission(ref)
        return sub

    def count(self, outcome: Outcome) -> int:
        return sum(1 for s in self.submissions.values() if s.outcome is outcome)


@dataclass(frozen=True, slots=True)
class Verdict:
    submissions: int
    ok: int
    failed: int
    indeterminate: int
    indeterminate_present: int  # indeterminate ones central holds (once): allowed
    lost: tuple[str, ...]
    duplicated: tuple[str, ...]
    unexpected: tuple[str, ...]
    misnamed: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.misnamed)

    def explain(self, limit: int = 5) -> str:
        parts = []
        for name in ("lost", "duplicated", "unexpected", "misnamed"):
            refs = getattr(self, name)
            if refs:
                parts.append(f"{len(refs)} {name} (e.g. {', '.join(refs[:limit])})")
        return "; ".join(parts) or "valid"


def check(history: History | Iterable[Submission], central: Iterable[tuple[str, str]]) -> Verdict:
    """Compare a finished history with central's orders as (source ref, record id) rows.

    A submission still ``pending`` is a bug in the harness, not in the system: refused."""
    subs = list(history.submissions.values() if isinstance(history, History) else history)
    pending = [s.ref for s in subs if s.outcome is Outcome.PENDING]
    if pending:
        raise ValueError(f"{len(pending)} submissions never finished (e.g. {pending[:3]})")
    by_ref = {s.ref: s for s in subs}
    rows = list(central)
    present = Counter(ref for ref, _rid in rows)
    stored = dict(rows)
    lost = sorted(s.ref for s in subs if s.outcome is Outcome.OK and present[s.ref] == 0)
    duplicated = sorted(ref for ref, n in present.items() if n > 1)
    unexpected = sorted(ref for ref in present if ref not in by_ref or by_ref[ref].outcome is Outcome.FAILED)
    misnamed = sorted(
        s.ref
        for s in subs
        if s.outcome is Outcome.OK
        and s.record_id is not None
        and present[s.ref] == 1
        and stored[s.ref] != s.record_id
    )
    outcomes = Counter(s.outcome for s in subs)
    return Verdict(
        submissions=len(subs),
        ok=outcomes[Outcome.OK],
        failed=outcomes[Outcome.FAILED],
        indeterminate=outcomes[Outcome.INDETERMINATE],
        indeterminate_present=sum(
            1 for s in subs if s.outcome is Outcome.INDETERMINATE and present[s.ref] == 1
        ),
        lost=tuple(lost),
        duplicated=tuple(duplicated),
        unexpected=tuple(unexpected),
        misnamed=tuple(misnamed),
    )
