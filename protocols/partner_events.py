"""A partner's order event: the JSON body of ``POST /api/partner/orders/{no}/events``
(``protocols/PARTNER-EVENTS.md``), parsed sans-IO. A 3PL or a drop-ship supplier reports
``confirmed``, ``shipped`` (carrier and tracking number), ``delivered`` or ``refused`` (reason)
for the lines of an order it fulfils."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from protocols.records import RecordSchemaError

TYPES = ("confirmed", "shipped", "delivered", "refused")
FIELDS = ("event_id", "type", "lines", "carrier", "tracking", "reason", "note")
EVENT_ID = re.compile(r"^[!-~]{1,128}$")  # visible ASCII, like an Idempotency-Key
MAX_TEXT = 200
MAX_LINES = 999


@dataclass(frozen=True, slots=True)
class PartnerEvent:
    event_id: str
    type: str
    lines: tuple[int, ...] | None  # None: every line of the order the partner fulfils
    carrier: str = ""
    tracking: str = ""
    reason: str = ""
    note: str = ""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "type": self.type}
        if self.lines is not None:
            out["lines"] = list(self.lines)
        for k in ("carrier", "tracking", "reason", "note"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out

    def describe(self) -> str:
        """The event for a person, as the order's history shows it."""
        parts = [self.type]
        if self.carrier or self.tracking:
            parts.append(f"carrier {self.carrier} tracking {self.tracking}")
        if self.reason:
            parts.append(f"reason: {self.reason}")
        if self.note:
            parts.append(f"note: {self.note}")
        if self.lines is not None:
            parts.append(f"line{'s' if len(self.lines) > 1 else ''} {', '.join(map(str, self.lines))}")
        return "; ".join(parts) + f" (event {self.event_id})"


def _text(body: dict[str, Any], key: str, *, required: bool) -> str:
    v = body.get(key)
    if v is None:
        if required:
            raise RecordSchemaError(f"{key}: required")
        return ""
    if not isinstance(v, str) or not v.strip() or len(v) > MAX_TEXT or not v.isprintable():
        raise RecordSchemaError(f"{key}: expected text of 1..{MAX_TEXT} printable characters")
    return v.strip()


def parse_partner_event(body: dict[str, Any]) -> PartnerEvent:
    """The event, or RecordSchemaError naming the first problem."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RecordSchemaError(f"{unknown[0]}: unknown field; known: {', '.join(FIELDS)}")
    eid = body.get("event_id")
    if not isinstance(eid, str) or not EVENT_ID.match(eid):
        raise RecordSchemaError("event_id: expected 1..128 visible ASCII characters (no spaces)")
    etype = body.get("type")
    if etype not in TYPES:
        raise RecordSchemaError(f"type: expected one of {', '.join(TYPES)}")
    raw_lines = body.get("lines")
    lines: tuple[int, ...] | None = None
    if raw_lines is not None:
        if (
            not isinstance(raw_lines, list)
            or not raw_lines
            or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_LINES for n in raw_lines
            )
            or len(set(raw_lines)) != len(raw_lines)
        ):
            raise RecordSchemaError(
                f"lines: expected a non-empty list of distinct line numbers 1..{MAX_LINES}"
            )
        lines = tuple(sorted(raw_lines))
    shipped = etype == "shipped"
    return PartnerEvent(
        event_id=eid,
        type=str(etype),
        lines=lines,
        carrier=_text(body, "carrier", required=shipped),
        tracking=_text(body, "tracking", required=shipped),
        reason=_text(body, "reason", required=etype == "refused"),
        note=_text(body, "note", required=False),
    )
