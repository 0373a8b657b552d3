"""Pick work record bodies: ``pick_task`` (down), ``pick_result`` and ``tote_event`` (up).

Documented in ``protocols/PICKING.md``. Each ``parse_*`` takes the decoded msgpack map and
returns a frozen dataclass or raises :class:`protocols.records.RecordSchemaError` with a
reason a person can act on; ``to_wire`` gives the map back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from protocols.bounded import names, value_repr
from protocols.records import MAX_QTY, MAX_TEXT, RecordSchemaError, int_value, text_field

PICK_TASK = "pick_task"
PICK_RESULT = "pick_result"
TOTE_EVENT = "tote_event"
MAX_TASK_ID = 48  # so that the result's record id "pick:<task id>" fits in 64 characters


def result_record_id(task_id: str) -> str:
    """The uplink record id of a task's result: the same on every resend, so central counts
    a confirmation once."""
    return f"pick:{task_id}"


class PickOutcome(enum.StrEnum):
    PICKED = "picked"  # the full quantity
    SHORT = "short"  # less than asked (shortage key, adjusted down, or the AS/RS found nothing)


class PickKey(enum.StrEnum):
    CONFIRM = "confirm"  # confirm key on the tag (maybe with an adjusted quantity)
    SHORTAGE = "shortage"  # shortage key on the tag
    ASRS = "asrs"  # no key: the AS/RS reported the tote's location empty


class ToteEventKind(enum.StrEnum):
    REQUESTED = "requested"
    ARRIVED = "arrived"
    STORED = "stored"
    EMPTY = "empty"
    FAILED = "failed"


def _int(body: dict[str, Any], key: str, *, lo: int, hi: int, required: bool = True) -> int | None:
    v = body.get(key)
    if v is None and not required:
        return None
    return int_value(v, key, lo=lo, hi=hi)


def _req_int(body: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    v = _int(body, key, lo=lo, hi=hi)
    assert v is not None
    return v


def _no_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = set(body) - known
    if unknown:
        raise RecordSchemaError(f"unknown field {names(unknown)}")


@dataclass(frozen=True, slots=True)
class PickTaskBody:
    """One pick: ``qty`` of ``sku`` from ``location``/``bin`` into ``order_no``'s tote.

    ``seq`` is the position in the wave's storage-location sequence at this gateway.
    ``tote``/``tote_location``: the stock sits in an AS/RS storage tote, to be brought to
    the pick station first (both empty otherwise)."""

    task_id: str
    wave: str
    seq: int
    order_no: str
    line_no: int
    location: str
    bin: str
    sku: str
    qty: int
    tote: str = ""
    tote_location: str = ""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task_id": self.task_id,
            "wave": self.wave,
            "seq": self.seq,
            "order_no": self.order_no,
            "line_no": self.line_no,
            "location": self.location,
            "bin": self.bin,
            "sku": self.sku,
            "qty": self.qty,
        }
        if self.tote:
            body["tote"] = self.tote
            body["tote_location"] = self.tote_location
        return body


_TASK_FIELDS = frozenset(
    {
        "task_id",
        "wave",
        "seq",
        "order_no",
        "line_no",
        "location",
        "bin",
        "sku",
        "qty",
        "tote",
        "tote_location",
    }
)


def parse_pick_task(body: dict[str, Any]) -> PickTaskBody:
    _no_unknown(body, _TASK_FIELDS)
    tote = text_field(body, "tote", required=False)
    tote_location = text_field(body, "tote_location", required=False)
    if bool(tote) != bool(tote_location):
        raise RecordSchemaError("tote and tote_location: give both or neither")
    return PickTaskBody(
        task_id=text_field(body, "task_id", max_len=MAX_TASK_ID),
        wave=text_field(body, "wave"),
        seq=_req_int(body, "seq", lo=1, hi=10**9),
        order_no=text_field(body, "order_no"),
        line_no=_req_int(body, "line_no", lo=1, hi=10**6),
        location=text_field(body, "location"),
        bin=text_field(body, "bin", required=False),
        sku=text_field(body, "sku"),
        qty=_req_int(body, "qty", lo=1, hi=MAX_QTY),
        tote=tote,
        tote_location=tote_location,
    )


@dataclass(frozen=True, slots=True)
class PickResultBody:
    """What happened to one task; sent with record id :func:`result_record_id`."""

    task_id: str
    order_no: str
    sku: str
    requested_qty: int
    picked_qty: int
    outcome: PickOutcome
    key: PickKey
    ts: int
    cart: str = ""
    node: int | None = None
    reason: str = ""

    @property
    def short_qty(self) -> int:
        return max(0, self.requested_qty - self.picked_qty)

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "order_no": self.order_no,
            "sku": self.sku,
            "requested_qty": self.requested_qty,
            "picked_qty": self.picked_qty,
            "short_qty": self.short_qty,
            "outcome": self.outcome.value,
            "key": self.key.value,
            "ts": self.ts,
            "cart": self.cart,
            "node": self.node,
            "reason": self.reason,
        }


_RESULT_FIELDS = frozenset(
    {
        "task_id",
        "order_no",
        "sku",
        "requested_qty",
        "picked_qty",
        "short_qty",
        "outcome",
        "key",
        "ts",
        "cart",
        "node",
        "reason",
    }
)


def parse_pick_result(body: dict[str, Any]) -> PickResultBody:
    _no_unknown(body, _RESULT_FIELDS)
    try:
        outcome = PickOutcome(text_field(body, "outcome"))
    except ValueError:
        raise RecordSchemaError(f"outcome: {value_repr(body['outcome'])} is not picked or short") from None
    try:
        key = PickKey(text_field(body, "key"))
    except ValueError:
        raise RecordSchemaError(f"key: {value_repr(body['key'])} is not confirm, shortage or asrs") from None
    requested = _req_int(body, "requested_qty", lo=1, hi=MAX_QTY)
    picked = _req_int(body, "picked_qty", lo=0, hi=MAX_QTY)
    if outcome is PickOutcome.PICKED and picked < requested:
        raise RecordSchemaError(f"outcome picked but picked_qty {picked} < requested_qty {requested}")
    if outcome is PickOutcome.SHORT and picked >= requested:
        raise RecordSchemaError(f"outcome short but picked_qty {picked} >= requested_qty {requested}")
    return PickResultBody(
        task_id=text_field(body, "task_id", max_len=MAX_TASK_ID),
        order_no=text_field(body, "order_no"),
        sku=text_field(body, "sku"),
        requested_qty=requested,
        picked_qty=picked,
        outcome=outcome,
        key=key,
        ts=_req_int(body, "ts", lo=0, hi=2**63 - 1),
        cart=text_field(body, "cart", required=False),
        node=_int(body, "node", lo=1, hi=250, required=False),
        reason=text_field(body, "reason", required=False, max_len=MAX_TEXT),
    )


@dataclass(frozen=True, slots=True)
class ToteEventBody:
    """An AS/RS tote movement for a wave, for central's record (informational)."""

    wave: str
    tote: str
    event: ToteEventKind
    location: str
    ts: int
    code: int = 0
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "wave": self.wave,
            "tote": self.tote,
            "event": self.event.value,
            "location": self.location,
            "ts": self.ts,
            "code": self.code,
            "reason": self.reason,
        }


def parse_tote_event(body: dict[str, Any]) -> ToteEventBody:
    _no_unknown(body, frozenset({"wave", "tote", "event", "location", "ts", "code", "reason"}))
    try:
        event = ToteEventKind(text_field(body, "event"))
    except ValueError:
        raise RecordSchemaError(f"event: {value_repr(body['event'])} is not a tote event") from None
    return ToteEventBody(
        wave=text_field(body, "wave"),
        tote=text_field(body, "tote"),
        event=event,
        location=text_field(body, "location", required=False),
        ts=_req_int(body, "ts", lo=0, hi=2**63 - 1),
        code=_req_int(body, "code", lo=0, hi=99_999_999) if "code" in body else 0,
        reason=text_field(body, "reason", required=False, max_len=MAX_TEXT),
    )
