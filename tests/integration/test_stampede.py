"""Stampede protection against a real redis-server: one factory run per cold key, per process and (with
``DistributedLock.Enabled``) across instances.

SingleFlight itself is unit-tested in tests/unit/test_single_flight.py; these tests go through
``HybridCache.get_or_create`` with L1, L2 and the distributed lease lock in play.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest

from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import DistributedLockSettings, MemoryCacheSettings
from tests.integration.conftest import L1_L2, L1_ONLY
from tests.support.redis_topology import RedisEndpoint
from tests.support.waiting import wait_until

pytestmark = pytest.mark.all_topologies

CALLERS = 1000
INSTANCES = 4
TRIALS = 20


class CountingFactory:
    """A factory that counts its runs and takes ``delay`` seconds, so concurrent callers overlap it."""

    def __init__(self, value: str, *, delay: float = 0.02) -> None:
        self.value = value
        self.delay = delay
        self.runs = 0

    async def __call__(self) -> str:
        self.runs += 1
        await asyncio.sleep(self.delay)
        return self.value


def _settings(namespace: str, server: RedisEndpoint | None, **overrides: Any) -> CacheSettings:
    return CacheSettings(
        service_name=namespace,
        configuration=None if server is None else server.url,
        **overrides,
    )


@pytest.fixture
async def cache(cache_mode: str, namespace: str, request: pytest.FixtureRequest) -> AsyncIterator[HybridCache]:
    if cache_mode == L1_ONLY:
        settings = _settings(namespace, None)
    else:
        server: RedisEndpoint = request.getfixturevalue("redis_endpoint")
        memory = MemoryCacheSettings(enabled=cache_mode == L1_L2)
        settings = _settings(namespace, server, memory_cache=memory)
    async with HybridCache.from_settings(settings) as cache:
        yield cache


async def test_a_thousand_concurrent_callers_on_a_cold_key_run_the_factory_once(cache: HybridCache) -> None:
    factory = CountingFactory("dealership-42")

    results = await asyncio.gather(
        *(cache.get_or_create("Dealership:42", factory, ttl=60, type_=str) for _ in range(CALLERS))
    )

    assert factory.runs == 1
    assert results == ["dealership-42"] * CALLERS
    assert cache.counters.handler_runs == 1
    assert len(cache.internals.loads) == 0


async def test_the_factory_exception_reaches_every_caller_and_nothing_is_cached(cache: HybridCache) -> None:
    runs = 0
    failure = LookupError("dealership 42 does not exist")

    async def failing() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        raise failure

    outcomes = await asyncio.gather(
        *(cache.get_or_create("Dealership:42", failing, ttl=60, type_=str) for _ in range(CALLERS)),
        return_exceptions=True,
    )

    assert runs == 1
    assert all(outcome is failure for outcome in outcomes)
    later = CountingFactory("recovered", delay=0)
    assert await cache.get_or_create("Dealership:42", later, ttl=60, type_=str) == "recovered"
    assert later.runs == 1


async def test_cancelling_one_caller_does_not_cancel_the_shared_run(cache: HybridCache) -> None:
    release = asyncio.Event()
    runs = 0

    async def gated() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return "value"

    callers = [asyncio.create_task(cache.get_or_create("k", gated, ttl=60, type_=str)) for _ in range(10)]
    await wait_until(lambda: runs == 1, timeout=5, message="the factory never started")
    callers[0].cancel()
    release.set()
    results = await asyncio.gather(*callers[1:])

    assert results == ["value"] * 9
    assert callers[0].cancelled()
    assert runs == 1
    # The run's result was stored even though its first caller went away.
    assert await cache.get("k", type_=str) == "value"


async def test_callers_after_the_fill_hit_the_cache_without_a_new_run(cache: HybridCache) -> None:
    factory = CountingFactory("v", delay=0)
    await cache.get_or_create("k", factory, ttl=60, type_=str)

    results = await asyncio.gather(*(cache.get_or_create("k", factory, ttl=60, type_=str) for _ in range(100)))

    assert results == ["v"] * 100
    assert factory.runs == 1


# ---------------------------------------------------------------------------------------------- distributed


async def _instances(
    stack: AsyncExitStack, namespace: str, server: RedisEndpoint, count: int, **overrides: Any
) -> list[HybridCache]:
    caches = []
    for _ in range(count):
        cache = await stack.enter_async_context(HybridCache.from_settings(_settings(namespace, server, **overrides)))
        assert await cache.wait_until_connected(5), "the invalidation channel never confirmed"
        caches.append(cache)
    return caches


async def _stampede(caches: list[HybridCache], key: str, factory: Callable[[], Awaitable[str]]) -> list[str]:
    per_instance = CALLERS // len(caches)
    return await asyncio.gather(
        *(cache.get_or_create(key, factory, ttl=60, type_=str) for cache in caches for _ in range(per_instance))
    )


async def test_with_the_distributed_lock_four_instances_run_the_factory_once_in_total(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    lock = DistributedLockSettings(enabled=True)
    async with AsyncExitStack() as stack:
        caches = await _instances(
            stack, namespace, redis_endpoint, INSTANCES, distributed_lock=lock, operation_timeout_milliseconds=2_000
        )
        runs_per_trial = []
        for trial in range(TRIALS):
            factory = CountingFactory(f"value-{trial}")
            results = await _stampede(caches, f"Dealership:{trial}", factory)
            assert results == [f"value-{trial}"] * CALLERS
            runs_per_trial.append(factory.runs)

        assert runs_per_trial == [1] * TRIALS
        assert sum(c.counters.handler_runs for c in caches) == TRIALS
        assert all(
            len(c.internals.loads) == 0 and c.internals.dlock is not None and len(c.internals.dlock) == 0
            for c in caches
        )


async def test_a_lease_taken_after_another_instance_filled_the_key_does_not_run_the_factory_again(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """The gap between a caller's L2 miss and its lease can hold another instance's whole run (read, lease,
    factory, store, release). The caller then wins a lease on a key that is already filled: it must read L2
    once more instead of running the factory a second time. The gap is made deterministic by letting the other
    instance run to completion just before the caller's lease request."""
    lock = DistributedLockSettings(enabled=True)
    async with AsyncExitStack() as stack:
        early, late = await _instances(
            stack, namespace, redis_endpoint, 2, distributed_lock=lock, operation_timeout_milliseconds=2_000
        )
        factory = CountingFactory("filled", delay=0)
        assert late.internals.dlock is not None
        take_lease = late.internals.dlock.try_acquire

        async def after_the_other_instance_filled(full_key: str) -> str | None:
            assert await early.get_or_create("k", factory, ttl=60, type_=str) == "filled"
            return await take_lease(full_key)

        late.internals.dlock.try_acquire = after_the_other_instance_filled  # type: ignore[method-assign]

        assert await late.get_or_create("k", factory, ttl=60, type_=str) == "filled"

        assert factory.runs == 1, "the lease holder ran the factory for a key another instance had just filled"
        assert (late.counters.l2_hits, late.counters.misses, late.counters.handler_runs) == (1, 0, 0)


async def test_a_waiter_served_by_the_holder_never_takes_back_a_counted_miss(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """The counters are exported as Prometheus counters (and OpenTelemetry observable counters), read whenever a
    scrape comes, and a counter that goes down reads as a reset (rate() then counts its whole value again). A
    waiter that ends up served by the holder's fill is an L2 hit: a scrape while it waits must not already count
    it as a miss that the next scrape takes back."""
    lock = DistributedLockSettings(enabled=True, wait_timeout_milliseconds=10_000)
    async with AsyncExitStack() as stack:
        holder, waiter = await _instances(stack, namespace, redis_endpoint, 2, distributed_lock=lock)
        started, release = asyncio.Event(), asyncio.Event()

        async def gated() -> str:
            started.set()
            await release.wait()
            return "filled"

        first = asyncio.create_task(holder.get_or_create("k", gated, ttl=60, type_=str))
        await asyncio.wait_for(started.wait(), 5)
        waiting = asyncio.create_task(waiter.get_or_create("k", gated, ttl=60, type_=str))
        assert waiter.internals.dlock is not None
        dlock = waiter.internals.dlock
        await wait_until(lambda: len(dlock) == 1, timeout=5, message="the waiter never registered for the notice")
        during = waiter.stats()  # what a scrape now would read
        release.set()
        assert await asyncio.wait_for(waiting, 5) == "filled"
        assert await asyncio.wait_for(first, 5) == "filled"
        after = waiter.stats()

    assert (after.l2_hits, after.misses, after.handler_runs) == (1, 0, 0)
    assert after.misses >= during.misses, f"misses went from {during.misses} to {after.misses}: a counter reset"
    assert after.l2_hits >= during.l2_hits


async def test_a_fill_notice_that_finds_nothing_sends_the_waiter_back_for_the_lease_not_to_the_factory(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """A notice can wake a waiter while the current holder is still computing: one left over from an earlier
    round of the key, or from a holder whose store an invalidation refused. The waiter finds L2 empty; it must
    queue behind the holder's lease again rather than run the factory beside it."""
    lock = DistributedLockSettings(enabled=True, wait_timeout_milliseconds=10_000)
    async with AsyncExitStack() as stack:
        holder, waiter = await _instances(stack, namespace, redis_endpoint, 2, distributed_lock=lock)
        started, release = asyncio.Event(), asyncio.Event()
        runs = 0

        async def gated() -> str:
            nonlocal runs
            runs += 1
            started.set()
            await release.wait()
            return "filled"

        first = asyncio.create_task(holder.get_or_create("k", gated, ttl=60, type_=str))
        await asyncio.wait_for(started.wait(), 5)
        waiting = asyncio.create_task(waiter.get_or_create("k", gated, ttl=60, type_=str))
        assert waiter.internals.dlock is not None
        dlock = waiter.internals.dlock
        await wait_until(lambda: len(dlock) == 1, timeout=5, message="the waiter never registered for the notice")
        dlock.notify(f"{namespace}:v1:k")  # a stale notice: the holder has stored nothing yet
        assert len(dlock) == 0, "the notice did not wake the waiter"
        # Woken, it reads L2 (empty), asks for the lease (held) and registers again; a waiter that went to the
        # factory instead would never register again, and would run it a second time.
        await wait_until(lambda: len(dlock) == 1 or runs > 1, timeout=5, message="the woken waiter is stuck")
        assert runs == 1, "the woken waiter ran the factory beside the holder"
        release.set()
        assert await asyncio.wait_for(waiting, 5) == "filled"
        assert await asyncio.wait_for(first, 5) == "filled"

    assert runs == 1
    assert (waiter.counters.l2_hits, waiter.counters.misses, waiter.counters.handler_runs) == (1, 0, 0)


async def test_notices_that_keep_finding_nothing_cannot_keep_a_waiter_past_its_wait_timeout(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """Each notice that finds L2 empty sends the waiter back for the lease; when one lands during every L2 read (a
    key invalidated again and again while its holder computes) the waiter must still give up waiting after one
    ``WaitTimeoutMilliseconds`` and run the factory itself, not go round for as long as the notices keep coming."""
    wait_ms = 300
    lock = DistributedLockSettings(enabled=True, wait_timeout_milliseconds=wait_ms)
    async with AsyncExitStack() as stack:
        holder, waiter = await _instances(stack, namespace, redis_endpoint, 2, distributed_lock=lock)
        started, release = asyncio.Event(), asyncio.Event()

        async def gated() -> str:
            started.set()
            await release.wait()
            return "holder's"

        async def own() -> str:
            return "waiter's"

        full_key = f"{namespace}:v1:k"
        assert waiter.internals.dlock is not None
        dlock = waiter.internals.dlock
        reads = 0

        class NoticeDuringEveryRead:
            """Delivers a notice for the key while each of the waiter's L2 reads is in flight."""

            @contextlib.contextmanager
            def l2_read(self, key: str) -> Iterator[_Quiet]:
                nonlocal reads
                reads += 1
                dlock.notify(full_key)
                yield _Quiet()

            @contextlib.contextmanager
            def factory(self, key: str) -> Iterator[_Quiet]:
                yield _Quiet()

            @contextlib.contextmanager
            def invalidation(
                self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]
            ) -> Iterator[_Quiet]:
                yield _Quiet()

        first = asyncio.create_task(holder.get_or_create("k", gated, ttl=60, type_=str))
        try:
            await asyncio.wait_for(started.wait(), 5)
            waiter.tracer = NoticeDuringEveryRead()
            began = time.perf_counter()
            try:
                value = await asyncio.wait_for(waiter.get_or_create("k", own, ttl=60, type_=str), 5)
            except TimeoutError:
                pytest.fail(f"the waiter still went round after 5 s ({reads} L2 reads); its timeout: {wait_ms} ms")
            elapsed = time.perf_counter() - began
        finally:
            release.set()
            await asyncio.wait_for(first, 5)

    assert value == "waiter's"
    assert elapsed < wait_ms / 1000 + 2, f"the waiter ran its factory only after {elapsed:.2f} s"
    assert waiter.counters.misses == 1


class _Quiet:
    """A span handle that records nothing."""

    def set_hit(self, hit: bool) -> None:
        pass

    def set_error(self, kind: str) -> None:
        pass


async def test_waiters_are_woken_by_the_fill_notice_not_by_polling(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """Three instances wait while the fourth computes for 0.5 s; they must return right after it, having sent
    only a handful of GETs (a poller at any useful interval would send dozens)."""
    lock = DistributedLockSettings(enabled=True, wait_timeout_milliseconds=10_000)
    async with AsyncExitStack() as stack:
        holder, *waiters = await _instances(stack, namespace, redis_endpoint, INSTANCES, distributed_lock=lock)
        started = asyncio.Event()
        runs = 0

        async def slow() -> str:
            nonlocal runs
            runs += 1
            started.set()
            await asyncio.sleep(0.5)
            return "filled"

        with redis_endpoint.sync_client(socket_timeout=5) as admin:
            admin.config_resetstat()
            first = asyncio.create_task(holder.get_or_create("k", slow, ttl=60, type_=str))
            await asyncio.wait_for(started.wait(), 5)
            began = time.monotonic()
            results = await asyncio.gather(*(w.get_or_create("k", slow, ttl=60, type_=str) for w in waiters))
            waited = time.monotonic() - began
            assert await first == "filled"
            gets = int(admin.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

        assert results == ["filled"] * len(waiters)
        assert runs == 1
        assert waited < 2.0, f"waiters took {waited:.2f}s: they were not woken by the fill notice"
        # Per waiting instance: one GET before the lock, one after registering, one after the notice; plus the
        # holder's two reads (before and after taking the lease) and at most a couple of heartbeat reads of the
        # sequence counter per backplane.
        assert gets <= 3 * len(waiters) + 2 + 2 * INSTANCES, f"{gets} GETs while waiting: waiters are polling"


async def test_a_waiter_runs_the_factory_itself_when_the_holder_never_fills(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    """A holder that hangs (or died) must not block others for longer than the wait timeout."""
    lock = DistributedLockSettings(enabled=True, lease_milliseconds=10_000, wait_timeout_milliseconds=300)
    async with AsyncExitStack() as stack:
        holder, waiter = await _instances(stack, namespace, redis_endpoint, 2, distributed_lock=lock)
        hung = asyncio.Event()

        async def hangs() -> str:
            hung.set()
            await asyncio.Event().wait()  # never returns; cancelled at teardown
            return "never"

        stuck = asyncio.create_task(holder.get_or_create("k", hangs, ttl=60, type_=str))
        try:
            await asyncio.wait_for(hung.wait(), 5)
            began = time.monotonic()
            result = await waiter.get_or_create("k", CountingFactory("fallback", delay=0), ttl=60, type_=str)
            waited = time.monotonic() - began
        finally:
            stuck.cancel()
            holder.internals.loads.cancel_all()

        assert result == "fallback"
        assert 0.25 <= waited < 2.0, f"fallback after {waited:.2f}s, expected about the 0.3 s wait timeout"


async def test_a_burst_of_distinct_cold_keys_keeps_the_breaker_closed_on_a_healthy_redis(
    redis_endpoint: RedisEndpoint, namespace: str
) -> None:
    # A generous operation timeout: CPU contention on a shared machine must not pass for a Redis failure here.
    settings = _settings(namespace, redis_endpoint, operation_timeout_milliseconds=2_000)
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        keys = [f"Dealership:{n}" for n in range(CALLERS)]

        results = await asyncio.gather(
            *(cache.get_or_create(key, CountingFactory(key, delay=0), ttl=60, type_=str) for key in keys)
        )

        assert results == keys
        assert cache.breaker.transitions["open"] == 0, "the breaker opened although Redis never failed"
        assert cache.health() == {"redis": "up", "circuit": "closed"}
