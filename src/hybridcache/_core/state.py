"""The state the read path (``read_path.py``, over ``fill_path.py``) shares with the cache (``HybridCache``).

The read path is still a mixin of :class:`CacheState`; declaring every attribute here lets it type-check on its
own, and ``cache.py`` sets them all in ``HybridCache.__init__``. What the paths act on together has owners of its
own: the loads in flight (``loads.py``), and everything about invalidations (``coherence.py``: the generation
table, the invalidation log, the recent removals, the queue of unpublished invalidations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from hybridcache._core.loads import InFlightLoads
from hybridcache._generations import GenerationTable
from hybridcache._memory import MemoryStore
from hybridcache._redis.backplane import Backplane
from hybridcache._redis.l2 import RedisL2
from hybridcache._redis.lock import DistributedSingleFlight
from hybridcache._resilience import CircuitBreaker
from hybridcache.metrics import Counters
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from hybridcache._core.coherence import Coherence
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
    _coherence: Coherence
    _loads: InFlightLoads
    _background: set[asyncio.Future[Any]]
    _dlock: DistributedSingleFlight | None
    _jitter: float
    _compress_from: int | None
    _fail_safe_duration: float
    _retention: float
    _retention_cut_logged: bool
