"""The msgpack envelope that carries records and acks over MQTT, in both directions.

Wire shape (a msgpack map; see ``protocols/WIRE.md`` for the full contract)::

    {"v": 1, "gw": "store-001", "sent": 1700000000000,
     "records": [{"id": "...", "seq": 17, "type": "order", "ts": 1700000000000, "body": {...}}],
     "acks":    [{"id": "...", "st": "accepted", "reason": None, "ref": "SO-000017"}]}

Decoding is strict at the envelope level (anything wrong there rejects the whole message
with an :class:`EnvelopeError` naming the problem) and per record below it: one malformed
record becomes a :class:`BadRecord` with its reason while its neighbours decode normally.
"""

from __future__ import annotations

import enum
import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack
import msgspec
from msgspec import Meta

from protocols import ProtocolError
from protocols.bounded import MAX_DEPTH, bounded_reason, names, nests_deeper, value_repr
from protocols.frozen import quick_init
from protocols.topics import GATEWAY_ID_RE

VERSION = 1
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_RECORDS = 2000
MAX_ACKS = 10_000
MAX_ID_LEN = 64
MAX_TYPE_LEN = 32
# Seq fits a signed 64-bit SQLite integer.
MAX_SEQ = 2**63 - 1

ENVELOPE_KEYS = frozenset({"v", "gw", "sent", "records", "acks"})
RECORD_KEYS = frozenset({"id", "seq", "type", "ts", "body"})
ACK_KEYS = frozenset({"id", "st", "reason", "ref"})


class EnvelopeError(ProtocolError):
    """The message as a whole cannot be accepted; ``reason`` says why, for a person (at most
    :data:`protocols.bounded.MAX_REASON` characters)."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


class AckStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@quick_init
@dataclass(frozen=True, slots=True)
class Record:
    id: str
    seq: int
    type: str
    ts: int
    body: dict[str, Any]


@quick_init
@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    status: AckStatus
    reason: str | None = None
    ref: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that did not decode: where it was, its id if it had a readable one, and why."""

    index: int
    id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Envelope:
    gw: str
    sent: int
    records: tuple[Record, ...] = ()
    acks: tuple[Ack, ...] = ()
    bad_records: tuple[BadRecord, ...] = field(default=())
    # The msgpack bytes of each of ``records`` as they arrived (when decoded from a payload
    # on the common path; else empty), so a receiver can store a record without re-packing it.
    raw_records: tuple[bytes, ...] = field(default=(), compare=False, repr=False)


@quick_init
@dataclass(frozen=True, slots=True)
class Received:
    """A record as a receiver that stores records as they arrived sees it (:func:`decode_uplink`):
    its header, its msgpack bytes (``raw``), and its body - or None where the receiver's quick
    check vouched for the body from its bytes alone (read it from ``raw`` when it is needed)."""

    id: str
    seq: int
    type: str
    ts: int
    raw: bytes
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Uplink:
    """:class:`Envelope` as :func:`decode_uplink` gives it: the records as :class:`Received`."""

    gw: str
    sent: int
    records: tuple[Received, ...] = ()
    acks: tuple[Ack, ...] = ()
    bad_records: tuple[BadRecord, ...] = ()


# record type -> a check on the body's msgpack bytes (handed over as the msgspec.Raw slice of
# the record) that says True only for a body that unpacks to a valid one of that type (and
# False for "read it and check it properly")
QuickCheck = Callable[[msgspec.Raw], bool]
QuickChecks = Mapping[str, QuickCheck]


def _record_to_wire(r: Record) -> dict[str, Any]:
    return {"id": r.id, "seq": r.seq, "type": r.type, "ts": r.ts, "body": r.body}


def _ack_to_wire(a: Ack) -> dict[str, Any]:
    return {"id": a.id, "st": a.status.value, "reason": a.reason, "ref": a.ref}


# An ack with no reason and no ref (most of them) packed by hand: the bytes msgpack gives
# ``_ack_to_wire(a)`` - a 4-entry map, the id as str, "st", the status, two nils.
_ACK_ID = b"\x84\xa2id"
_ACK_STATUS = {s: b"\xa2st" + msgpack.packb(s.value) + b"\xa6reason\xc0\xa3ref\xc0" for s in AckStatus}


def _pack_ack(a: Ack) -> bytes:
    if a.reason is None and a.ref is None:
        rid = a.id.encode()
        n = len(rid)
        if n < 32:
            return b"".join((_ACK_ID, bytes((0xA0 | n,)), rid, _ACK_STATUS[a.status]))
        if n < 256:
            return b"".join((_ACK_ID, b"\xd9", bytes((n,)), rid, _ACK_STATUS[a.status]))
    return _packb(_ack_to_wire(a))


def encode(
    *,
    gw: str,
    sent: int,
    records: tuple[Record, ...] | list[Record] = (),
    acks: tuple[Ack, ...] | list[Ack] = (),
) -> bytes:
    """Encode an envelope. Raises EnvelopeError if it would break the limits."""
    if len(records) > MAX_RECORDS:
        raise EnvelopeError(f"{len(records)} records > MAX_RECORDS {MAX_RECORDS}")
    if len(acks) > MAX_ACKS:
        raise EnvelopeError(f"{len(acks)} acks > MAX_ACKS {MAX_ACKS}")
    wire: dict[str, Any] = {"v": VERSION, "gw": gw, "sent": sent}
    if records:
        wire["records"] = [_record_to_wire(r) for r in records]
    payload = _packb(wire)
    if acks:  # the same bytes as packing them in the map, built quicker (central acks thousands)
        head = [bytes([payload[0] + 1]), payload[1:], b"\xa4acks", _array_header(len(acks))]
        payload = b"".join([*head, *map(_pack_ack, acks)])
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload {len(payload)} bytes > MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}")
    return payload


def encode_raw_records(*, gw: str, sent: int, raw_records: list[bytes]) -> bytes:
    """Encode an envelope from records already packed as msgpack maps (the gateway outbox
    stores them that way, so the hot path does not unpack and re-pack each one)."""
    head = msgpack.packb({"v": VERSION, "gw": gw, "sent": sent}, use_bin_type=True)
    # A fixmap/map16 header followed by pairs; we rebuild the header with one more pair.
    n = len(raw_records)
    if n > MAX_RECORDS:
        raise EnvelopeError(f"{n} records > MAX_RECORDS {MAX_RECORDS}")
    parts = [b"\x84", head[1:], msgpack.packb("records"), _array_header(n), *raw_records]
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload {len(payload)} bytes > MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}")
    return payload


def pack_record(r: Record) -> bytes:
    return _packb(_record_to_wire(r))


def _packb(obj: object) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise EnvelopeError(f"cannot encode as msgpack: {e}") from None
    return packed


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _type_name(v: object) -> str:
    return type(v).__name__


def _check_str(obj: dict[str, Any], key: str, where: str, *, max_len: int) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise EnvelopeError(f"{where}.{key}: expected str, got {_type_name(v)}")
    if not v or len(v) > max_len:
        raise EnvelopeError(f"{where}.{key}: length {len(v)} not in 1..{max_len}")
    return v


def _check_int(obj: dict[str, Any], key: str, where: str, *, lo: int, hi: int) -> int:
    v = obj[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise EnvelopeError(f"{where}.{key}: expected int, got {_type_name(v)}")
    if not lo <= v <= hi:
        raise EnvelopeError(f"{where}.{key}: {v} not in {lo}..{hi}")
    return v


def _check_keys(obj: object, where: str, allowed: frozenset[str], required: frozenset[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{where}: expected map, got {_type_name(obj)}")
    missing = required - obj.keys()
    if missing:
        raise EnvelopeError(f"{where}: missing field {', '.join(sorted(missing))}")
    extra = [k for k in obj if k not in allowed]
    if extra:
        raise EnvelopeError(f"{where}: unknown field {names(extra)}")
    return obj


def _decode_record(i: int, raw: object) -> Record | BadRecord:
    # Fast path for a well-formed record (the common case); anything else takes the slow
    # path below, which names the problem.
    if type(raw) is dict and raw.keys() == RECORD_KEYS:
        rid, seq, rtype, ts, body = raw["id"], raw["seq"], raw["type"], raw["ts"], raw["body"]
        if (
            type(rid) is str
            and 0 < len(rid) <= MAX_ID_LEN
            and type(seq) is int
            and 1 <= seq <= MAX_SEQ
            and type(rtype) is str
            and 0 < len(rtype) <= MAX_TYPE_LEN
            and type(ts) is int
            and 0 <= ts <= MAX_SEQ
            and type(body) is dict
        ):
            return Record(id=rid, seq=seq, type=rtype, ts=ts, body=body)
    return _decode_record_slow(i, raw)


def _decode_record_slow(i: int, raw: object) -> Record | BadRecord:
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid_s = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LEN else None
    where = f"records[{i}]"
    try:
        obj = _check_keys(raw, where, RECORD_KEYS, RECORD_KEYS)
        rec_id = _check_str(obj, "id", where, max_len=MAX_ID_LEN)
        seq = _check_int(obj, "seq", where, lo=1, hi=MAX_SEQ)
        rtype = _check_str(obj, "type", where, max_len=MAX_TYPE_LEN)
        ts = _check_int(obj, "ts", where, lo=0, hi=MAX_SEQ)
        body = obj["body"]
        if not isinstance(body, dict):
            raise EnvelopeError(f"{where}.body: expected map, got {_type_name(body)}")
    except EnvelopeError as e:
        return BadRecord(index=i, id=rid_s, reason=e.reason)
    return Record(id=rec_id, seq=seq, type=rtype, ts=ts, body=body)


_STATUSES = {s.value: s for s in AckStatus}


def _decode_ack(i: int, raw: object) -> Ack:
    if type(raw) is dict and raw.keys() <= ACK_KEYS:  # fast path for a well-formed ack
        aid, st, reason, ref = raw.get("id"), raw.get("st"), raw.get("reason"), raw.get("ref")
        status = _STATUSES.get(st) if type(st) is str else None
        if (
            type(aid) is str
            and 0 < len(aid) <= MAX_ID_LEN
            and status is not None
            and (reason is None or type(reason) is str)
            and (ref is None or type(ref) is str)
        ):
            return Ack(id=aid, status=status, reason=reason, ref=ref)
    return _decode_ack_slow(i, raw)


def _decode_ack_slow(i: int, raw: object) -> Ack:
    where = f"acks[{i}]"
    obj = _check_keys(raw, where, ACK_KEYS, frozenset({"id", "st"}))
    ack_id = _check_str(obj, "id", where, max_len=MAX_ID_LEN)
    st = obj["st"]
    try:
        status = AckStatus(st)
    except ValueError:
        raise EnvelopeError(f"{where}.st: unknown status {value_repr(st)}") from None
    reason = obj.get("reason")
    ref = obj.get("ref")
    if reason is not None and not isinstance(reason, str):
        raise EnvelopeError(f"{where}.reason: expected str or nil, got {_type_name(reason)}")
    if ref is not None and not isinstance(ref, str):
        raise EnvelopeError(f"{where}.ref: expected str or nil, got {_type_name(ref)}")
    return Ack(id=ack_id, status=status, reason=reason, ref=ref)


def _unpack_keeping_records(payload: bytes) -> tuple[dict[str, Any], list[bytes] | None] | None:
    """The common case of :func:`decode`: a map with string keys whose ``records`` is an
    array, read with the same limits as the strict path, keeping each record's bytes.
    Returns None for anything else (the strict path then decides and names the problem), so
    whatever this returns is exactly what ``msgpack.unpackb`` there would have returned."""
    try:
        u = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=max(len(payload), 1),
            max_array_len=MAX_ACKS,
            max_map_len=4096,
            max_str_len=MAX_PAYLOAD_BYTES,
            max_bin_len=MAX_PAYLOAD_BYTES,
            max_ext_len=0,
        )
        u.feed(payload)
        n = u.read_map_header()
        if n > len(ENVELOPE_KEYS):
            return None
        obj: dict[str, Any] = {}
        raws: list[bytes] | None = None
        for _ in range(n):
            key = u.unpack()
            if type(key) is not str:
                return None
            if key != "records":
                obj[key] = u.unpack()
                continue
            m = u.read_array_header()
            if m > MAX_RECORDS:
                return None
            items: list[Any] = []
            raws = []
            start = u.tell()
            for _ in range(m):
                items.append(u.unpack())
                end = u.tell()
                raws.append(payload[start:end])
                start = end
            obj[key] = items
        if u.tell() != len(payload):
            return None
    except Exception:  # anything unusual: the strict path names it
        return None
    return obj, raws


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a burst of objects is built that are not
    garbage: a 2,000-record envelope is tens of thousands of new containers, a batch of orders
    processed at central hundreds per order (freed by reference counting), and with the
    collector on they set off repeated collections that also walk every other live object
    (the decoded envelopes still waiting for the database, say) - about as costly as the work
    itself. Allocation counts carry on, so collection resumes right after."""
    if not gc.isenabled():  # someone else holds it off: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode(payload: bytes) -> Envelope:
    """Decode one MQTT payload. Never raises anything but EnvelopeError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload {len(payload)} bytes > MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}")
    with gc_paused():
        return _decode(payload)


def _decode(payload: bytes) -> Envelope:
    acks_only = _acks_fast(payload)
    if acks_only is not None:
        return acks_only
    fast = _unpack_keeping_records(payload)
    if fast is not None:
        return _envelope_from(*fast)
    return _decode_strict(payload)


def decode_strict(payload: bytes) -> Envelope:
    """:func:`decode` without its quick paths, each rule checked on the unpacked document:
    the reference those paths must agree with (tests/test_envelope.py). ``raw_records`` is
    left empty."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload {len(payload)} bytes > MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}")
    return _decode_strict(payload)


def _decode_strict(payload: bytes) -> Envelope:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_array_len=MAX_ACKS,
            max_map_len=4096,
            max_str_len=MAX_PAYLOAD_BYTES,
            max_bin_len=MAX_PAYLOAD_BYTES,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, StackError...)
        raise EnvelopeError(
            f"not a msgpack document: {type(e).__name__}: {bounded_reason(str(e), 100)}"
        ) from None
    return _envelope_from(obj, None)


def _envelope_from(obj: object, raws: list[bytes] | None) -> Envelope:
    env = _check_keys(obj, "envelope", ENVELOPE_KEYS, frozenset({"v", "gw", "sent"}))
    v = env["v"]
    if v != VERSION:
        raise EnvelopeError(f"envelope.v: unknown version {value_repr(v)} (this side speaks {VERSION})")
    gw = _check_str(env, "gw", "envelope", max_len=64)
    if not GATEWAY_ID_RE.match(gw):
        raise EnvelopeError(f"envelope.gw: {gw!r} is not a valid gateway id")
    sent = _check_int(env, "sent", "envelope", lo=0, hi=MAX_SEQ)
    raw_records = env.get("records", [])
    if not isinstance(raw_records, list):
        raise EnvelopeError(f"envelope.records: expected array, got {_type_name(raw_records)}")
    if len(raw_records) > MAX_RECORDS:
        raise EnvelopeError(f"envelope.records: {len(raw_records)} records > MAX_RECORDS {MAX_RECORDS}")
    raw_acks = env.get("acks", [])
    if not isinstance(raw_acks, list):
        raise EnvelopeError(f"envelope.acks: expected array, got {_type_name(raw_acks)}")
    records: list[Record] = []
    kept: list[bytes] = []
    bad: list[BadRecord] = []
    seen: set[str] = set()
    # one look at all the records for a body nested too deep (the list and a record: 2 levels)
    deep = nests_deeper(raw_records, MAX_DEPTH + 2)
    for i, raw in enumerate(raw_records):
        r = _decode_record(i, raw)
        if isinstance(r, Record) and r.id in seen:
            r = BadRecord(index=i, id=r.id, reason=f"records[{i}].id: repeated within the envelope")
        elif deep and isinstance(r, Record) and nests_deeper(r.body, MAX_DEPTH):
            r = BadRecord(
                index=i, id=r.id, reason=f"records[{i}].body: nested deeper than {MAX_DEPTH} levels"
            )
        if isinstance(r, Record):
            seen.add(r.id)
            records.append(r)
            if raws is not None:
                kept.append(raws[i])
        else:
            bad.append(r)
    acks = tuple(_decode_ack(i, a) for i, a in enumerate(raw_acks))
    return Envelope(
        gw=gw, sent=sent, records=tuple(records), acks=acks, bad_records=tuple(bad), raw_records=tuple(kept)
    )


# -- receiving without reading every body --------------------------------------------------------
#
# ``decode`` builds every record's body as Python objects; most of a receiver's time goes into
# that. A receiver that stores each record's bytes and checks the body later (central) only needs
# the header, the bytes and a yes/no on the body, which msgspec reads straight from the bytes.
# The fast path below takes only the plainest messages and falls back to ``decode`` for anything
# else, so its answer is always exactly the strict one (tests/test_envelope.py compares it with
# ``decode_strict``).


class _HeadWire(msgspec.Struct, forbid_unknown_fields=True):
    v: int
    gw: str
    sent: Annotated[int, Meta(ge=0, le=MAX_SEQ)]


def _plain_head(env: _HeadWire) -> bool:
    return env.v == VERSION and 0 < len(env.gw) <= 64 and GATEWAY_ID_RE.match(env.gw) is not None


class _UplinkWire(_HeadWire):
    records: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_RECORDS)]


class _RecordWire(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
    seq: Annotated[int, Meta(ge=1, le=MAX_SEQ)]
    type: Annotated[str, Meta(min_length=1, max_length=MAX_TYPE_LEN)]
    ts: Annotated[int, Meta(ge=0, le=MAX_SEQ)]
    body: msgspec.Raw


_read_uplink = msgspec.msgpack.Decoder(_UplinkWire).decode
_read_record = msgspec.msgpack.Decoder(_RecordWire).decode
_FIXMAP_4 = 0x84  # v, gw, sent and records (or acks): four entries, so four distinct keys
_FIXMAP_5 = 0x85  # id, seq, type, ts, body


def _unpack_body(raw: msgspec.Raw) -> object:
    # the limits of ``decode``'s strict unpack, on the body alone
    return msgpack.unpackb(
        raw,
        raw=False,
        strict_map_key=True,
        max_array_len=MAX_ACKS,
        max_map_len=4096,
        max_str_len=MAX_PAYLOAD_BYTES,
        max_bin_len=MAX_PAYLOAD_BYTES,
        max_ext_len=0,
    )


def _uplink_fast(payload: bytes, quick: QuickChecks) -> Uplink | None:
    """A records-only message whose every record is well formed, read without building the
    bodies its quick check vouches for; None for anything else (``decode`` then answers)."""
    if not payload or payload[0] != _FIXMAP_4:
        return None
    try:
        env = _read_uplink(payload)
        if not _plain_head(env):
            return None
        out: list[Received] = []
        seen: set[str] = set()
        for raw in env.records:
            rb = bytes(raw)
            if rb[0] != _FIXMAP_5:
                return None
            r = _read_record(rb)
            rid = r.id
            if rid in seen:
                return None
            seen.add(rid)
            check = quick.get(r.type)
            body: dict[str, Any] | None = None
            if check is None or not check(r.body):
                b = _unpack_body(r.body)
                if type(b) is not dict or nests_deeper(b, MAX_DEPTH):
                    return None
                body = b
            out.append(Received(rid, r.seq, r.type, r.ts, rb, body))
    except Exception:  # anything unusual: ``decode`` decides and names the problem
        return None
    return Uplink(gw=env.gw, sent=env.sent, records=tuple(out))


class _AcksWire(_HeadWire):
    acks: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_ACKS)]


class _AckWire(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
    st: str
    reason: str | None = None
    ref: str | None = None


_read_acks = msgspec.msgpack.Decoder(_AcksWire).decode
_read_ack = msgspec.msgpack.Decoder(_AckWire).decode
_ACK_MAPS = frozenset({0x82, 0x83, 0x84})  # an ack map of 2 to 4 entries


def _acks_fast(payload: bytes) -> Envelope | None:
    """An acks-only message (what a gateway gets from central) whose every ack is plainly
    well formed, read with msgspec; None for anything else (the general path answers). The
    map headers keep every map small (no limit of the general path can tell them apart) and a
    repeated key resolves as there (the last one counts; tested), so the answer is the general
    path's to the letter."""
    if not payload or payload[0] != _FIXMAP_4:
        return None
    try:
        env = _read_acks(payload)
        if not _plain_head(env):
            return None
        acks = []
        for raw in env.acks:
            rb = bytes(raw)
            if rb[0] not in _ACK_MAPS:
                return None
            a = _read_ack(rb)
            acks.append(Ack(a.id, _STATUSES[a.st], a.reason, a.ref))
    except Exception:  # anything unusual (an unknown status too): the general path names it
        return None
    return Envelope(gw=env.gw, sent=env.sent, acks=tuple(acks))


def as_uplink(env: Envelope) -> Uplink:
    """An :class:`Envelope` as :class:`Uplink` (bodies kept; bytes as they arrived if known)."""
    raws = env.raw_records if len(env.raw_records) == len(env.records) else None
    return Uplink(
        gw=env.gw,
        sent=env.sent,
        records=tuple(
            Received(r.id, r.seq, r.type, r.ts, raws[i] if raws is not None else pack_record(r), r.body)
            for i, r in enumerate(env.records)
        ),
        acks=env.acks,
        bad_records=env.bad_records,
    )


def decode_uplink(payload: bytes, *, quick: QuickChecks) -> Uplink:
    """:func:`decode` for a receiver that stores records as they arrived: the same records,
    acks, bad records and errors, each record with its bytes, and no body built where
    ``quick[type]`` vouches for it from its bytes. Never raises anything but EnvelopeError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EnvelopeError(f"payload {len(payload)} bytes > MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}")
    with gc_paused():
        fast = _uplink_fast(payload, quick)
        return fast if fast is not None else as_uplink(_decode(payload))
