"""Issue 3, acceptance 1 (and 5): an invalidation on one instance reaches every other instance within 50 ms.

Two and three :class:`HybridCache` objects share one private redis-server, each with its own connections and its
own backplane subscription, exactly as separate processes would. Every test runs under RESP2 and RESP3.
Each test first proves the entry is being served from the other instances' L1 (an L1 hit, the factory not run),
so a fresh value afterwards can only come from the invalidation reaching them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.support.redis_topology import RedisEndpoint
from tests.support.waiting import wait_until

PROPAGATION_DEADLINE = 0.05  # seconds, acceptance 1
KEY = "Dealership:Search:ford:10"
PREFIX = "Dealership:Search"
TAG = "dealerships"
# Not covered by PREFIX (segment boundary) nor by TAG: must survive every invalidation above.
BYSTANDER = "Dealership:SearchX:1"

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


@asynccontextmanager
async def running_caches(
    server: RedisEndpoint, service: str, count: int, protocol: int
) -> AsyncIterator[list[HybridCache]]:
    """``count`` started caches on ``server``, each with a confirmed invalidation subscription."""
    settings = CacheSettings(service_name=service, configuration=server.url, protocol=protocol)
    async with AsyncExitStack() as stack:
        caches = [await stack.enter_async_context(HybridCache(settings)) for _ in range(count)]
        for cache in caches:
            assert await cache.wait_until_connected(5.0), "backplane subscription not confirmed"
        yield caches


class Database:
    """A versioned store: the factories read it, the tests bump it; ``loads`` counts factory runs per key."""

    def __init__(self, *keys: str) -> None:
        self.versions = dict.fromkeys(keys, 1)
        self.loads = dict.fromkeys(keys, 0)

    def loader(self, key: str) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            self.loads[key] += 1
            return self.versions[key]

        return load


async def read(cache: HybridCache, db: Database, key: str) -> int:
    tags = (TAG,) if key == KEY else ("other",)
    value: int = await cache.get_or_create(key, db.loader(key), tags=tags)
    return value


async def warm(caches: list[HybridCache], db: Database, *keys: str) -> None:
    """Load ``keys`` on every cache and prove the next read is an L1 hit that runs no factory."""
    for cache in caches:
        for key in keys:
            assert await read(cache, db, key) == db.versions[key]
    loads = dict(db.loads)
    for cache in caches:
        hits = cache.counters.l1_hits
        for key in keys:
            assert await read(cache, db, key) == db.versions[key]
        assert cache.counters.l1_hits == hits + len(keys), "entries are not being served from L1"
    assert db.loads == loads


async def invalidate(cache: HybridCache, kind: str) -> None:
    if kind == "key":
        await cache.remove(KEY)
    elif kind == "prefix":
        await cache.remove_by_prefix(PREFIX)
    elif kind == "tag":
        await cache.remove_by_tag(TAG)
    else:
        await cache.clear()


async def assert_fresh_everywhere(writer: HybridCache, others: list[HybridCache], db: Database, key: str) -> None:
    """The writer is fresh at once; each other instance within PROPAGATION_DEADLINE of the write returning."""
    returned = time.monotonic()
    assert await read(writer, db, key) == db.versions[key], "the writing instance served the old value"
    for index, cache in enumerate(others, start=1):
        remaining = max(0.0, returned + PROPAGATION_DEADLINE - time.monotonic())
        await wait_until(
            functools.partial(_is_fresh, cache, db, key),
            timeout=remaining,
            interval=0.001,
            message=f"instance {index} still serves the old value of {key}",
        )


async def _is_fresh(cache: HybridCache, db: Database, key: str) -> bool:
    return await read(cache, db, key) == db.versions[key]


@pytest.mark.all_topologies
@pytest.mark.parametrize("kind", ["key", "prefix", "tag", "clear"])
@pytest.mark.parametrize("count", [2, 3], ids=["2-instances", "3-instances"])
async def test_invalidation_reaches_every_instance_within_deadline(
    redis_endpoint: RedisEndpoint, namespace: str, protocol: int, count: int, kind: str
) -> None:
    db = Database(KEY, BYSTANDER)
    async with running_caches(redis_endpoint, namespace, count, protocol) as caches:
        writer, *others = caches
        await warm(caches, db, KEY, BYSTANDER)
        loads_before = db.loads[KEY]

        db.versions[KEY] = 2
        await invalidate(writer, kind)

        await assert_fresh_everywhere(writer, others, db, KEY)
        # The new value was computed again (once: the others found it in L2 or ran the factory themselves).
        assert db.loads[KEY] > loads_before
        for cache in others:
            assert cache.stats().invalidations_received == 1
        if kind != "clear":
            bystander_loads = db.loads[BYSTANDER]
            for cache in caches:
                hits = cache.counters.l1_hits
                assert await read(cache, db, BYSTANDER) == 1
                assert cache.counters.l1_hits == hits + 1, "an unrelated entry was dropped from L1"
            assert db.loads[BYSTANDER] == bystander_loads


@pytest.mark.all_topologies
async def test_repeated_invalidations_all_propagate(
    redis_endpoint: RedisEndpoint, namespace: str, protocol: int
) -> None:
    """Many rounds, rotating the writer and the kind: every round is fresh everywhere within the deadline."""
    db = Database(KEY)
    kinds = ["key", "prefix", "tag"]
    async with running_caches(redis_endpoint, namespace, 3, protocol) as caches:
        for round_ in range(30):
            writer = caches[round_ % 3]
            others = [c for c in caches if c is not writer]
            await warm(caches, db, KEY)
            db.versions[KEY] += 1
            await invalidate(writer, kinds[round_ % len(kinds)])
            await assert_fresh_everywhere(writer, others, db, KEY)
        received = sum(c.stats().invalidations_received for c in caches)
        published = sum(c.stats().invalidations_published for c in caches)
        assert published == 30
        assert received == 60  # each message reached the two instances that did not send it


@pytest.mark.all_topologies
async def test_one_invalidate_call_is_one_message(redis_endpoint: RedisEndpoint, namespace: str, protocol: int) -> None:
    keys = ("Car:1", "Truck:Search:x", "Bike:7")
    db = Database(*keys)

    async def read_tagged(cache: HybridCache, key: str) -> int:
        value: int = await cache.get_or_create(key, db.loader(key), tags=(f"tag-{key}",))
        return value

    async with running_caches(redis_endpoint, namespace, 2, protocol) as (writer, other):
        for key in keys:
            await read_tagged(other, key)
        for key in keys:
            db.versions[key] = 2
        await writer.invalidate(keys=["Car:1"], prefixes=["Truck:Search"], tags=["tag-Bike:7"])
        for key in keys:
            await wait_until(
                functools.partial(_fresh_tagged, read_tagged, other, key),
                timeout=PROPAGATION_DEADLINE,
                interval=0.001,
                message=f"{key} is still stale on the other instance",
            )
        assert other.stats().invalidations_received == 1
        assert writer.stats().invalidations_published == 1


async def _fresh_tagged(
    read_tagged: Callable[[HybridCache, str], Awaitable[int]], cache: HybridCache, key: str
) -> bool:
    return await read_tagged(cache, key) == 2


@pytest.mark.all_topologies
async def test_prefix_matches_whole_segments_on_other_instances(
    redis_endpoint: RedisEndpoint, namespace: str, protocol: int
) -> None:
    covered = ("Dealership:Search", "Dealership:Search:ford", "Dealership:Search:ford:10")
    spared = ("Dealership:SearchX", "Dealership:SearchX:ford", "Dealership:Sear", "Dealership", "Other:Search")
    db = Database(*covered, *spared)

    async def get(cache: HybridCache, key: str) -> int:
        value: int = await cache.get_or_create(key, db.loader(key))
        return value

    async with running_caches(redis_endpoint, namespace, 2, protocol) as (writer, other):
        for key in (*covered, *spared):
            await get(other, key)
        for key in (*covered, *spared):
            db.versions[key] = 2
        await writer.remove_by_prefix("Dealership:Search:")  # a trailing separator means the same prefix
        await wait_until(
            lambda: other.stats().invalidations_received == 1,
            timeout=PROPAGATION_DEADLINE,
            interval=0.001,
            message="the prefix invalidation did not arrive",
        )
        assert {key: await get(other, key) for key in covered} == dict.fromkeys(covered, 2)
        assert {key: await get(other, key) for key in spared} == dict.fromkeys(spared, 1)


@pytest.mark.all_topologies
async def test_an_instance_skips_its_own_messages(redis_endpoint: RedisEndpoint, namespace: str, protocol: int) -> None:
    db = Database(KEY)
    async with running_caches(redis_endpoint, namespace, 2, protocol) as (first, second):
        await first.remove(KEY)
        await second.remove(KEY)
        # One subscriber connection delivers in publication order, so once the second message has been
        # handled by `first`, so has its own earlier one: it must not have counted it.
        await wait_until(
            lambda: first.stats().invalidations_received == 1,
            timeout=1.0,
            message="first never received second's invalidation",
        )
        await wait_until(
            lambda: second.stats().invalidations_received == 1,
            timeout=1.0,
            message="second never received first's invalidation",
        )
        assert first.stats().invalidations_received == 1
        assert second.stats().invalidations_received == 1
        # Skipping its own message must not cost the sender its fresh L1 entry for the key it just reloaded.
        await read(first, db, KEY)
        hits = first.counters.l1_hits
        await read(first, db, KEY)
        assert first.counters.l1_hits == hits + 1


async def test_invalidation_logs_the_seed_lines(
    redis_server: RedisServer, namespace: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_caches(redis_server, namespace, 2, protocol) as (writer, _other):
        with caplog.at_level(logging.INFO, logger="hybridcache"):
            await writer.remove(KEY)
            await writer.remove_by_prefix(PREFIX)
        lines = [record.getMessage() for record in caplog.records]
    assert f"Removed key: {namespace}:v1:{KEY}" in lines
    assert f"Removed prefix: {namespace}:v1:{PREFIX}*" in lines
    assert sum(line.startswith("Published invalidation event") for line in lines) == 2


@pytest.mark.parametrize("where", ["writer", "other"], ids=["on-the-writer", "on-another-instance"])
async def test_a_read_starting_after_an_invalidation_does_not_share_an_older_load(
    redis_server: RedisServer, namespace: str, protocol: int, where: str
) -> None:
    """A load that read the database before a write may finish after it; a caller that arrives once the
    invalidation is known must get a new load, not that one's (stale) result."""
    db = Database(KEY)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> int:
        version = db.versions[KEY]  # read before the write below
        started.set()
        await release.wait()
        return version

    async with running_caches(redis_server, namespace, 2, protocol) as (writer, other):
        reader = writer if where == "writer" else other
        early = asyncio.create_task(reader.get_or_create(KEY, slow_load, tags=(TAG,)))
        await wait_until(started.is_set, timeout=1.0, message="the first load never started")

        db.versions[KEY] = 2
        await writer.remove(KEY)
        await wait_until(
            lambda: reader is writer or reader.stats().invalidations_received == 1,
            timeout=PROPAGATION_DEADLINE,
            interval=0.001,
            message="the invalidation did not arrive",
        )
        late = asyncio.create_task(read(reader, db, KEY))
        await asyncio.sleep(0)  # let the late caller reach the cache while the early load is still in flight
        release.set()

        assert await early in (1, 2)  # it began before the write: either answer is allowed for it
        assert await late == 2, "a read that began after the invalidation got the result of an older load"
        assert await read(reader, db, KEY) == 2
