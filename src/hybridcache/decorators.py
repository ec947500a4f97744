"""Caching functions: ``@cache.cached(key="User:{user_id}", ttl=..., tags=...)``.

``async def`` functions on a :class:`~hybridcache.HybridCache` (:func:`cached`), plain ``def`` functions on a
:class:`~hybridcache.sync.SyncHybridCache` (:func:`cached_sync`): the same key templates, options and contracts.
The decorated function keeps its exact signature and return type for type checkers (``ParamSpec``; methods too),
and gains ``.key_for(...)``, ``.invalidate(...)`` and ``.uncached``. Contracts:

* **The key** is the template formatted from the call's arguments, bound as Python binds them (defaults applied).
  A field is a parameter name, optionally followed by attributes and a format spec (``{user.id}``,
  ``{day:%Y-%m-%d}``); each formatted field is sanitized as :meth:`CacheKey.sanitize` does, so user text cannot
  forge a ``:`` segment or a glob. A field naming no parameter, an index (``{ids[0]}``), a positional field
  (``{}``) or a conversion (``{x!r}``) is a ``ValueError`` when the function is decorated, not when it is called.
  ``tags`` may be templates too.
* **The type** used to decode L2 hits is the return annotation (``type_=`` overrides it); a forward reference that
  does not resolve yet is resolved on the first miss.
* **The cache** may be given later: ``cached(..., cache=lambda: app.state.cache)`` resolves it on each call, so a
  module can decorate at import time and the cache be created in a FastAPI lifespan. ``HybridCache.cached`` binds
  the cache it is called on (which need not be started yet).
* **Cost**: the call's key is built by a function generated for the decorated one (its own parameter list, no
  ``inspect.Signature.bind``), and an L1 hit returns without building a factory. ``benchmarks/bench_decorator.py``
  measures it beside ``get_or_create``.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import re
import string
import typing
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

from hybridcache.keys import CacheKey

__all__ = ["L1_MISS", "CachedFunction", "SyncCachedFunction", "cached", "cached_sync"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")
C = TypeVar("C")

TtlLike = timedelta | float | int

L1_MISS: Any = object()
"""What ``HybridCache._l1_hit_value`` returns when L1 cannot answer (the decorator then takes the full path)."""

_UNRESOLVED: Any = object()
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]*")
_MAX_SEGMENT = CacheKey.DEFAULT_MAX_LENGTH
_INT_FAST = 10**18  # ints within this print as at most 19 digits and a sign: always a safe segment


class _Cache(Protocol):
    """What a decorated function needs from :class:`~hybridcache.HybridCache`."""

    def _l1_hit_value(self, key: str) -> Any: ...

    async def get_or_create(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> T: ...

    async def invalidate(
        self, *, keys: Sequence[str] = ..., prefixes: Sequence[str] = ..., tags: Sequence[str] = ...
    ) -> object: ...


class _SyncCache(Protocol):
    """What a decorated plain function needs from :class:`~hybridcache.sync.SyncHybridCache`."""

    def _l1_hit_value(self, key: str, /) -> Any: ...

    def get_or_create(
        self,
        key: str,
        factory: Callable[[], T],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> T: ...

    def invalidate(
        self, *, keys: Sequence[str] = ..., prefixes: Sequence[str] = ..., tags: Sequence[str] = ...
    ) -> object: ...


def segment(value: object) -> str:
    """One formatted field of a key: ``str(value)``, sanitized as :meth:`CacheKey.sanitize` does (unchanged when it
    is already a safe segment, which is the common case and costs one regex match)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= _MAX_SEGMENT and _SAFE_SEGMENT.fullmatch(text):
        return text
    return CacheKey.sanitize(text)


class CachedFunction(Generic[P, R]):
    """An ``async def`` function whose results are cached; call it as the original.

    ``key_for(*args, **kwargs)`` is the logical key a call maps to; ``await invalidate(*args, **kwargs)`` removes
    that key on every instance; ``uncached`` is the original function. On a class, it binds like a method.
    """

    __slots__ = ()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        raise NotImplementedError  # each decorated function gets its own generated __call__

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        raise NotImplementedError

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        raise NotImplementedError

    @property
    def uncached(self) -> Callable[P, Coroutine[Any, Any, R]]:
        raise NotImplementedError

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R], instance: S, owner: type[Any] | None = None
    ) -> CachedFunction[P2, R]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        return self if instance is None else _BoundCachedFunction(self, instance)


class _Binding(Generic[C]):
    """What every decorated function holds: its cache (or how to find it at call time), the declared type and
    the options; a generated subclass supplies ``__call__`` and ``_key``."""

    __slots__ = ("__dict__", "_cache", "_options", "_resolve_cache", "_type")

    _key: Callable[..., str]
    __wrapped__: Callable[..., Any]

    def __init__(
        self, function: Callable[..., Any], cache: C | Callable[[], C], type_: Any, options: dict[str, Any]
    ) -> None:
        functools.update_wrapper(typing.cast(Any, self), function)  # __name__, __doc__, __wrapped__ ...
        is_cache = hasattr(cache, "_l1_hit_value")
        self._cache: C | None = typing.cast(C, cache) if is_cache else None
        self._resolve_cache: Callable[[], C] | None = None if is_cache else typing.cast(Any, cache)
        self._type = type_
        self._options = options

    def _current_cache(self) -> C:
        cache = self._cache
        if cache is not None:
            return cache
        assert self._resolve_cache is not None
        resolved = self._resolve_cache()
        if not hasattr(resolved, "_l1_hit_value"):
            raise TypeError(f"the cache given to @cached for {self.__wrapped__.__qualname__} returned {resolved!r}")
        return resolved

    def _declared_type(self) -> Any:
        if self._type is _UNRESOLVED:
            self._type = _return_type(self.__wrapped__, strict=True)
        return self._type

    def __repr__(self) -> str:
        return f"<cached function {self.__wrapped__.__qualname__}>"


class _DecoratedFunction(_Binding[_Cache], CachedFunction[P, R]):
    """The runtime base of every decorated ``async def`` function."""

    __slots__ = ()

    async def _load(self, cache: _Cache, key: str, factory: Callable[[], Awaitable[R]], tags: Sequence[str]) -> R:
        """A miss (or an L1 entry due for refresh): the full ``get_or_create``."""
        return await cache.get_or_create(key, factory, type_=self._declared_type(), tags=tags, **self._options)

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._key(*args, **kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        await self._current_cache().invalidate(keys=[self._key(*args, **kwargs)])

    @property
    def uncached(self) -> Callable[P, Coroutine[Any, Any, R]]:
        original: Callable[P, Coroutine[Any, Any, R]] = self.__wrapped__
        return original


class _BoundCachedFunction(CachedFunction[P, R]):
    """A decorated method bound to an instance (as a bound method is to its function)."""

    __slots__ = ("_function", "_instance")

    def __init__(self, function: CachedFunction[Any, R], instance: object) -> None:
        self._function = function
        self._instance = instance

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._function(self._instance, *args, **kwargs)

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._function.key_for(self._instance, *args, **kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        await self._function.invalidate(self._instance, *args, **kwargs)

    @property
    def uncached(self) -> Callable[P, Coroutine[Any, Any, R]]:
        return functools.partial(self._function.uncached, self._instance)


class SyncCachedFunction(Generic[P, R]):
    """A plain function whose results are cached in a :class:`~hybridcache.sync.SyncHybridCache`; call it as the
    original, from any thread. ``key_for`` and ``uncached`` as on :class:`CachedFunction`; ``invalidate(...)``
    is a plain call. On a class, it binds like a method."""

    __slots__ = ()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError  # each decorated function gets its own generated __call__

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        raise NotImplementedError

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        raise NotImplementedError

    @property
    def uncached(self) -> Callable[P, R]:
        raise NotImplementedError

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: SyncCachedFunction[Concatenate[S, P2], R], instance: S, owner: type[Any] | None = None
    ) -> SyncCachedFunction[P2, R]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        return self if instance is None else _SyncBoundCachedFunction(self, instance)


class _SyncDecoratedFunction(_Binding[_SyncCache], SyncCachedFunction[P, R]):
    """The runtime base of every decorated plain function."""

    __slots__ = ()

    def _load(self, cache: _SyncCache, key: str, factory: Callable[[], R], tags: Sequence[str]) -> R:
        """A miss (or an entry the calling thread may not serve): the full ``get_or_create``."""
        return cache.get_or_create(key, factory, type_=self._declared_type(), tags=tags, **self._options)

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._key(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        self._current_cache().invalidate(keys=[self._key(*args, **kwargs)])

    @property
    def uncached(self) -> Callable[P, R]:
        original: Callable[P, R] = self.__wrapped__
        return original


class _SyncBoundCachedFunction(SyncCachedFunction[P, R]):
    """A decorated plain method bound to an instance."""

    __slots__ = ("_function", "_instance")

    def __init__(self, function: SyncCachedFunction[Any, R], instance: object) -> None:
        self._function = function
        self._instance = instance

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._function(self._instance, *args, **kwargs)

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._function.key_for(self._instance, *args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        self._function.invalidate(self._instance, *args, **kwargs)

    @property
    def uncached(self) -> Callable[P, R]:
        return functools.partial(self._function.uncached, self._instance)


def _options(
    ttl: TtlLike | None,
    fail_safe: bool | None,
    soft_timeout: TtlLike | None,
    hard_timeout: TtlLike | None,
    eager_refresh: float | None,
) -> dict[str, Any]:
    return {
        name: value
        for name, value in (
            ("ttl", ttl),
            ("fail_safe", fail_safe),
            ("soft_timeout", soft_timeout),
            ("hard_timeout", hard_timeout),
            ("eager_refresh", eager_refresh),
        )
        if value is not None
    }


def cached(
    key: str,
    *,
    cache: _Cache | Callable[[], _Cache],
    ttl: TtlLike | None = None,
    type_: Any = _UNRESOLVED,
    tags: Sequence[str] = (),
    fail_safe: bool | None = None,
    soft_timeout: TtlLike | None = None,
    hard_timeout: TtlLike | None = None,
    eager_refresh: float | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], CachedFunction[P, R]]:
    """Cache an ``async def`` function's results under ``key`` (a template over its parameters) in ``cache``
    (a :class:`~hybridcache.HybridCache`, or a callable returning one at call time). The options are
    ``get_or_create``'s; ``type_`` defaults to the return annotation. See the module docstring."""
    options = _options(ttl, fail_safe, soft_timeout, hard_timeout, eager_refresh)

    def decorate(function: Callable[P, Coroutine[Any, Any, R]]) -> CachedFunction[P, R]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"@cached needs an async def function; {function.__qualname__} is not one"
                " (plain functions: hybridcache.sync)"
            )
        declared = _return_type(function, strict=False) if type_ is _UNRESOLVED else type_
        generated = _generate(function, key, tuple(tags), sync=False)
        decorated: CachedFunction[P, R] = generated(function, cache, declared, options)
        return decorated

    return decorate


def cached_sync(
    key: str,
    *,
    cache: _SyncCache | Callable[[], _SyncCache],
    ttl: TtlLike | None = None,
    type_: Any = _UNRESOLVED,
    tags: Sequence[str] = (),
    fail_safe: bool | None = None,
    soft_timeout: TtlLike | None = None,
    hard_timeout: TtlLike | None = None,
    eager_refresh: float | None = None,
) -> Callable[[Callable[P, R]], SyncCachedFunction[P, R]]:
    """Cache a plain function's results under ``key`` in ``cache`` (a :class:`~hybridcache.sync.SyncHybridCache`,
    or a callable returning one at call time), as :func:`cached` does for ``async def`` functions."""
    options = _options(ttl, fail_safe, soft_timeout, hard_timeout, eager_refresh)

    def decorate(function: Callable[P, R]) -> SyncCachedFunction[P, R]:
        if inspect.iscoroutinefunction(function):
            raise TypeError(
                f"the sync @cached needs a plain function; {function.__qualname__} is async def"
                " (use HybridCache.cached)"
            )
        declared = _return_type(function, strict=False) if type_ is _UNRESOLVED else type_
        generated = _generate(function, key, tuple(tags), sync=True)
        decorated: SyncCachedFunction[P, R] = generated(function, cache, declared, options)
        return decorated

    return decorate


def _return_type(function: Callable[..., Any], *, strict: bool) -> Any:
    """The return annotation, resolved in the function's module (only it: parameters may name local classes).
    ``_UNRESOLVED`` while a forward reference cannot be resolved yet, unless ``strict`` (then a ``TypeError``)."""
    annotation = inspect.get_annotations(function).get("return")
    if not isinstance(annotation, str):
        return annotation

    def only_the_return() -> None: ...

    only_the_return.__annotations__ = {"return": annotation}
    try:
        return typing.get_type_hints(only_the_return, globalns=function.__globals__, include_extras=True)["return"]
    except NameError as exc:
        if not strict:
            return _UNRESOLVED
        raise TypeError(
            f"cannot resolve the return annotation {annotation!r} of {function.__qualname__} ({exc}); "
            "pass type_= to @cached"
        ) from exc


# ------------------------------------------------------------------------------------------ code generation


class _SourceName:
    """A default value in generated source: rendered (``repr``) as the name of the constant that holds it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# How the generated function passes each kind of parameter on to the decorated one.
_FORWARD = {
    inspect.Parameter.POSITIONAL_ONLY: "{0}",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "{0}",
    inspect.Parameter.VAR_POSITIONAL: "*{0}",
    inspect.Parameter.KEYWORD_ONLY: "{0}={0}",
    inspect.Parameter.VAR_KEYWORD: "**{0}",
}


def _generate(function: Callable[..., Any], template: str, tags: tuple[str, ...], *, sync: bool) -> type[Any]:
    """A subclass of :class:`_DecoratedFunction` (``sync``: :class:`_SyncDecoratedFunction`) whose ``__call__`` and
    ``_key`` take ``function``'s own parameters.

    Generated source, as :mod:`dataclasses` does for ``__init__``: only parameter names (identifiers, checked)
    and attribute names (identifiers, checked) enter it; every literal, default and format spec is passed in as a
    constant, never as source text.
    """
    signature = inspect.signature(function)
    parameters = signature.parameters
    name = function.__qualname__
    constants: dict[str, Any] = {"_segment": segment, "_MISS": L1_MISS, "_func": function, "_BIG": _INT_FAST}
    if clash := sorted(p for p in parameters if p.startswith("_hc_") or p in constants):
        raise ValueError(f"@cached cannot wrap {name}: parameter names {clash} are reserved")

    def expression(text: str, what: str) -> str:
        pieces: list[str] = []
        for literal, field, spec, conversion in string.Formatter().parse(text):
            if literal:
                constants[f"_hc_c{len(constants)}"] = literal
                pieces.append(f"_hc_c{len(constants) - 1}")
            if field is None:
                continue
            where = f"{what} {text!r} of {name}"
            if conversion is not None or (spec and "{" in spec):
                raise ValueError(f"{where}: conversions (!r) and nested fields are not supported in {{{field}}}")
            path = field.split(".")
            if not all(part.isidentifier() and not keyword.iskeyword(part) for part in path):
                raise ValueError(f"{where}: {{{field}}} must be a parameter name, optionally with .attributes")
            if path[0] not in parameters:
                raise ValueError(f"{where} names {path[0]!r}, which is not a parameter of it ({list(parameters)})")
            value = ".".join(path)
            if spec:
                constants[f"_hc_c{len(constants)}"] = spec
                pieces.append(f"_segment(format({value}, _hc_c{len(constants) - 1}))")
            elif len(path) == 1:
                pieces.append(
                    f"(str({value}) if {value}.__class__ is int and -_BIG < {value} < _BIG else _segment({value}))"
                )
            else:
                pieces.append(f"_segment({value})")
        return " + ".join(pieces) if pieces else "''"

    key_source = expression(template, "key template")
    literal_key = "".join(part[0] for part in string.Formatter().parse(template))
    if not literal_key.isprintable():
        raise ValueError(f"key template {template!r} of {name} contains control characters")
    tags_source = "(" + "".join(f"{expression(tag, 'tag template')}, " for tag in tags) + ")"

    # The parameter list is the original's, rendered by inspect (kinds, "/" and "*" markers) without annotations,
    # each default replaced by the name of a constant that holds it; the call forwards each parameter by its kind.
    unannotated = []
    for index, parameter in enumerate(parameters.values()):
        default = parameter.default
        if default is not inspect.Parameter.empty:
            constants[f"_hc_d{index}"] = default
            default = _SourceName(f"_hc_d{index}")
        unannotated.append(parameter.replace(default=default, annotation=inspect.Parameter.empty))
    rendered = signature.replace(parameters=unannotated, return_annotation=inspect.Signature.empty)
    parameter_list = str(rendered)[1:-1]
    call = ", ".join(_FORWARD[parameter.kind].format(parameter.name) for parameter in parameters.values())
    source = f"""
def _key({parameter_list}):
    return {key_source}

{"def" if sync else "async def"} __call__(_hc_self, {parameter_list}):
    _hc_key = {key_source}
    _hc_cache = _hc_self._cache
    if _hc_cache is None:
        _hc_cache = _hc_self._current_cache()
    _hc_value = _hc_cache._l1_hit_value(_hc_key)
    if _hc_value is not _MISS:
        return _hc_value
    return {"" if sync else "await "}_hc_self._load(_hc_cache, _hc_key, lambda: _func({call}), {tags_source})
"""
    namespace: dict[str, Any] = dict(constants)
    exec(compile(source, f"<@cached {name}>", "exec"), namespace)
    return type(
        f"Cached_{function.__name__}",
        (_SyncDecoratedFunction if sync else _DecoratedFunction,),
        {"__slots__": (), "__call__": namespace["__call__"], "_key": staticmethod(namespace["_key"])},
    )
