"""generations.py: the generation table (what an entry is checked against) and the local invalidation log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridcache._generations import (
    FLOOR_FIELD,
    GenerationTable,
    InvalidationLog,
    RecentRemovals,
    fields_for,
    is_behind,
    new_epoch,
    prefix_field,
    tag_field,
)

NS = "svc:v1:"
N = len(NS)


# ---------------------------------------------------------------------------------------------- fields


def test_field_names() -> None:
    assert prefix_field("Dealership") == "p:Dealership"
    assert prefix_field("") == "p:"
    assert tag_field("dealerships") == "t:dealerships"


def test_fields_for_lists_every_ancestor_then_the_tags() -> None:
    assert fields_for(NS + "Dealership:Search:ford", N, ("dealerships",)) == (
        "p:",
        "p:Dealership",
        "p:Dealership:Search",
        "p:Dealership:Search:ford",
        "t:dealerships",
    )


def test_new_epochs_differ() -> None:
    assert len({new_epoch() for _ in range(100)}) == 100


# ---------------------------------------------------------------------------------------------- GenerationTable

FIELDS = ("p:", "p:Dealership", "p:Dealership:42", "t:dealerships")


def test_an_entry_is_current_until_a_field_it_depends_on_moves() -> None:
    table = GenerationTable("e1")
    stamp = table.snapshot(FIELDS)
    assert stamp == {}
    assert table.is_current("e1", stamp, FIELDS)
    table.advance({"p:Other": 1})
    assert table.is_current("e1", stamp, FIELDS), "an unrelated field moved"
    table.advance({"t:dealerships": 1})
    assert not table.is_current("e1", stamp, FIELDS)
    assert table.is_current("e1", table.snapshot(FIELDS), FIELDS), "a value computed now is current"


def test_a_stamp_ahead_of_the_table_is_current() -> None:
    """An entry written by an instance that has seen a newer invalidation than we have is not stale to us."""
    table = GenerationTable("e1")
    table.advance({"p:Dealership": 2})
    assert table.is_current("e1", {"p:Dealership": 3}, FIELDS)


def test_a_different_epoch_is_never_current() -> None:
    table = GenerationTable("e1")
    assert not table.is_current("e0", {}, FIELDS)
    assert not table.is_current("e0", {}, ())


def test_snapshot_holds_only_known_fields() -> None:
    table = GenerationTable("e1")
    table.advance({"p:": 3, "p:Other": 5})
    assert table.snapshot(FIELDS) == {"p:": 3}


def test_advance_only_moves_counters_forward() -> None:
    table = GenerationTable("e1")
    table.advance({"p:Dealership": 5})
    table.advance({"p:Dealership": 3})
    assert table.current("p:Dealership") == 5
    assert table.current("p:never") == 0


def test_every_change_bumps_the_version() -> None:
    """An L1 entry checked at the current version needs no re-check, so any change must move the version."""
    table = GenerationTable("e1")
    seen = [table.version]

    def changed() -> None:
        assert table.version > seen[-1]
        seen.append(table.version)

    table.advance({"p:A": 1})
    changed()
    table.advance({"p:A": 1})  # a replay: harmless, and still a new version (conservative)
    changed()
    table.bump_locally(["p:A"])
    changed()
    table.replace("e1", {"p:B": 1})
    changed()
    table.replace("e2", {})
    changed()
    table.set_trusted(False)
    changed()
    table.set_trusted(True)
    changed()


def test_set_trusted_without_a_change_keeps_the_version() -> None:
    table = GenerationTable("e1", trusted=True)
    version = table.version
    table.set_trusted(True)
    assert table.version == version
    assert table.trusted


def test_bump_locally_sets_the_clock_time_or_one_more_and_returns_the_new_counters() -> None:
    now = [1_800_000_000.0]
    table = GenerationTable("e1", wall_clock=lambda: now[0])
    assert table.bump_locally(["p:A", "t:x"]) == {"p:A": 1_800_000_000_000, "t:x": 1_800_000_000_000}
    assert table.bump_locally(["p:A"]) == {"p:A": 1_800_000_000_001}  # same millisecond: one more
    now[0] += 5
    assert table.bump_locally(["p:A"]) == {"p:A": 1_800_000_005_000}
    assert table.current("p:A") == 1_800_000_005_000
    assert len(table) == 2


def test_a_field_bumped_after_it_was_forgotten_comes_back_above_every_stamp_made_before() -> None:
    """Why generations are times: a counter dropped and bumped again would restart at 1, below stamps that
    recorded it before it was dropped, and an entry those stamps made stale would look current again."""
    now = [1_800_000_000.0]
    table = GenerationTable("e1", retention_ms=60_000, margin_ms=0, wall_clock=lambda: now[0])
    first = table.bump_locally(["t:x"])["t:x"]
    stamp = table.snapshot(["t:x"])  # an entry computed after that bump
    now[0] += 61
    table.bump_locally(["t:other"])  # any change sweeps the front: t:x is past the retention
    assert table.current("t:x") == 0
    assert len(table) == 1
    assert table.is_current("e1", stamp, ["t:x"])
    again = table.bump_locally(["t:x"])["t:x"]
    assert again > first
    assert not table.is_current("e1", stamp, ["t:x"])


def test_the_mirror_forgets_oldest_first_and_keeps_counters_of_older_releases() -> None:
    now = [1_800_000_000.0]
    table = GenerationTable("e1", retention_ms=10_000, margin_ms=5_000, wall_clock=lambda: now[0])
    table.advance({"p:legacy": 7})  # a counter written by a release before generations were times
    table.bump_locally(["p:A"])
    now[0] += 10
    table.bump_locally(["p:B"])
    now[0] += 6  # p:A is 16 s old (> 10 s + 5 s margin), p:B 6 s
    table.advance({"p:C": 1_800_000_016_000})
    assert table.current("p:legacy") == 7  # not a time: never forgotten, and it holds the front
    assert table.current("p:A") != 0
    table.advance({"p:legacy": 1_800_000_016_001})  # its next bump makes it a time and moves it to the back
    assert table.current("p:A") == 0
    assert table.current("p:B") != 0
    assert table.current("p:C") != 0


def test_a_stamp_floor_stands_for_every_field_it_does_not_name() -> None:
    table = GenerationTable("e1")
    table.advance({"p:A": 1_800_000_000_000})
    floor_below = {FLOOR_FIELD: 1_799_999_999_999}
    floor_above = {FLOOR_FIELD: 1_800_000_000_000}
    assert not table.is_current("e1", floor_below, ["p:A"])
    assert table.is_current("e1", floor_above, ["p:A"])
    assert table.is_current("e1", {**floor_below, "p:A": 1_800_000_000_000}, ["p:A"])
    assert is_behind(floor_below, {"p:A": 1_800_000_000_000})
    assert not is_behind(floor_above, {"p:A": 1_800_000_000_000})
    assert is_behind({}, {"p:A": 1})  # a stamp without a floor (older releases): absent means 0


def test_replace_with_the_same_epoch_trusts_redis_even_where_it_is_lower() -> None:
    """A counter above Redis's in the same epoch came from a forged or foreign message (every real bump is made
    in Redis before its message is sent): kept, it would make every entry under its field look stale for good."""
    table = GenerationTable("e1")
    table.advance({"p:A": 10**12, "p:B": 1})
    assert table.replace("e1", {"p:A": 2, "p:C": 7}) is False
    assert (table.current("p:A"), table.current("p:B"), table.current("p:C")) == (2, 0, 7)


def test_replace_with_a_new_epoch_takes_the_authoritative_counters_as_they_are() -> None:
    """Redis lost its counters (restart without persistence): they restart low, under a new epoch."""
    table = GenerationTable("e1")
    table.advance({"p:A": 5, "p:B": 1})
    old_stamp = table.snapshot(["p:A"])
    assert table.replace("e2", {"p:A": 1}) is True
    assert table.epoch == "e2"
    assert (table.current("p:A"), table.current("p:B")) == (1, 0)
    assert not table.is_current("e1", old_stamp, ["p:A"]), "an old-epoch stamp can never become current again"


def test_the_first_replace_of_an_unset_epoch_reports_a_change() -> None:
    table = GenerationTable(None, trusted=False)
    assert table.replace("e1", {}) is True
    assert table.epoch == "e1"


@given(st.lists(st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 20), max_size=4), max_size=10))
def test_counters_are_the_running_maximum_of_every_update(updates: list[dict[str, int]]) -> None:
    table = GenerationTable("e1")
    for update in updates:
        table.advance(update)
    for field in FIELDS:
        assert table.current(field) == max((u.get(field, 0) for u in updates), default=0)


@given(
    st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 20)),
    st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 20)),
)
def test_is_current_is_the_pointwise_comparison(stamp: dict[str, int], counters: dict[str, int]) -> None:
    table = GenerationTable("e1")
    table.advance(counters)
    expected = all(stamp.get(f, 0) >= table.current(f) for f in FIELDS)
    assert table.is_current("e1", stamp, FIELDS) == expected


# ---------------------------------------------------------------------------------------------- InvalidationLog


def test_nothing_recorded_since_the_mark_covers_nothing() -> None:
    log = InvalidationLog()
    mark = log.sequence
    assert not log.covers_since(mark, NS + "Dealership:42", N, ("dealerships",))


def test_an_exact_key_covers_only_that_key() -> None:
    log = InvalidationLog()
    mark = log.sequence
    log.record([NS + "Dealership:42"], [], [])
    assert log.covers_since(mark, NS + "Dealership:42", N, ())
    assert not log.covers_since(mark, NS + "Dealership:4", N, ())
    assert not log.covers_since(mark, NS + "Dealership:42:x", N, ())


@pytest.mark.parametrize(
    ("key", "covered"),
    [("A:B", True), ("A:B:c", True), ("A:B:c:d", True), ("A:BX", False), ("A", False), ("X:A:B", False)],
)
def test_a_prefix_covers_keys_at_segment_boundaries(key: str, covered: bool) -> None:
    log = InvalidationLog()
    mark = log.sequence
    log.record([], [NS + "A:B"], [])
    assert log.covers_since(mark, NS + key, N, ()) is covered


def test_the_namespace_prefix_covers_every_key() -> None:
    log = InvalidationLog()
    mark = log.sequence
    log.record([], [NS], [])
    assert log.covers_since(mark, NS + "anything:at:all", N, ())


def test_a_prefix_of_another_namespace_covers_nothing_here() -> None:
    log = InvalidationLog()
    mark = log.sequence
    log.record([], ["other:v1:A"], [])
    assert not log.covers_since(mark, NS + "A", N, ())


def test_a_tag_covers_entries_with_that_tag() -> None:
    log = InvalidationLog()
    mark = log.sequence
    log.record([], [], ["dealerships"])
    assert log.covers_since(mark, NS + "Dealership:42", N, ("dealerships", "x"))
    assert not log.covers_since(mark, NS + "Dealership:42", N, ("states",))
    assert not log.covers_since(mark, NS + "Dealership:42", N, ())


def test_only_records_after_the_mark_count() -> None:
    log = InvalidationLog()
    log.record([NS + "A"], [], [])
    mark = log.sequence
    log.record([NS + "B"], [], [])
    assert not log.covers_since(mark, NS + "A", N, ())
    assert log.covers_since(mark, NS + "B", N, ())
    assert log.covers_since(0, NS + "A", N, ())


def test_an_overflowed_log_conservatively_covers_everything() -> None:
    log = InvalidationLog(capacity=2)
    mark = log.sequence
    for i in range(3):
        log.record([NS + f"unrelated:{i}"], [], [])
    assert log.covers_since(mark, NS + "Dealership:42", N, ()), "record 1 was dropped: cannot prove anything"


def test_a_log_at_capacity_still_answers_precisely() -> None:
    log = InvalidationLog(capacity=2)
    log.record([NS + "old"], [], [])
    mark = log.sequence
    log.record([NS + "unrelated:1"], [], [])
    log.record([NS + "unrelated:2"], [], [])  # drops record 1, which precedes the mark
    assert not log.covers_since(mark, NS + "Dealership:42", N, ())
    assert log.covers_since(mark, NS + "unrelated:2", N, ())


@given(
    st.lists(st.sampled_from(["A", "A:B", "A:B:c", "A:BX", "C"]), max_size=6),
    st.sampled_from(["A", "A:B", "A:B:c", "A:BX", "C", "A:B:c:d"]),
    st.integers(0, 6),
)
def test_covers_since_agrees_with_the_boundary_rule(prefixes: list[str], key: str, mark: int) -> None:
    log = InvalidationLog(capacity=100)
    for prefix in prefixes:
        log.record([], [NS + prefix], [])
    mark = min(mark, log.sequence)
    later = prefixes[mark:]
    expected = any(key == p or key.startswith(p + ":") for p in later)
    assert log.covers_since(mark, NS + key, N, ()) is expected


def test_known_stale_is_what_the_table_applied_and_an_unknown_epoch_proves_nothing() -> None:
    table = GenerationTable("e1", trusted=False)
    table.advance({"t:shops": 3})
    assert table.known_stale("e1", {"t:shops": 2}, ("p:Shop", "t:shops"))
    assert not table.known_stale("e1", {"t:shops": 3}, ("p:Shop", "t:shops"))
    assert not table.known_stale("e1", {}, ("p:Shop",))  # a field the table never saw move
    assert not table.known_stale("e0", {"t:shops": 2}, ("t:shops",))  # another epoch: no evidence either way
    assert not table.is_current("e0", {"t:shops": 2}, ("t:shops",))  # ...where is_current says no


def test_recent_removals_refuse_only_entries_written_before_the_removal_within_the_window() -> None:
    removals = RecentRemovals(window=10.0, capacity=3)
    removals.record(["k"], now=100.0)
    assert removals.refuses("k", created=99.0, now=101.0)
    assert removals.refuses("k", created=100.0, now=101.0)
    assert not removals.refuses("k", created=100.5, now=101.0)  # written after the removal: fresh
    assert not removals.refuses("k", created=99.0, now=110.0)  # the window has passed
    assert not removals.refuses("other", created=0.0, now=101.0)
    removals.record(["a", "b", "c"], now=101.0)  # over capacity: the oldest removal is forgotten first
    assert len(removals) == 3
    assert not removals.refuses("k", created=99.0, now=101.0)
    removals.record(["d"], now=112.0)  # pruned by age on every record
    assert len(removals) == 1
