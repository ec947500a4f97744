"""Declarative markers a request mixes in to opt into caching or invalidation (the seed's ``ICacheable`` and
``ICacheInvalidatable``).

Both are plain mixins with ``__slots__ = ()``, so they combine with frozen (and slotted) dataclasses. Every
member may be overridden by a property (computed from the request's fields) or by a class attribute
(``cache_duration: ClassVar[timedelta] = timedelta(minutes=30)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta

__all__ = ["Cacheable", "InvalidatesCache"]


class Cacheable(ABC):
    """A query whose answer the :class:`~hybridcache.cqrs.CachingBehavior` reads through the cache.

    ``cache_key`` is the *logical* key (``"Dealership:42"``); the cache prepends
    ``{ServiceName}:{CacheVersion}:``. Build keys from user text with
    :meth:`hybridcache.keys.CacheKey.sanitize`. Keys that a command must be able to invalidate by prefix
    should put the shared part first (``"Dealership:Search:<term>:<size>"``).
    """

    __slots__ = ()

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """The logical cache key; equal requests must give equal keys, different answers different keys."""

    @property
    @abstractmethod
    def cache_duration(self) -> timedelta:
        """How long the answer lives in L2; L1 keeps it at most ``MemoryCache.DefaultExpirationSeconds``."""

    @property
    def cache_tags(self) -> Sequence[str]:
        """Tags the entry is filed under, so a command can drop a whole family at once. Default: none."""
        return ()


class InvalidatesCache:
    """A command after whose *successful* completion the
    :class:`~hybridcache.cqrs.CacheInvalidationBehavior` drops entries from every instance's L1 and from L2.

    Keys and prefixes are logical, like :attr:`Cacheable.cache_key`; a prefix matches at ``:`` boundaries
    (``"Dealership:Search"`` covers ``"Dealership:Search:ford:10"``, not ``"Dealership:Searches"``).
    """

    __slots__ = ()

    @property
    def cache_keys_to_invalidate(self) -> Sequence[str]:
        """Exact logical keys to remove. Default: none."""
        return ()

    @property
    def cache_prefixes_to_invalidate(self) -> Sequence[str]:
        """Logical key prefixes under which every entry is invalidated. Default: none."""
        return ()

    @property
    def cache_tags_to_invalidate(self) -> Sequence[str]:
        """Tags whose entries are all invalidated. Default: none."""
        return ()
