"""Issue 16, acceptance 3: a batch racing an invalidation leaves nothing stale, on a real Redis.

The rule is the single key's (docs/invalidation.md §1): a read that starts after an invalidation call returned never
returns a value older than that write — at once on the writer, within the propagation bound elsewhere. A batch only
shares I/O, so each of its keys must keep every protection a single key has. Deterministic tests hold a batch's
factory (or its L2 answer) open across a real invalidation, one per protection:

* the store of a key an invalidation overtook is refused in Redis (its capture was taken before the factory ran),
  for an exact key, a prefix and a tag, from the same instance or another, while the other keys of the batch are
  stored; without Redis, the invalidation log keeps the value out of L1;
* a read starting after the invalidation does not join the batch's older load;
* with an invalidation queued (Redis refusing scripts), the writer's batch reads skip L2;
* an L2 answer that raced a received removal is returned but not promoted to L1;
* while the table is untrusted (no backplane), a batch checks its entries' stamps against Redis.

Then a randomized run (:func:`test_no_batch_read_is_older_than_a_propagated_invalidation`): three instances, batch
readers (some single-key and ``get_many`` readers among them) with slow factories, writers bumping versions and
invalidating by key, several keys, prefix, tag, ``clear`` or ``set_many``; the checker of test_consistency.py holds
every read to every write. Seeded (``HC_BATCH_SEED`` replays the choices), bounded in reads and time; the same run
with ``stale_set_protection=False`` must find stale reads, which shows it can.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.integration.test_consistency import (
    HEARTBEAT,
    PROPAGATION_BOUND,
    Read,
    Violation,
    Write,
    find_violations,
)
from tests.support.waiting import wait_until

KEYS = ["Shop:a:1", "Shop:b:2", "Shop:c:3"]
RACED = KEYS[1]  # the key each invalidation covers, and only it
TAGS = {key: (f"shop-{key[-1]}",) for key in KEYS}


def clock_ahead() -> float:
    """An instance whose wall clock runs 30 s ahead: entries it writes look created after any removal, so
    RecentRemovals (which refuses entries written before a removal known here) cannot be what keeps them out."""
    return time.time() + 30.0


class Database:
    """Versions per key; ``load`` reads them when called and may be held open (``hold``) before returning."""

    def __init__(self, *, hold: bool = False) -> None:
        self.versions = dict.fromkeys(KEYS, 1)
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def load(self, keys: list[str]) -> dict[str, int]:
        self.calls.append(list(keys))
        rows = {key: self.versions[key] for key in keys}  # read when the factory starts
        await self.release.wait()
        return rows

    async def started(self) -> None:
        await wait_until(lambda: bool(self.calls), timeout=5.0, message="the batch's factory never started")


async def read(cache: HybridCache, db: Database, keys: list[str] = KEYS) -> dict[str, Any]:
    return await cache.get_or_create_many(keys, db.load, tags=TAGS.__getitem__)


@asynccontextmanager
async def caches(settings: CacheSettings, count: int, **options: Any) -> AsyncIterator[list[HybridCache]]:
    async with AsyncExitStack() as stack:
        started = [await stack.enter_async_context(HybridCache(settings, **options)) for _ in range(count)]
        for cache in started:
            assert await cache.wait_until_connected(5.0)
        yield started


def invalidation(cache: HybridCache, kind: str) -> Callable[[], Awaitable[Any]]:
    return {
        "key": lambda: cache.remove(RACED),
        "keys": lambda: cache.remove_many([RACED, "Shop:z:9"]),
        "prefix": lambda: cache.remove_by_prefix("Shop:b"),
        "tag": lambda: cache.remove_by_tag(TAGS[RACED][0]),
    }[kind]


# ---------------------------------------------------------------------------------------------- deterministic


@pytest.mark.parametrize("kind", ["key", "keys", "prefix", "tag"])
@pytest.mark.parametrize("writer_is", ["the-reader", "another-instance"])
async def test_a_batch_load_overtaken_by_an_invalidation_is_not_stored(
    redis_server: RedisServer, namespace: str, kind: str, writer_is: str
) -> None:
    db = Database(hold=True)
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    async with caches(settings, 3) as (reader, other, checker):
        writer = reader if writer_is == "the-reader" else other
        loading = asyncio.create_task(read(reader, db))
        await db.started()
        db.versions[RACED] = 2
        received = reader.stats().invalidations_received
        await invalidation(writer, kind)()
        if writer is not reader:
            await wait_until(
                lambda: reader.stats().invalidations_received > received, timeout=1.0, message="not received"
            )
        db.release.set()
        assert await loading == dict.fromkeys(KEYS, 1), "the batch began before the write: its values are allowed"
        assert reader.stats().stale_sets_prevented >= 1

        after = Database()
        after.versions[RACED] = 2
        assert await read(reader, after) == {**dict.fromkeys(KEYS, 1), RACED: 2}, "the reader served the old value"
        assert after.calls == [[RACED]], "the keys no invalidation covered were not stored"
        assert await read(checker, after) == {**dict.fromkeys(KEYS, 1), RACED: 2}, "L2 kept the old value"


async def test_without_redis_a_batch_load_that_overlapped_a_removal_does_not_enter_l1() -> None:
    """L1 only: the table is the only authority and an exact key has no generation, so the invalidation log is what
    keeps the batch's older value out of L1 (a single key's rule, ``FillPath._store_l1``)."""
    db = Database(hold=True)
    async with HybridCache(CacheSettings(service_name="l1-only")) as cache:
        loading = asyncio.create_task(read(cache, db))
        await db.started()
        db.versions[RACED] = 2
        await cache.remove(RACED)
        db.release.set()
        assert await loading == dict.fromkeys(KEYS, 1)
        after = Database()
        after.versions[RACED] = 2
        assert await read(cache, after) == {**dict.fromkeys(KEYS, 1), RACED: 2}
        assert after.calls == [[RACED]]


@pytest.mark.parametrize("late", ["single-key", "batch"])
async def test_a_read_starting_after_an_invalidation_does_not_join_an_older_batch_load(
    redis_server: RedisServer, namespace: str, late: str
) -> None:
    db = Database(hold=True)
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    async with caches(settings, 1) as (cache,):
        early = asyncio.create_task(read(cache, db))
        await db.started()
        db.versions[RACED] = 2
        await cache.remove(RACED)
        fresh = Database()
        fresh.versions = db.versions
        if late == "single-key":

            async def load_one() -> int:
                return fresh.versions[RACED]

            after: Any = asyncio.create_task(cache.get_or_create(RACED, load_one, tags=TAGS[RACED]))
        else:
            after = asyncio.create_task(read(cache, fresh, [RACED]))
        for _ in range(3):  # the late reader reaches the cache while the early load is held
            await asyncio.sleep(0)
        db.release.set()
        assert await early == dict.fromkeys(KEYS, 1)
        late_value = await after
        assert (late_value if late == "single-key" else late_value[RACED]) == 2, "joined the older load"


async def test_a_batch_read_while_a_queued_invalidation_cannot_be_published_skips_l2(
    redis_server: RedisServer, namespace: str, admin: Redis
) -> None:
    """Redis answers reads but holds every script (``CLIENT PAUSE WRITE``): the removal times out and is queued with
    the entry still in L2. The writer's batch reads must not serve it: they try to publish first, and skip L2."""
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    async with (
        HybridCache(settings, wall_clock=clock_ahead) as filler,
        HybridCache(settings) as writer,
    ):
        assert await filler.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        await read(filler, db)
        db.versions[RACED] = 2
        await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        try:
            await writer.remove(RACED)  # times out after OperationTimeoutMilliseconds: queued
            assert writer.stats().pending_invalidations == 1
            assert writer.health()["circuit"] == "closed"
            assert await writer.get_many([RACED], default="skipped") == {RACED: "skipped"}
            assert (await read(writer, db))[RACED] == 2
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")


async def test_a_batch_l2_hit_that_raced_a_received_removal_is_not_promoted_to_l1(
    redis_server: RedisServer, namespace: str
) -> None:
    """Redis answers the batch's MGET before another instance removes a key, and the removal's message is applied
    before the answer is looked at: the value is returned (the read overlapped the write) but not promoted to L1.
    The interleaving is made by holding the real MGET's answer until the real message was applied."""
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    async with (
        HybridCache(settings) as reader,
        HybridCache(settings) as writer,
        HybridCache(settings, wall_clock=clock_ahead) as filler,
    ):
        for cache in (reader, writer, filler):
            assert await cache.wait_until_connected(5.0)
        await read(filler, db)  # in L2, not in the reader's L1
        l2 = reader.internals.l2
        assert l2 is not None
        real_get_many = l2.get_many

        async def get_many_then_let_the_removal_pass(full_keys: Any) -> list[bytes | None]:
            raws = await real_get_many(full_keys)
            received = reader.stats().invalidations_received
            db.versions[RACED] = 2
            await writer.remove(RACED)
            await wait_until(
                lambda: reader.stats().invalidations_received > received, timeout=2.0, message="not applied"
            )
            return raws

        l2.get_many = get_many_then_let_the_removal_pass  # type: ignore[method-assign]
        try:
            assert await read(reader, db) == dict.fromkeys(KEYS, 1)  # overlapped the removal: allowed
        finally:
            l2.get_many = real_get_many  # type: ignore[method-assign]
        served = [(await read(reader, db))[RACED] for _ in range(3)]
        assert served == [2, 2, 2], f"after the removal was applied the reader served {served}"


async def test_while_untrusted_a_batch_checks_its_entries_against_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    """With the backplane off the reader never hears of invalidations and its table is never trusted: a batch's L2
    entries are judged by the generations in Redis (one more call for all of them). The prefix-invalidated entry is
    refused, the others are served from L2."""
    db = Database()
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    deaf = CacheSettings(service_name=namespace, configuration=redis_server.url, backplane={"enabled": False})
    async with HybridCache(settings) as writer, HybridCache(deaf) as reader:
        assert await writer.wait_until_connected(5.0)
        await read(writer, db)
        db.versions[RACED] = 2
        await writer.remove_by_prefix("Shop:b")  # a bump in Redis; the old entry stays there until its TTL
        assert reader.stats().backplane == "disabled"
        assert await reader.get_many(KEYS) == {**dict.fromkeys(KEYS, 1), RACED: None}
        assert reader.stats().l2_hits == 2
        assert reader.stats().stale_reads_rejected == 1
        assert await read(reader, db) == {**dict.fromkeys(KEYS, 1), RACED: 2}


# ---------------------------------------------------------------------------------------------- randomized


@dataclass(frozen=True, slots=True)
class Shape:
    reads: int = 20_000  # key reads (a batch of n keys makes n)
    min_writes: int = 500
    groups: int = 3
    keys_per_group: int = 6
    readers_per_instance: int = 6
    writers: int = 3
    time_limit: float = 15.0


SHAPE = Shape()


def key_of(group: int, item: int) -> str:
    return f"Item:g{group}:{item}"


def tags_of(key: str) -> tuple[str, ...]:
    return (f"color-{int(key.rsplit(':', 1)[1]) % 3}",)


class BatchWorkload:
    """Batch readers and writers over ``caches``, recording every key read and every write (test_consistency's
    :class:`Read` and :class:`Write`, so its checker applies unchanged)."""

    def __init__(self, caches: list[HybridCache], seed: int, shape: Shape = SHAPE) -> None:
        self.caches = caches
        self.seed = seed
        self.shape = shape
        self.keys = [key_of(g, i) for g in range(shape.groups) for i in range(shape.keys_per_group)]
        self.db = dict.fromkeys(self.keys, 0)
        self.reads: list[Read] = []
        self.writes: list[Write] = []
        self.batches = 0
        self.factory_calls = 0
        self.deadline = 0.0
        self.writing = asyncio.Lock()

    def _done(self) -> bool:
        return time.monotonic() > self.deadline or len(self.reads) >= self.shape.reads

    async def run(self) -> None:
        self.deadline = time.monotonic() + self.shape.time_limit
        rng = lambda name: random.Random(f"{self.seed}:{name}")  # noqa: E731
        async with asyncio.timeout(self.shape.time_limit + 15), asyncio.TaskGroup() as group:
            for index in range(len(self.caches)):
                for n in range(self.shape.readers_per_instance):
                    group.create_task(self._reader(index, rng(f"reader-{index}-{n}")))
            for n in range(self.shape.writers):
                group.create_task(self._writer(n % len(self.caches), rng(f"writer-{n}")))

    async def _load(self, keys: list[str], rng: random.Random) -> dict[str, int]:
        self.factory_calls += 1
        rows = {key: self.db[key] for key in keys}  # read when the factory starts: a racing write makes them stale
        await asyncio.sleep(rng.uniform(0, 0.005))
        return rows

    async def _reader(self, index: int, rng: random.Random) -> None:
        cache = self.caches[index]
        while not self._done():
            keys = rng.sample(self.keys, rng.randint(1, 6))
            started = time.monotonic()
            draw = rng.random()
            if draw < 0.8:
                self.batches += 1
                got = await cache.get_or_create_many(keys, lambda ks: self._load(ks, rng), tags=tags_of, ttl=60)
                self.reads += [Read(key, index, started, version, "batch") for key, version in got.items()]
            elif draw < 0.9:
                got = await cache.get_many(keys)
                self.reads += [Read(k, index, started, v, "get_many") for k, v in got.items() if v is not None]
            else:
                key = keys[0]

                async def load_one(key: str = key) -> int:
                    return (await self._load([key], rng))[key]

                version = await cache.get_or_create(key, load_one, tags=tags_of(key), ttl=60)
                self.reads.append(Read(key, index, started, version, "single"))
            await asyncio.sleep(0 if rng.random() < 0.5 else rng.uniform(0, 0.002))

    async def _writer(self, index: int, rng: random.Random) -> None:
        """Bump some keys, then invalidate (or set) them. Writers take turns: two writers setting one key could
        store their values out of order, which is the application's race, not the cache's."""
        cache = self.caches[index]
        groups, per_group = self.shape.groups, self.shape.keys_per_group
        while not self._done():
            await asyncio.sleep(rng.uniform(0, 0.006))
            async with self.writing:
                draw = rng.random()
                if draw < 0.55:
                    keys = rng.sample(self.keys, 1 if draw < 0.3 else rng.randint(2, 3))
                elif draw < 0.7:
                    group = rng.randrange(groups)
                    keys = [key_of(group, item) for item in rng.sample(range(per_group), rng.randint(1, 3))]
                else:
                    keys = rng.sample(self.keys, rng.randint(1, 3))
                for key in keys:
                    self.db[key] += 1
                if draw < 0.3:
                    kind = "key"
                    await cache.remove(keys[0])
                elif draw < 0.55:
                    kind = "remove_many"
                    await cache.remove_many(keys)
                elif draw < 0.7:
                    kind = "prefix"
                    await cache.remove_by_prefix(keys[0].rsplit(":", 1)[0])
                elif draw < 0.8:
                    kind = "tags"
                    await cache.invalidate(tags=sorted({tag for key in keys for tag in tags_of(key)}))
                elif draw < 0.95:
                    kind = "set_many"
                    await cache.set_many({key: self.db[key] for key in keys}, tags=tags_of, ttl=60)
                else:
                    kind = "clear"
                    await cache.clear()
                done = time.monotonic()
                self.writes += [Write(key, self.db[key], index, done, kind) for key in keys]

    async def final_sweep(self) -> list[Violation]:
        """Once settled, every instance serves exactly the database's version of every key."""
        last = max((w.done for w in self.writes), default=0.0)
        await asyncio.sleep(max(0.0, last + PROPAGATION_BOUND - time.monotonic()))  # the bound is a span of time
        stale = []
        for index, cache in enumerate(self.caches):
            started = time.monotonic()
            got = await cache.get_or_create_many(self.keys, lambda ks: self._load(ks, random.Random(0)), tags=tags_of)
            for key, version in got.items():
                if version != self.db[key]:
                    newest = max((w for w in self.writes if w.key == key), key=lambda w: w.version)
                    stale.append(Violation(Read(key, index, started, version, "sweep"), newest))
        return stale

    def report(self, name: str, violations: list[Violation]) -> str:
        stats = [cache.stats() for cache in self.caches]
        line = (
            f"[{name}] seed={self.seed} key_reads={len(self.reads)} batches={self.batches} writes={len(self.writes)} "
            f"factory_calls={self.factory_calls} l1_hits={sum(s.l1_hits for s in stats)} "
            f"l2_hits={sum(s.l2_hits for s in stats)} "
            f"stale_sets_prevented={sum(s.stale_sets_prevented for s in stats)} "
            f"violations={len(violations)}"
        )
        print(line)
        return line


def seed_for_run() -> int:
    configured = os.environ.get("HC_BATCH_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(2**32)


@asynccontextmanager
async def three_caches(server: RedisServer, service: str, *, protection: bool) -> AsyncIterator[list[HybridCache]]:
    settings = CacheSettings(service_name=service, configuration=server.url, backplane=HEARTBEAT)
    async with caches(settings, 3, stale_set_protection=protection) as started:
        yield started


async def test_no_batch_read_is_older_than_a_propagated_invalidation(redis_server: RedisServer, namespace: str) -> None:
    seed = seed_for_run()
    async with three_caches(redis_server, namespace, protection=True) as started:
        workload = BatchWorkload(started, seed)
        await workload.run()
        violations = find_violations(workload.reads, workload.writes)
        stale_at_rest = await workload.final_sweep()
        line = workload.report("batches, protected", violations)
        prevented = sum(cache.stats().stale_sets_prevented for cache in started)

    assert len(workload.reads) >= SHAPE.reads, f"cut short by its time limit: {line}"
    assert len(workload.writes) >= SHAPE.min_writes, line
    assert prevented > 0, f"the race the protection is for never happened: {line}"
    assert not violations, f"{line}\n" + "\n".join(map(str, violations[:10]))
    assert not stale_at_rest, f"{line}\nstale at rest:\n" + "\n".join(map(str, stale_at_rest[:10]))


async def test_without_stale_set_protection_the_batch_checker_finds_stale_reads(
    redis_server: RedisServer, namespace: str
) -> None:
    seed = seed_for_run()
    async with three_caches(redis_server, namespace, protection=False) as started:
        workload = BatchWorkload(started, seed)
        await workload.run()
        violations = find_violations(workload.reads, workload.writes)
        line = workload.report("batches, unprotected", violations)
    assert len(workload.reads) >= SHAPE.reads, line
    assert violations, f"no stale read found with the protection off: {line}"
