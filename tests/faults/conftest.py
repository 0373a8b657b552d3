"""The fault campaign's bookkeeping: every scenario round's result is collected here, printed
as a table at the end of the run and, when ``SG_FAULTS_JSON`` names a file, written there
(``python -m tests.faults.report FILE`` renders it as the README's markdown table)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.report import JSON_ENV, RoundResult, summarise, text_table, write_json

_ROUNDS = pytest.StashKey[list[RoundResult]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROUNDS] = []


@pytest.fixture
def campaign(request: pytest.FixtureRequest) -> list[RoundResult]:
    """Append a scenario's RoundResult here (before asserting on it)."""
    return request.config.stash[_ROUNDS]


def pytest_sessionfinish(session: pytest.Session) -> None:
    rounds = session.config.stash.get(_ROUNDS, [])
    path = os.environ.get(JSON_ENV)
    if rounds and path:
        write_json(Path(path), rounds)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rounds = config.stash.get(_ROUNDS, [])
    if not rounds:
        return
    terminalreporter.section("fault campaign")
    terminalreporter.write_line(text_table(summarise(rounds)))
    path = os.environ.get(JSON_ENV)
    if path:
        terminalreporter.write_line(
            f"rounds written to {path} (render: python -m tests.faults.report {path})"
        )
