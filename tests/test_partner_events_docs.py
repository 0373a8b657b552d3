"""``protocols/PARTNER-EVENTS.md``: every valid example parses and comes back unchanged; every
refused example is refused with the reason the page shows under it."""

from __future__ import annotations

import json
import re

import pytest

from protocols.partner_events import parse_partner_event
from protocols.records import RecordSchemaError
from tests.procs import ROOT

DOC = (ROOT / "protocols" / "PARTNER-EVENTS.md").read_text(encoding="utf-8")
VALID = re.findall(r"```json partner-event\n(.*?)```", DOC, re.S)
INVALID = re.findall(r"```json partner-event-invalid\n(.*?)```\s*\n-> `(.*?)`", DOC, re.S)


def test_the_page_has_its_examples() -> None:
    assert len(VALID) == 4 and len(INVALID) == 5
    assert DOC.count("```json partner-event-invalid") == len(INVALID)  # each with its reason


@pytest.mark.parametrize("text", VALID)
def test_valid_example_parses_and_round_trips(text: str) -> None:
    raw = json.loads(text)
    assert parse_partner_event(raw).to_wire() == raw


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_refused_example_gives_the_shown_reason(text: str, reason: str) -> None:
    with pytest.raises(RecordSchemaError) as e:
        parse_partner_event(json.loads(text))
    assert e.value.reason == reason
