"""Protections of the read, fill and write paths that only a precise interleaving exercises, made deterministic
on a real Redis (issue 13, item 13: removing any of these left every test green).

* **The writer's second apply.** ``remove()`` applies the invalidation here, runs the script in Redis, then applies
  it here again. A read that starts between the first apply and the script fetches the old value from L2 (not
  deleted yet) and, as far as the invalidation log can tell, nothing covered it since its GET: it puts the old
  value in L1, and only the second apply drops it again. ``CLIENT PAUSE <ms> WRITE`` holds every script (they
  write) while GETs go through, so the read lands in exactly that gap.
* **Queued invalidations keep L2 out** while they cannot be published, even with the circuit closed.
* **The L2→L1 promotion's log check**: a GET answered before a removal whose message is applied before the answer
  is looked at.
* **The log check on storing a computed value in L1** (L1-only mode, where nothing else catches an exact key).
* **L1's own stamp check** on the fail-safe path, which does not consult the log.

RESP2 and RESP3.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.support.waiting import wait_until

KEY, PREFIX, TAG = "Shop:Search:ford", "Shop:Search", "shops"
PAUSE_MS = 120  # under OperationTimeoutMilliseconds (250): the script is held, not timed out

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


def clock_ahead() -> float:
    """The wall clock of an instance whose time runs 30 s ahead of the others' (an NTP failure)."""
    return time.time() + 30.0


class Database:
    def __init__(self) -> None:
        self.version = 1

    async def load(self) -> int:
        return self.version


@pytest.mark.parametrize("kind", ["key", "prefix", "tag"])
async def test_a_read_between_the_first_apply_and_the_script_does_not_survive_the_invalidation(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, kind: str
) -> None:
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    # The entry is written by an instance whose clock runs ahead: otherwise RecentRemovals (an entry created
    # before a removal this instance knows of is refused) would keep an exact key's old value out on its own.
    async with HybridCache(settings, wall_clock=clock_ahead) as filler, HybridCache(settings) as writer:
        assert await filler.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        assert await filler.get_or_create(KEY, db.load, tags=(TAG,)) == 1  # in L2, not in the writer's L1

        db.version = 2
        await admin.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")  # scripts wait, GETs do not
        invalidation = {
            "key": lambda: writer.remove(KEY),
            "prefix": lambda: writer.remove_by_prefix(PREFIX),
            "tag": lambda: writer.remove_by_tag(TAG),
        }[kind]
        applied_before = writer.internals.coherence.log.sequence  # the resync on subscribing recorded one already
        removing = asyncio.create_task(invalidation())
        await wait_until(
            lambda: writer.internals.coherence.log.sequence > applied_before,
            timeout=1.0,
            message="the first apply did not happen",
        )
        hits = writer.counters.l2_hits
        racing = await writer.get_or_create(KEY, db.load, tags=(TAG,))
        assert writer.counters.l2_hits == hits + 1, "the racing read did not come from L2: the gap was missed"
        assert not removing.done(), "the script was not held by the pause: the read did not land in the gap"
        assert racing == 1  # it overlapped the call: the old value is allowed to it
        await removing

        served = [await writer.get_or_create(KEY, db.load, tags=(TAG,)) for _ in range(3)]
        assert served == [2, 2, 2], f"after the {kind} invalidation returned the writer served {served}"


async def test_a_read_while_a_queued_invalidation_cannot_be_published_skips_l2(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis
) -> None:
    """Redis answers reads but holds every script (``CLIENT PAUSE WRITE``): the removal times out and is queued,
    the L2 entry it should have deleted is still there, and the circuit is still closed. A read on the writer must
    not serve that entry: with anything queued it first tries to publish, and skips L2 when it cannot."""
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    # Filled by an instance whose clock runs ahead, so RecentRemovals cannot be what keeps the old entry out.
    async with HybridCache(settings, wall_clock=clock_ahead) as filler, HybridCache(settings) as writer:
        assert await filler.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        assert await filler.get_or_create(KEY, db.load) == 1
        db.version = 2
        await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        try:
            await writer.remove(KEY)  # the script times out after OperationTimeoutMilliseconds: queued
            assert writer.stats().pending_invalidations == 1
            assert writer.health()["circuit"] == "closed"
            assert await writer.get_or_create(KEY, db.load) == 2
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")


async def test_an_l2_hit_whose_get_raced_a_received_removal_is_not_promoted_to_l1(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """Another instance removes the key after Redis answered this instance's GET but before this instance looked
    at the answer, and its message is applied in between. The value is returned (the read overlapped the write),
    but it must not be promoted to L1, where it would outlive the message that already went by.

    The interleaving is made by holding the real GET's answer until the real message was applied (a wrapper
    around the cache's own L2 read; Redis, the script and the message are real)."""
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    # The entry is written by an instance whose clock runs ahead of the remover's (see the test above): the log
    # check, not RecentRemovals, is under test.
    async with (
        HybridCache(settings) as reader,
        HybridCache(settings) as writer,
        HybridCache(settings, wall_clock=clock_ahead) as filler,
    ):
        assert await reader.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        assert await filler.get_or_create(KEY, db.load) == 1  # in L2; not in the reader's L1
        l2 = reader.internals.l2
        assert l2 is not None
        real_get = l2.get

        async def get_then_let_the_removal_pass(full_key: str) -> bytes | None:
            raw = await real_get(full_key)  # the old value: Redis answered before the removal
            received = reader.stats().invalidations_received
            db.version = 2
            await writer.remove(KEY)
            await wait_until(
                lambda: reader.stats().invalidations_received > received, timeout=2.0, message="message not applied"
            )
            return raw

        l2.get = get_then_let_the_removal_pass  # type: ignore[method-assign]
        try:
            assert await reader.get_or_create(KEY, db.load) == 1  # overlapped the removal: allowed
        finally:
            l2.get = real_get  # type: ignore[method-assign]
        served = [await reader.get_or_create(KEY, db.load) for _ in range(3)]
        assert served == [2, 2, 2], f"after the removal was applied the reader served {served}"


async def test_without_redis_a_load_that_overlapped_a_removal_does_not_enter_l1(protocol: int) -> None:
    """L1 only (no Redis): the table is the only authority and an exact key has no generation, so the invalidation
    log is what keeps a load that started before ``remove()`` from putting its older value in L1. (``protocol`` is
    unused here; the module's parametrisation runs this twice.)"""
    db = Database()
    started, release = asyncio.Event(), asyncio.Event()

    async def held_load() -> int:
        version = db.version
        started.set()
        await release.wait()
        return version

    async with HybridCache(CacheSettings(service_name="l1-only")) as cache:
        loading = asyncio.create_task(cache.get_or_create(KEY, held_load))
        await asyncio.wait_for(started.wait(), 5.0)
        db.version = 2
        await cache.remove(KEY)
        release.set()
        assert await loading == 1
        assert await cache.get_or_create(KEY, db.load) == 2


class FactoryDown(RuntimeError):
    pass


async def test_a_fail_safe_fallback_made_stale_during_the_factory_run_is_not_kept_in_l1(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """Fail-safe: the expired entry is held as a fallback while the factory runs; a prefix invalidation from another
    instance arrives meanwhile; the factory fails. The caller gets the fallback (it asked before the write), but the
    fallback must not be kept in L1 for the throttle period: L1's own stamp check refuses it (the log is not
    consulted on this path)."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    ttl = 0.2
    async with HybridCache(settings) as reader, HybridCache(settings) as writer:
        assert await reader.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)

        async def old() -> str:
            return "old"

        assert await writer.get_or_create(KEY, old, ttl=ttl, type_=str, fail_safe=True) == "old"

        async def expired() -> bool:
            missing = object()
            return await reader.get(KEY, type_=str, default=missing) is missing

        await wait_until(expired, timeout=ttl + 2, message="the entry did not expire")

        started, release = asyncio.Event(), asyncio.Event()

        async def failing_slowly() -> str:
            started.set()
            await release.wait()
            raise FactoryDown("down")

        reading = asyncio.create_task(reader.get_or_create(KEY, failing_slowly, ttl=ttl, type_=str, fail_safe=True))
        await asyncio.wait_for(started.wait(), 5.0)
        received = reader.stats().invalidations_received
        await writer.remove_by_prefix(PREFIX)
        await wait_until(
            lambda: reader.stats().invalidations_received > received, timeout=2.0, message="message not applied"
        )
        release.set()
        assert await reading == "old"  # the fallback, to a caller that asked before the write

        async def new() -> str:
            return "new"

        assert await reader.get_or_create(KEY, new, ttl=60, type_=str, fail_safe=True) == "new"
