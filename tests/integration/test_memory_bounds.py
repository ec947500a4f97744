"""Per-key state never leaks: after a million distinct keys through ``get_or_create`` the process holds no
single-flight future, lock waiter or background task, and memory is bounded by the L1 size limit.

The million-key run uses an L1-only cache (the per-key machinery is the same, and it is fast enough to stay well
under a minute); a smaller run with Redis and the distributed lock checks the lock's waiter table as well.
``tracemalloc`` slows every allocation several-fold, so it traces only the last tenth of the run: whatever a key
leaked would show there as growth proportional to the keys.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._generations import fields_for
from hybridcache.settings import DistributedLockSettings, MemoryCacheSettings

KEYS = 1_000_000
TRACED = 50_000
SIZE_LIMIT = 256
# The L1 holds at most SIZE_LIMIT entries (~0.5 KB each traced); a leak of even 4 bytes per key would add 200 KB.
STEADY_STATE_SLACK = 64 * 1024


async def _one() -> int:
    return 1


def _no_per_key_state(cache: HybridCache) -> None:
    assert len(cache.internals.loads) == 0, f"{len(cache.internals.loads)} single-flight entries left behind"
    assert not cache.internals.filler.background, (
        f"{len(cache.internals.filler.background)} background tasks left behind"
    )
    if cache.internals.dlock is not None:
        assert len(cache.internals.dlock) == 0, f"{len(cache.internals.dlock)} lock waiter lists left behind"


@pytest.mark.slow
async def test_a_million_distinct_keys_leave_no_per_key_state(namespace: str) -> None:
    settings = CacheSettings(service_name=namespace, memory_cache=MemoryCacheSettings(size_limit=SIZE_LIMIT))
    async with HybridCache.from_settings(settings) as cache:
        untraced = KEYS - TRACED
        memo_size = fields_for.cache_info().maxsize or 0
        warm_up = 2 * SIZE_LIMIT + memo_size
        assert warm_up < TRACED // 2, "the traced window must be long enough to show growth after the warm-up"
        gc.collect()
        objects_before = len(gc.get_objects())
        for n in range(untraced):
            await cache.get_or_create(f"Dealership:{n}", _one, ttl=60, type_=int)
        gc.collect()
        objects_after = len(gc.get_objects())

        tracemalloc.start()
        try:
            # Let the traced region reach steady state: the L1 and the bounded memo of generation fields are
            # refilled with entries allocated under tracing (replacing untraced ones looks like growth).
            for n in range(untraced, untraced + warm_up):
                await cache.get_or_create(f"Dealership:{n}", _one, ttl=60, type_=int)
            gc.collect()
            steady, _ = tracemalloc.get_traced_memory()
            for n in range(untraced + warm_up, KEYS):
                await cache.get_or_create(f"Dealership:{n}", _one, ttl=60, type_=int)
            gc.collect()
            final, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert cache.counters.handler_runs == KEYS
        _no_per_key_state(cache)
        assert cache.internals.l1 is not None
        assert len(cache.internals.l1) == SIZE_LIMIT
        growth = final - steady
        per_key = growth / (TRACED - warm_up)
        assert growth < STEADY_STATE_SLACK, f"memory grew by {growth} bytes ({per_key:.2f} B/key) at steady state"
        # Tracked objects: at most the L1's entries (and their dicts) more than before the first key.
        assert objects_after - objects_before < 4 * SIZE_LIMIT, (objects_before, objects_after)


async def test_distinct_keys_with_redis_and_the_distributed_lock_leave_no_per_key_state(
    redis_server: RedisServer, namespace: str
) -> None:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        memory_cache=MemoryCacheSettings(size_limit=SIZE_LIMIT),
        distributed_lock=DistributedLockSettings(enabled=True),
        # Generous: a lease request that times out under CPU contention runs the factory without the lease.
        operation_timeout_milliseconds=2_000,
    )
    async with HybridCache.from_settings(settings) as first, HybridCache.from_settings(settings) as second:
        assert await first.wait_until_connected(5)
        assert await second.wait_until_connected(5)
        # Bursts stay below redis-py's 100-connection pool (see test_stampede's burst test for what happens above).
        for batch in range(50):
            keys = [f"Dealership:{batch}:{n}" for n in range(40)]
            # Both instances, concurrently, so some calls hold the lease and others wait for its fill notice.
            await asyncio.gather(
                *(cache.get_or_create(key, _one, ttl=60, type_=int) for key in keys for cache in (first, second))
            )

        for cache in (first, second):
            _no_per_key_state(cache)
            assert cache.counters.l2_errors == 0, "a Redis call failed: the factory may have run without the lease"
        assert first.counters.handler_runs + second.counters.handler_runs == 2_000
