"""keys.py: namespacing, prefix ancestry, prefix validation and CacheKey.sanitize (property-tested)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hybridcache.keys import CacheKey, ancestors, namespace, normalize_prefix, validate_key

FORBIDDEN = frozenset(":*?[]")
HASH_SUFFIX_LENGTH = 1 + 16  # "~" + 16 hex digits

# Every code point, lone surrogates included: a str from a JSON body (json.loads('"\\ud800"')) may hold one.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
max_lengths = st.integers(min_value=CacheKey._HASH_HEX + 2, max_value=200)


def assert_safe(segment: str) -> None:
    assert not FORBIDDEN & set(segment), segment
    assert segment.isprintable(), segment
    assert segment.isascii(), segment


# ---------------------------------------------------------------------------------------------- sanitize


@given(any_text, max_lengths)
@example("Ford: F-150 *new* [2024]?", 64)
@example("\x00\x1f\x7f\n\t\u2028", 64)
@example("~", 64)
@example("\ud800", 64)
def test_sanitize_output_is_a_safe_bounded_segment(term: str, max_length: int) -> None:
    result = CacheKey.sanitize(term, max_length)
    assert_safe(result)
    assert len(result) <= max_length


@given(any_text)
def test_sanitize_default_length_is_bounded(term: str) -> None:
    assert len(CacheKey.sanitize(term)) <= CacheKey.DEFAULT_MAX_LENGTH


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_short_results_decode_back_to_the_input(term: str) -> None:
    """Unshortened results are percent-encoding, so they are injective: decoding gives the term back."""
    result = CacheKey.sanitize(term, 200)
    assume("~" not in result)
    assert unquote(result, errors="strict") == term


@given(any_text, any_text, max_lengths)
def test_sanitize_is_injective(a: str, b: str, max_length: int) -> None:
    assume(a != b)
    assert CacheKey.sanitize(a, max_length) != CacheKey.sanitize(b, max_length)


@given(
    prefix=st.text(min_size=80, max_size=200),
    suffixes=st.lists(st.text(max_size=20), min_size=2, max_size=8, unique=True),
)
def test_long_inputs_sharing_a_prefix_stay_distinct(prefix: str, suffixes: list[str]) -> None:
    """Inputs that only differ after the cut point are told apart by the hash suffix."""
    results = [CacheKey.sanitize(prefix + suffix) for suffix in suffixes]
    assert len(set(results)) == len(results)
    for result in results:
        assert len(result) <= CacheKey.DEFAULT_MAX_LENGTH


@given(st.text(min_size=1, max_size=200), max_lengths)
def test_a_shortened_result_ends_in_one_hash_mark(term: str, max_length: int) -> None:
    """'~' appears only as the hash mark: a literal '~' in the input is encoded, so the two forms cannot meet."""
    result = CacheKey.sanitize(term, max_length)
    if "~" in result:
        assert result.count("~") == 1
        head, digest = result.split("~")
        assert len(digest) == 16
        assert all(c in "0123456789abcdef" for c in digest)
        assert "%" not in head[-2:], "an escape was cut in half"


def test_sanitize_examples() -> None:
    assert CacheKey.sanitize("ford") == "ford"
    assert CacheKey.sanitize("F-150_v2.0") == "F-150_v2.0"
    assert CacheKey.sanitize("a:b") == "a%3Ab"
    assert CacheKey.sanitize("a*") == "a%2A"
    assert CacheKey.sanitize("~") == "%7E"
    assert CacheKey.sanitize("a b") == "a%20b"


def test_a_long_term_is_cut_with_a_hash_suffix() -> None:
    term = "x" * 100
    result = CacheKey.sanitize(term)
    assert len(result) == CacheKey.DEFAULT_MAX_LENGTH
    assert result.startswith("x" * (CacheKey.DEFAULT_MAX_LENGTH - HASH_SUFFIX_LENGTH) + "~")
    assert CacheKey.sanitize(term) == result, "sanitize must be deterministic"
    assert CacheKey.sanitize(term + "y") != result


def test_sanitize_rejects_a_max_length_with_no_room_for_the_hash() -> None:
    with pytest.raises(ValueError, match="max_length"):
        CacheKey.sanitize("anything", CacheKey._HASH_HEX + 1)


# ---------------------------------------------------------------------------------------------- ancestors

segments = st.text(alphabet=st.characters(exclude_characters=":"), min_size=1, max_size=6)


def test_ancestors_examples() -> None:
    assert ancestors("Dealership:Search:ford") == ("", "Dealership", "Dealership:Search", "Dealership:Search:ford")
    assert ancestors("Dealership") == ("", "Dealership")
    assert ancestors("") == ("",)


def test_a_prefix_covers_whole_segments_only() -> None:
    assert "A:B" in ancestors("A:B")
    assert "A:B" in ancestors("A:B:c")
    assert "A:B" not in ancestors("A:BX")
    assert "A:B" not in ancestors("A")


@given(st.lists(segments, min_size=1, max_size=6))
def test_ancestors_are_the_segment_prefixes(parts: list[str]) -> None:
    key = ":".join(parts)
    expected = ("", *(":".join(parts[:i]) for i in range(1, len(parts) + 1)))
    assert ancestors(key) == expected


@given(st.lists(segments, min_size=1, max_size=6), st.lists(segments, min_size=1, max_size=6))
def test_ancestors_match_the_boundary_rule(key_parts: list[str], prefix_parts: list[str]) -> None:
    """``p`` is an ancestor of ``k`` exactly when ``k == p`` or ``k`` starts with ``p + ':'``."""
    key, prefix = ":".join(key_parts), ":".join(prefix_parts)
    assert (prefix in ancestors(key)) == (key == prefix or key.startswith(prefix + ":"))


# ---------------------------------------------------------------------------------------------- prefixes, keys


@pytest.mark.parametrize("prefix", ["Dealership*", "Dealership:?", "Deal[er]ship", "a]", "*"])
def test_normalize_prefix_rejects_globs(prefix: str) -> None:
    with pytest.raises(ValueError, match="glob"):
        normalize_prefix(prefix)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("Dealership:Search", "Dealership:Search"), ("Dealership:Search:", "Dealership:Search"), ("", "")],
)
def test_normalize_prefix_drops_one_trailing_separator(prefix: str, expected: str) -> None:
    assert normalize_prefix(prefix) == expected


@given(st.text(alphabet=st.characters(exclude_characters="*?[]"), max_size=30))
def test_normalize_prefix_accepts_every_glob_free_prefix(prefix: str) -> None:
    normalized = normalize_prefix(prefix)
    assert prefix in (normalized, normalized + ":")


def test_namespace() -> None:
    assert namespace("company-svc", "v1") == "company-svc:v1:"


def test_validate_key() -> None:
    assert validate_key("Dealership:42") == "Dealership:42"
    with pytest.raises(ValueError, match="empty"):
        validate_key("")
    with pytest.raises(ValueError, match="control"):
        validate_key("Dealership:\n42")


@given(any_text)
def test_a_sanitized_segment_is_always_a_valid_key(term: str) -> None:
    assert validate_key("Dealership:Search:" + CacheKey.sanitize(term)).startswith("Dealership:Search:")
