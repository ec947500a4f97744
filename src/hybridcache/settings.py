"""CacheSettings: the seed's ``TheTechLoopCache`` section, from JSON and ASP.NET-style environment variables.

Keys are matched case-insensitively (as .NET configuration does); an unknown key is an error, never ignored.
Every problem surfaces at load time as one-line :class:`CacheConfigurationError` naming the key in .NET path
form, e.g. ``TheTechLoopCache:MemoryCache:SizeLimit: expected a positive integer, got 'abc'``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_pascal

from hybridcache._jsonc import loads as loads_jsonc
from hybridcache.connection import RedisEndpointConfig, mask_configuration, parse_redis_configuration
from hybridcache.errors import CacheConfigurationError

__all__ = [
    "SECTION",
    "BackplaneSettings",
    "CacheSettings",
    "CircuitBreakerSettings",
    "DistributedLockSettings",
    "FailSafeSettings",
    "MemoryCacheSettings",
    "OutboxSettings",
    "RedisEndpointConfig",
    "parse_redis_configuration",
]

SECTION = "TheTechLoopCache"


@dataclass(frozen=True)
class _Expect:
    """Field annotation: how the accepted values are described in an error message."""

    text: str


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _blank_is_none(value: Any) -> Any:
    # An environment variable cannot be null; an empty value is how one unsets a nullable key.
    return None if isinstance(value, str) and not value.strip() else value


def _protocol(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower().removeprefix("resp") in ("2", "3"):
        return int(value.strip().lower().removeprefix("resp"))
    return _blank_is_none(value)


_Num = BeforeValidator(_not_bool)
PositiveInt = Annotated[int, _Num, Field(gt=0), _Expect("a positive integer")]
NonNegativeInt = Annotated[int, _Num, Field(ge=0), _Expect("an integer >= 0")]
PositiveFloat = Annotated[float, _Num, Field(gt=0, allow_inf_nan=False), _Expect("a positive number")]
NonNegativeFloat = Annotated[float, _Num, Field(ge=0, allow_inf_nan=False), _Expect("a number >= 0")]
OptionalPositiveInt = Annotated[
    Annotated[int, _Num, Field(gt=0)] | None,
    BeforeValidator(_blank_is_none),
    _Expect("null or a positive integer"),
]
Flag = Annotated[bool, _Expect("true or false")]
Name = Annotated[str, Field(pattern=r"^[^\s:*?\[\]]+$"), _Expect("a non-empty name without spaces, : or *?[]")]
Prefix = Annotated[str, Field(pattern=r"^[^\s*?\[\]]*$"), _Expect("a string without spaces or *?[]")]


_T = TypeVar("_T")


def _first(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value


def _ms(milliseconds: float) -> timedelta:
    return timedelta(milliseconds=milliseconds)


class _Section(BaseModel):
    """Base of every section: frozen, unknown keys rejected, errors raised as CacheConfigurationError."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)
    section_path: ClassVar[tuple[str, ...]] = (SECTION,)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, type(self), type(self).section_path, {}) from None

    # Tells pydantic this __init__ only wraps the base one, so nested validation keeps its own error paths.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class CircuitBreakerSettings(_Section):
    """``CircuitBreaker``: after ``failure_threshold`` consecutive L2 failures, L2 is skipped for a while."""

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "CircuitBreaker")
    enabled: Flag = True
    break_duration_seconds: PositiveFloat = 60.0
    failure_threshold: PositiveInt = 5

    @property
    def break_duration(self) -> timedelta:
        return timedelta(seconds=self.break_duration_seconds)


class MemoryCacheSettings(_Section):
    """``MemoryCache``: the L1 store; its TTL caps every L1 entry, ``size_limit`` counts entries."""

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "MemoryCache")
    enabled: Flag = True
    default_expiration_seconds: PositiveFloat = 30.0
    size_limit: PositiveInt = 1024

    @property
    def default_expiration(self) -> timedelta:
        return timedelta(seconds=self.default_expiration_seconds)


class BackplaneSettings(_Section):
    """``Backplane``: the pub/sub invalidation channel and the heartbeat that proves it is alive."""

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "Backplane")
    enabled: Flag = True
    heartbeat_interval_seconds: PositiveFloat = 1.0
    heartbeat_timeout_seconds: PositiveFloat = 2.0
    disconnected_expiration_seconds: NonNegativeFloat = 1.0

    @property
    def heartbeat_interval(self) -> timedelta:
        return timedelta(seconds=self.heartbeat_interval_seconds)

    @property
    def heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.heartbeat_timeout_seconds)

    @property
    def disconnected_expiration(self) -> timedelta:
        """Maximum age of an L1 entry that may still be served while the channel is down."""
        return timedelta(seconds=self.disconnected_expiration_seconds)


class FailSafeSettings(_Section):
    """``FailSafe``: serve the last good value (up to ``max_duration``) when the factory fails or is slow."""

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "FailSafe")
    enabled: Flag = False
    max_duration_minutes: PositiveFloat = 1440.0
    throttle_duration_seconds: PositiveFloat = 30.0
    factory_soft_timeout_milliseconds: OptionalPositiveInt = None
    factory_hard_timeout_milliseconds: OptionalPositiveInt = None

    @model_validator(mode="after")
    def _soft_before_hard(self) -> Self:
        soft, hard = self.factory_soft_timeout_milliseconds, self.factory_hard_timeout_milliseconds
        if soft is not None and hard is not None and soft >= hard:
            key = ":".join((*self.section_path, "FactorySoftTimeoutMilliseconds"))
            raise CacheConfigurationError(
                f"{key}: expected less than FactoryHardTimeoutMilliseconds ({hard}), got {soft}"
            )
        return self

    @property
    def max_duration(self) -> timedelta:
        return timedelta(minutes=self.max_duration_minutes)

    @property
    def throttle_duration(self) -> timedelta:
        return timedelta(seconds=self.throttle_duration_seconds)

    @property
    def factory_soft_timeout(self) -> timedelta | None:
        ms = self.factory_soft_timeout_milliseconds
        return None if ms is None else _ms(ms)

    @property
    def factory_hard_timeout(self) -> timedelta | None:
        ms = self.factory_hard_timeout_milliseconds
        return None if ms is None else _ms(ms)


class DistributedLockSettings(_Section):
    """``DistributedLock``: one factory run per key across instances (a Redis lease), off by default."""

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "DistributedLock")
    enabled: Flag = False
    lease_milliseconds: PositiveInt = 10000
    wait_timeout_milliseconds: NonNegativeInt = 10000

    @property
    def lease(self) -> timedelta:
        return _ms(self.lease_milliseconds)

    @property
    def wait_timeout(self) -> timedelta:
        return _ms(self.wait_timeout_milliseconds)


class OutboxSettings(_Section):
    """``Outbox`` (ours): invalidations written in the command's transaction and relayed if never published.

    See docs/invalidation.md, "The outbox". Off by default: it needs a database the service writes to.
    """

    section_path: ClassVar[tuple[str, ...]] = (SECTION, "Outbox")
    enabled: Flag = False
    grace_period_seconds: NonNegativeFloat = 2.0
    poll_interval_seconds: PositiveFloat = 1.0
    batch_size: PositiveInt = 100
    retention_hours: PositiveFloat = 24.0
    lag_warning_seconds: PositiveFloat = 30.0

    @property
    def grace_period(self) -> timedelta:
        """How long a row is left to the writer's own fast path before any relay publishes it."""
        return timedelta(seconds=self.grace_period_seconds)

    @property
    def poll_interval(self) -> timedelta:
        return timedelta(seconds=self.poll_interval_seconds)

    @property
    def retention(self) -> timedelta:
        """How long a published row is kept before it is pruned."""
        return timedelta(hours=self.retention_hours)


class CacheSettings(_Section):
    """The ``TheTechLoopCache`` section. Frozen; build it with :meth:`from_json`, :meth:`from_mapping`,
    :meth:`from_env` or directly with python names. Properties without a unit suffix are ``timedelta``s.

    ``configuration`` ``None`` (or empty) means no Redis: the cache runs L1-only. ``repr`` masks the password.
    """

    configuration: Annotated[
        str | None, BeforeValidator(_blank_is_none), _Expect("a Redis connection string or null")
    ] = None
    instance_name: Prefix = ""
    service_name: Name = "app"
    cache_version: Name = "v1"
    default_expiration_minutes: PositiveFloat = 60.0
    enabled: Flag = True
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    memory_cache: MemoryCacheSettings = Field(default_factory=MemoryCacheSettings)
    null_expiration_seconds: PositiveFloat = 60.0
    connect_timeout_milliseconds: PositiveInt = 1000
    operation_timeout_milliseconds: PositiveInt = 250
    backplane: BackplaneSettings = Field(default_factory=BackplaneSettings)
    fail_safe: FailSafeSettings = Field(default_factory=FailSafeSettings)
    eager_refresh_threshold: Annotated[
        Annotated[float, _Num, Field(gt=0, lt=1)] | None,
        BeforeValidator(_blank_is_none),
        _Expect("null or a number strictly between 0 and 1"),
    ] = None
    jitter_max_duration_seconds: NonNegativeFloat = 0.0
    # Ours: zlib-compress L2 bodies of at least this many bytes (null: never). See docs/configuration.md.
    compression_threshold_bytes: OptionalPositiveInt = None
    distributed_lock: DistributedLockSettings = Field(default_factory=DistributedLockSettings)
    protocol: Annotated[Literal[2, 3] | None, BeforeValidator(_protocol), _Expect("2, 3 or null")] = 2
    # Ours: prefix/tag generations not bumped for this long are forgotten, and no L2 entry outlives its capture by
    # more (longer TTLs are cut to it). See docs/invalidation.md, "How the generation hash stays bounded".
    generation_retention_hours: PositiveFloat = 168.0
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)

    @field_validator("configuration")
    @classmethod
    def _parseable(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_configuration(value, key=f"{SECTION}:Configuration")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (mask_configuration(value) if name == "configuration" and value else value)

    @property
    def redis_endpoint(self) -> RedisEndpointConfig | None:
        """The parsed ``Configuration`` (unset timeouts and protocol from this section); ``None``: no Redis."""
        if self.configuration is None:
            return None
        endpoint = parse_redis_configuration(self.configuration)
        return replace(
            endpoint,
            connect_timeout=_first(endpoint.connect_timeout, self.connect_timeout_milliseconds / 1000),
            operation_timeout=_first(endpoint.operation_timeout, self.operation_timeout_milliseconds / 1000),
            protocol=_first(endpoint.protocol, self.protocol),
        )

    @property
    def default_expiration(self) -> timedelta:
        return timedelta(minutes=self.default_expiration_minutes)

    @property
    def null_expiration(self) -> timedelta:
        return timedelta(seconds=self.null_expiration_seconds)

    @property
    def connect_timeout(self) -> timedelta:
        return _ms(self.connect_timeout_milliseconds)

    @property
    def operation_timeout(self) -> timedelta:
        return _ms(self.operation_timeout_milliseconds)

    @property
    def generation_retention(self) -> timedelta:
        return timedelta(hours=self.generation_retention_hours)

    @property
    def jitter_max_duration(self) -> timedelta:
        return timedelta(seconds=self.jitter_max_duration_seconds)

    @classmethod
    def from_json(
        cls,
        path: str | os.PathLike[str],
        *,
        section: str = SECTION,
        environ: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Self:
        """Load ``section`` (``:`` nests) from a JSON file, then apply the environment overrides.

        A missing file raises unless ``missing_ok`` (then: defaults plus environment); a missing section
        means defaults. ``environ`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
        The file is read as .NET configuration reads it: ``//`` and ``/* */`` comments and trailing commas are
        accepted (:mod:`hybridcache._jsonc`); malformed JSON is reported at its line and column in the file.
        """
        file = Path(path)
        document: Any = {}
        try:
            document = loads_jsonc(file.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            if not missing_ok:
                raise CacheConfigurationError(f"configuration file not found: {file}") from None
        except json.JSONDecodeError as exc:
            raise CacheConfigurationError(
                f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except OSError as exc:
            raise CacheConfigurationError(f"cannot read configuration file {file}: {exc.strerror}") from None
        for name in section.split(":"):
            if not isinstance(document, Mapping):
                raise CacheConfigurationError(f"{file}: expected a JSON object around section '{name}'")
            document = next((v for k, v in document.items() if k.lower() == name.lower()), {})
        return cls.from_mapping(document, section=section, environ=environ)

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, section: str = SECTION, environ: Mapping[str, str] | None = None
    ) -> Self:
        """Build from the section's own dict (``{"MemoryCache": {...}, ...}``), then apply the environment.

        Environment variables ``{section}__Key__SubKey`` (``__`` for ``:``, any case) override the mapping;
        their values are strings, coerced like JSON values. ``environ`` defaults to ``os.environ``.
        """
        root = tuple(section.split(":"))
        if not isinstance(mapping, Mapping):
            raise CacheConfigurationError(f"{section}: expected a section (JSON object), got {mapping!r}")
        data = _canonical(cls, mapping, root)
        sources: dict[tuple[str, ...], str] = {}
        prefix = "__".join(root).lower() + "__"
        for variable, value in sorted((os.environ if environ is None else environ).items()):
            if variable.lower().startswith(prefix):
                path = _resolve(cls, variable[len(prefix) :].split("__"), root, variable)
                node = data
                for name in path[:-1]:
                    child = node.get(name)
                    if not isinstance(child, dict):
                        child = node[name] = {}
                    node = child
                node[path[-1]] = value
                sources[path] = variable
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, cls, root, sources) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, section: str = SECTION) -> Self:
        """Defaults overridden by ``{section}__…`` environment variables only."""
        return cls.from_mapping({}, section=section, environ=environ)


def _subsection(model: type[_Section], name: str) -> type[_Section] | None:
    annotation = model.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, _Section) else None


def _field_for(model: type[_Section], key: str, path: tuple[str, ...]) -> str:
    """The field name for a key in any case: ``SizeLimit``, ``sizelimit`` and ``size_limit`` all match."""
    wanted = key.replace("_", "").lower()
    for name in model.model_fields:
        if name.replace("_", "") == wanted:
            return name
    valid = [to_pascal(name) for name in model.model_fields]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = ":".join(path)
    raise CacheConfigurationError(f"{where}:{key}: unknown key{hint}; valid keys under {where} are {', '.join(valid)}")


def _canonical(model: type[_Section], raw: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in raw.items():
        name = _field_for(model, str(key), path)
        if name in result:
            where = ":".join((*path, str(key)))
            raise CacheConfigurationError(f"{where}: key given twice (keys ignore case)")
        sub = _subsection(model, name)
        step = (*path, to_pascal(name))
        result[name] = _canonical(sub, value, step) if sub and isinstance(value, Mapping) else value
    return result


def _resolve(model: type[_Section], keys: list[str], root: tuple[str, ...], variable: str) -> tuple[str, ...]:
    names: list[str] = []
    current: type[_Section] | None = model
    for key in keys:
        if current is None:
            at = ":".join((*root, *map(to_pascal, names)))
            raise CacheConfigurationError(f"{at}: is a value, not a section (from environment variable {variable})")
        names.append(_field_for(current, key, (*root, *map(to_pascal, names))))
        current = _subsection(current, names[-1])
    return tuple(names)


def _config_error(
    exc: ValidationError, model: type[_Section], root: tuple[str, ...], sources: Mapping[tuple[str, ...], str]
) -> CacheConfigurationError:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        origin = f" (from environment variable {sources[loc]})" if loc in sources else ""
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, CacheConfigurationError):  # raised by our own validators, worded already
            text = str(cause)
            if text.startswith(f"{SECTION}:"):
                text = ":".join(root) + text[len(SECTION) :]
            problems.append(f"{text}{origin}")
            continue
        current: type[_Section] | None = model
        expect = error["msg"]
        for part in loc:
            field = current.model_fields.get(part) if current else None
            if field is None:
                valid = ", ".join(to_pascal(name) for name in current.model_fields) if current else ""
                expect = f"a known key ({valid})"
                break
            sub = _subsection(current, part) if current else None
            marks = [m for m in field.metadata if isinstance(m, _Expect)]
            expect = marks[-1].text if marks else expect
            if sub is not None:
                expect = f"a section (JSON object) with keys {', '.join(map(to_pascal, sub.model_fields))}"
            current = sub
        value = error["input"]
        if loc and loc[-1] == "configuration" and isinstance(value, str):
            value = mask_configuration(value)
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        key = ":".join((*root, *map(to_pascal, loc)))
        problems.append(f"{key}: expected {expect}, got {shown}{origin}")
    return CacheConfigurationError("; ".join(problems))
