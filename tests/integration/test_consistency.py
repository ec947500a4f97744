"""Issue 3, acceptance 2: a randomized concurrent consistency test of invalidation across instances.

Three :class:`HybridCache` objects (each with its own Redis connections and backplane subscription) share one
private redis-server and one event loop. A versioned in-memory "database" maps each key to an integer version.

* **Readers** call ``get_or_create`` (sometimes plain ``get``) with *slow* factories: the factory reads the
  database version when it starts, then awaits 0-5 ms before returning it, so a write landing meanwhile produces
  the classic cache-aside stale set.
* **Writers** bump a key's version and then invalidate it: the exact key, a prefix covering it, one of its tags,
  the whole namespace, or several at once, chosen at random.

The checker (:func:`find_violations`): a read that *started* after a write's invalidation call *returned* plus
the propagation bound (0 on the writing instance, ``PROPAGATION_BOUND`` on the others) must return a version at
least as new as that write's. The run is seeded (printed, and in every failure message; set
``HC_CONSISTENCY_SEED`` to replay the same choices, though the interleaving also depends on timing).

The same workload with ``stale_set_protection=False`` must produce violations: that proves the checker and the
workload can catch the race the protection exists for. Two more runs inject faults mid-run (every subscriber
connection killed; the redis-server restarted); reads during the outage are held to the disconnected bound
instead, and reads after recovery to the normal one.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import BackplaneSettings
from tests.support.waiting import wait_until

PROPAGATION_BOUND = 0.05  # seconds: acceptance 1's deadline, used as the bound for other instances
HEARTBEAT = BackplaneSettings(
    heartbeat_interval_seconds=0.1, heartbeat_timeout_seconds=0.3, disconnected_expiration_seconds=0.5
)
# While an instance may not know it is cut off, it serves L1 entries until the heartbeat notices (interval +
# timeout), then entries younger than disconnected_expiration: staleness during an outage is bounded by their sum.
OUTAGE_BOUND = (
    HEARTBEAT.heartbeat_interval_seconds
    + HEARTBEAT.heartbeat_timeout_seconds
    + HEARTBEAT.disconnected_expiration_seconds
    + 0.2  # event-loop slack on a busy machine
)


# ---------------------------------------------------------------------------------------------------- the checker


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    version: int
    instance: int
    done: float  # time.monotonic() when the invalidation call returned
    kind: str = ""  # how it invalidated (for failure messages)


@dataclass(frozen=True, slots=True)
class Read:
    key: str
    instance: int
    started: float  # time.monotonic() when the read was called
    version: int
    source: str = ""  # where the value came from, as far as the counters tell (for failure messages)


@dataclass(frozen=True, slots=True)
class Violation:
    read: Read
    write: Write  # the newest write the read should have seen

    def __str__(self) -> str:
        r, w = self.read, self.write
        return (
            f"{r.key}: instance {r.instance} read v{r.version} (from {r.source}) at {r.started:.3f}, "
            f"{1000 * (r.started - w.done):.1f} ms after instance {w.instance}'s invalidation ({w.kind}) of "
            f"v{w.version} returned"
        )


Bound = Callable[[Read, Write], float]


def standard_bound(read: Read, write: Write) -> float:
    """0 on the instance that wrote, PROPAGATION_BOUND on the others."""
    return 0.0 if read.instance == write.instance else PROPAGATION_BOUND


def find_violations(reads: Sequence[Read], writes: Sequence[Write], bound: Bound = standard_bound) -> list[Violation]:
    """Every read that returned an older version than a write whose invalidation (+ bound) preceded the read."""
    by_key: dict[str, list[Write]] = defaultdict(list)
    for write in writes:
        by_key[write.key].append(write)
    violations = []
    for read in reads:
        newest: Write | None = None
        for write in by_key[read.key]:
            if write.done + bound(read, write) < read.started and (newest is None or write.version > newest.version):
                newest = write
        if newest is not None and read.version < newest.version:
            violations.append(Violation(read, newest))
    return violations


def test_checker_flags_only_reads_that_started_after_the_bound() -> None:
    writes = [Write("k", 2, instance=0, done=10.0)]
    reads = [
        Read("k", 0, started=9.9, version=1),  # began before the invalidation returned: may be old
        Read("k", 0, started=10.001, version=1),  # same instance, after: must be new
        Read("k", 1, started=10.02, version=1),  # other instance, inside the bound: may be old
        Read("k", 1, started=10.06, version=1),  # other instance, past the bound: must be new
        Read("k", 1, started=10.07, version=2),
        Read("other", 1, started=11.0, version=0),
    ]
    assert [(v.read.instance, v.read.started) for v in find_violations(reads, writes)] == [(0, 10.001), (1, 10.06)]


# ---------------------------------------------------------------------------------------------------- the workload


@dataclass(frozen=True, slots=True)
class Shape:
    """How big and how busy a run is."""

    reads: int = 10_000
    min_writes: int = 500
    groups: int = 3
    keys_per_group: int = 4
    readers_per_instance: int = 8
    writers: int = 3
    time_limit: float = 20.0


FULL = Shape()
SHORT = Shape(reads=3_000, min_writes=150)


def key_of(group: int, item: int) -> str:
    return f"Item:g{group}:{item}"


def tags_of(item: int) -> tuple[str, ...]:
    return (f"color-{item % 3}",)


@dataclass
class Outcome:
    reads: list[Read] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    fault_windows: list[tuple[float, float]] = field(default_factory=list)

    def bound(self, read: Read, write: Write) -> float:
        """The standard bound, except around a fault window (from the fault until every instance recovered).

        A write inside the window may have had its invalidation queued (Redis unreachable) until recovery, so it
        counts from the window's end. A read inside the window may be served by an instance that is cut off,
        which bounds its L1 by OUTAGE_BOUND instead.
        """
        for start, end in self.fault_windows:
            if start <= write.done <= end:
                return end - write.done + standard_bound(read, write)
            if start <= read.started <= end + PROPAGATION_BOUND:
                return OUTAGE_BOUND
        return standard_bound(read, write)


Fault = Callable[[list[HybridCache]], Awaitable[None]]


class Workload:
    """Readers and writers over ``caches``, recording every completed read and write."""

    def __init__(self, caches: list[HybridCache], seed: int, shape: Shape) -> None:
        self.caches = caches
        self.seed = seed
        self.shape = shape
        self.keys = [(g, i) for g in range(shape.groups) for i in range(shape.keys_per_group)]
        self.db: dict[str, int] = {key_of(g, i): 0 for g, i in self.keys}
        self.outcome = Outcome()
        self.deadline = 0.0
        self.factory_runs = 0
        self.fault_state = "none"  # "pending" until injected and recovered from, then "over"

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def _done(self) -> bool:
        if time.monotonic() > self.deadline:
            return True
        if self.fault_state == "pending":
            return False
        if self.fault_state == "over" and self.reads_after_recovery() < self.shape.reads // 3:
            return False
        return len(self.outcome.reads) >= self.shape.reads

    def reads_after_recovery(self) -> int:
        if not self.outcome.fault_windows:
            return 0
        end = self.outcome.fault_windows[-1][1]
        return sum(1 for r in self.outcome.reads if r.started > end)

    async def run(self, fault: Fault | None = None) -> Outcome:
        self.deadline = time.monotonic() + self.shape.time_limit
        tasks = [
            self._reader(index, self._rng(f"reader-{index}-{n}"))
            for index in range(len(self.caches))
            for n in range(self.shape.readers_per_instance)
        ]
        tasks += [self._writer(n % len(self.caches), self._rng(f"writer-{n}")) for n in range(self.shape.writers)]
        if fault is not None:
            self.fault_state = "pending"
            tasks.append(self._inject(fault))
        try:
            async with asyncio.timeout(self.shape.time_limit + 15), asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(task)
        except TimeoutError:
            raise AssertionError(f"the workload hung; tasks:\n{_task_stacks()}") from None
        return self.outcome

    async def _inject(self, fault: Fault) -> None:
        await wait_until(
            lambda: len(self.outcome.reads) >= self.shape.reads // 3,
            timeout=self.shape.time_limit,
            interval=0.01,
            message="the workload never got going",
        )
        resyncs = [resync_count(c) for c in self.caches]
        start = time.monotonic()
        await fault(self.caches)
        # Right after the fault every instance still *reports* connected (it has not read the EOF yet): recovery
        # means each has resynchronised since, and has nothing left to publish.
        try:
            await wait_until(
                lambda: all(recovered(c) and resync_count(c) > n for c, n in zip(self.caches, resyncs, strict=True)),
                timeout=10.0,
                message="recovery",
            )
        except AssertionError:
            states = [
                (s.backplane, s.pending_invalidations, s.circuit, resync_count(c))
                for c, s in ((c, c.stats()) for c in self.caches)
            ]
            raise AssertionError(f"the instances did not recover from the fault: {states}") from None
        self.outcome.fault_windows.append((start, time.monotonic()))
        self.fault_state = "over"

    async def _reader(self, index: int, rng: random.Random) -> None:
        cache = self.caches[index]
        while not self._done():
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            l1_hits = cache.counters.l1_hits
            started = time.monotonic()
            if rng.random() < 0.1:
                value = await cache.get(key, default=None)
                if value is not None:
                    source = "L1" if cache.counters.l1_hits > l1_hits else "L2"
                    self.outcome.reads.append(Read(key, index, started, int(value), f"get, {source}"))
            else:
                ran = [False]
                version = await cache.get_or_create(key, self._factory(key, rng, ran), tags=tags_of(item), ttl=60)
                # An L1 hit does not yield, so no other task can have moved the counter meanwhile.
                source = (
                    "factory" if ran[0] else "L1" if cache.counters.l1_hits == l1_hits + 1 else "L2 or a shared load"
                )
                self.outcome.reads.append(Read(key, index, started, version, source))
            # An L1 hit never yields to the loop; this lets the backplanes and writers run between reads.
            await asyncio.sleep(0 if rng.random() < 0.5 else rng.uniform(0, 0.002))

    def _factory(self, key: str, rng: random.Random, ran: list[bool] | None = None) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            self.factory_runs += 1
            if ran is not None:
                ran[0] = True
            version = self.db[key]  # read when the factory starts: a write racing it makes this value stale
            await asyncio.sleep(rng.uniform(0, 0.005))
            return version

        return load

    async def _writer(self, index: int, rng: random.Random) -> None:
        cache = self.caches[index]
        while not self._done():
            await asyncio.sleep(rng.uniform(0, 0.006))
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            self.db[key] += 1
            version = self.db[key]
            draw = rng.random()
            if draw < 0.5:
                kind = "key"
                await cache.remove(key)
            elif draw < 0.65:
                kind = "prefix"
                await cache.remove_by_prefix(f"Item:g{group}")
            elif draw < 0.8:
                kind = "tag"
                await cache.remove_by_tag(tags_of(item)[0])
            elif draw < 0.95:
                kind = "combined"
                await cache.invalidate(keys=[key], prefixes=["Nothing:here"], tags=["unrelated"])
            else:
                kind = "clear"
                await cache.clear()
            self.outcome.writes.append(Write(key, version, index, time.monotonic(), kind))

    async def final_sweep(self) -> list[Violation]:
        """Once everything has settled, every instance must serve exactly the database's version of every key."""
        last = max((w.done for w in self.outcome.writes), default=0.0)
        await asyncio.sleep(max(0.0, last + PROPAGATION_BOUND - time.monotonic()))  # the bound is a span of time
        stale = []
        for index, cache in enumerate(self.caches):
            for group, item in self.keys:
                key = key_of(group, item)
                started = time.monotonic()
                version = await cache.get_or_create(key, self._factory(key, random.Random(0)), tags=tags_of(item))
                if version != self.db[key]:
                    newest = max((w for w in self.outcome.writes if w.key == key), key=lambda w: w.version)
                    stale.append(Violation(Read(key, index, started, version), newest))
        return stale


def resync_count(cache: HybridCache) -> int:
    """How often the cache's backplane has resynchronised (not in ``stats()``, so read from the backplane)."""
    backplane = cache.internals.backplane
    assert backplane is not None
    return backplane.resyncs


def recovered(cache: HybridCache) -> bool:
    stats = cache.stats()
    return stats.backplane == "connected" and stats.pending_invalidations == 0


@asynccontextmanager
async def running_caches(
    server: RedisServer, service: str, *, protocol: int, protection: bool, count: int = 3
) -> AsyncIterator[list[HybridCache]]:
    settings = CacheSettings(
        service_name=service,
        configuration=server.url,
        protocol=protocol,
        backplane=HEARTBEAT,
        # A restart mid-run makes calls fail: a long break would turn that into minutes of factory-only reads.
        circuit_breaker={"break_duration_seconds": 0.2},
        operation_timeout_milliseconds=500,
    )
    async with AsyncExitStack() as stack:
        caches = [
            await stack.enter_async_context(HybridCache(settings, stale_set_protection=protection))
            for _ in range(count)
        ]
        for cache in caches:
            assert await cache.wait_until_connected(5.0)
        yield caches


def seed_for_run() -> int:
    configured = os.environ.get("HC_CONSISTENCY_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(2**32)


def report(name: str, seed: int, workload: Workload, violations: list[Violation]) -> str:
    caches = workload.caches
    outcome = workload.outcome
    prevented = sum(c.stats().stale_sets_prevented for c in caches)
    rejected = sum(c.stats().stale_reads_rejected for c in caches)
    hits = sum(c.stats().l1_hits for c in caches)
    line = (
        f"[{name}] seed={seed} reads={len(outcome.reads)} writes={len(outcome.writes)} "
        f"factory_runs={workload.factory_runs} l1_hits={hits} stale_sets_prevented={prevented} "
        f"stale_reads_rejected={rejected} violations={len(violations)}"
    )
    print(line)
    return line


def _task_stacks() -> str:
    lines = []
    for task in asyncio.all_tasks():
        frames = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(task.get_stack(limit=12)))
        lines.append(f"{task.get_name()}: {frames}")
    return "\n".join(sorted(lines))


def _details(violations: list[Violation], limit: int = 10) -> str:
    return "\n".join(str(v) for v in violations[:limit])


# ---------------------------------------------------------------------------------------------------- the runs


@pytest.mark.parametrize(("protocol", "shape"), [(2, FULL), (3, SHORT)], ids=["resp2-full", "resp3-short"])
async def test_no_read_is_older_than_a_propagated_invalidation(
    redis_server: RedisServer, namespace: str, protocol: int, shape: Shape
) -> None:
    seed = seed_for_run()
    async with running_caches(redis_server, namespace, protocol=protocol, protection=True) as caches:
        workload = Workload(caches, seed, shape)
        outcome = await workload.run()
        violations = find_violations(outcome.reads, outcome.writes)
        stale_at_rest = await workload.final_sweep()
        line = report(f"protected resp{protocol}", seed, workload, violations)

    assert len(outcome.reads) >= shape.reads, f"the run was cut short by its time limit: {line}"
    assert len(outcome.writes) >= shape.min_writes, line
    # The workload must actually produce the race the protection is for, or passing proves nothing.
    assert sum(c.stats().stale_sets_prevented for c in caches) > 0, line
    assert not violations, f"{line}\n{_details(violations)}"
    assert not stale_at_rest, f"{line}\nstale after the run settled:\n{_details(stale_at_rest)}"


async def test_without_stale_set_protection_the_checker_finds_violations(
    redis_server: RedisServer, namespace: str
) -> None:
    seed = seed_for_run()
    async with running_caches(redis_server, namespace, protocol=2, protection=False) as caches:
        workload = Workload(caches, seed, FULL)
        outcome = await workload.run()
        violations = find_violations(outcome.reads, outcome.writes)
        stale_at_rest = await workload.final_sweep()
        line = report("unprotected", seed, workload, violations)
    assert len(outcome.reads) >= FULL.reads, line
    assert violations, f"the checker found no stale read with the protection off: {line}"
    print(f"[unprotected] stale values left at rest: {len(stale_at_rest)}; e.g. {_details(violations, 3)}")


async def _kill_subscribers(server: RedisServer) -> None:
    admin = server.client()
    try:
        killed = await admin.client_kill_filter(_type="pubsub")
    finally:
        await admin.aclose()
    assert killed >= 3


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
@pytest.mark.parametrize("fault", ["kill-pubsub", "restart"])
async def test_consistency_holds_through_a_fault(
    redis_server: RedisServer, namespace: str, protocol: int, fault: str
) -> None:
    async def inject(caches: list[HybridCache]) -> None:
        if fault == "kill-pubsub":
            await _kill_subscribers(redis_server)
        else:
            await asyncio.to_thread(redis_server.restart)

    seed = seed_for_run()
    async with running_caches(redis_server, namespace, protocol=protocol, protection=True) as caches:
        workload = Workload(caches, seed, SHORT)
        outcome = await workload.run(inject)
        violations = find_violations(outcome.reads, outcome.writes, outcome.bound)
        stale_at_rest = await workload.final_sweep()
        start, end = outcome.fault_windows[0]
        line = report(f"{fault} resp{protocol}", seed, workload, violations) + f" window=({start:.3f}, {end:.3f})"
        after = [r for r in outcome.reads if r.started > end]

    assert outcome.fault_windows, line
    assert len(after) > 200, f"too few reads after recovery to judge it: {line}"
    print(f"[{fault} resp{protocol}] outage {1000 * (end - start):.0f} ms, {len(after)} reads after recovery")
    assert not violations, f"{line}\n{_details(violations)}"
    assert not stale_at_rest, f"{line}\nstale after the run settled:\n{_details(stale_at_rest)}"
