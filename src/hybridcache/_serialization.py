"""The bytes an entry is stored as in Redis: a small envelope around a typed JSON body. No pickle.

Layout: ``hc1`` + header JSON + ``\\n`` + body JSON. The header is parsed with orjson (it is tiny); the body is
decoded straight from bytes by pydantic's ``TypeAdapter.validate_json`` of the type the caller declared, so whoever
can write to Redis can at worst make a read miss, never run code or smuggle in a different type.

Header fields: ``v`` format version, ``c`` creation time and ``x`` logical expiry (Unix seconds), ``r`` until when
it may serve as a fail-safe fallback, ``e`` the generation epoch, ``g`` the generations the value was computed
under, ``t`` its tags, ``n`` present when the value is ``None`` (stored without its body so a non-optional type
never sees ``null``), ``z`` = 1 when the body is zlib-compressed (``CompressionThresholdBytes``; only when that
made it smaller). A compressed body is inflated with a bound (:data:`MAX_BODY_BYTES`), so a foreign value posing
as compressed cannot make a read allocate without limit.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from typing import Any, Final

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from hybridcache.errors import HybridCacheError

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"hc1"
_MAGIC_LENGTH: Final = len(_MAGIC)
_HEADER_END: Final = b"\n"
# The most a compressed body may inflate to; anything larger is treated as corrupt (a larger body is stored plain).
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_ZLIB: Final = 1
# zlib level 1: most of level 6's saving on JSON at a fraction of the CPU (benchmarks/bench_memory.py).
_ZLIB_LEVEL: Final = 1


class CorruptEntryError(HybridCacheError):
    """Bytes under a cache key that are not a valid entry of the expected type (a miss, never shown to callers)."""


class EntryHeader:
    """What an entry says about itself, besides its value (read-only by convention; built on every L2 hit)."""

    __slots__ = ("created", "epoch", "expires", "generations", "is_none", "retain", "tags")

    def __init__(
        self,
        created: float,
        expires: float,
        epoch: str,
        generations: Mapping[str, int],
        tags: tuple[str, ...],
        is_none: bool,
        retain: float = 0.0,
    ) -> None:
        self.created = created
        self.expires = expires  # logical expiry (Unix seconds)
        self.epoch = epoch
        self.generations = generations
        self.tags = tags
        self.is_none = is_none
        # Until when it may serve as a fail-safe fallback; never before ``expires``.
        self.retain = retain if retain > expires else expires

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EntryHeader):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return "EntryHeader(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__) + ")"


class ValueCodec:
    """Encodes values of one declared type to JSON bytes and back.

    With ``type_=None`` values must be JSON-native (dicts, lists, str, numbers, bools, dataclasses, pydantic models
    dumped as dicts) and come back as plain JSON data. With a type, values come back as that type.
    """

    __slots__ = ("_adapter",)

    def __init__(self, type_: Any = None) -> None:
        self._adapter: TypeAdapter[Any] | None = None if type_ is None else TypeAdapter(type_)

    def encode(self, value: Any) -> bytes:
        if self._adapter is not None:
            return self._adapter.dump_json(value)
        try:
            return orjson.dumps(value, default=_json_default)
        except orjson.JSONEncodeError as exc:  # orjson hides our hint in __cause__; say it where it is read
            raise TypeError(f"{exc}: values that are not JSON-native need type_= (their declared type)") from exc

    def decode(self, body: bytes) -> Any:
        try:
            if self._adapter is not None:
                # The adapter's validator itself: ``TypeAdapter.validate_json`` only forwards its defaults to it.
                return self._adapter.validator.validate_json(body)
            return orjson.loads(body)
        except (ValidationError, orjson.JSONDecodeError, ValueError) as exc:
            raise CorruptEntryError(f"entry body does not decode: {exc.__class__.__name__}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable; pass type_= to get_or_create/set")


@functools.lru_cache(maxsize=1024)
def _cached_codec(type_: Any) -> ValueCodec:
    return ValueCodec(type_)


def codec_for(type_: Any) -> ValueCodec:
    """The codec for ``type_``, built once per type (a TypeAdapter is expensive to build, cheap to use)."""
    try:
        return _cached_codec(type_)
    except TypeError:  # an unhashable type expression: build it uncached
        return ValueCodec(type_)


def encode_entry(body: bytes | None, header: EntryHeader, compress_from: int | None = None) -> bytes:
    """The Redis payload for an entry; ``body`` is None exactly when the value is None.

    With ``compress_from``, a body of at least that many bytes (and at most :data:`MAX_BODY_BYTES`) is stored
    zlib-compressed when that makes it smaller (flag ``z`` in the header); :func:`decode_entry` gives back the
    original bytes either way.
    """
    fields: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "c": header.created,
        "x": header.expires,
        "e": header.epoch,
    }
    if header.generations:
        fields["g"] = header.generations
    if header.tags:
        fields["t"] = header.tags
    if header.retain > header.expires:
        fields["r"] = header.retain
    if body is None:
        fields["n"] = 1
        return _MAGIC + orjson.dumps(fields) + _HEADER_END
    if compress_from is not None and compress_from <= len(body) <= MAX_BODY_BYTES:
        packed = zlib.compress(body, _ZLIB_LEVEL)
        if len(packed) < len(body):
            fields["z"] = _ZLIB
            body = packed
    return _MAGIC + orjson.dumps(fields) + _HEADER_END + body


def decode_entry(raw: bytes) -> tuple[EntryHeader, bytes | None]:
    """Split a payload into its header and body bytes (None for a cached None). Raises CorruptEntryError.

    Runs on every L2 hit, so the checks are written out (no generator, no second pass) rather than composed.
    """
    if not raw.startswith(_MAGIC):
        raise CorruptEntryError("entry does not start with the hybridcache marker")
    cut = raw.find(_HEADER_END, _MAGIC_LENGTH)
    if cut < 0:
        raise CorruptEntryError("entry has no header terminator")
    try:
        fields = orjson.loads(raw[_MAGIC_LENGTH:cut])
        if fields["v"] != FORMAT_VERSION:
            raise CorruptEntryError(f"entry format version {fields['v']!r} is not {FORMAT_VERSION}")
        generations = fields.get("g")
        if generations is None:
            generations = {}
        elif type(generations) is not dict:
            raise CorruptEntryError("entry generations are malformed")
        else:
            for generation in generations.values():
                if type(generation) is not int:
                    raise CorruptEntryError("entry generations are malformed")
        tags = fields.get("t")
        is_none = "n" in fields
        header = EntryHeader(
            float(fields["c"]),
            float(fields["x"]),
            str(fields["e"]),
            generations,
            tuple(map(str, tags)) if tags else (),
            is_none,
            float(fields.get("r", 0.0)),
        )
    except CorruptEntryError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptEntryError(f"entry header is malformed: {exc.__class__.__name__}") from exc
    if is_none:
        return header, None
    if "z" in fields:
        if fields["z"] != _ZLIB:
            raise CorruptEntryError(f"entry body compression {fields['z']!r} is unknown")
        return header, _inflate(raw[cut + 1 :])
    return header, raw[cut + 1 :]


def _inflate(packed: bytes) -> bytes:
    """The zlib stream ``packed`` inflated, at most :data:`MAX_BODY_BYTES`. Raises CorruptEntryError."""
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(packed, MAX_BODY_BYTES)
    except zlib.error as exc:
        raise CorruptEntryError(f"entry body does not decompress: {exc}") from exc
    if inflater.unconsumed_tail:
        raise CorruptEntryError(f"entry body inflates past {MAX_BODY_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise CorruptEntryError("entry body is not one complete zlib stream")
    return body
