"""Results of the fault campaign: one row per scenario round, a table per scenario.

The campaign's conftest collects a :class:`RoundResult` for every round a scenario ran,
prints the table at the end of the pytest run and, when ``SG_FAULTS_JSON`` names a file,
writes the rounds there. ``python -m tests.faults.report FILE.json`` renders that file as the
markdown table the README shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.faults.checker import Verdict

JSON_ENV = "SG_FAULTS_JSON"


@dataclass(frozen=True, slots=True)
class RoundResult:
    scenario: str
    round: int
    submissions: int
    ok: int
    failed: int
    indeterminate: int
    lost: int
    duplicated: int
    unexpected: int
    recovery_s: float | None  # None: not recovered within the deadline
    deadline_s: float
    problems: tuple[str, ...] = ()  # what else the scenario found wrong (a crash, a leak)
    examples: str = ""  # a few offending refs

    @classmethod
    def of(
        cls,
        scenario: str,
        round_no: int,
        verdict: Verdict,
        *,
        recovery_s: float | None,
        deadline_s: float,
        problems: Sequence[str] = (),
    ) -> RoundResult:
        return cls(
            scenario=scenario,
            round=round_no,
            submissions=verdict.submissions,
            ok=verdict.ok,
            failed=verdict.failed,
            indeterminate=verdict.indeterminate,
            lost=len(verdict.lost),
            duplicated=len(verdict.duplicated),
            unexpected=len(verdict.unexpected),
            recovery_s=None if recovery_s is None else round(recovery_s, 2),
            deadline_s=deadline_s,
            problems=(
                *problems,
                *(
                    [f"{len(verdict.misnamed)} acknowledged under another record id"]
                    if verdict.misnamed
                    else []
                ),
            ),
            examples="" if verdict.valid else verdict.explain(),
        )

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.unexpected == 0
            and self.recovery_s is not None
            and self.recovery_s <= self.deadline_s
            and not self.problems
        )


@dataclass(slots=True)
class ScenarioSummary:
    scenario: str
    rounds: int = 0
    passed_rounds: int = 0
    submissions: int = 0
    ok: int = 0
    indeterminate: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    recovery_max_s: float | None = None
    unrecovered: int = 0
    deadline_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, r: RoundResult) -> None:
        self.rounds += 1
        self.passed_rounds += r.passed
        self.submissions += r.submissions
        self.ok += r.ok
        self.indeterminate += r.indeterminate
        self.lost += r.lost
        self.duplicated += r.duplicated
        self.unexpected += r.unexpected
        self.deadline_s = max(self.deadline_s, r.deadline_s)
        if r.recovery_s is None:
            self.unrecovered += 1
        else:
            self.recovery_max_s = max(self.recovery_max_s or 0.0, r.recovery_s)
        self.problems += [p for p in r.problems if p not in self.problems]

    @property
    def result(self) -> str:
        return "PASS" if self.rounds and self.passed_rounds == self.rounds else "FAIL"

    def recovery(self) -> str:
        worst = "-" if self.recovery_max_s is None else f"{self.recovery_max_s:.1f} s"
        if self.unrecovered:
            worst = f"{self.unrecovered} not in {self.deadline_s:.0f} s"
        return f"{worst} (<= {self.deadline_s:.0f} s)"


def summarise(rounds: Iterable[RoundResult]) -> list[ScenarioSummary]:
    out: dict[str, ScenarioSummary] = {}
    for r in rounds:
        out.setdefault(r.scenario, ScenarioSummary(r.scenario)).add(r)
    return list(out.values())


HEADERS = (
    "scenario",
    "rounds",
    "submissions",
    "ok",
    "indeterminate",
    "lost",
    "duplicated",
    "unexpected",
    "recovery max (deadline)",
    "result",
)


def _rows(summaries: Iterable[ScenarioSummary]) -> list[tuple[str, ...]]:
    return [
        (
            s.scenario,
            str(s.rounds),
            str(s.submissions),
            str(s.ok),
            str(s.indeterminate),
            str(s.lost),
            str(s.duplicated),
            str(s.unexpected),
            s.recovery(),
            s.result,
        )
        for s in summaries
    ]


def text_table(summaries: Sequence[ScenarioSummary]) -> str:
    rows = [HEADERS, *_rows(summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for s in summaries:
        lines += [f"{s.scenario}: {p}" for p in s.problems]
    return "\n".join(lines)


def markdown_table(summaries: Sequence[ScenarioSummary]) -> str:
    rows = [HEADERS, *_rows(summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    fmt = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    fmt.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(fmt)


def write_json(path: Path, rounds: Sequence[RoundResult]) -> None:
    doc = {"rounds": [asdict(r) for r in rounds]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def read_json(path: Path) -> list[RoundResult]:
    doc = json.loads(path.read_text())
    return [RoundResult(**{**r, "problems": tuple(r.get("problems", ()))}) for r in doc["rounds"]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.report", description="Render a fault campaign's JSON as a table."
    )
    parser.add_argument("json", type=Path, help=f"the file the campaign wrote (${JSON_ENV})")
    parser.add_argument("--text", action="store_true", help="plain text instead of markdown")
    args = parser.parse_args(argv)
    summaries = summarise(read_json(args.json))
    print(text_table(summaries) if args.text else markdown_table(summaries))
    return 0 if all(s.result == "PASS" for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
