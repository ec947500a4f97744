"""What a resync of the generation table must do, on a real Redis (issue 13, items 3, 7, 11 and 12).

* **Trust Redis's counters** (item 12): one forged message carrying a huge counter must not switch caching off for
  good, whether its number is the next one (accepted as a message) or a jump (a gap, so a resync).
* **Notice a message counter that went back** (item 7): when ``seq`` expires, is evicted or flushed, a lost message
  must still be found, instead of gap detection staying off until the counter climbs past its old value.
* **Distrust first** (item 11): from the moment a gap is noticed until the resync's reply, the table is not trusted.
* **Detach in-flight loads** (item 3): a read that starts after a resync must not join a load that read the
  database before it.

Lost messages are made the way Redis loses them: the bump and the ``INCR`` of the message counter happen, the
``PUBLISH`` does not. RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._redis.backplane import Backplane
from hybridcache._redis.l2 import RedisL2
from hybridcache.settings import BackplaneSettings
from tests.support.waiting import wait_until

HEARTBEAT = BackplaneSettings(
    heartbeat_interval_seconds=0.1, heartbeat_timeout_seconds=0.3, disconnected_expiration_seconds=0.3
)
NOTICE = 1.5  # a heartbeat interval plus its timeout, with slack for a busy machine
KEY, PREFIX = "Shop:Search:ford", "Shop:Search"

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


def settings_for(server: RedisServer, namespace: str, protocol: int) -> CacheSettings:
    return CacheSettings(service_name=namespace, configuration=server.url, protocol=protocol, backplane=HEARTBEAT)


def l2_of(cache: HybridCache) -> RedisL2:
    assert cache.internals.l2 is not None
    return cache.internals.l2


def backplane_of(cache: HybridCache) -> Backplane:
    assert cache.internals.backplane is not None
    return cache.internals.backplane


class Database:
    def __init__(self) -> None:
        self.version = 1
        self.loads = 0

    async def load(self) -> int:
        self.loads += 1
        return self.version


async def lose_a_prefix_invalidation(admin: Redis, cache: HybridCache, prefix: str) -> None:
    """What a message lost on its way looks like: the bump and the message number happen, the delivery not."""
    l2 = l2_of(cache)
    await bump(admin, l2.generations_key, f"p:{prefix}")
    await admin.incr(l2.sequence_key)


async def bump(admin: Redis, generations_key: str, field: str) -> None:
    """A bump as the invalidation script makes it: the server's time in ms, or one more (generations.py)."""
    seconds, microseconds = await admin.time()
    old = int(await admin.hget(generations_key, field) or 0)
    await admin.hset(generations_key, field, max(old + 1, seconds * 1000 + microseconds // 1000))


async def forge(admin: Redis, cache: HybridCache, sequence: int, generations: dict[str, int]) -> None:
    l2 = l2_of(cache)
    epoch = (await admin.hget(l2.generations_key, "__epoch__")).decode()
    forged = {"i": "intruder", "s": sequence, "e": epoch, "k": [], "g": generations}
    assert await admin.publish(l2.channel, orjson.dumps(forged)) >= 1


async def is_cached(cache: HybridCache, db: Database) -> bool:
    """Two reads in a row: the second runs no factory."""
    await cache.get_or_create(KEY, db.load)
    loads = db.loads
    await cache.get_or_create(KEY, db.load)
    return db.loads == loads


# ------------------------------------------------------------------------------------- item 12


@pytest.mark.parametrize("jump", [1, 50], ids=["next-number", "a-gap"])
async def test_a_forged_huge_counter_does_not_switch_caching_off(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, jump: int
) -> None:
    db = Database()
    async with HybridCache(settings_for(redis_server, namespace, protocol)) as cache:
        assert await cache.wait_until_connected(5.0)
        assert await is_cached(cache, db)
        backplane = backplane_of(cache)
        # Generations are times in ms (generations.py): 10**15 is the year 33658, above every real one.
        await forge(admin, cache, backplane.last_sequence + jump, {f"p:{PREFIX}": 10**15})
        await wait_until(
            lambda: backplane.messages_received > 0, timeout=NOTICE, message="the forged message never arrived"
        )
        await wait_until(
            lambda: is_cached(cache, db),
            timeout=NOTICE,
            interval=0.05,
            message="one forged message switched caching off (every read ran the factory)",
        )
        assert cache.internals.table.current(f"p:{PREFIX}") == 0, "the mirror kept the forged counter"


# ------------------------------------------------------------------------------------- item 7


async def test_a_lost_message_is_found_after_the_message_counter_went_back(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    db = Database()
    settings = settings_for(redis_server, namespace, protocol)
    async with HybridCache(settings) as reader, HybridCache(settings) as writer:
        assert await reader.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        backplane = backplane_of(reader)
        for n in range(3):
            await writer.remove(f"Other:{n}")
        await wait_until(lambda: backplane.last_sequence == 3, timeout=NOTICE, message="messages not received")
        assert await is_cached(reader, db)

        await admin.delete(l2_of(reader).sequence_key)  # the counter expired or was evicted
        await writer.remove("Other:again")  # numbered 1 now
        db.version = 2
        await lose_a_prefix_invalidation(admin, reader, PREFIX)  # numbered 2, never delivered

        async def fresh() -> bool:
            return await reader.get_or_create(KEY, db.load) == db.version

        await wait_until(
            fresh,
            timeout=NOTICE,
            interval=0.02,
            message="a message lost after the counter went back was never noticed",
        )


# ------------------------------------------------------------------------------------- item 11


async def test_the_table_is_not_trusted_while_a_gap_is_being_resynchronised(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    async with HybridCache(settings_for(redis_server, namespace, protocol)) as cache:
        assert await cache.wait_until_connected(5.0)
        backplane = backplane_of(cache)
        l2 = l2_of(cache)
        trusted_when_asked: list[bool] = []
        generation_state = l2.generation_state

        async def observed(**options: Any) -> Any:
            trusted_when_asked.append(cache.internals.table.trusted)  # what L1 is being held to during the round trip
            return await generation_state(**options)

        l2.generation_state = observed  # type: ignore[method-assign]
        await forge(admin, cache, backplane.last_sequence + 5, {})
        await wait_until(lambda: trusted_when_asked, timeout=NOTICE, message="no resync after a gap")
        assert trusted_when_asked[0] is False, "the table was still trusted while the gap was being resynchronised"
        await wait_until(lambda: cache.internals.table.trusted, timeout=NOTICE, message="trust never came back")


# ------------------------------------------------------------------------------------- item 3


async def test_a_read_after_a_resync_does_not_join_a_load_from_before_it(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    db = Database()
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_load() -> int:
        version = db.version  # the database is read when the factory starts
        started.set()
        await release.wait()
        return version

    async with HybridCache(settings_for(redis_server, namespace, protocol)) as cache:
        assert await cache.wait_until_connected(5.0)
        backplane = backplane_of(cache)
        first = asyncio.create_task(cache.get_or_create(KEY, slow_load))
        try:
            await asyncio.wait_for(started.wait(), 5.0)
            db.version = 2
            resyncs = backplane.resyncs
            await lose_a_prefix_invalidation(admin, cache, PREFIX)  # the heartbeat finds it and resyncs
            await wait_until(lambda: backplane.resyncs > resyncs, timeout=NOTICE, message="no resync")

            second = asyncio.create_task(cache.get_or_create(KEY, db.load))
            await wait_until(
                second.done, timeout=2.0, message="a read after the resync joined the load that began before it"
            )
            assert second.result() == 2
        finally:
            release.set()
            await first
        assert first.result() == 1  # its own callers asked before the write: the old value is theirs
        assert await cache.get_or_create(KEY, db.load) == 2


# ------------------------------------------------------------------------------------- a resync racing our own bump


async def test_a_resync_answered_before_our_own_invalidation_does_not_undo_it(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    """Found by the multi-process fault checker: the writer served its own old value 3 ms after its tag
    invalidation returned, a resync having completed in between. Redis answered the resync before the writer's
    invalidation script ran; the writer applied the script's counters; then the resync's older answer replaced the
    table. Counters applied after a resync read Redis must survive it. The interleaving is made by running the
    invalidation between the real resync read and its application (a wrapper; Redis and the scripts are real)."""
    db = Database()
    async with HybridCache(settings_for(redis_server, namespace, protocol)) as cache:
        assert await cache.wait_until_connected(5.0)
        assert await cache.get_or_create(KEY, db.load) == 1  # in L2 under PREFIX
        backplane = backplane_of(cache)
        l2 = l2_of(cache)
        generation_state = l2.generation_state
        raced: list[bool] = []

        async def answered_before_the_invalidation(**options: Any) -> Any:
            state = await generation_state(**options)  # Redis's answer: before the bump
            if not raced:
                raced.append(True)
                db.version = 2
                await cache.remove_by_prefix(PREFIX)  # our own invalidation, applied before the answer is
            return state

        l2.generation_state = answered_before_the_invalidation  # type: ignore[method-assign]
        resyncs = backplane.resyncs
        await forge(admin, cache, backplane.last_sequence + 5, {})  # a gap: resync
        await wait_until(lambda: backplane.resyncs > resyncs, timeout=NOTICE, message="no resync")
        l2.generation_state = generation_state  # type: ignore[method-assign]
        assert raced, "the invalidation did not run inside the resync"
        assert await cache.get_or_create(KEY, db.load) == 2, "the resync undid this instance's own invalidation"
