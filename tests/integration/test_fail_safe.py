"""Fail-safe and factory timeouts, on L1-only, L1+L2 and L2-only caches (real redis-server for the last two).

* A stale entry and a failing factory: callers get the stale value and a WARNING; without fail-safe they get
  the factory's exception itself.
* A soft timeout with a stale value answers fast; the slow factory's result lands afterwards.
* A hard timeout without a stale value raises ``FactoryTimeoutError``; the result still lands afterwards.
* An invalidated entry is never served as a fallback, whoever invalidated it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._resilience import CircuitState
from hybridcache.cache import FactoryTimeoutError
from hybridcache.settings import CircuitBreakerSettings, FailSafeSettings, MemoryCacheSettings
from tests.integration.conftest import L1_L2, L1_ONLY, L2_ONLY
from tests.support.redis_topology import RedisEndpoint
from tests.support.waiting import wait_until

TTL = 0.2
KEY = "Dealership:42"


class PricingDown(RuntimeError):
    """What the factory raises: a distinctive type, so 'unchanged' can be checked exactly."""


def settings_for(mode: str, namespace: str, server: RedisEndpoint | None, **overrides: Any) -> CacheSettings:
    return CacheSettings(
        service_name=namespace,
        configuration=None if server is None else server.url,
        memory_cache=MemoryCacheSettings(enabled=mode != L2_ONLY),
        **overrides,
    )


@pytest.fixture
def server(cache_mode: str, request: pytest.FixtureRequest) -> RedisEndpoint | None:
    if cache_mode == L1_ONLY:
        return None
    endpoint: RedisEndpoint = request.getfixturevalue("redis_endpoint")
    return endpoint


@pytest.fixture
async def cache(cache_mode: str, namespace: str, server: RedisEndpoint | None) -> AsyncIterator[HybridCache]:
    async with HybridCache.from_settings(settings_for(cache_mode, namespace, server)) as cache:
        assert await cache.wait_until_connected(5)
        yield cache


def returns(value: str, *, delay: float = 0.0) -> Callable[[], Awaitable[str]]:
    async def factory() -> str:
        await asyncio.sleep(delay)
        return value

    return factory


class Raising:
    """A factory that raises one given exception and counts its runs."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.runs = 0

    async def __call__(self) -> str:
        self.runs += 1
        raise self.exc


async def make_stale(cache: HybridCache, key: str = KEY, *, tags: tuple[str, ...] = ()) -> None:
    """Cache ``"old"`` under ``key`` with fail-safe on, then wait (on a condition) until it has expired."""
    assert await cache.get_or_create(key, returns("old"), ttl=TTL, type_=str, tags=tags, fail_safe=True) == "old"
    await wait_until(lambda: _absent(cache, key), timeout=TTL + 2, message=f"{key} did not expire after its {TTL}s TTL")


async def _holds(cache: HybridCache, value: str, key: str = KEY) -> bool:
    return bool(await cache.get(key, type_=str) == value)


async def _absent(cache: HybridCache, key: str) -> bool:
    missing = object()
    return await cache.get(key, type_=str, default=missing) is missing


def fail_safe_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "fail-safe" in r.getMessage()]


# ---------------------------------------------------------------------------------------------- failing factory


@pytest.mark.all_topologies
async def test_a_failing_factory_serves_the_stale_value_with_a_warning(
    cache: HybridCache, caplog: pytest.LogCaptureFixture
) -> None:
    await make_stale(cache)
    caplog.set_level(logging.WARNING, logger="hybridcache")
    factory = Raising(PricingDown("pricing service unavailable"))

    value = await cache.get_or_create(KEY, factory, ttl=TTL, type_=str, fail_safe=True)

    assert value == "old"
    assert factory.runs == 1
    assert cache.counters.fail_safe_activations == 1
    [warning] = fail_safe_warnings(caplog)
    assert KEY in warning.getMessage()
    assert "PricingDown" in warning.getMessage()
    assert "pricing service unavailable" in warning.getMessage()


@pytest.mark.all_topologies
async def test_without_fail_safe_the_factory_exception_reaches_the_caller_unchanged(
    cache: HybridCache, caplog: pytest.LogCaptureFixture
) -> None:
    await make_stale(cache)
    caplog.set_level(logging.WARNING, logger="hybridcache")
    failure = PricingDown("pricing service unavailable")

    with pytest.raises(PricingDown) as raised:
        await cache.get_or_create(KEY, Raising(failure), ttl=TTL, type_=str, fail_safe=False)

    assert raised.value is failure
    assert type(raised.value) is PricingDown
    assert str(raised.value) == "pricing service unavailable"
    assert cache.counters.fail_safe_activations == 0
    assert fail_safe_warnings(caplog) == []


@pytest.mark.all_topologies
async def test_an_entry_cached_without_fail_safe_leaves_no_fallback(cache: HybridCache) -> None:
    await cache.get_or_create(KEY, returns("old"), ttl=TTL, type_=str, fail_safe=False)
    await wait_until(lambda: _absent(cache, KEY), timeout=TTL + 2, message="entry did not expire")
    failure = PricingDown("down")

    with pytest.raises(PricingDown) as raised:
        await cache.get_or_create(KEY, Raising(failure), ttl=TTL, type_=str, fail_safe=True)
    assert raised.value is failure


@pytest.mark.all_topologies
async def test_fail_safe_enabled_in_settings_applies_when_the_call_does_not_say(
    cache_mode: str, namespace: str, server: RedisEndpoint | None
) -> None:
    settings = settings_for(cache_mode, namespace, server, fail_safe=FailSafeSettings(enabled=True))
    async with HybridCache.from_settings(settings) as cache:
        await cache.get_or_create(KEY, returns("old"), ttl=TTL, type_=str)
        await wait_until(lambda: _absent(cache, KEY), timeout=TTL + 2, message="entry did not expire")

        assert await cache.get_or_create(KEY, Raising(PricingDown("down")), ttl=TTL, type_=str) == "old"


@pytest.mark.all_topologies
async def test_after_a_fallback_the_factory_is_not_retried_during_the_throttle(
    cache_mode: str, namespace: str, server: RedisEndpoint | None
) -> None:
    if cache_mode == L2_ONLY:
        pytest.skip("the throttle keeps the fallback in L1; without L1 every call retries the factory")
    settings = settings_for(cache_mode, namespace, server, fail_safe=FailSafeSettings(throttle_duration_seconds=30))
    async with HybridCache.from_settings(settings) as cache:
        await make_stale(cache)
        factory = Raising(PricingDown("down"))

        values = [await cache.get_or_create(KEY, factory, ttl=TTL, type_=str, fail_safe=True) for _ in range(20)]

        assert values == ["old"] * 20
        assert factory.runs == 1


# ---------------------------------------------------------------------------------------------- timeouts


@pytest.mark.all_topologies
async def test_a_soft_timeout_serves_stale_fast_and_the_slow_result_lands_later(
    cache: HybridCache, caplog: pytest.LogCaptureFixture
) -> None:
    await make_stale(cache)
    caplog.set_level(logging.WARNING, logger="hybridcache")
    slow = returns("new", delay=0.5)

    began = time.monotonic()
    value = await cache.get_or_create(KEY, slow, ttl=60, type_=str, fail_safe=True, soft_timeout=0.05)
    took = time.monotonic() - began

    assert value == "old"
    assert took < 0.3, f"the soft timeout answered after {took:.3f}s"
    assert cache.counters.factory_timeouts == 1
    assert fail_safe_warnings(caplog), "serving stale on a soft timeout must be logged"
    await wait_until(lambda: _holds(cache, "new"), timeout=5, message="the slow factory's result never landed")


@pytest.mark.all_topologies
async def test_a_soft_timeout_without_a_stale_value_waits_for_the_factory(cache: HybridCache) -> None:
    value = await cache.get_or_create(
        KEY, returns("new", delay=0.2), ttl=60, type_=str, fail_safe=True, soft_timeout=0.02
    )

    assert value == "new"
    assert cache.counters.factory_timeouts == 0


@pytest.mark.all_topologies
async def test_a_hard_timeout_without_stale_raises_and_the_result_lands_later(cache: HybridCache) -> None:
    began = time.monotonic()
    with pytest.raises(FactoryTimeoutError) as raised:
        await cache.get_or_create(KEY, returns("new", delay=0.4), ttl=60, type_=str, hard_timeout=0.05)
    took = time.monotonic() - began

    assert isinstance(raised.value, TimeoutError)
    assert KEY in str(raised.value)
    assert took < 0.3, f"the hard timeout raised after {took:.3f}s"
    await wait_until(lambda: _holds(cache, "new"), timeout=5, message="the timed-out factory's result never landed")


@pytest.mark.all_topologies
async def test_a_hard_timeout_with_fail_safe_and_a_stale_value_serves_it(cache: HybridCache) -> None:
    await make_stale(cache)

    value = await cache.get_or_create(
        KEY, returns("new", delay=0.4), ttl=60, type_=str, fail_safe=True, hard_timeout=0.05
    )

    assert value == "old"
    await wait_until(lambda: _holds(cache, "new"), timeout=5, message="the late result never landed")


@pytest.mark.all_topologies
async def test_timeouts_default_to_the_settings(cache_mode: str, namespace: str, server: RedisEndpoint | None) -> None:
    fail_safe = FailSafeSettings(factory_hard_timeout_milliseconds=50)
    async with HybridCache.from_settings(settings_for(cache_mode, namespace, server, fail_safe=fail_safe)) as cache:
        with pytest.raises(FactoryTimeoutError):
            await cache.get_or_create(KEY, returns("new", delay=0.4), ttl=60, type_=str)


# ---------------------------------------------------------------------------------------------- invalidation


INVALIDATIONS: dict[str, Callable[[HybridCache], Awaitable[None]]] = {
    "remove": lambda c: c.remove(KEY),
    "remove_by_prefix": lambda c: c.remove_by_prefix("Dealership"),
    "remove_by_tag": lambda c: c.remove_by_tag("dealerships"),
    "clear": lambda c: c.clear(),
}


@pytest.mark.all_topologies
@pytest.mark.parametrize("how", list(INVALIDATIONS))
@pytest.mark.parametrize("when", ["after-expiry", "before-expiry"])
async def test_an_invalidated_value_is_never_served_as_a_fallback(cache: HybridCache, how: str, when: str) -> None:
    if when == "after-expiry":
        await make_stale(cache, tags=("dealerships",))
        await INVALIDATIONS[how](cache)
    else:
        await cache.get_or_create(KEY, returns("old"), ttl=TTL, type_=str, tags=("dealerships",), fail_safe=True)
        await INVALIDATIONS[how](cache)
        await wait_until(lambda: _absent(cache, KEY), timeout=TTL + 2, message="entry still served")
    failure = PricingDown("down")

    with pytest.raises(PricingDown) as raised:
        await cache.get_or_create(KEY, Raising(failure), ttl=TTL, type_=str, tags=("dealerships",), fail_safe=True)
    assert raised.value is failure
    # Nor through a soft timeout: with nothing to fall back on, the caller waits for the real value.
    value = await cache.get_or_create(
        KEY, returns("new", delay=0.1), ttl=TTL, type_=str, tags=("dealerships",), fail_safe=True, soft_timeout=0.01
    )
    assert value == "new"
    assert cache.counters.fail_safe_activations == 0


@pytest.mark.all_topologies
async def test_a_throttled_fallback_is_dropped_by_an_invalidation(cache: HybridCache) -> None:
    await make_stale(cache)
    assert await cache.get_or_create(KEY, Raising(PricingDown("down")), ttl=TTL, type_=str, fail_safe=True) == "old"

    await cache.remove(KEY)

    failure = PricingDown("still down")
    with pytest.raises(PricingDown) as raised:
        await cache.get_or_create(KEY, Raising(failure), ttl=TTL, type_=str, fail_safe=True)
    assert raised.value is failure


@pytest.mark.all_topologies
@pytest.mark.parametrize("how", list(INVALIDATIONS))
async def test_an_invalidation_from_another_instance_also_removes_the_fallback(
    redis_endpoint: RedisEndpoint, namespace: str, how: str
) -> None:
    settings = settings_for(L1_L2, namespace, redis_endpoint)
    async with HybridCache.from_settings(settings) as reader, HybridCache.from_settings(settings) as writer:
        assert await reader.wait_until_connected(5)
        assert await writer.wait_until_connected(5)
        await make_stale(reader, tags=("dealerships",))

        await INVALIDATIONS[how](writer)
        await wait_until(
            lambda: reader.counters.invalidations_received >= 1, timeout=5, message="invalidation not delivered"
        )

        failure = PricingDown("down")
        with pytest.raises(PricingDown) as raised:
            await reader.get_or_create(KEY, Raising(failure), ttl=TTL, type_=str, tags=("dealerships",), fail_safe=True)
        assert raised.value is failure


# ---------------------------------------------------------------------------------------------- Redis outage

_UNPUBLISHED = (
    "core bug: an invalidation that could not be published (Redis unreachable) only drops this L1 and is queued; "
    "L2 still holds the entry with unchanged generations, so once Redis answers the invalidated value is served "
    "again (fresh, or as a fail-safe fallback) until the queue is retried"
)
BREAK = 0.3


@pytest.fixture
async def short_timeouts(redis_server: RedisServer, namespace: str) -> AsyncIterator[HybridCache]:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        operation_timeout_milliseconds=50,
        circuit_breaker=CircuitBreakerSettings(failure_threshold=1, break_duration_seconds=BREAK),
    )
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        yield cache


async def _remove_during_an_outage(cache: HybridCache, server: RedisServer) -> None:
    """Remove KEY while the breaker is open, so the command certainly never reaches Redis; then recover."""
    server.pause()
    try:
        await cache.get("Other:1")  # times out: the breaker opens
        assert cache.breaker.state is CircuitState.OPEN
        await cache.remove(KEY)  # refused by the open breaker, queued for retry, and must still hold
    finally:
        server.resume()
    assert cache.counters.invalidation_failures == 1

    async def closed() -> bool:
        await cache.get("Other:1")  # carries the half-open probe
        return cache.breaker.state is CircuitState.CLOSED

    await wait_until(closed, timeout=BREAK + 2, message="breaker did not close after the outage")


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "stale"])
async def test_an_invalidation_made_during_an_outage_is_not_undone_when_redis_answers(
    short_timeouts: HybridCache, redis_server: RedisServer, expired: bool
) -> None:
    cache = short_timeouts
    if expired:
        await make_stale(cache)
    else:
        await cache.get_or_create(KEY, returns("old"), ttl=60, type_=str, fail_safe=True)
    await _remove_during_an_outage(cache, redis_server)
    failure = PricingDown("down")

    with pytest.raises(PricingDown) as raised:
        await cache.get_or_create(KEY, Raising(failure), ttl=60, type_=str, fail_safe=True)
    assert raised.value is failure


async def test_an_invalidation_queued_during_a_short_outage_is_published_once_redis_answers(
    short_timeouts: HybridCache, redis_server: RedisServer
) -> None:
    cache = short_timeouts
    await cache.get_or_create(KEY, returns("old"), ttl=60, type_=str)
    await _remove_during_an_outage(cache, redis_server)

    await wait_until(
        lambda: cache.stats().pending_invalidations == 0, timeout=5, message="the queued invalidation was never sent"
    )
    with redis_server.sync_client(socket_timeout=5) as client:
        assert client.exists(f"{cache.settings.service_name}:v1:{KEY}") == 0
