"""Live instances in Redis (``hybridcache.instances``) and the ``hybridcache`` operations CLI, on a private
redis-server: what running caches report, how dead ones disappear, and what each CLI command does to them.

The CLI runs in-process through ``main(argv)`` in a worker thread (it owns its event loop, as the console script
does), while the caches it acts on keep running on the test's loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from hybridcache import CacheSettings, HybridCache
from hybridcache.instances import InstanceKeys, InstanceRegistry, live_instances
from hybridcache.redis import hash_tag
from tests.support import RedisServer, wait_until

INSTANCE_NAME = "Ops:"
SERVICE = "ops-svc"
KEYS = InstanceKeys(INSTANCE_NAME, f"{SERVICE}:v1:")

StartCache = Callable[..., Awaitable[HybridCache]]


def settings_for(server: RedisServer, **overrides: Any) -> CacheSettings:
    fields: dict[str, Any] = {
        "configuration": f"127.0.0.1:{server.port},abortConnect=false",
        "instance_name": INSTANCE_NAME,
        "service_name": SERVICE,
    }
    fields.update(overrides)
    return CacheSettings(**fields)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection: redis.asyncio.Redis = redis.asyncio.Redis(port=redis_server.port, socket_timeout=5)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def start_cache(redis_server: RedisServer) -> AsyncIterator[StartCache]:
    caches: list[HybridCache] = []

    async def start(**overrides: Any) -> HybridCache:
        cache = HybridCache.from_settings(settings_for(redis_server, **overrides))
        caches.append(cache)
        await cache.start()
        assert await cache.wait_until_connected(timeout=5.0)
        return cache

    try:
        yield start
    finally:
        for cache in caches:
            await cache.close()


async def ids_of(client: redis.asyncio.Redis, keys: InstanceKeys = KEYS) -> set[str]:
    return {instance.instance_id for instance in await live_instances(client, keys)}


# ------------------------------------------------------------------------------------------------ registry


async def test_running_caches_report_themselves_and_withdraw_on_close(
    client: redis.asyncio.Redis, start_cache: StartCache
) -> None:
    a = await start_cache()
    b = await start_cache()
    await wait_until(lambda: ids_of(client), timeout=5.0, message="no instance reported")
    assert await ids_of(client) == {a.instance_id, b.instance_id}

    found = {instance.instance_id: instance for instance in await live_instances(client, KEYS)}
    mine = found[a.instance_id]
    assert (mine.pid, mine.namespace) == (os.getpid(), f"{SERVICE}:v1:")
    assert mine.version == importlib.metadata.version("hybridcache")
    assert mine.host
    assert 0 <= mine.age < 5
    assert mine.stats["circuit"] == "closed"
    assert mine.stats["backplane"] == "connected"

    await b.close()
    assert await ids_of(client) == {a.instance_id}, "a closed cache must withdraw its report at once"
    assert await client.zscore(KEYS.index, b.instance_id) is None


async def test_reports_carry_the_current_counters(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    cache = await start_cache()

    async def load() -> str:
        return "v"

    await cache.get_or_create("Thing:1", load)
    await cache.get_or_create("Thing:1", load)
    assert cache.instance_registry is not None
    assert await cache.instance_registry.report()
    (instance,) = await live_instances(client, KEYS)
    assert (instance.stats["handlerRuns"], instance.stats["l1Hits"], instance.stats["misses"]) == (1, 1, 1)
    assert instance.as_dict()["stats"] == cache.stats().as_dict()


async def test_an_instance_that_stops_reporting_disappears_and_is_pruned(
    client: redis.asyncio.Redis, start_cache: StartCache
) -> None:
    cache = await start_cache()
    dead = InstanceRegistry(client, keys=KEYS, instance_id="dead-one", stats=cache.stats, interval=0.1, ttl=0.3)
    assert await dead.report()  # reported once, then "crashed": never withdrawn
    assert await ids_of(client) == {cache.instance_id, "dead-one"}

    await wait_until(lambda: _missing(client, "dead-one"), timeout=3.0, message="an expired report is still listed")
    assert await client.zscore(KEYS.index, "dead-one") is None, "the reader must prune expired ids"
    assert await ids_of(client) == {cache.instance_id}


async def _missing(client: redis.asyncio.Redis, instance_id: str) -> bool:
    return instance_id not in await ids_of(client)


async def test_the_registry_reports_every_interval_with_a_ttl(client: redis.asyncio.Redis) -> None:
    registry = InstanceRegistry(client, keys=KEYS, instance_id="ticker", stats=_empty_stats, interval=0.05, ttl=5)
    registry.start()
    try:
        await wait_until(lambda: registry.reports >= 3, timeout=3.0, message="the registry stopped reporting")
    finally:
        await registry.close()
    assert await ids_of(client) == set()
    assert await client.exists(KEYS.index) == 0, "the last withdrawal leaves an empty (deleted) index"

    assert await registry.report()
    ttl_ms = await client.pttl(KEYS.report("ticker"))
    assert 0 < ttl_ms <= 5000
    assert 0 < await client.pttl(KEYS.index) <= 5000


async def test_keys_share_the_meta_slot_and_nothing_scans(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    cache = await start_cache()
    assert cache._l2 is not None
    meta = hash_tag(cache._l2.generations_key)
    assert hash_tag(KEYS.index) == hash_tag(KEYS.report(cache.instance_id)) == meta

    await client.config_resetstat()
    assert cache.instance_registry is not None
    await cache.instance_registry.report()
    await live_instances(client, KEYS)
    stats = await client.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats), sorted(stats)


async def test_namespaces_do_not_see_each_other(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    v1 = await start_cache()
    v2 = await start_cache(cache_version="v2")
    other = InstanceKeys(INSTANCE_NAME, f"{SERVICE}:v2:")
    assert await ids_of(client, KEYS) == {v1.instance_id}
    assert await ids_of(client, other) == {v2.instance_id}


async def test_reporting_failures_never_reach_the_cache(
    redis_server: RedisServer, start_cache: StartCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await start_cache()
    registry = cache.instance_registry
    assert registry is not None
    redis_server.kill()
    caplog.set_level(logging.DEBUG, logger="hybridcache.instances")
    assert not await registry.report()
    assert "Instance report of" in caplog.text
    # The report runs on the background client: no request-path error, no breaker failure.
    assert (cache.stats().l2_errors, cache.stats().circuit) == (0, "closed")

    async def load() -> str:
        return "still served"

    assert await cache.get_or_create("Thing:2", load) == "still served"
    await asyncio.wait_for(cache.close(), timeout=5)  # withdrawing from a dead server neither hangs nor raises


async def test_a_cache_without_redis_or_with_registration_off_registers_nothing(
    client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    async with HybridCache.from_settings(CacheSettings(service_name=SERVICE)) as local:
        assert local.instance_registry is None
    async with HybridCache(settings_for(redis_server), register_instance=False) as quiet:
        assert quiet.instance_registry is None
        assert await ids_of(client) == set()


_IDLE = HybridCache.from_settings(CacheSettings())


def _empty_stats() -> Any:
    return _IDLE.stats()
