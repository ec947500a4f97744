"""The state a :class:`~hybridcache.cache.HybridCache` is made of, declared in one place.

The cache's read path (``read_path.py``, over ``fill_path.py``) and write path (``write_path.py``), in this package, live in their
own modules as mixins of :class:`CacheState`; declaring every attribute here lets each of them type-check on its
own. ``cache.py`` sets them all in ``HybridCache.__init__``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from hybridcache._generations import GenerationTable, InvalidationLog, RecentRemovals
from hybridcache._memory import MemoryStore
from hybridcache._redis.backplane import Backplane
from hybridcache._redis.l2 import RedisL2
from hybridcache._redis.lock import DistributedSingleFlight
from hybridcache._resilience import CircuitBreaker, SingleFlight
from hybridcache.metrics import Counters
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from hybridcache._core.tracing import CacheTracer


_NEVER: Final = float("inf")
TtlLike = timedelta | float | int


def seconds_of(ttl: TtlLike) -> float:
    return ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)


class CacheState:
    """Attributes shared by the read and write paths (see ``HybridCache.__init__`` for what each holds)."""

    settings: CacheSettings
    instance_id: str
    counters: Counters
    breaker: CircuitBreaker
    tracer: CacheTracer | None
    _stale_set_protection: bool
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _namespace: str
    _namespace_length: int
    _enabled: bool
    _l1: MemoryStore | None
    _l1_max_ttl: float
    _default_ttl: float
    _null_ttl: float
    _disconnected_ttl: float
    _l2: RedisL2 | None
    _backplane: Backplane | None
    _table: GenerationTable
    _log: InvalidationLog
    _recent_removals: RecentRemovals
    _flights: SingleFlight[str, Any]
    _leads: dict[str, asyncio.Future[Any]]
    _pending: deque[tuple[list[str], list[str]]]
    _retry_task: asyncio.Task[None] | None
    _flush_lock: asyncio.Lock
    _background: set[asyncio.Future[Any]]
    _dlock: DistributedSingleFlight | None
    _jitter: float
    _compress_from: int | None
    _fail_safe_duration: float
    _retention: float
    _retention_cut_logged: bool

    async def _flush_pending(self) -> bool:
        """Publish queued invalidations (the write path implements it; the read path calls it)."""
        raise NotImplementedError
