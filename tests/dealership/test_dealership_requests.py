"""The dealership's queries and commands declare the seed's cache keys, durations and invalidations (pure: no
database, no Redis), and the mediator wires the behaviors that read them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dealership.commands import CreateDealership, DeleteDealership, UpdateDealership
from dealership.dto import DealershipDto, DealershipPage
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from hybridcache.cqrs import response_type_of
from hybridcache.keys import CacheKey, validate_key


def test_query_keys_and_durations_follow_the_seed() -> None:
    assert GetDealershipById(42).cache_key == "Dealership:42"
    assert GetDealershipById(42).cache_duration == timedelta(minutes=30)
    assert GetDealershipsList(3, 25).cache_key == "Dealership:List:3:25"
    assert GetDealershipsList(3, 25).cache_duration == timedelta(minutes=10)
    assert SearchDealerships("ford", 10).cache_key == "Dealership:Search:ford:10"
    assert SearchDealerships("ford", 10).cache_duration == timedelta(minutes=5)


def test_response_types_tell_the_cache_how_to_decode() -> None:
    assert response_type_of(GetDealershipById) == DealershipDto | None
    assert response_type_of(GetDealershipsList) == DealershipPage
    assert response_type_of(SearchDealerships) == tuple[DealershipDto, ...]


@given(st.text(max_size=100))
def test_any_search_term_gives_one_valid_key_segment(term: str) -> None:
    key = SearchDealerships(term, 10).cache_key

    validate_key(key)
    assert key == f"Dealership:Search:{CacheKey.sanitize(term)}:10"
    assert key.count(":") == 3
    assert "*" not in key


def test_distinct_search_terms_get_distinct_keys() -> None:
    terms = ["ford", "Ford", "for:d", "for*d", "ford ", "f%6Frd", "x" * 100, "x" * 99 + "y"]
    assert len({SearchDealerships(term, 10).cache_key for term in terms}) == len(terms)


@pytest.mark.parametrize(
    "command",
    [
        CreateDealership("Ford of Springfield", "1 Main St", 3),
        UpdateDealership(42, "Ford of Shelbyville", "2 Elm St"),
        DeleteDealership(42),
    ],
    ids=lambda command: type(command).__name__,
)
def test_commands_invalidate_only_after_their_handler_reported_a_change(
    command: CreateDealership | UpdateDealership | DeleteDealership,
) -> None:
    assert list(command.cache_keys_to_invalidate) == []
    assert list(command.cache_prefixes_to_invalidate) == []

    command.record_change(42)

    assert list(command.cache_keys_to_invalidate) == ["Dealership:42"]
    assert set(command.cache_prefixes_to_invalidate) == {"Dealership:List", "Dealership:Search"}
    assert list(command.cache_tags_to_invalidate) == []


def test_commands_compare_and_hash_by_their_fields_only() -> None:
    reported = UpdateDealership(1, "a", "b")
    reported.record_change(1)

    assert reported == UpdateDealership(1, "a", "b")
    assert hash(reported) == hash(UpdateDealership(1, "a", "b"))
