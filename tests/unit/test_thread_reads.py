"""Reads from threads other than the cache loop's: ``MemoryStore.find``, ``HybridCache._l1_hit_in_thread`` and the
counter they share (``metrics.count_value``). What ``hybridcache.sync`` relies on for its L1 hits.

The stress tests run the owner's work (puts, evictions, expiry, removals) in one thread while others read,
bounded in operations and time, and then check the store's own invariants: a read-only path must leave no trace.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from typing import Any

from hybridcache import CacheSettings, HybridCache
from hybridcache._memory import L1Entry, MemoryStore
from hybridcache.decorators import L1_MISS
from hybridcache.metrics import count_value

FOREVER = float("inf")


def entry(key: str, expires_at: float = FOREVER, checked: int = 1) -> L1Entry:
    return L1Entry(key, f"value of {key}", expires_at, 0.0, "epoch", {}, (), checked)


def links_agree(store: MemoryStore) -> list[str]:
    """The store's invariants: its list, walked both ways, holds exactly the map's entries, once each."""
    problems = []
    forward, node = [], store._oldest
    while node is not None and len(forward) <= len(store) + 1:
        forward.append(node.key)
        node = node.newer
    backward, node = [], store._newest
    while node is not None and len(backward) <= len(store) + 1:
        backward.append(node.key)
        node = node.older
    if forward != backward[::-1]:
        problems.append("the list differs walked oldest-first and newest-first")
    if sorted(forward) != sorted(store._entries):
        problems.append("the list and the map hold different keys")
    return problems


# ---------------------------------------------------------------------------------------------- MemoryStore.find


def test_find_returns_a_live_entry_and_marks_it_visited() -> None:
    store = MemoryStore(4)
    store.put(entry("a"))
    found = store.find("a", now=0.0)
    assert found is not None
    assert found.value == "value of a"
    assert found.visited


def test_find_reports_an_expired_entry_absent_and_leaves_it_for_the_owner() -> None:
    store = MemoryStore(4)
    store.put(entry("a", expires_at=5.0))
    assert store.find("a", now=5.0) is None
    assert "a" in store, "find never removes: dropping expired entries is the owning thread's job"
    assert store.get("a", now=5.0) is None
    assert "a" not in store


def test_find_on_a_missing_key_is_none() -> None:
    assert MemoryStore(4).find("nothing", now=0.0) is None


def test_find_in_many_threads_while_the_owner_churns_leaves_the_store_intact() -> None:
    """The owner puts (evicting), expires and removes entries of a small store while 4 threads call find();
    no reader raises, every entry read is one that was put under that key, and the list is whole afterwards."""
    now = [0.0]
    store = MemoryStore(32, clock=lambda: now[0])
    keys = [f"k{i}" for i in range(64)]
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                key = rng.choice(keys)
                found = store.find(key, now[0])
                if found is not None and found.key != key:
                    raise AssertionError(f"find({key!r}) returned the entry of {found.key!r}")
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    rng = random.Random(0)
    deadline = time.monotonic() + 3.0
    try:
        for step in range(200_000):
            if time.monotonic() > deadline:
                break
            key = rng.choice(keys)
            draw = rng.random()
            if draw < 0.6:
                store.put(entry(key, expires_at=now[0] + rng.uniform(0, 5)))
            elif draw < 0.8:
                store.get(key, now[0])  # drops it when expired
            else:
                store.remove(key)
            if step % 100 == 0:
                now[0] += 0.5
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors[:3]
    assert reads[0] > 1_000, f"the readers barely ran ({reads[0]} reads): the test proves little"
    assert links_agree(store) == []
    assert len(store) <= 32


# ---------------------------------------------------------------------------------------------- count_value


def test_count_value_reads_a_count_without_advancing_it() -> None:
    counter = itertools.count()
    assert count_value(counter) == 0
    for _ in range(3):
        next(counter)
    assert count_value(counter) == 3
    assert count_value(counter) == 3
    assert repr(counter) == "count(3)", "count_value parses this form"


def test_a_count_shared_by_threads_loses_no_increment() -> None:
    counter = itertools.count()
    per_thread = 50_000

    def work() -> None:
        for _ in range(per_thread):
            next(counter)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert count_value(counter) == 8 * per_thread


# ---------------------------------------------------------------------------------------------- the core's thread hit


def l1_only(**memory: Any) -> HybridCache:
    return HybridCache(CacheSettings(service_name="threads", memory_cache={"default_expiration_seconds": 60, **memory}))


async def factory() -> str:
    return "computed"


async def test_a_validated_entry_is_served_to_another_thread_and_counted() -> None:
    async with l1_only() as cache:
        await cache.get_or_create("Item:1", factory)
        hits = cache.stats().l1_hits
        served = await asyncio.to_thread(cache._l1_hit_in_thread, "Item:1")
        assert served == "computed"
        assert cache.stats().l1_hits == hits + 1
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Item:2") is L1_MISS


async def test_after_a_prefix_invalidation_a_thread_is_not_served_until_the_loop_revalidated() -> None:
    """A prefix bump leaves the entry in the map (generations make it stale): the version check keeps other
    threads off it. An unrelated entry is served again once the loop has revalidated it."""
    async with l1_only() as cache:
        await cache.get_or_create("Item:1", factory)
        await cache.get_or_create("Other:1", factory)
        await cache.remove_by_prefix("Item")
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Item:1") is L1_MISS
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Other:1") is L1_MISS, "not revalidated yet"
        assert await cache.get_or_create("Other:1", factory) == "computed"  # the loop revalidates it
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Other:1") == "computed"


async def test_an_entry_due_for_refresh_or_expired_is_left_to_the_loop_and_not_removed() -> None:
    now = [100.0]
    cache = HybridCache(
        CacheSettings(service_name="threads", memory_cache={"default_expiration_seconds": 60}), clock=lambda: now[0]
    )
    async with cache:
        await cache.get_or_create("Fresh:1", factory, eager_refresh=0.5, ttl=10)
        l1 = cache.internals.l1
        assert l1 is not None
        full_key = next(e.key for e in l1)
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Fresh:1") == "computed"
        now[0] += 6  # past the refresh point (half of 10 s)
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Fresh:1") is L1_MISS
        now[0] += 10  # expired
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Fresh:1") is L1_MISS
        assert full_key in l1, "the calling thread leaves expired entries for the loop to drop"


async def test_a_disabled_cache_never_serves_a_thread() -> None:
    async with HybridCache(CacheSettings(service_name="threads", enabled=False)) as cache:
        await cache.get_or_create("Item:1", factory)
        assert await asyncio.to_thread(cache._l1_hit_in_thread, "Item:1") is L1_MISS
