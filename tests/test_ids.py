"""Record ids (``protocols.ids``): RFC 9562 UUIDv7s whose order follows their creation time;
the gateway's outbox and central's downlink both make them."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from central import downlink
from protocols import ids

MS = st.integers(min_value=0, max_value=(1 << 48) - 1)
RAND = st.binary(min_size=ids.RAND_BYTES, max_size=ids.RAND_BYTES)


@given(MS, RAND)
def test_an_id_is_a_uuid7_carrying_its_time(ms: int, rand: bytes) -> None:
    rid = ids.uuid7_hex(ms, rand)
    u = uuid.UUID(hex=rid)
    assert len(rid) == 32 and rid == u.hex
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert u.int >> 80 == ms


@given(MS, MS, RAND, RAND)
def test_ids_sort_by_their_time(a: int, b: int, ra: bytes, rb: bytes) -> None:
    if a < b:
        assert ids.uuid7_hex(a, ra) < ids.uuid7_hex(b, rb)


def test_central_downlink_records_get_time_ordered_ids() -> None:
    rows = [downlink.packed_row("gw-1", "order_status", {"n": i}, seq=i + 1) for i in range(50)]
    made = [uuid.UUID(hex=r[1]) for r in rows]
    assert all(u.version == 7 and u.int >> 80 == r[4] for u, r in zip(made, rows, strict=True))
    assert [u.int >> 80 for u in made] == sorted(u.int >> 80 for u in made)
    assert len({u.hex for u in made}) == 50
    given_id = downlink.packed_row("gw-1", "order_status", {}, seq=51, record_id="keep-me")
    assert given_id[1] == "keep-me"


def test_ids_made_together_are_distinct_uuid7s_of_their_time() -> None:
    made = ids.new_record_ids(1000, 1_700_000_000_000)
    assert len(set(made)) == 1000
    parsed = [uuid.UUID(hex=r) for r in made]
    assert all(u.version == 7 and u.int >> 80 == 1_700_000_000_000 for u in parsed)


@given(MS, st.lists(RAND, max_size=20))
def test_ids_built_as_text_are_the_ids_built_as_numbers(ms: int, chunks: list[bytes]) -> None:
    assert ids.uuid7_hexes(ms, b"".join(chunks)) == [ids.uuid7_hex(ms, c) for c in chunks]
