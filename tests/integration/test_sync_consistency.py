"""Issue 17: the randomized consistency test of ``test_consistency.py``, run through the sync API from threads.

Three :class:`~hybridcache.sync.SyncHybridCache` instances (each with its own loop thread, connections and
subscription) share one private redis-server. A versioned in-memory "database" maps each key to a version.

* **Readers**, 8 threads per instance, call ``get_or_create`` (sometimes ``get``) with *slow* plain factories:
  the factory reads the database version when it starts, then sleeps 0-5 ms, so a write landing meanwhile makes
  the classic cache-aside stale set.
* **Writers**, 3 threads (one per instance), bump a key's version and then invalidate it: the exact key, a prefix
  covering it, one of its tags, the whole namespace, or several at once.

The checker is the async test's (:func:`~tests.integration.test_consistency.find_violations`): a read that
*started* after a write's invalidation call *returned* (plus 0 on the writing instance, 50 ms on the others) must
return a version at least as new. Many reads are L1 hits served in the reading thread without the loop, so this
is what holds that path to the guarantee. The run is seeded (``HC_CONSISTENCY_SEED``, printed) and bounded in
reads and time; with ``stale_set_protection=False`` the same run must find violations (the checker can fail).

The multi-process variant runs the same workload in two forked OS processes, each with its own sync cache, the
database being counters in Redis (``INCR``); the test merges both histories (``time.monotonic`` is one clock for
every process on the host) and checks them together.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Protocol

import redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings
from hybridcache.sync import SyncHybridCache
from tests.integration.test_consistency import (
    FULL,
    HEARTBEAT,
    PROPAGATION_BOUND,
    SHORT,
    Read,
    Shape,
    Violation,
    Write,
    _details,
    find_violations,
    key_of,
    seed_for_run,
    tags_of,
)
from tests.support.forking import Channel, forked

JOIN_SLACK = 15.0  # seconds past the time limit the threads may take to stop before the run counts as hung


class Database(Protocol):
    """The source of truth: a version per key."""

    def version(self, key: str) -> int: ...

    def bump(self, key: str) -> int:
        """Make a new version of ``key``; return it."""
        ...


class MemoryDatabase:
    """Versions in a dict (one process); writers in several threads bump under a lock."""

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def version(self, key: str) -> int:
        return self._versions.get(key, 0)

    def bump(self, key: str) -> int:
        with self._lock:
            self._versions[key] = version = self._versions.get(key, 0) + 1
        return version


class RedisDatabase:
    """Versions as Redis counters (several processes): ``INCR`` makes each version once."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._prefix = prefix

    def version(self, key: str) -> int:
        return int(self._client.get(self._prefix + key) or 0)

    def bump(self, key: str) -> int:
        return int(self._client.incr(self._prefix + key))


class ThreadedWorkload:
    """Reader and writer threads over ``caches``, recording every completed read and write (instances numbered
    from ``instance_base``, so that histories of several processes can be merged)."""

    def __init__(
        self,
        caches: list[SyncHybridCache],
        seed: int,
        shape: Shape,
        *,
        db: Database | None = None,
        instance_base: int = 0,
    ) -> None:
        self.caches = caches
        self.seed = seed
        self.shape = shape
        self.keys = [(g, i) for g in range(shape.groups) for i in range(shape.keys_per_group)]
        self.db: Database = db if db is not None else MemoryDatabase()
        self.instance_base = instance_base
        self.reads: list[Read] = []  # list.append is atomic: threads record without a lock
        self.writes: list[Write] = []
        self.factory_runs = 0
        self.errors: list[BaseException] = []
        self.deadline = 0.0

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def _done(self) -> bool:
        return time.monotonic() > self.deadline or len(self.reads) >= self.shape.reads

    def run(self) -> None:
        self.deadline = time.monotonic() + self.shape.time_limit
        threads = [
            threading.Thread(target=self._guarded, args=(self._reader, index, self._rng(f"reader-{index}-{n}")))
            for index in range(len(self.caches))
            for n in range(self.shape.readers_per_instance)
        ]
        threads += [
            threading.Thread(target=self._guarded, args=(self._writer, n % len(self.caches), self._rng(f"w-{n}")))
            for n in range(self.shape.writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, self.deadline + JOIN_SLACK - time.monotonic()))
        hung = [thread.name for thread in threads if thread.is_alive()]
        assert not hung, f"threads still running {JOIN_SLACK}s past the time limit: {hung}"
        assert not self.errors, f"a thread failed: {self.errors[:3]!r}"

    def _guarded(self, work: Callable[[int, random.Random], None], index: int, rng: random.Random) -> None:
        try:
            work(index, rng)
        except BaseException as exc:
            self.errors.append(exc)
            self.deadline = 0.0  # stop everyone

    def _reader(self, index: int, rng: random.Random) -> None:
        cache = self.caches[index]
        index += self.instance_base
        while not self._done():
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            started = time.monotonic()
            if rng.random() < 0.1:
                value = cache.get(key, default=None)
                if value is not None:
                    self.reads.append(Read(key, index, started, int(value), "get"))
            else:
                ran = [False]
                version = cache.get_or_create(key, self._factory(key, rng, ran), tags=tags_of(item), ttl=60)
                self.reads.append(Read(key, index, started, version, "factory" if ran[0] else "cache"))
            if rng.random() >= 0.5:
                time.sleep(rng.uniform(0, 0.002))

    def _factory(self, key: str, rng: random.Random, ran: list[bool] | None = None) -> Callable[[], int]:
        def load() -> int:
            self.factory_runs += 1  # a statistic only: a lost increment between threads does not matter
            if ran is not None:
                ran[0] = True
            version = self.db.version(key)  # read when the factory starts: a racing write makes it stale
            time.sleep(rng.uniform(0, 0.005))
            return version

        return load

    def _writer(self, index: int, rng: random.Random) -> None:
        cache = self.caches[index]
        index += self.instance_base
        while not self._done():
            time.sleep(rng.uniform(0, 0.006))
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            version = self.db.bump(key)
            draw = rng.random()
            if draw < 0.5:
                kind = "key"
                cache.remove(key)
            elif draw < 0.65:
                kind = "prefix"
                cache.remove_by_prefix(f"Item:g{group}")
            elif draw < 0.8:
                kind = "tag"
                cache.remove_by_tag(tags_of(item)[0])
            elif draw < 0.95:
                kind = "combined"
                cache.invalidate(keys=[key], prefixes=["Nothing:here"], tags=["unrelated"])
            else:
                kind = "clear"
                cache.clear()
            self.writes.append(Write(key, version, index, time.monotonic(), kind))

    def final_sweep(self) -> list[Read]:
        """Once everything has settled, every instance must serve exactly the database's version of every key:
        the reads that did not."""
        last = max((w.done for w in self.writes), default=0.0)
        time.sleep(max(0.0, last + PROPAGATION_BOUND - time.monotonic()))  # the bound is a span of time
        stale = []
        for index, cache in enumerate(self.caches, start=self.instance_base):
            for group, item in self.keys:
                key = key_of(group, item)
                started = time.monotonic()
                version = cache.get_or_create(key, self._factory(key, random.Random(0)), tags=tags_of(item))
                if version != self.db.version(key):
                    stale.append(Read(key, index, started, version, f"sweep; the database has {self.db.version(key)}"))
        return stale

    def worst_lag(self) -> float:
        return worst_lag(self.reads, self.writes)


def worst_lag(reads: list[Read], writes: list[Write]) -> float:
    """The longest a read returned an older version than a write that returned before the read started (within
    the bound or not): how stale the readers were in fact."""
    by_key: dict[str, list[Write]] = {}
    for write in writes:
        by_key.setdefault(write.key, []).append(write)
    worst = 0.0
    for read in reads:
        for write in by_key.get(read.key, ()):
            if write.done < read.started and read.version < write.version:
                worst = max(worst, read.started - write.done)
    return worst


@contextmanager
def sync_caches(
    server: RedisServer, service: str, *, protection: bool, count: int = 3
) -> Iterator[list[SyncHybridCache]]:
    settings = CacheSettings(
        service_name=service,
        configuration=server.url,
        backplane=HEARTBEAT,
        circuit_breaker={"break_duration_seconds": 0.2},
        operation_timeout_milliseconds=500,
    )
    with ExitStack() as stack:
        caches = [stack.enter_context(SyncHybridCache(settings, stale_set_protection=protection)) for _ in range(count)]
        for cache in caches:
            assert cache.wait_until_connected(5.0)
        yield caches


def report(name: str, workload: ThreadedWorkload, violations: list[Violation]) -> str:
    stats = [cache.stats() for cache in workload.caches]
    line = (
        f"[sync {name}] seed={workload.seed} reads={len(workload.reads)} writes={len(workload.writes)} "
        f"factory_runs~{workload.factory_runs} l1_hits={sum(s.l1_hits for s in stats)} "
        f"stale_sets_prevented={sum(s.stale_sets_prevented for s in stats)} "
        f"worst_lag_ms={1000 * workload.worst_lag():.1f} violations={len(violations)}"
    )
    print(line)
    return line


def test_no_read_through_the_sync_api_is_older_than_a_propagated_invalidation(
    redis_server: RedisServer, namespace: str
) -> None:
    seed = seed_for_run()
    with sync_caches(redis_server, namespace, protection=True) as caches:
        workload = ThreadedWorkload(caches, seed, FULL)
        workload.run()
        violations = find_violations(workload.reads, workload.writes)
        stale_at_rest = workload.final_sweep()
        line = report("protected", workload, violations)
        prevented = sum(cache.stats().stale_sets_prevented for cache in caches)

    assert len(workload.reads) >= FULL.reads, f"the run was cut short by its time limit: {line}"
    assert len(workload.writes) >= FULL.min_writes, line
    assert prevented > 0, f"the workload never raced a write against a factory: {line}"
    assert not violations, f"{line}\n{_details(violations)}"
    assert not stale_at_rest, f"{line}\nstale after the run settled: {stale_at_rest[:10]}"


def test_without_stale_set_protection_the_sync_run_finds_violations(redis_server: RedisServer, namespace: str) -> None:
    seed = seed_for_run()
    with sync_caches(redis_server, namespace, protection=False) as caches:
        workload = ThreadedWorkload(caches, seed, FULL)
        workload.run()
        violations = find_violations(workload.reads, workload.writes)
        line = report("unprotected", workload, violations)
    assert len(workload.reads) >= FULL.reads, line
    assert violations, f"the checker found no stale read with the protection off: {line}"


def test_two_processes_with_their_own_sync_cache_serve_no_read_older_than_a_propagated_invalidation(
    redis_server: RedisServer, namespace: str
) -> None:
    """Two forked OS processes, each one sync cache with 8 reader threads and 2 writer threads, the database in
    Redis: the merged history holds to the same bounds (0 in the writing process, 50 ms in the other)."""
    seed = seed_for_run()
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        backplane=HEARTBEAT,
        circuit_breaker={"break_duration_seconds": 0.2},
        operation_timeout_milliseconds=500,
    )
    shape = dataclasses.replace(SHORT, readers_per_instance=8, writers=2)

    def process(index: int, channel: Channel) -> None:
        db = RedisDatabase(redis_server.url, f"truth:{namespace}:")
        with SyncHybridCache(settings) as cache:
            assert cache.wait_until_connected(5.0)
            channel.send(ready=True)
            channel.receive()  # both processes start together
            workload = ThreadedWorkload([cache], seed + index, shape, db=db, instance_base=index)
            workload.run()
            stats = cache.stats()
            channel.send(
                reads=[dataclasses.astuple(r) for r in workload.reads],
                writes=[dataclasses.astuple(w) for w in workload.writes],
                prevented=stats.stale_sets_prevented,
                received=stats.invalidations_received,
            )
            channel.receive()  # both have finished: the sweep sees the settled state
            channel.send(stale=[dataclasses.astuple(r) for r in workload.final_sweep()])
            channel.receive()

    with forked(2, process, reap_within=30.0) as workers:
        for _, channel in workers:
            assert channel.receive()["ready"]
        for _, channel in workers:
            channel.send(go=True)
        results = [channel.receive(timeout=shape.time_limit + 30) for _, channel in workers]
        time.sleep(PROPAGATION_BOUND)  # the last write of either process has reached the other
        for _, channel in workers:
            channel.send(sweep=True)
        stale = [Read(*r) for _, channel in workers for r in channel.receive(timeout=30)["stale"]]
        for _, channel in workers:
            channel.send(exit=True)

    reads = [Read(*r) for result in results for r in result["reads"]]
    writes = [Write(*w) for result in results for w in result["writes"]]
    violations = find_violations(reads, writes)
    line = (
        f"[sync two processes] seed={seed} reads={len(reads)} writes={len(writes)} "
        f"stale_sets_prevented={[r['prevented'] for r in results]} received={[r['received'] for r in results]} "
        f"worst_lag_ms={1000 * worst_lag(reads, writes):.1f} violations={len(violations)}"
    )
    print(line)
    assert len(reads) >= shape.reads, f"cut short by the time limit: {line}"
    assert len(writes) >= shape.min_writes, line
    assert all(r["received"] > 0 for r in results), f"the processes did not invalidate each other: {line}"
    assert not violations, f"{line}\n{_details(violations)}"
    assert not stale, f"{line}\nstale after the run settled: {stale[:10]}"
