"""Eager refresh and TTL jitter, against a real redis-server where L2 is involved.

Eager refresh: under a steady stream of hits across several expiry periods no caller waits for the factory
(the refresh runs in the background); a control run without it shows that the same measurement does catch a
caller waiting. Jitter: entries written together get different Redis TTLs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import DistributedLockSettings, MemoryCacheSettings
from tests.integration.conftest import L1_ONLY, L2_ONLY
from tests.support.redis_topology import RedisEndpoint
from tests.support.waiting import wait_until

TTL = 0.4
FACTORY_SECONDS = 0.05
STREAM_SECONDS = 2.0  # five expiry periods
GAP = 0.002  # between hits: a steady stream, ~1,000 hits in all


# These tests are about who waits for a factory, not about Redis timeouts: a generous operation timeout keeps a
# busy machine (CPU contention stalls the event loop) from opening the breaker under them.
RELAXED_TIMEOUT_MS = 2_000


def settings_for(mode: str, namespace: str, server: RedisEndpoint | None, **overrides: Any) -> CacheSettings:
    return CacheSettings(
        service_name=namespace,
        configuration=None if server is None else server.url,
        memory_cache=MemoryCacheSettings(enabled=mode != L2_ONLY),
        operation_timeout_milliseconds=RELAXED_TIMEOUT_MS,
        **overrides,
    )


@pytest.fixture
def server(cache_mode: str, request: pytest.FixtureRequest) -> RedisEndpoint | None:
    if cache_mode == L1_ONLY:
        return None
    redis_endpoint: RedisEndpoint = request.getfixturevalue("redis_endpoint")
    return redis_endpoint


class Versions:
    """A slow factory whose every run produces a new version, remembering when each was produced."""

    def __init__(self) -> None:
        self.produced: dict[int, float] = {}
        self._next = itertools.count(1)

    @property
    def runs(self) -> int:
        return len(self.produced)

    async def __call__(self) -> int:
        await asyncio.sleep(FACTORY_SECONDS)
        version = next(self._next)
        self.produced[version] = time.monotonic()
        return version


async def _stream(cache: HybridCache, factory: Versions, eager: float | None) -> list[tuple[float, float, int]]:
    """(start, latency, version) of every hit in a steady stream lasting STREAM_SECONDS, after one cold miss."""
    await cache.get_or_create("k", factory, ttl=TTL, type_=int, eager_refresh=eager)
    hits = []
    end = time.monotonic() + STREAM_SECONDS
    for _ in range(5_000):
        began = time.monotonic()
        if began >= end:
            break
        version = await cache.get_or_create("k", factory, ttl=TTL, type_=int, eager_refresh=eager)
        hits.append((began, time.monotonic() - began, version))
        await asyncio.sleep(GAP)
    return hits


@pytest.mark.all_topologies
async def test_under_eager_refresh_no_caller_waits_for_the_factory(
    cache_mode: str, namespace: str, server: RedisEndpoint | None
) -> None:
    factory = Versions()
    async with HybridCache.from_settings(settings_for(cache_mode, namespace, server)) as cache:
        assert await cache.wait_until_connected(5)
        hits = await _stream(cache, factory, eager=0.5)
        refreshes = cache.counters.eager_refreshes
        misses = cache.counters.misses

    assert len(hits) > 100
    # A caller that waits for the factory is a miss; background refreshes are not. Only the cold call missed.
    assert misses == 1, f"{misses - 1} callers missed (and waited for the factory) after the cold call"
    # Latency too, robust to one process-wide stall (a GC pause or the scheduler can hold any single call).
    latencies = sorted(latency for _, latency, _ in hits)
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < FACTORY_SECONDS / 2, f"p99 hit latency {p99 * 1000:.1f} ms (the factory takes 50 ms)"
    # The entry was renewed in the background, once per period or so, and callers saw the new versions.
    periods = STREAM_SECONDS / TTL
    assert refreshes >= periods - 1, f"only {refreshes} eager refreshes over {periods:.0f} TTL periods"
    assert factory.runs >= periods
    assert len({version for _, _, version in hits}) >= periods
    # And no hit was served a value older than its TTL: the refresh landed before expiry every time.
    for began, _, version in hits:
        assert began - factory.produced[version] < TTL, f"version {version} served past its TTL"


@pytest.mark.all_topologies
async def test_without_eager_refresh_the_same_stream_does_wait_for_the_factory(
    cache_mode: str, namespace: str, server: RedisEndpoint | None
) -> None:
    """The control: proves the measurement above would catch a caller that waited."""
    factory = Versions()
    async with HybridCache.from_settings(settings_for(cache_mode, namespace, server)) as cache:
        assert await cache.wait_until_connected(5)
        hits = await _stream(cache, factory, eager=None)

    assert max(latency for _, latency, _ in hits) >= FACTORY_SECONDS * 0.9
    assert cache.counters.eager_refreshes == 0


async def test_eager_refresh_threshold_from_settings_applies_when_the_call_does_not_say(namespace: str) -> None:
    factory = Versions()
    settings = CacheSettings(service_name=namespace, eager_refresh_threshold=0.5)
    async with HybridCache.from_settings(settings) as cache:
        hits = await _stream(cache, factory, eager=None)
        refreshes = cache.counters.eager_refreshes

    assert refreshes > 0
    assert max(latency for _, latency, _ in hits) < FACTORY_SECONDS / 2


async def test_a_failing_eager_refresh_keeps_serving_the_current_value(namespace: str) -> None:
    runs = 0

    async def fails_after_first() -> str:
        nonlocal runs
        runs += 1
        if runs > 1:
            raise RuntimeError("backend down")
        return "first"

    async with HybridCache.from_settings(CacheSettings(service_name=namespace)) as cache:
        assert await cache.get_or_create("k", fails_after_first, ttl=TTL, type_=str, eager_refresh=0.1) == "first"
        values = []
        end = time.monotonic() + TTL * 0.8
        for _ in range(1_000):
            if time.monotonic() >= end:
                break
            values.append(await cache.get_or_create("k", fails_after_first, ttl=TTL, type_=str, eager_refresh=0.1))
            await asyncio.sleep(GAP)

    assert set(values) == {"first"}
    assert runs == 2, "exactly one background refresh was attempted (and failed quietly)"


# ---------------------------------------------------------------------------------------------- jitter


@pytest.fixture
async def jittered(redis_endpoint: RedisEndpoint, namespace: str) -> AsyncIterator[HybridCache]:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_endpoint.url,
        jitter_max_duration_seconds=5,
        operation_timeout_milliseconds=RELAXED_TIMEOUT_MS,
    )
    async with HybridCache.from_settings(settings) as cache:
        yield cache


async def _pttls(server: RedisEndpoint, namespace: str, keys: list[str]) -> list[int]:
    with server.sync_client(socket_timeout=5) as client:
        return [int(client.pttl(f"{namespace}:v1:{key}")) for key in keys]


async def _constant(value: str = "v") -> str:
    return value


@pytest.mark.all_topologies
async def test_entries_created_together_get_different_ttls_with_jitter(
    jittered: HybridCache, redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    keys = [f"Dealership:{n}" for n in range(20)]
    await asyncio.gather(*(jittered.get_or_create(key, _constant, ttl=60, type_=str) for key in keys))

    pttls = await _pttls(redis_endpoint, namespace, keys)

    assert all(55_000 < pttl <= 65_000 for pttl in pttls), pttls
    # Millisecond TTLs drawn over ~5 s collide now and then (the birthday bound: ~4% for a pair among 20), so ask
    # for nearly all distinct rather than all; without jitter they share a handful of values (the control below).
    assert len(set(pttls)) >= len(pttls) - 3, f"too many identical TTLs despite jitter: {sorted(pttls)}"
    # Twenty uniform draws over 5 s: a spread under one second is a one-in-a-million event.
    assert max(pttls) - min(pttls) > 1_000, sorted(pttls)


@pytest.mark.all_topologies
async def test_without_jitter_entries_created_together_expire_together(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """The control for the test above: without jitter the spread is only the time it took to write them."""
    settings = CacheSettings(
        service_name=namespace, configuration=redis_endpoint.url, operation_timeout_milliseconds=RELAXED_TIMEOUT_MS
    )
    keys = [f"Dealership:{n}" for n in range(20)]
    async with HybridCache.from_settings(settings) as cache:
        await asyncio.gather(*(cache.get_or_create(key, _constant, ttl=60, type_=str) for key in keys))

    pttls = await _pttls(redis_endpoint, namespace, keys)

    assert all(55_000 < pttl <= 60_000 for pttl in pttls), pttls
    assert max(pttls) - min(pttls) < 1_000, sorted(pttls)


class _Clock:
    """One simulated clock for several caches (monotonic and wall): time moves only when the test says."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self._wall_start = time.time()

    def monotonic(self) -> float:
        return 1_000.0 + self.elapsed

    def wall(self) -> float:
        return self._wall_start + self.elapsed


@pytest.mark.all_topologies
async def test_with_the_distributed_lock_one_instance_refreshes_a_hot_key_for_all(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """Two instances hold the same entry (one computed it, the other read it from L2), so both reach its refresh
    point together. Under the key's lease one refreshes; the other skips, and gets the value through L2."""
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_endpoint.url,
        operation_timeout_milliseconds=2_000,
        distributed_lock=DistributedLockSettings(enabled=True),
    )
    clock = _Clock()
    gate = asyncio.Event()
    runs = 0

    async def version() -> int:
        nonlocal runs
        runs += 1
        if runs > 1:  # the refreshes wait, so that both instances' refreshes would overlap
            await gate.wait()
        return runs

    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(HybridCache(settings, clock=clock.monotonic, wall_clock=clock.wall))
            for _ in range(2)
        ]
        assert await a.wait_until_connected(5)
        assert await b.wait_until_connected(5)
        assert await a.get_or_create("k", version, ttl=20, type_=int, eager_refresh=0.5) == 1
        assert await b.get_or_create("k", version, ttl=20, type_=int, eager_refresh=0.5) == 1
        assert b.counters.l2_hits == 1

        clock.elapsed = 11.0  # past the refresh point (half of the 20 s TTL), within both L1 entries' lifetime
        assert await a.get_or_create("k", version, ttl=20, type_=int, eager_refresh=0.5) == 1
        assert await b.get_or_create("k", version, ttl=20, type_=int, eager_refresh=0.5) == 1
        assert (a.counters.l1_hits, b.counters.l1_hits) == (1, 1)
        await wait_until(
            lambda: len(a.internals.filler.background) + len(b.internals.filler.background) == 1,
            timeout=5,
            message="both instances are refreshing the key (or neither is)",
        )
        assert runs == 2, "a second instance ran its refresh beside the lease holder"
        gate.set()
        await wait_until(
            lambda: not a.internals.filler.background and not b.internals.filler.background,
            timeout=5,
            message="refresh never ended",
        )

    assert runs == 2
    assert a.counters.eager_refreshes + b.counters.eager_refreshes == 1, "a skipped refresh was counted"
