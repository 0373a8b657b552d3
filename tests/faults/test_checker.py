"""The campaign's checker and its report, on hand-made histories (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.checker import History, Outcome, check
from tests.faults.report import RoundResult, main, markdown_table, read_json, summarise, write_json


def history(**outcomes: Outcome) -> History:
    h = History()
    for ref, outcome in outcomes.items():
        h.begin(ref).outcome = outcome
    return h


OK, FAILED, MAYBE = Outcome.OK, Outcome.FAILED, Outcome.INDETERMINATE


def rows(*refs: str) -> list[tuple[str, str]]:
    """Central's orders for these refs, each under the record id ``id-<ref>``."""
    return [(ref, f"id-{ref}") for ref in refs]


def test_every_acknowledged_submission_once_is_valid() -> None:
    v = check(history(a=OK, b=OK, c=FAILED), rows("a", "b"))
    assert v.valid
    assert (v.submissions, v.ok, v.failed, v.indeterminate) == (3, 2, 1, 0)


def test_acknowledged_but_absent_is_lost() -> None:
    v = check(history(a=OK, b=OK), rows("a"))
    assert v.lost == ("b",)
    assert not v.valid
    assert "1 lost (e.g. b)" in v.explain()


def test_present_twice_is_duplicated_whatever_the_client_was_told() -> None:
    v = check(history(a=OK, b=MAYBE, c=OK), rows("a", "a", "b", "b", "c"))
    assert v.duplicated == ("a", "b")
    assert v.lost == ()


def test_indeterminate_may_be_present_once_or_absent() -> None:
    v = check(history(a=MAYBE, b=MAYBE), rows("a"))
    assert v.valid
    assert (v.indeterminate, v.indeterminate_present) == (2, 1)


def test_never_submitted_or_refused_but_present_is_unexpected() -> None:
    v = check(history(a=OK, b=FAILED), rows("a", "b", "z"))
    assert v.unexpected == ("b", "z")


def test_acknowledged_under_one_id_but_stored_under_another_is_misnamed() -> None:
    h = history(a=OK, b=OK, c=OK)
    h.submissions["a"].record_id = "id-a"  # told the id central holds
    h.submissions["b"].record_id = "id-retry"  # a retry answered as a new order
    v = check(h, rows("a", "b", "c"))  # c: no id known (an MQTT client), not judged
    assert v.misnamed == ("b",)
    assert not v.valid
    r = RoundResult.of("s", 0, v, recovery_s=1.0, deadline_s=30.0)
    assert not r.passed
    assert r.problems == ("1 acknowledged under another record id",)


def test_an_unfinished_history_is_refused() -> None:
    h = history(a=OK)
    h.begin("b")
    with pytest.raises(ValueError, match="never finished"):
        check(h, rows("a"))


def test_a_reference_cannot_be_submitted_twice() -> None:
    h = history(a=OK)
    with pytest.raises(ValueError, match="unique"):
        h.begin("a")


def result(scenario: str, round_no: int, *, lost: int = 0, recovery: float | None = 1.5) -> RoundResult:
    h = history(**{f"r{i}": OK for i in range(10)})
    v = check(h, rows(*(f"r{i}" for i in range(lost, 10))))
    return RoundResult.of(scenario, round_no, v, recovery_s=recovery, deadline_s=30.0)


def test_report_summarises_rounds_per_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rounds = [
        result("gateway-kill9", 0),
        result("gateway-kill9", 1, recovery=2.25),
        result("broker-kill9", 0, lost=3, recovery=None),
    ]
    assert rounds[0].passed and not rounds[2].passed
    kill, broker = summarise(rounds)
    assert (kill.rounds, kill.submissions, kill.ok, kill.lost, kill.recovery_max_s, kill.result) == (
        2,
        20,
        20,
        0,
        2.25,
        "PASS",
    )
    assert (broker.lost, broker.unrecovered, broker.result) == (3, 1, "FAIL")
    table = markdown_table([kill, broker])
    assert "| gateway-kill9 | 2      | 20          | 20 |" in table
    assert "1 not in 30 s" in table

    path = tmp_path / "faults.json"
    write_json(path, rounds)
    assert read_json(path) == rounds
    assert main([str(path)]) == 1  # a failing scenario: the CLI says so by its exit code
    assert "| broker-kill9" in capsys.readouterr().out
