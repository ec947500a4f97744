"""The service's reads, each a cacheable query with the seed's key and duration.

| query | logical key | cached for |
|---|---|---|
| :class:`GetDealershipById` | ``Dealership:{id}`` | 30 min (a missing id is cached too, as ``None``) |
| :class:`GetDealershipsList` | ``Dealership:List:{page}:{size}`` | 10 min |
| :class:`SearchDealerships` | ``Dealership:Search:{sanitized term}:{size}`` | 5 min |

Every command that changes dealerships invalidates ``Dealership:List`` and ``Dealership:Search`` (and the id
key where it applies), see :mod:`dealership.commands`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from dealership.dto import DealershipDto, DealershipPage
from hybridcache.cqrs import Cacheable, Query
from hybridcache.keys import CacheKey

__all__ = ["GetDealershipById", "GetDealershipsList", "SearchDealerships"]


@dataclass(frozen=True)
class GetDealershipById(Query[DealershipDto | None], Cacheable):
    """One dealership with its zip code and state, or ``None`` when the id does not exist."""

    id: int

    cache_duration: ClassVar[timedelta] = timedelta(minutes=30)

    @property
    def cache_key(self) -> str:
        return f"Dealership:{self.id}"


@dataclass(frozen=True)
class GetDealershipsList(Query[DealershipPage], Cacheable):
    """Page ``page`` (1-based) of ``size`` dealerships ordered by id, with the total number of dealerships."""

    page: int = 1
    size: int = 10

    cache_duration: ClassVar[timedelta] = timedelta(minutes=10)

    @property
    def cache_key(self) -> str:
        return f"Dealership:List:{self.page}:{self.size}"


@dataclass(frozen=True)
class SearchDealerships(Query[tuple[DealershipDto, ...]], Cacheable):
    """Up to ``size`` dealerships whose name contains ``term`` (case-insensitive, literally: ``%`` and ``_``
    are not wildcards), ordered by name then id."""

    term: str
    size: int = 10

    cache_duration: ClassVar[timedelta] = timedelta(minutes=5)

    @property
    def cache_key(self) -> str:
        return f"Dealership:Search:{CacheKey.sanitize(self.term)}:{self.size}"
