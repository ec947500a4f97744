"""Redis restored from an older snapshot never makes an invalidated entry current again (issue 13, item 5).

A restart with persistence (or a failover to a replica that lags) brings back keys and counters as they were when
the snapshot was taken: an entry that was removed since, a prefix counter from before its bump, the same epoch. Only
the backplane's resync used to notice that the server had changed; with ``Backplane:Enabled=false`` (a documented
setting) nothing resyncs, and every instance served the entry written before the invalidation until its TTL.
Every script that trusts the generation hash or a capture token now checks which server wrote it.

The snapshot is real: ``SAVE``, then the invalidation, then the server is killed and started again on the same
directory, and loads the older dump. RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.support.waiting import wait_until

KEY = "Car:Search:ford"

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


async def version_1() -> int:
    return 1


async def version_2() -> int:
    return 2


@pytest.mark.parametrize("kind", ["key", "prefix", "tag"])
async def test_an_entry_invalidated_after_the_snapshot_stays_invalidated_after_the_restore(
    redis_server: RedisServer, namespace: str, protocol: int, kind: str
) -> None:
    settings = CacheSettings(
        service_name=namespace, configuration=redis_server.url, protocol=protocol, backplane={"enabled": False}
    )
    entry_key = f"{namespace}:v1:{KEY}"
    async with HybridCache(settings) as writer:
        assert await writer.get_or_create(KEY, version_1, tags=("cars",)) == 1
        admin = redis_server.client()
        try:
            assert await admin.exists(entry_key)
            await admin.save()  # the snapshot: the entry, its token and the counters as they are now
        finally:
            await admin.aclose()
        if kind == "key":
            await writer.remove(KEY)
        elif kind == "prefix":
            await writer.remove_by_prefix("Car:Search")
        else:
            await writer.remove_by_tag("cars")
    redis_server.restart()  # loads the older dump

    admin = redis_server.client()
    try:
        assert await admin.exists(entry_key), "the snapshot was not restored: this test no longer tests the fault"
    finally:
        await admin.aclose()
    async with HybridCache(settings) as reader:  # a fresh instance: nothing in its L1
        served = [await reader.get_or_create(KEY, version_2, tags=("cars",)) for _ in range(3)]
    assert served == [2, 2, 2], f"the entry invalidated after the snapshot was served again: {served}"


async def test_a_load_across_the_restore_does_not_store_what_it_read_before_the_invalidation(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """Capture, snapshot, removal, restart: the captured token is back in Redis, so only the server check keeps the
    load (which read the database before the removal) from storing its value."""
    settings = CacheSettings(
        service_name=namespace, configuration=redis_server.url, protocol=protocol, backplane={"enabled": False}
    )
    entry_key = f"{namespace}:v1:{KEY}"
    started, release = asyncio.Event(), asyncio.Event()

    async def held_version_1() -> int:
        started.set()
        await release.wait()
        return 1

    async with HybridCache(settings) as loader, HybridCache(settings) as writer:
        reading = asyncio.create_task(loader.get_or_create(KEY, held_version_1))
        await asyncio.wait_for(started.wait(), 5.0)  # captured
        admin = redis_server.client()
        try:
            await admin.save()
        finally:
            await admin.aclose()
        await writer.remove(KEY)
        redis_server.restart()
        # The restart broke the loader's pooled connections: use them once, so the store below reaches Redis
        # rather than failing on a dead socket (which would keep the value out for the wrong reason).
        for n in range(3):
            await loader.get_or_create(f"Warm:{n}", version_1)
        errors = loader.stats().l2_errors
        release.set()
        assert await reading == 1
        assert loader.stats().l2_errors == errors, "the store failed on a connection, not on the check"
        admin = redis_server.client()
        try:
            assert await admin.get(entry_key) is None, "the load stored what it read before the removal"
        finally:
            await admin.aclose()


async def test_an_entry_whose_removal_redis_lost_is_not_served_by_the_instances_that_saw_the_removal(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """A failover to a replica that had not received the ``DEL`` (or the split brain of a failover: the old master
    took the removal, the promoted replica never will) puts the removed entry back in L2 with a stamp that still
    looks current, until each instance resyncs against the new server. Here the entry's old bytes are written back
    the way such a replica holds them; the writer and the instance that received its message must not serve them
    (issue 13, item 15: the writer read its own removed value 38 ms after remove() returned, after a failover)."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    entry_key = f"{namespace}:v1:{KEY}"
    admin = redis_server.client()
    try:
        async with HybridCache(settings) as writer, HybridCache(settings) as reader:
            assert await writer.wait_until_connected(5.0)
            assert await reader.wait_until_connected(5.0)
            assert await reader.get_or_create(KEY, version_1) == 1
            old_bytes = await admin.get(entry_key)
            assert old_bytes is not None
            received = reader.stats().invalidations_received
            await writer.remove(KEY)
            await wait_until(
                lambda: reader.stats().invalidations_received > received, timeout=2.0, message="message not received"
            )
            await admin.set(entry_key, old_bytes, px=60_000)  # what the lagging replica still holds
            assert await writer.get_or_create(KEY, version_2) == 2, "the writer served the entry it removed"
            await admin.set(entry_key, old_bytes, px=60_000)
            assert await reader.get_or_create(KEY, version_2) == 2, "the reader served the entry it saw removed"
    finally:
        await admin.aclose()


async def test_a_value_set_right_after_its_removal_is_served_by_the_instances_that_received_the_removal(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """``set()`` removes the key everywhere, then stores the new value at once: the removal's time that other
    instances remember is the sender's (the message's ``t``), not when they received it, or the new value (written
    before the message arrived) would be refused as older than the removal. The setter's clock runs 5 s behind,
    so a removal time taken from the receiver's clock would refuse every value, whatever the timing."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)

    def clock_behind() -> float:
        return time.time() - 5.0

    async with HybridCache(settings, wall_clock=clock_behind) as first, HybridCache(settings) as second:
        assert await first.wait_until_connected(5.0)
        assert await second.wait_until_connected(5.0)
        for n in range(20):
            received = second.stats().invalidations_received
            await first.set(f"After:{n}", "v1")
            await wait_until(
                lambda seen=received: second.stats().invalidations_received > seen,  # type: ignore[misc]
                timeout=2.0,
                message="not received",
            )
            assert await second.get(f"After:{n}") == "v1", f"the value set after its removal was refused (n={n})"
