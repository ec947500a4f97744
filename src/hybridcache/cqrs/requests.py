"""Request types: ``Request[R]``, ``Query[R]``, ``Command[R]`` and their handlers.

``R`` is the response type. Carrying it as a type parameter is what lets ``await mediator.send(query)`` be
typed ``R`` under ``mypy --strict``, and what lets the caching behavior decode an L2 payload into the
declared type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar, get_args, get_origin

__all__ = ["Command", "Query", "Request", "RequestHandler", "response_type_of"]

R_co = TypeVar("R_co", covariant=True)
ReqT_contra = TypeVar("ReqT_contra", bound="Request[Any]", contravariant=True)


class Request(Generic[R_co]):
    """A message answered by exactly one handler with a value of type ``R``.

    Subclass :class:`Query` (reads) or :class:`Command` (writes) rather than this class; frozen dataclasses
    are the intended shape (hashable, immutable, cheap to log).
    """

    __slots__ = ()


class Query(Request[R_co]):
    """A read: no side effects, so its answer may be cached (mix in :class:`~hybridcache.cqrs.Cacheable`)."""

    __slots__ = ()


class Command(Request[R_co]):
    """A write: runs its handler every time; may declare what it makes stale
    (mix in :class:`~hybridcache.cqrs.InvalidatesCache`)."""

    __slots__ = ()


class RequestHandler(ABC, Generic[ReqT_contra, R_co]):
    """Answers one request type. Pure business logic: no cache calls, ever — behaviors do that."""

    __slots__ = ()

    @abstractmethod
    async def handle(self, request: ReqT_contra) -> R_co:
        """Answer ``request``. An exception propagates to the caller of ``send`` unchanged."""


_ROOTS: frozenset[type] = frozenset({Request, Query, Command})
_response_types: dict[type, Any] = {}


def response_type_of(request_type: type[Request[Any]]) -> Any:
    """The ``R`` of ``request_type``'s ``Request[R]`` base, with type variables of intermediate generic bases
    substituted (``class Page(Query[list[T]])``, ``class X(Page[Dto])`` gives ``list[Dto]``).

    Returns ``Any`` when the request type never binds ``R``. Computed once per type, then cached.
    """
    try:
        return _response_types[request_type]
    except KeyError:
        pass
    found = _resolve(request_type, {})
    result = Any if found is _UNRESOLVED else found
    _response_types[request_type] = result
    return result


_UNRESOLVED: Any = object()


def _resolve(cls: type, bindings: dict[Any, Any]) -> Any:
    # Read __orig_bases__ from the class's own namespace: the attribute is inherited, and a subclass that
    # lists plain (unsubscripted) bases would otherwise see its parent's generic bases, wrongly bound.
    orig_bases: tuple[Any, ...] = cls.__dict__.get("__orig_bases__", cls.__bases__)
    for base in orig_bases:
        origin = get_origin(base) or base
        if not (isinstance(origin, type) and issubclass(origin, Request)):
            continue
        args = tuple(_substitute(arg, bindings) for arg in get_args(base))
        if origin in _ROOTS:
            if args:
                return args[0]
            continue
        parameters: tuple[Any, ...] = getattr(origin, "__parameters__", ())
        found = _resolve(origin, dict(zip(parameters, args, strict=False)))
        if found is not _UNRESOLVED:
            return found
    return _UNRESOLVED


def _substitute(arg: Any, bindings: dict[Any, Any]) -> Any:
    if isinstance(arg, TypeVar):
        return bindings.get(arg, Any)
    parameters: tuple[Any, ...] = getattr(arg, "__parameters__", ())
    if parameters:
        # list[T], T | None, Mapping[str, T]...: every generic alias form supports re-subscription.
        return arg[tuple(bindings.get(p, Any) for p in parameters)]
    return arg
