"""The L2 read: a ``GET`` that is cut short (cancelled, or timed out) leaves no reply behind for the next caller.

``RedisL2.get`` writes ``GET`` and reads its reply on a connection of the client's own pool. If a read that gave
up put its connection back with the reply still on the way, the next read on that connection would take the old
key's value for its own. Each test here pauses a private redis-server (SIGSTOP) while a read waits, ends that read,
resumes the server, and then reads another key: it must get that key's value, on RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hybridcache import CacheSettings, HybridCache
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

TTL = 600.0


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def cache(
    request: pytest.FixtureRequest, redis_server: RedisServer, namespace: str
) -> AsyncIterator[HybridCache]:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        protocol=request.param,
        operation_timeout_milliseconds=300,
        memory_cache={"enabled": False},  # every read goes to Redis
        circuit_breaker={"failure_threshold": 100},  # the timeout case must not open it
    )
    async with HybridCache.from_settings(settings) as started:
        assert await started.wait_until_connected(10.0)
        for key in ("Dealership:1", "Dealership:2"):
            await started.set(key, {"key": key}, ttl=TTL)
        yield started


async def read(cache: HybridCache, key: str) -> object:
    return await cache.get(key, default=None)


def gets_served(server: RedisServer) -> int:
    with server.sync_client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def reads_in_flight(cache: HybridCache) -> int:
    """Connections the cache's request pool has handed out (redis-py keeps them in ``_in_use_connections``)."""
    return len(cache._l2.client.connection_pool._in_use_connections)  # type: ignore[union-attr]


async def test_a_cancelled_read_leaves_no_reply_for_the_next(cache: HybridCache, redis_server: RedisServer) -> None:
    assert await read(cache, "Dealership:1") == {"key": "Dealership:1"}  # a pooled connection exists
    with redis_server.sync_client() as client:
        client.config_resetstat()
    redis_server.pause()
    try:
        waiting = asyncio.ensure_future(read(cache, "Dealership:1"))
        await wait_until(lambda: reads_in_flight(cache), timeout=5.0, message="the read never took a connection")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        redis_server.resume()
    # The paused server still receives the GET that was written before the cancel: proof the reply was pending.
    await wait_until(lambda: gets_served(redis_server) >= 1, timeout=5.0, message="the cancelled GET was never sent")
    for _ in range(3):  # whichever pooled connection each read takes
        assert await read(cache, "Dealership:2") == {"key": "Dealership:2"}
        assert await read(cache, "Dealership:1") == {"key": "Dealership:1"}


async def test_a_timed_out_read_leaves_no_reply_for_the_next(cache: HybridCache, redis_server: RedisServer) -> None:
    assert await read(cache, "Dealership:1") == {"key": "Dealership:1"}
    errors = cache.stats().l2_errors
    redis_server.pause()
    try:
        assert await read(cache, "Dealership:1") is None, "a read that timed out is a miss"
    finally:
        redis_server.resume()
    assert cache.stats().l2_errors == errors + 1
    for _ in range(3):
        assert await read(cache, "Dealership:2") == {"key": "Dealership:2"}
        assert await read(cache, "Dealership:1") == {"key": "Dealership:1"}
