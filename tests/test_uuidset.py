"""Tests for the compact UUID set."""

from __future__ import annotations

import itertools
import os
import random
import time
import tracemalloc
import uuid

import pytest

from artist_bio_gen.utils.uuidset import UuidSet

ZERO = "00000000-0000-0000-0000-000000000000"


def _random_uuids(count: int, seed: int) -> list[uuid.UUID]:
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]


def _check_against_set(values: list[uuid.UUID], absent: list[uuid.UUID]) -> None:
    """Add ``values`` (with repeats) to a UuidSet and a built-in set; they must agree."""
    compact = UuidSet()
    reference: set[str] = set()
    for value in values + values[:1000]:  # the repeats must report "not added"
        text = str(value)
        assert compact.add(value) == (text not in reference)
        reference.add(text)
    assert len(compact) == len(reference)
    assert set(compact) == reference
    assert all(value in compact for value in values)
    assert not any(value in compact for value in absent)


def test_matches_builtin_set_on_100k_random_uuids() -> None:
    values = _random_uuids(100_000, seed=1)
    absent = _random_uuids(10_000, seed=2)
    _check_against_set(values, absent)


@pytest.mark.parametrize("shift", [0, 48, 64, 96], ids=["low", "mid", "high-half", "top"])
def test_matches_builtin_set_on_100k_sequential_uuids(shift: int) -> None:
    # Sequential ids (counters in any position) must not all pile into one probe chain;
    # the time bound catches the quadratic behaviour that would cause.
    values = [uuid.UUID(int=(i + 1) << shift) for i in range(100_000)]
    absent = [uuid.UUID(int=(i + 1) << shift) for i in range(100_000, 105_000)]
    started = time.perf_counter()
    _check_against_set(values, absent)
    assert time.perf_counter() - started < 30


def test_zero_uuid_is_stored_separately() -> None:
    ids = UuidSet()
    assert ZERO not in ids
    assert ids.add(ZERO) is True
    assert ids.add(uuid.UUID(int=0)) is False
    assert ids.add(bytes(16)) is False
    assert ZERO in ids and uuid.UUID(int=0) in ids and bytes(16) in ids
    assert len(ids) == 1
    assert list(ids) == [ZERO]
    ids.add(uuid.UUID(int=1))
    assert sorted(ids) == [ZERO, "00000000-0000-0000-0000-000000000001"]
    assert len(ids) == 2


def test_mixed_forms_are_the_same_member() -> None:
    value = uuid.UUID("6F1C2B2E-8D3A-4C5B-9E7F-0A1B2C3D4E5F")
    ids = UuidSet([str(value).upper()])
    assert value in ids
    assert str(value) in ids
    assert str(value).upper() in ids
    assert value.bytes in ids
    assert value.hex in ids  # any form uuid.UUID accepts
    assert "{" + str(value) + "}" in ids
    assert ids.add(value.bytes) is False
    assert ids.add(value) is False
    assert list(ids) == ["6f1c2b2e-8d3a-4c5b-9e7f-0a1b2c3d4e5f"]  # canonical lower case


@pytest.mark.parametrize(
    "bad",
    ["abc", "", "6f1c2b2e-8d3a-4c5b-9e7f-0a1b2c3d4e5", "6f1c2b2e-8d3a-4c5b-9e7f-0a1b2c3d4e5g"],
)
def test_add_rejects_strings_that_are_not_uuids(bad: str) -> None:
    ids = UuidSet()
    with pytest.raises(ValueError):
        ids.add(bad)
    assert len(ids) == 0


def test_spaces_inside_canonical_form_are_rejected() -> None:
    # bytes.fromhex skips spaces; the fast path must not accept this as a UUID.
    with pytest.raises(ValueError):
        UuidSet().add("6f1c2b2e-8d3a-4c5b-9e7f-0a1b2c3d 4e5")


def test_constructor_rejects_bad_values_and_wrong_byte_lengths() -> None:
    with pytest.raises(ValueError):
        UuidSet(["not-a-uuid"])
    with pytest.raises(ValueError):
        UuidSet().add(b"\x01" * 15)
    with pytest.raises(TypeError):
        UuidSet().add(12345)  # type: ignore[arg-type]


def test_membership_of_non_uuids_is_false_not_an_error() -> None:
    ids = UuidSet(_random_uuids(10, seed=3))
    assert "abc" not in ids
    assert 42 not in ids
    assert None not in ids
    assert b"short" not in ids


def test_update_adds_everything() -> None:
    values = _random_uuids(500, seed=4)
    ids = UuidSet()
    ids.update(str(v) for v in values)
    ids.update(values)  # the same ids again, as UUID objects
    assert len(ids) == 500
    assert set(ids) == {str(v) for v in values}


def test_grows_by_doubling_and_keeps_buckets_small() -> None:
    ids = UuidSet()
    seen_capacities = {ids.capacity}
    for value in _random_uuids(20_000, seed=5):
        ids.add(value)
        assert len(ids) <= ids.capacity  # on average at most 16 ids per bucket
        seen_capacities.add(ids.capacity)
    caps = sorted(seen_capacities)
    assert all(b == 2 * a for a, b in itertools.pairwise(caps))
    assert len(ids) == 20_000
    assert ids.nbytes < 40 * len(ids)


def test_a_doubling_never_holds_the_ids_twice() -> None:
    """Adding one id past a doubling (32,768 -> 32,769 ids): the peak while the table is
    rebuilt stays near the set's own size, because each old bucket is dropped once its ids
    have moved. Holding the whole old table until the end cost about 47 bytes per id at
    that moment, a peak a run keeps as resident memory."""
    ids = [uuid.UUID(int=random.getrandbits(128)).bytes for _ in range(32_769)]
    tracemalloc.start()  # from the start: the old buckets' memory must be traced to be freed
    try:
        seen = UuidSet()
        for key in ids[:-1]:
            seen.add(key)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen.add(ids[-1])
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen.capacity == 2 * 32_768 and all(key in seen for key in ids)
    # The new table's empty buckets (about 8 bytes per id) plus one bucket in transit; the
    # whole old table held to the end made it about 25.
    assert peak - before < 12 * len(ids), (before, after, peak)


def test_update_from_another_set_is_linear() -> None:
    """Copying a set in its own (hash) order once piled every id into a few buckets."""
    source = UuidSet(_random_uuids(200_000, seed=7))
    started = time.perf_counter()
    copy = UuidSet()
    copy.update(source)
    elapsed = time.perf_counter() - started
    assert len(copy) == len(source) and set(copy) == set(source)
    assert elapsed < 5, f"copying 200k ids took {elapsed:.1f}s"
    source.update(source)  # updating a set with itself is a no-op, not an endless loop
    assert len(source) == 200_000


def test_reserve_keeps_contents() -> None:
    values = _random_uuids(1000, seed=8)
    ids = UuidSet(values)
    ids.reserve(1_000_000)
    assert ids.capacity >= 1_000_000
    assert all(v in ids for v in values) and len(ids) == 1000


def test_iteration_detects_changes() -> None:
    ids = UuidSet(_random_uuids(100, seed=6))
    with pytest.raises(RuntimeError):
        for _ in ids:
            ids.add(uuid.uuid4())


def test_one_million_entries_fit_in_40_mb_and_add_in_reasonable_time() -> None:
    keys = [os.urandom(16) for _ in range(1_000_000)]
    ids = UuidSet()
    started = time.perf_counter()
    for key in keys:
        ids.add(key)
    elapsed = time.perf_counter() - started
    assert len(ids) == 1_000_000
    assert ids.nbytes < 32_000_000
    # A loose complexity guard: quadratic probing or per-add copies would blow this.
    assert elapsed < 10, f"adding 1M ids took {elapsed:.1f}s"
    assert keys[0] in ids and keys[-1] in ids


def test_leading_members_counts_the_ids_before_the_first_absent_one() -> None:
    values = _random_uuids(5000, seed=7)
    ids = UuidSet(values)
    packed = b"".join(value.bytes for value in values)
    absent = uuid.uuid4().bytes
    assert ids.leading_members(packed) == 5000
    assert ids.leading_members(b"") == 0
    assert ids.leading_members(absent + packed) == 0
    assert ids.leading_members(packed[: 16 * 1234] + absent + packed) == 1234
    with pytest.raises(ValueError):
        ids.leading_members(packed[:20])


def test_leading_members_ignores_a_match_across_two_records() -> None:
    """Two ids side by side in one bucket contain 16 bytes that are neither: that id is no
    member, though ``find`` sees it."""
    rng = random.Random(8)
    ids = UuidSet()
    mask = len(ids._buckets) - 1
    while True:
        first, second = rng.randbytes(16), rng.randbytes(16)
        straddling = first[8:] + second[:8]
        if len({hash(first) & mask, hash(second) & mask, hash(straddling) & mask}) == 1:
            break
    ids.update_packed(first + second)
    assert ids._buckets[hash(first) & mask] == first + second
    assert ids.leading_members(first + straddling) == 1
    assert ids.leading_members(first + second) == 2
    assert straddling not in ids
