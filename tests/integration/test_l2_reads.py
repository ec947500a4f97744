"""The L2 read: a ``GET`` that is cut short (cancelled, or timed out) leaves no reply behind for the next caller,
and a server restart costs no failed read.

``RedisL2.get`` writes ``GET`` and reads its reply on a connection it keeps for GETs
(``direct_get.GetConnections``). If a read that gave up put its connection back with the reply still on the way,
the next read on that connection would take the old key's value for its own. The first two tests pause a private
redis-server (SIGSTOP) while a read waits, end that read, resume the server, and then read another key: it must
get that key's value. The last restarts the server under idle connections. All run on RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.integration.conftest import CacheEnv, StartCache
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
    """GETs holding one of the connections the cache keeps for them (made, minus those idle in its free list)."""
    assert cache.internals.l2 is not None
    connections = cache.internals.l2._get_connections
    assert connections is not None, "a standalone server's GETs use the cache's own connections"
    return len(connections) - len(connections._idle)


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


async def test_a_restarted_server_costs_no_failed_read(cache: HybridCache, redis_server: RedisServer) -> None:
    """The idle GET connections still point at the old process: each fails once and is retried on a fresh one."""
    assert await read(cache, "Dealership:1") == {"key": "Dealership:1"}
    await cache.set("Dealership:3", {"key": "Dealership:3"}, ttl=TTL)
    errors = cache.stats().l2_errors
    redis_server.restart()  # nothing persisted: every entry is gone, and with it the generation epoch
    await wait_until(cache.wait_until_connected, timeout=10.0, message="the cache never resubscribed")
    assert await read(cache, "Dealership:1") is None, "a restarted server has no entries"
    assert cache.stats().l2_errors == errors, "a GET on a connection the restart closed counted as a failure"
    assert cache.stats().circuit == "closed"


async def test_the_caches_own_clients_never_retry_a_failed_call(cache_env: CacheEnv, start_cache: StartCache) -> None:
    """redis-py 6+ retries timeouts and connection errors with backoff by default, which would keep a down Redis
    from the circuit breaker for seconds: every client the cache builds has retries off."""
    cache = await start_cache(cache_env.settings())
    assert cache.internals.clients is not None
    for client in (cache.internals.clients.request, cache.internals.clients.background):
        retry = client.get_retry()
        assert retry is not None
        assert retry.get_retries() == 0
