"""hybridcache._jsonc and CacheSettings.from_json: appsettings JSON with comments and trailing commas, as in .NET."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hybridcache import _jsonc as jsonc
from hybridcache.errors import CacheConfigurationError
from hybridcache.settings import CacheSettings

NO_ENV: dict[str, str] = {}

# The seed's troubleshooting snippets, verbatim, wrapped in the section they configure.
SEED_L1_TTL_SNIPPET = """{
  "MemoryCache": {
    "DefaultExpirationSeconds": 60  // Increase from 30
  }
}"""
SEED_L1_SIZE_SNIPPET = """{
  "MemoryCache": {
    "SizeLimit": 512  // Reduce from 1024
  }
}"""


def _decode_error(text: str) -> json.JSONDecodeError:
    with pytest.raises(json.JSONDecodeError) as caught:
        jsonc.loads(text)
    return caught.value


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [(SEED_L1_TTL_SNIPPET, {"default_expiration_seconds": 60}), (SEED_L1_SIZE_SNIPPET, {"size_limit": 512})],
)
def test_the_seed_troubleshooting_snippets_load_with_their_values(
    tmp_path: Path, snippet: str, expected: dict[str, int]
) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"TheTechLoopCache": ' + snippet + "}", encoding="utf-8")

    settings = CacheSettings.from_json(path, environ=NO_ENV)

    assert settings.memory_cache.model_dump(include=set(expected)) == expected


def test_a_commented_appsettings_file_with_trailing_commas_loads_like_the_strict_one(tmp_path: Path) -> None:
    commented = tmp_path / "commented.json"
    commented.write_text(
        """\ufeff// appsettings.Development.json
{
  /* Redis in the docker-compose network.
     "Configuration": "redis:6379", */
  "TheTechLoopCache": {
    "Configuration": "redis://127.0.0.1:6380/0", // not http://x
    "ServiceName": "a//b,}",
    "InstanceName": "Company//,}:", /* "InstanceName": "old:", */
    "CircuitBreaker": { "FailureThreshold": 3, "BreakDurationSeconds": 10, },
  },
  "Logging": { "Note": "/* not a comment */ // nor this", },
}
""",
        encoding="utf-8",
    )
    strict = tmp_path / "strict.json"
    section = {
        "Configuration": "redis://127.0.0.1:6380/0",
        "ServiceName": "a//b,}",
        "InstanceName": "Company//,}:",
        "CircuitBreaker": {"FailureThreshold": 3, "BreakDurationSeconds": 10},
    }
    strict.write_text(json.dumps({"TheTechLoopCache": section}), encoding="utf-8")

    loaded = CacheSettings.from_json(commented, environ=NO_ENV)

    assert loaded == CacheSettings.from_json(strict, environ=NO_ENV)
    assert (loaded.service_name, loaded.instance_name) == ("a//b,}", "Company//,}:")
    assert loaded.circuit_breaker.failure_threshold == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1 /* one */, "b": /* two */ 2}', {"a": 1, "b": 2}),
        ('/* leading */ {"a": [1, /* inside\n an array */ 2]} /* trailing */', {"a": [1, 2]}),
        ('{"a": 1 /* ** / * */}', {"a": 1}),
        ('{"a": 1} // no newline at the end', {"a": 1}),
        ('{"a": 1, // line comment\r\n "b": 2}', {"a": 1, "b": 2}),
        ('{"a": 1 //* a line comment, not a block */\n}', {"a": 1}),
        ('{"a": 1 /*// still the block */}', {"a": 1}),
    ],
)
def test_comments_are_skipped(text: str, expected: Any) -> None:
    assert jsonc.loads(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1,}', {"a": 1}),
        ("[1, 2,]", [1, 2]),
        ('{"a": [1, [2,],], "b": {"c": {},},\n}', {"a": [1, [2]], "b": {"c": {}}}),
        ('{"a": 1, // the last one\n}', {"a": 1}),
        ("[1 , /* gap */ \n\t ]", [1]),
        ('["x",]', ["x"]),
        ("[true,null,]", [True, None]),
    ],
)
def test_trailing_commas_are_accepted(text: str, expected: Any) -> None:
    assert jsonc.loads(text) == expected


@pytest.mark.parametrize("text", ["[,]", "{,}", "[1,,]", '{"a": 1,,}', ", [1]", "[1] ,"])
def test_a_comma_without_a_value_before_it_stays_an_error(text: str) -> None:
    """.NET allows one comma after the last value, not an empty element."""
    with pytest.raises(json.JSONDecodeError):
        jsonc.loads(text)


@pytest.mark.parametrize(
    "value",
    [
        "http://x",
        "a//b",
        "/*",
        "*/",
        "a /* b */ c",
        ",}",
        ",]",
        'say \\"hi\\" // not a comment',  # escaped quotes inside the string
        "ends with a backslash \\\\",  # the string's last character is an (escaped) backslash
        '// \\\\\\" /* escaped backslash, then escaped quote',
    ],
)
def test_comment_markers_and_commas_inside_strings_survive(value: str) -> None:
    text = '{"k": "' + value + '", "other": "/*,]"}'

    assert jsonc.to_strict_json(text) == text
    assert jsonc.loads(text) == {"k": json.loads('"' + value + '"'), "other": "/*,]"}


def test_a_string_ending_in_a_backslash_does_not_swallow_what_follows() -> None:
    text = '{"path": "C:\\\\", "next": 1, // comment\n}'

    assert jsonc.loads(text) == {"path": "C:\\", "next": 1}


def test_the_result_keeps_every_line_and_column() -> None:
    text = '{\n  "a": 1, // c\r\n  /* x\n y */ "b": [2,\t],\n}'

    strict = jsonc.to_strict_json(text)

    assert len(strict) == len(text)
    assert [i for i, c in enumerate(strict) if c in "\r\n"] == [i for i, c in enumerate(text) if c in "\r\n"]
    assert strict == '{\n  "a": 1,     \r\n      \n      "b": [2 \t] \n}'


def test_a_malformed_file_is_reported_at_its_line_and_column_in_the_original_text(tmp_path: Path) -> None:
    text = (
        '{\n  // the cache\n  "TheTechLoopCache": {\n    /* timeouts */ "OperationTimeoutMilliseconds": 5000 x\n  }\n}'
    )
    wrong = text.index(" x") + 1
    expected_line = text.count("\n", 0, wrong) + 1
    expected_column = wrong - text.rindex("\n", 0, wrong)
    assert (expected_line, expected_column) == (4, 57)

    error = _decode_error(text)
    assert (error.lineno, error.colno, error.doc) == (expected_line, expected_column, text)
    path = tmp_path / "appsettings.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CacheConfigurationError) as caught:
        CacheSettings.from_json(path, environ=NO_ENV)
    message = str(caught.value)
    assert message == f"{path}: invalid JSON at line 4 column 57: Expecting ',' delimiter"
    assert "\n" not in message


def test_an_unterminated_block_comment_is_an_error_naming_its_line(tmp_path: Path) -> None:
    text = '{\n  "TheTechLoopCache": {\n    "SizeLimit": 512 /* Reduce from 1024\n  }\n}\n'

    error = _decode_error(text)
    assert (error.msg, error.lineno, error.colno) == ("Unterminated comment", 3, 22)
    path = tmp_path / "appsettings.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        CacheConfigurationError, match=r"appsettings\.json: invalid JSON at line 3 column 22: Unterminated comment$"
    ):
        CacheSettings.from_json(path, environ=NO_ENV)


def test_an_unterminated_comment_inside_a_string_is_just_text() -> None:
    assert jsonc.loads('["/* not a comment"]') == ["/* not a comment"]


_MARKER_TEXT = st.text(alphabet=st.sampled_from(list('/*,}]"\\ \n\r\tab\u00e9\u2028')), max_size=20)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | _MARKER_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text() | _MARKER_TEXT, children, max_size=4),
    max_leaves=20,
)


@given(value=_JSON_VALUES, indent=st.sampled_from([None, 2]), ensure_ascii=st.booleans())
@example(value={"a//b": "/*", "http://x": ",}", "q": 'say "hi" \\'}, indent=None, ensure_ascii=False)
def test_strict_json_passes_through_unchanged(value: Any, indent: int | None, ensure_ascii: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

    assert jsonc.to_strict_json(text) == text
    assert jsonc.loads(text) == json.loads(text)
