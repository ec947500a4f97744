"""Redis keys of the cache's own that vanish (evicted under maxmemory, flushed, expired) never make an old load
current again (issue 13, item 4).

A load captures its key's token before the factory runs and stores only while that token is still in Redis. A
removal deletes the token; so does eviction or a flush. Before tokens, the key had a counter: once evicted, it
read 0 again, equal to the 0 captured before the removal, and the pre-write value was stored and served everywhere
until its TTL. Each test drives a real load across the gap with a factory it holds open. RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache, MemoryCacheSettings
from hybridcache._redis.l2 import RedisL2
from tests.support.tcp_relay import TcpRelay

KEY = "Car:7"

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


def l2_of(cache: HybridCache) -> RedisL2:
    assert cache.internals.l2 is not None
    return cache.internals.l2


class HeldLoad:
    """A factory that reads the database when it starts, then waits to be released."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        version = self.version
        self.started.set()
        await self.release.wait()
        return version


@pytest.mark.parametrize("vanishing", ["token-evicted", "flushdb"])
async def test_a_load_from_before_a_removal_is_not_stored_once_the_key_token_vanished(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, vanishing: str
) -> None:
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    async with HybridCache(settings) as loader, HybridCache(settings) as writer:
        assert await loader.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        l2 = l2_of(loader)
        full_key = f"{namespace}:v1:{KEY}"

        load = HeldLoad(version=1)
        reading = asyncio.create_task(loader.get_or_create(KEY, load))
        await asyncio.wait_for(load.started.wait(), 5.0)  # captured before the write
        await writer.remove(KEY)  # the write (the database now holds version 2)
        if vanishing == "token-evicted":
            await admin.delete(l2.key_token_key(full_key))  # what maxmemory eviction does to a cold key
        else:
            await admin.flushdb()
        load.release.set()
        assert await reading == 1  # its own caller asked before the write

        assert await admin.get(l2.redis_key(full_key)) is None, "the pre-write value was stored in Redis"
        async with HybridCache(settings) as newcomer:
            assert await newcomer.get_or_create(KEY, database_at_version_2) == 2


async def database_at_version_2() -> int:
    return 2


class CountingDatabase:
    def __init__(self) -> None:
        self.loads = 0

    async def load(self) -> int:
        self.loads += 1
        return 1


async def is_cached(cache: HybridCache, db: CountingDatabase, key: str) -> bool:
    """Two reads in a row: the second runs no factory."""
    await cache.get_or_create(key, db.load)
    loads = db.loads
    await cache.get_or_create(key, db.load)
    return db.loads == loads


@pytest.mark.parametrize("vanishing", ["generations-evicted", "flushdb"])
async def test_caching_comes_back_after_the_generation_hash_vanished(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, vanishing: str
) -> None:
    """The next capture draws a new epoch in Redis while the table keeps the old one, and no invalidation message
    comes to tell it: every store was refused and every read ran the factory until some instance invalidated
    something (issue 13, item 6). The capture that sees the new epoch asks the backplane to resync."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    db = CountingDatabase()
    async with HybridCache(settings) as cache:
        assert await cache.wait_until_connected(5.0)
        assert await is_cached(cache, db, KEY)
        if vanishing == "generations-evicted":
            await admin.delete(l2_of(cache).generations_key)
        else:
            await admin.flushdb()
        # No invalidation follows (its message, of the new epoch, would make every instance resync): a key not
        # cached yet misses, and its capture is the first to find the new epoch.
        await wait_for_caching(cache, db, "Car:8")


async def wait_for_caching(cache: HybridCache, db: CountingDatabase, key: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while not await is_cached(cache, db, key):
        assert loop.time() < deadline, f"caching stayed off: {db.loads} factory runs"
        await asyncio.sleep(0.02)


async def test_a_writer_does_not_read_back_what_it_invalidated_when_redis_drew_a_new_epoch(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    """The history checker found it under ``volatile-lru`` eviction: the generation hash is evicted, the writer's
    prefix invalidation draws a new epoch, and its bump lives only in Redis. The writer's table, still trusted in
    the old epoch, accepted the old entry from L2 until its own message came back and caused a resync. Now the
    publication's reply itself, in another epoch, drops trust at once (reads check stamps against Redis).

    The cache reaches Redis through a TCP relay that holds back what the server sends to its subscriber, so the
    message is deterministically late, as it was under load in the checker's run."""
    async with TcpRelay(redis_server.host, redis_server.port) as relay:
        l1_off = MemoryCacheSettings(enabled=False)
        settings = CacheSettings(
            service_name=namespace, configuration=f"127.0.0.1:{relay.port}", protocol=protocol, memory_cache=l1_off
        )
        async with HybridCache(settings) as cache:
            assert await cache.wait_until_connected(5.0)
            await cache.set("Item:g7:8", "v10")
            assert await cache.get("Item:g7:8") == "v10"
            await admin.delete(l2_of(cache).generations_key)  # evicted: the next script draws a new epoch

            relay.hold_subscribers()
            await cache.remove_by_prefix("Item:g7")
            assert await cache.get("Item:g7:8", default="gone") == "gone"
            relay.release()
            assert await cache.wait_until_connected(5.0)  # the resync brings trust back
            await cache.set("Item:g7:9", "v1")
            assert await cache.get("Item:g7:9") == "v1"
