"""serialization.py: the envelope and the typed JSON codec. Round trips, corrupt and foreign bytes, no pickle."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from hybridcache import _serialization as serialization
from hybridcache._serialization import (
    FORMAT_VERSION,
    MAX_BODY_BYTES,
    CorruptEntryError,
    EntryHeader,
    ValueCodec,
    codec_for,
    decode_entry,
    encode_entry,
)


class State(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    code: str


class ZipCode(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    code: str
    state: State


class Dealership(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    name: str
    unique_key: uuid.UUID
    opened: datetime
    zip_code: ZipCode


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float
    label: str | None = None


DEALERSHIP = Dealership(
    id=42,
    name="Ford of Springfield",
    unique_key=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    opened=datetime(2020, 5, 17, 9, 30, tzinfo=UTC),
    zip_code=ZipCode(id=7, code="62701", state=State(id=1, code="IL")),
)

HEADER = EntryHeader(
    created=1_700_000_000.25,
    expires=1_700_003_600.5,
    epoch="0123456789abcdef",
    generations={"p:": 3, "p:Dealership": 1, "t:dealerships": 9},
    tags=("dealerships", "ford"),
    is_none=False,
)


# ---------------------------------------------------------------------------------------------- typed codec

ROUND_TRIPS: list[tuple[Any, Any]] = [
    (Dealership, DEALERSHIP),
    (Dealership | None, DEALERSHIP),
    (Dealership | None, None),
    (list[Dealership], [DEALERSHIP, DEALERSHIP.model_copy(update={"id": 43})]),
    (dict[str, Dealership], {"a": DEALERSHIP}),
    (Point, Point(1, 2.5, "p")),
    (list[Point], [Point(1, 2.5), Point(-3, 0.0, "q")]),
    (dict[str, int], {"a": 1, "b": -2}),
    (tuple[int, str], (1, "x")),
    (int, 2**62),
    (float, 0.1),
    (str, "zürich \u2028 \x00"),
    (bool, False),
    (uuid.UUID, DEALERSHIP.unique_key),
    (datetime, DEALERSHIP.opened),
    (Decimal, Decimal("12.3400")),
    (list[int], []),
]


@pytest.mark.parametrize(("type_", "value"), ROUND_TRIPS, ids=[repr(t) for t, _ in ROUND_TRIPS])
def test_typed_round_trip(type_: Any, value: Any) -> None:
    codec = codec_for(type_)
    body = codec.encode(value)
    orjson.loads(body)  # the body is JSON, whatever the type
    decoded = codec.decode(body)
    assert decoded == value
    assert type(decoded) is type(value)


def test_nested_models_come_back_as_models() -> None:
    decoded = codec_for(list[Dealership]).decode(codec_for(list[Dealership]).encode([DEALERSHIP]))
    assert isinstance(decoded[0], Dealership)
    assert isinstance(decoded[0].zip_code.state, State)


def test_untyped_codec_round_trips_json_data_and_dumps_models_as_dicts() -> None:
    codec = ValueCodec()
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": {}}}
    assert codec.decode(codec.encode(data)) == data
    assert codec.decode(codec.encode(DEALERSHIP)) == DEALERSHIP.model_dump(mode="json")
    assert codec.decode(codec.encode(Point(1, 2.0))) == {"x": 1, "y": 2.0, "label": None}


def test_untyped_codec_refuses_what_json_cannot_hold_instead_of_pickling_it() -> None:
    with pytest.raises(TypeError) as caught:
        ValueCodec().encode(object())
    # orjson wraps the hint from the default hook; it must still reach the developer.
    assert "type_=" in str(caught.value) or "type_=" in str(caught.value.__cause__)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_untyped_round_trip_of_any_json_value(value: Any) -> None:
    codec = ValueCodec()
    assert codec.decode(codec.encode(value)) == value


@given(st.lists(st.builds(Point, st.integers(-1000, 1000), st.floats(-1e6, 1e6), st.none() | st.text(max_size=5))))
def test_typed_round_trip_of_dataclass_lists(points: list[Point]) -> None:
    codec = codec_for(list[Point])
    assert codec.decode(codec.encode(points)) == points


def test_codec_for_builds_one_codec_per_type() -> None:
    assert codec_for(Dealership) is codec_for(Dealership)
    assert codec_for(list[Dealership]) is codec_for(list[Dealership])


@pytest.mark.parametrize(
    ("type_", "body"),
    [
        (Dealership, b'{"unexpected": true}'),
        (Dealership, b"null"),  # a None body under a non-optional type
        (Dealership, b"[]"),
        (int, b'"forty-two"'),
        (int, b"9" * 10_000),  # past Python's int-parsing digit limit
        (int, b"1e999999"),
        (list[int], b"[" * 100_000 + b"]" * 100_000),  # nesting bomb
        (None, b"[" * 100_000 + b"]" * 100_000),
        (None, b"{not json"),
        (None, b""),
        (Dealership, b"\xff\xfe\x00"),
        (Dealership, pickle.dumps(DEALERSHIP, protocol=4)),
        (None, pickle.dumps({"a": 1}, protocol=4)),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_undecodable_bodies_raise_corrupt_entry_error(type_: Any, body: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        codec_for(type_).decode(body)


@given(st.binary(max_size=200))
def test_arbitrary_body_bytes_decode_or_raise_corrupt_entry_error_only(body: bytes) -> None:
    for type_ in (Dealership, list[int], Dealership | None):
        try:
            value = codec_for(type_).decode(body)
        except CorruptEntryError:
            continue
        assert value is None or isinstance(value, Dealership | list)


# ---------------------------------------------------------------------------------------------- envelope


def test_envelope_round_trip() -> None:
    body = codec_for(Dealership).encode(DEALERSHIP)
    raw = encode_entry(body, HEADER)
    assert raw.startswith(b"hc1{")
    header, decoded_body = decode_entry(raw)
    assert header == HEADER
    assert decoded_body == body
    assert codec_for(Dealership).decode(decoded_body) == DEALERSHIP


def test_a_cached_none_has_no_body_so_a_non_optional_type_never_sees_null() -> None:
    header = EntryHeader(HEADER.created, HEADER.expires, HEADER.epoch, HEADER.generations, HEADER.tags, True)
    raw = encode_entry(None, header)
    header, body = decode_entry(raw)
    assert header.is_none
    assert body is None


def test_an_empty_string_is_not_a_none() -> None:
    raw = encode_entry(codec_for(str).encode(""), HEADER)
    header, body = decode_entry(raw)
    assert not header.is_none
    assert body is not None
    assert codec_for(str).decode(body) == ""


def test_empty_generations_and_tags_round_trip() -> None:
    bare = EntryHeader(created=1.0, expires=2.0, epoch="e", generations={}, tags=(), is_none=False)
    header, body = decode_entry(encode_entry(b"1", bare))
    assert header == bare
    assert body == b"1"


def test_a_body_with_newlines_survives() -> None:
    body = codec_for(str).encode("line one\nline two")
    _, decoded = decode_entry(encode_entry(body, HEADER))
    assert decoded is not None
    assert codec_for(str).decode(decoded) == "line one\nline two"


def _header(**fields: Any) -> bytes:
    base: dict[str, Any] = {"v": FORMAT_VERSION, "c": 1.0, "x": 2.0, "e": "epoch"}
    base.update(fields)
    return b"hc1" + orjson.dumps({k: v for k, v in base.items() if v is not ...}) + b"\n1"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage \x00\xff",
        b"\x80\x04\x95",  # the opening of a protocol-4 pickle
        pickle.dumps({"v": 1}, protocol=4),
        pickle.dumps(HEADER, protocol=5),
        b'{"v": 1}\n1',  # no marker
        b"hc1",
        b'hc1{"v":1,"c":1,"x":2,"e":"e"}',  # no terminator
        b"hc1{not json\n1",
        b"hc1[1, 2]\n1",
        b'hc1"v"\n1',
        b"hc1 42\n1",
        _header(v=2),
        _header(v="1"),
        _header(v=...),
        _header(c=...),
        _header(x=...),
        _header(e=...),
        _header(c={"a": 1}),
        _header(x="soon"),
        _header(g=[1, 2]),
        _header(g={"p:": "1"}),
        _header(g={"p:": 1.5}),
        _header(g={"p:": True}),
        _header(t=5),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_foreign_or_corrupt_envelopes_raise_corrupt_entry_error(raw: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decode_entry(raw)


def assert_decodes_or_is_corrupt(raw: bytes) -> None:
    """Only CorruptEntryError may escape; what does decode is a well-formed header and body."""
    try:
        header, body = decode_entry(raw)
    except CorruptEntryError:
        return
    assert isinstance(header.created, float)
    assert isinstance(header.expires, float)
    assert isinstance(header.epoch, str)
    assert all(isinstance(f, str) and type(g) is int for f, g in header.generations.items())
    assert all(isinstance(t, str) for t in header.tags)
    assert (body is None) == header.is_none


header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("vcxegtn"), children),
    max_leaves=12,
)


@given(header_values, st.binary(max_size=20))
def test_any_json_header_decodes_or_raises_corrupt_entry_error_only(header: Any, body: bytes) -> None:
    try:
        raw = b"hc1" + orjson.dumps(header) + b"\n" + body
    except orjson.JSONEncodeError:
        return
    assert_decodes_or_is_corrupt(raw)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_corrupt_entry_error_only(raw: bytes) -> None:
    for candidate in (raw, b"hc1" + raw):
        assert_decodes_or_is_corrupt(candidate)


def test_corrupt_entry_error_is_a_hybridcache_error() -> None:
    from hybridcache.errors import HybridCacheError

    assert issubclass(CorruptEntryError, HybridCacheError)


def test_the_module_never_imports_an_object_deserializer() -> None:
    """Whoever can write to Redis must not be able to run code here: no pickle, marshal, shelve, dill..."""
    tree = ast.parse(inspect.getsource(serialization))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "copyreg"}


def test_a_compressed_body_round_trips_and_a_body_above_the_bound_is_stored_plain() -> None:
    body = codec_for(list[str]).encode(["the same words again"] * 200)
    packed = encode_entry(body, HEADER, compress_from=64)
    assert len(packed) < len(body) / 4
    header, decoded = decode_entry(packed)
    assert header == HEADER
    assert decoded == body

    huge = b'"' + b" " * (MAX_BODY_BYTES - 1) + b'"'
    stored = encode_entry(huge, HEADER, compress_from=64)
    assert stored.endswith(huge), "a body above MAX_BODY_BYTES must not be compressed (it could not be read back)"
    assert decode_entry(stored)[1] == huge
