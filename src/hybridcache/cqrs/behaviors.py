"""The two behaviors that put the cache into the pipeline: read-through for ``Cacheable`` queries,
invalidation after ``InvalidatesCache`` commands.

They depend on the cache only through the two small protocols below, which ``HybridCache`` satisfies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Protocol, TypeVar, cast

from hybridcache.cqrs.markers import Cacheable, InvalidatesCache
from hybridcache.cqrs.pipeline import CallNext, PipelineBehavior
from hybridcache.cqrs.requests import Command, Query, Request, response_type_of

__all__ = [
    "CacheInvalidationBehavior",
    "CachingBehavior",
    "InvalidatingCache",
    "InvalidationOutbox",
    "ReadThroughCache",
]

logger = logging.getLogger("hybridcache.cqrs")

_UNKNOWN: Any = object()

T = TypeVar("T")
R = TypeVar("R")


class ReadThroughCache(Protocol):
    """What :class:`CachingBehavior` needs from a cache (``HybridCache.get_or_create``)."""

    async def get_or_create(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        ttl: timedelta,
        type_: Any,
        tags: Sequence[str],
    ) -> T:
        """Return the value cached under ``key``, or run ``factory`` once, cache its result and return it."""
        ...


class InvalidatingCache(Protocol):
    """What :class:`CacheInvalidationBehavior` needs from a cache (``HybridCache.invalidate``)."""

    async def invalidate(self, *, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> object:
        """Drop ``keys``, everything under ``prefixes`` and everything tagged ``tags``, on every instance."""
        ...


class InvalidationOutbox(Protocol):
    """What :class:`CacheInvalidationBehavior` needs from an outbox (``hybridcache.persistence.Outbox``)."""

    def staging(self, command: InvalidatesCache) -> AbstractContextManager[Any]:
        """While the block runs, a unit of work committing in this context writes ``command``'s invalidations."""
        ...

    async def publish_staged(
        self, staged: Any, *, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]
    ) -> object:
        """Invalidate, and mark the staged row published if one was committed."""
        ...


class CachingBehavior(PipelineBehavior):
    """Answers a ``Cacheable`` query from the cache; runs the rest of the pipeline only on a miss.

    The key, L2 duration and tags come from the query; the response type ``R`` of its ``Query[R]`` base tells
    the cache how to decode an L2 hit. Applies only to query types that mix in :class:`Cacheable`; every other
    request type's chain does not contain it. Cache failures are the cache's business (it degrades to running
    the handler); a handler exception propagates and nothing is cached.
    """

    __slots__ = ("_cache", "_response_types")

    def __init__(self, cache: ReadThroughCache) -> None:
        self._cache = cache
        self._response_types: dict[type[Any], Any] = {}

    def applies_to(self, request_type: type[Request[Any]]) -> bool:
        """True for ``Query`` subclasses that are ``Cacheable``."""
        if issubclass(request_type, Cacheable) and not issubclass(request_type, Query):
            raise TypeError(f"{request_type.__qualname__} is Cacheable but not a Query: only queries may be cached")
        if issubclass(request_type, Cacheable):
            self._response_types[request_type] = response_type_of(request_type)
            return True
        return False

    async def handle(self, request: Request[R], call_next: CallNext[R]) -> R:
        """``cache.get_or_create(cache_key, call_next, ttl=cache_duration, type_=R, tags=cache_tags)``."""
        # Hot path (every cached read): a plain local instead of cast(), and R looked up in a dict filled when
        # the chain was built, save a function call each.
        query: Any = request  # a Cacheable: the chain holds this behavior only for Cacheable types
        response_type = self._response_types.get(request.__class__, _UNKNOWN)
        if response_type is _UNKNOWN:
            response_type = self._response_types[request.__class__] = response_type_of(request.__class__)
        return await self._cache.get_or_create(
            query.cache_key, call_next, ttl=query.cache_duration, type_=response_type, tags=query.cache_tags
        )


class CacheInvalidationBehavior(PipelineBehavior):
    """After an ``InvalidatesCache`` command's handler *returned*, invalidates what the command declares.

    Runs the rest of the pipeline first: if it raises, the exception propagates and nothing is invalidated
    (the unit of work rolled back, so nothing changed). If it returns, the write is committed, so a failure
    to invalidate must not turn it into an error: it is logged and counted in :attr:`failures`, and the
    result is returned. (``HybridCache.invalidate`` already retries failed publications and never raises;
    this is the last line of defence.)

    With an ``outbox``, the handler runs inside ``outbox.staging(command)``: a unit of work it commits also
    writes the command's invalidations, so they survive this process (see ``hybridcache.persistence.Outbox``).
    """

    __slots__ = ("_cache", "_outbox", "failures")

    def __init__(self, cache: InvalidatingCache, *, outbox: InvalidationOutbox | None = None) -> None:
        self._cache = cache
        self._outbox = outbox
        self.failures = 0
        """Invalidations that raised (and were logged) since this behavior was created."""

    def applies_to(self, request_type: type[Request[Any]]) -> bool:
        """True for ``Command`` subclasses that are ``InvalidatesCache``."""
        if issubclass(request_type, InvalidatesCache) and not issubclass(request_type, Command):
            raise TypeError(f"{request_type.__qualname__} is InvalidatesCache but not a Command: only commands write")
        return issubclass(request_type, InvalidatesCache)

    async def handle(self, request: Request[R], call_next: CallNext[R]) -> R:
        """Run the handler, then ``cache.invalidate(keys=..., prefixes=..., tags=...)``."""
        command = cast(InvalidatesCache, request)
        staged: Any = None
        if self._outbox is None:
            result = await call_next()
        else:
            with self._outbox.staging(command) as staged:
                result = await call_next()
        keys = command.cache_keys_to_invalidate
        prefixes = command.cache_prefixes_to_invalidate
        tags = command.cache_tags_to_invalidate
        if not (keys or prefixes or tags):
            return result
        logger.info("CacheInvalidationBehavior processing %s", request.__class__.__name__)
        try:
            if self._outbox is None:
                await self._cache.invalidate(keys=keys, prefixes=prefixes, tags=tags)
            else:
                await self._outbox.publish_staged(staged, keys=keys, prefixes=prefixes, tags=tags)
        except Exception:
            self.failures += 1
            logger.exception(
                "Cache invalidation failed after %s committed (keys=%r, prefixes=%r, tags=%r)",
                request.__class__.__name__,
                list(keys),
                list(prefixes),
                list(tags),
            )
        return result
