"""Issue 8, acceptance 1 on Redis Cluster: the cache's suites on a real 6-node local cluster, its key layout, the
circuit breaker around a paused master, and the consistency checker across a failover.

* The suites written for a standalone server run on the session's cluster too, but not from here: each test that
  must hold on every topology is marked ``@pytest.mark.all_topologies`` in its own module, and
  tests/integration/conftest.py parametrises it over ``standalone``, ``cluster`` and ``sentinel`` (test ids
  ``[cluster-l2-only]``, ``[cluster-l1+l2]``, ``[cluster]`` …; select them with ``-k cluster``). On the cluster they
  run in the L2-only and L1+L2 modes; the fixtures that say where Redis is follow the topology: ``cache_env``,
  ``raw_redis`` (a cluster client) and ``redis_endpoint``, whose ``sync_client()`` is a ``ClusterAdmin`` (key
  commands on the key's master, command statistics summed over the masters; tests/support/redis_topology.py).
  Marked: most of the contract (test_cache_contract.py), the five delivery tests of test_invalidation.py, all of
  test_stampede.py, fail-safe and factory timeouts (test_fail_safe.py), eager refresh and TTL jitter
  (test_eager_refresh.py). Not marked: the L1-only tests (no Redis to vary), and those that pause the one
  standalone server (test_fail_safe.py's outage tests, all of test_circuit_faults.py), since they ask for
  ``redis_server``, which is always a standalone server of the test's own.
* Circuit faults on the cluster instead: SIGSTOP the master owning a key's slot (a private cluster, ``slow``);
  the breaker opens, every call still answers without waiting on the frozen node, and it closes once the node is
  back, with L2 hits returning.
* The layout: an entry, its ``hc-kgen`` and its ``hc-lock`` share a slot; entries spread over the masters; the meta
  keys and the channel share one slot that misses and L2 hits never touch; no call ever fails (a CROSSSLOT error
  would surface as an L2 error or an invalidation failure).
* The randomized consistency workload (tests/integration/test_consistency.py) on the cluster, then across a
  ``CLUSTER FAILOVER`` of the master owning the meta slot and across a killed master (private clusters, ``slow``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from harness.redis_cluster import RedisClusterProcess
from hybridcache import CacheSettings, HybridCache
from hybridcache._resilience import CircuitState
from tests.integration.conftest import INSTANCE_NAME
from tests.integration.test_consistency import (
    HEARTBEAT,
    SHORT,
    Fault,
    Shape,
    Violation,
    Workload,
    find_violations,
    report,
    seed_for_run,
)
from tests.support.waiting import wait_until

# ------------------------------------------------------------------------------------ shared helpers


@asynccontextmanager
async def running_caches(
    configuration: str, service: str, *, count: int = 3, protocol: int = 2, **overrides: Any
) -> AsyncIterator[list[HybridCache]]:
    """``count`` started caches on ``configuration`` (any topology), each with a confirmed subscription."""
    fields: dict[str, Any] = {
        "service_name": service,
        "instance_name": INSTANCE_NAME,
        "configuration": configuration,
        "protocol": protocol,
        "backplane": HEARTBEAT,
        "circuit_breaker": {"break_duration_seconds": 0.2},
        "operation_timeout_milliseconds": 500,
    }
    fields.update(overrides)
    protection = fields.pop("stale_set_protection", True)
    settings = CacheSettings(**fields)
    async with AsyncExitStack() as stack:
        caches = [
            await stack.enter_async_context(HybridCache(settings, stale_set_protection=protection))
            for _ in range(count)
        ]
        for cache_ in caches:
            assert await cache_.wait_until_connected(5.0), "invalidation channel not confirmed"
        yield caches


def errors(caches: list[HybridCache]) -> dict[str, int]:
    """Failed Redis calls of any kind (a CROSSSLOT error would land here), summed over ``caches``."""
    return {
        "l2_errors": sum(c.stats().l2_errors for c in caches),
        "invalidation_failures": sum(c.stats().invalidation_failures for c in caches),
        "pending": sum(c.stats().pending_invalidations for c in caches),
    }


def epochs(caches: list[HybridCache]) -> list[str | None]:
    return [c.internals.table.epoch for c in caches]


class CountingWorkload(Workload):
    """The workload of test_consistency, counting the reads after recovery incrementally.

    The base class rescans every recorded read on each ``_done()`` check (every reader and writer iteration): once
    a long fault window (a Sentinel failover) has piled up tens of thousands of reads, that quadratic scan stalls
    the event loop past the propagation bound, and the checker reports the loop's lag as stale reads.
    """

    def __init__(self, caches: list[HybridCache], seed: int, shape: Shape) -> None:
        super().__init__(caches, seed, shape)
        self._counted = (0.0, 0, 0)  # window end, reads examined, reads after it

    def reads_after_recovery(self) -> int:
        windows = self.outcome.fault_windows
        if not windows:
            return 0
        end = windows[-1][1]
        known_end, examined, after = self._counted if self._counted[0] == end else (end, 0, 0)
        reads = self.outcome.reads
        after += sum(1 for read in itertools.islice(reads, examined, None) if read.started > end)
        self._counted = (known_end, len(reads), after)
        return after


@dataclass
class ConsistencyRun:
    workload: Workload
    violations: list[Violation]
    stale_at_rest: list[Violation]
    line: str
    errors: dict[str, int]


async def run_consistency(
    caches: list[HybridCache], name: str, *, shape: Shape = SHORT, fault: Fault | None = None
) -> ConsistencyRun:
    """The randomized readers/writers workload of test_consistency on ``caches``, checked as it checks it."""
    seed = seed_for_run()
    workload = CountingWorkload(caches, seed, shape)
    outcome = await workload.run(fault)
    violations = find_violations(outcome.reads, outcome.writes, outcome.bound)  # standard bound without a fault
    stale_at_rest = await workload.final_sweep()
    line = report(name, seed, workload, violations)
    return ConsistencyRun(workload, violations, stale_at_rest, line, errors(caches))


def details(violations: list[Violation], limit: int = 10) -> str:
    return "\n".join(str(v) for v in violations[:limit])


def assert_consistent(run: ConsistencyRun, shape: Shape = SHORT) -> None:
    outcome = run.workload.outcome
    assert len(outcome.reads) >= shape.reads, f"the run was cut short by its time limit: {run.line}"
    assert len(outcome.writes) >= shape.min_writes, run.line
    assert not run.violations, f"{run.line}\n{details(run.violations)}"
    assert not run.stale_at_rest, f"{run.line}\nstale after the run settled:\n{details(run.stale_at_rest)}"


# ------------------------------------------------------------------------------------ topology and layout


@pytest.mark.parametrize("form", ["stackexchange", "url", "one-seed"])
async def test_every_configuration_form_reaches_the_cluster(
    redis_cluster: RedisClusterProcess, namespace: str, form: str
) -> None:
    host, port = redis_cluster.seeds[0]
    configuration = {
        "stackexchange": redis_cluster.configuration,
        "url": redis_cluster.url,
        "one-seed": f"{host}:{port}",  # a single endpoint is probed: cluster_enabled:1 means a cluster seed
    }[form]
    async with running_caches(configuration, namespace, count=2) as (writer, other):
        assert writer.internals.clients is not None
        assert writer.internals.clients.topology == "cluster"
        assert await writer.get_or_create("k", const("v")) == "v"
        assert await other.get_or_create("k", const("other")) == "v", "the value must come from the cluster"
        assert other.stats().l2_hits == 1
        await writer.remove("k")
        await wait_until(
            lambda: other.stats().invalidations_received == 1, timeout=1.0, message="invalidation not received"
        )
        assert errors([writer, other]) == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}


def const(value: Any) -> Any:
    async def load() -> Any:
        return value

    return load


async def test_an_entry_its_generation_and_its_lock_share_a_slot_and_entries_spread(
    redis_cluster: RedisClusterProcess, namespace: str
) -> None:
    keys = [f"Dealership:{n}" for n in range(60)] + ["Dealership:{42}:search", "Search:{ford}:10"]
    async with running_caches(redis_cluster.url, namespace, count=1, distributed_lock={"enabled": True}) as (c,):
        assert c.internals.l2 is not None
        l2 = c.internals.l2
        for key in keys:
            await c.get_or_create(key, const(key))  # each miss creates its key's capture token (hc-kgen)
        masters = set()
        client = redis_cluster.cluster_client()
        try:
            for key in keys:
                full = f"{namespace}:v1:{key}"
                entry, kgen, lock = l2.redis_key(full), l2.key_token_key(full), l2.lock_key(full)
                assert key_slot(entry.encode()) == key_slot(kgen.encode()) == key_slot(lock.encode()), key
                assert client.exists(entry, kgen) == 2, f"{entry} or {kgen} is not where the layout says"
                masters.add(redis_cluster.master_for_key(entry))
            await c.invalidate(keys=keys)  # deletes every entry and its token, each in its own slot
            for key in keys:
                full = f"{namespace}:v1:{key}"
                assert client.exists(l2.redis_key(full), l2.key_token_key(full)) == 0, key
            meta = {l2.generations_key, l2.sequence_key, l2.channel}
            assert len({key_slot(k.encode()) for k in meta}) == 1, "meta keys and channel must share one slot"
            assert client.exists(l2.generations_key, l2.sequence_key) == 2
        finally:
            client.close()
        assert len(masters) == 3, f"60 entries all landed on {masters}: keys do not spread over the masters"
        assert errors([c]) == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}


async def test_misses_and_l2_hits_never_touch_the_meta_slot(redis_cluster: RedisClusterProcess, namespace: str) -> None:
    """The meta slot sees invalidations, heartbeats and resyncs only: a miss captures prefix/tag generations from
    the local mirror and checks only its own key's generation (in its own slot), and an L2 hit is one GET."""
    async with running_caches(redis_cluster.url, namespace, count=2) as (writer, reader_):
        assert writer.internals.l2 is not None
        meta_master = redis_cluster.master_for_key(writer.internals.l2.generations_key)
        keys = [
            key
            for key in (f"Dealership:Search:{n}" for n in range(400))
            if redis_cluster.master_for_key(writer.internals.l2.redis_key(f"{namespace}:v1:{key}")) != meta_master
        ][:150]
        await writer.remove_by_prefix("Dealership:Search")  # a generation to capture, so the mirror has a field
        await wait_until(lambda: reader_.stats().invalidations_received == 1, timeout=1, message="not received")
        with redis_cluster.client(meta_master) as node:
            node.config_resetstat()
            for key in keys:
                await writer.get_or_create(key, const(key), tags=("dealerships",))
            for key in keys:
                assert await reader_.get_or_create(key, const("wrong")) == key
            stats = node.info("commandstats")
        assert reader_.stats().l2_hits == len(keys)
        calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
        # Only background traffic may remain: the heartbeat's GET of the sequence number (every 100 ms here).
        assert scripts == 0, f"misses ran scripts on the meta slot's master: {calls}"
        assert calls.get("hmget", 0) == calls.get("hgetall", 0) == 0, calls
        assert calls.get("get", 0) < 100, f"{2 * len(keys)} reads sent GETs to the meta master: {calls}"


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_misses_with_the_backplane_off_store_their_values(
    redis_cluster: RedisClusterProcess, namespace: str, protocol: int
) -> None:
    """``Backplane:Enabled=false`` leaves the local table untrusted for good, so every miss captures the prefix/tag
    generations from the meta slot itself (issue 13, item 10: that capture ran a GET on the generations hash,
    answered WRONGTYPE, and 50 misses made 50 L2 errors, stored nothing and opened the breaker)."""
    settings = CacheSettings(
        service_name=namespace, configuration=redis_cluster.url, protocol=protocol, backplane={"enabled": False}
    )
    async with HybridCache(settings) as writer, HybridCache(settings) as reader_:
        keys = [f"Dealership:Search:{n}" for n in range(50)]
        for key in keys:
            assert await writer.get_or_create(key, const(key), tags=("dealerships",)) == key
        assert writer.stats().l2_errors == 0
        assert writer.health()["circuit"] == "closed"
        for key in keys:
            assert await reader_.get_or_create(key, const("wrong")) == key
        assert reader_.stats().l2_hits == len(keys), "the values were not stored in Redis"


async def test_a_mixed_workload_never_fails_a_call(
    redis_cluster: RedisClusterProcess, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Multi-key invalidations across slots, tags, prefixes, clear, sets and the distributed lock: no CROSSSLOT."""
    with caplog.at_level(logging.WARNING, logger="hybridcache"):
        async with running_caches(redis_cluster.url, namespace, count=2, distributed_lock={"enabled": True}) as caches:
            first, second = caches
            keys = [f"Car:{n}" for n in range(30)]
            for key in keys:
                await first.get_or_create(key, const(1), tags=("cars", f"car-{key}"))
                await second.set(f"Truck:{key}", 2, tags=("trucks",))
            await asyncio.gather(*(second.get_or_create(f"Cold:{n}", const(n)) for n in range(20) for _ in range(3)))
            await first.invalidate(keys=keys[:10], prefixes=["Truck", "Nothing"], tags=["cars", "trucks"])
            await second.remove_by_tag("car-Car:20")
            await second.clear()
            for key in keys:
                assert await first.get_or_create(key, const(3)) == 3
            found = errors(caches)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "CROSSSLOT" in m.upper()], messages
    assert found == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}, messages


# ------------------------------------------------------------------------------------ circuit faults

FAULT_OPERATION_TIMEOUT = 0.05
FAULT_BREAK = 0.5


def fault_settings(namespace: str, configuration: str) -> CacheSettings:
    """L2-only (so a warm read is an L2 read), a 50 ms operation timeout and a 0.5 s break after 3 failures."""
    return CacheSettings(
        service_name=namespace,
        configuration=configuration,
        memory_cache={"enabled": False},
        operation_timeout_milliseconds=int(FAULT_OPERATION_TIMEOUT * 1000),
        circuit_breaker={"failure_threshold": 3, "break_duration_seconds": FAULT_BREAK},
    )


@dataclass
class PauseOutcome:
    slowest_before_open: float  # seconds, the longest call from the pause until the breaker opened
    slowest_while_open: float  # seconds, the longest call inside the break
    calls_while_open: int
    closed_after: float  # seconds from resume() until the breaker closed


async def pause_opens_and_resume_closes_the_breaker(
    cache_: HybridCache, warm: list[str], fresh: Iterator[str], pause: Callable[[], None], resume: Callable[[], None]
) -> PauseOutcome:
    """Store ``warm`` and check they are L2 hits; ``pause()``; drive misses (``fresh`` keys) and warm reads until
    the breaker opens, then misses through the break, checking every answer; ``resume()``; keep misses flowing until
    the breaker closes (a call carries the half-open probe); check ``warm`` are L2 hits again. The cache must be
    L2-only (:func:`fault_settings`), so a warm key can only come back from L2."""
    opened: list[float] = []
    cache_.breaker.on_transition = lambda _old, new: (
        opened.append(time.monotonic()) if new is CircuitState.OPEN else None
    )

    async def answer(key: str) -> float:
        began = time.perf_counter()
        assert await cache_.get_or_create(key, const(key)) == key
        return time.perf_counter() - began

    async def l2_hits_of_warm_keys() -> int:
        before = cache_.stats().l2_hits
        for key in warm:
            assert await cache_.get_or_create(key, const(f"not {key}")) == key, "not served from L2"
        return cache_.stats().l2_hits - before

    for key in warm:
        await answer(key)
    assert await l2_hits_of_warm_keys() == len(warm)
    pause()
    try:
        before_open = []
        for n in range(200):
            if cache_.breaker.state is CircuitState.OPEN:
                break
            before_open.append(await answer(warm[n % len(warm)] if n % 2 else next(fresh)))
        assert cache_.breaker.state is CircuitState.OPEN, f"breaker still {cache_.breaker.state} after {n} calls"
        while_open = []
        while time.monotonic() < opened[-1] + FAULT_BREAK * 0.8 and len(while_open) < 200:
            took = await answer(next(fresh))
            assert cache_.breaker.state is CircuitState.OPEN
            while_open.append(took)
    finally:
        resume()
    back = time.monotonic()

    async def closed() -> bool:
        await answer(next(fresh))
        return cache_.breaker.state is CircuitState.CLOSED

    await wait_until(
        closed,
        timeout=FAULT_BREAK + FAULT_OPERATION_TIMEOUT + 1.0,
        interval=0.002,
        message=f"breaker did not close within {FAULT_BREAK}s + one probe of Redis being back",
    )
    closed_after = time.monotonic() - back
    assert await l2_hits_of_warm_keys() == len(warm), "entries stored before the pause are not L2 hits again"
    return PauseOutcome(max(before_open), max(while_open), len(while_open), closed_after)


def assert_no_call_waited_on_the_frozen_node(outcome: PauseOutcome) -> None:
    # Before it opens a call waits at most for its few Redis operations, each bounded by the operation timeout;
    # inside the break it touches no socket. Both bounds are generous for a loaded machine, yet a call that waited
    # for the frozen node (a retry loop, a reconnect without a deadline) would blow them.
    assert outcome.slowest_before_open < 10 * FAULT_OPERATION_TIMEOUT, outcome
    assert outcome.calls_while_open >= 20, f"too few calls fitted in the break: {outcome}"
    assert outcome.slowest_while_open < FAULT_OPERATION_TIMEOUT, outcome
    assert outcome.closed_after <= FAULT_BREAK + FAULT_OPERATION_TIMEOUT + 1.0, outcome


@pytest.mark.slow
async def test_a_paused_master_opens_the_breaker_and_its_return_closes_it(namespace: str) -> None:
    """SIGSTOP the master owning a key's slot (not the meta slot's master: the backplane stays up) for less than
    the node timeout, so no replica takes over: the breaker opens, every ``get_or_create`` answers from the
    factory with no call waiting more than a few operation timeouts; after SIGCONT the breaker closes within its
    break plus a probe, and the entries stored before the pause are L2 hits again."""
    with RedisClusterProcess(node_timeout_ms=15_000) as cluster:  # a private cluster, no failover during the pause
        async with HybridCache.from_settings(fault_settings(namespace, cluster.url)) as cache_:
            assert await cache_.wait_until_connected(5)
            assert cache_.internals.l2 is not None
            l2 = cache_.internals.l2
            meta_master = cluster.master_for_key(l2.generations_key)
            frozen = next(port for _, port in cluster.masters() if port != meta_master)
            on_frozen = (
                key
                for key in (f"Dealership:{n}" for n in itertools.count())
                if cluster.master_for_key(l2.redis_key(f"{namespace}:v1:{key}")) == frozen
            )
            warm = [next(on_frozen) for _ in range(5)]
            node = cluster.nodes[frozen]
            outcome = await pause_opens_and_resume_closes_the_breaker(cache_, warm, on_frozen, node.pause, node.resume)
            assert cluster.master_for_key(l2.redis_key(f"{namespace}:v1:{warm[0]}")) == frozen, "a failover happened"
            print(f"[cluster pause] {outcome}")
            assert_no_call_waited_on_the_frozen_node(outcome)


# ------------------------------------------------------------------------------------ consistency


async def test_the_consistency_workload_holds_on_the_cluster(
    redis_cluster: RedisClusterProcess, namespace: str
) -> None:
    async with running_caches(redis_cluster.url, namespace) as caches:
        run = await run_consistency(caches, "cluster")
        prevented = sum(c.stats().stale_sets_prevented for c in caches)
    assert prevented > 0, f"the workload never raced a store against a write: {run.line}"
    assert_consistent(run)
    assert run.errors == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}, run.line


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterProcess]:
    """A cluster of this test's own, to fail over or break."""
    with RedisClusterProcess() as cluster:
        yield cluster


@pytest.mark.slow
async def test_consistency_holds_across_a_failover_of_the_meta_slot(
    private_cluster: RedisClusterProcess, namespace: str
) -> None:
    """CLUSTER FAILOVER on the replica of the master that owns ``{…hybridcache:…}`` while readers and writers run:
    no stale read, every cache keeps answering, and every cache moves to a new generation epoch (the new master
    has another run_id)."""
    cluster = private_cluster
    async with running_caches(cluster.url, namespace) as caches:
        assert caches[0]._l2 is not None
        meta_master = cluster.master_for_key(caches[0]._l2.generations_key)
        replica = cluster.replicas_of(meta_master)[0]
        before = epochs(caches)
        assert len(set(before)) == 1
        assert before[0] is not None

        async def promote(_caches: list[HybridCache]) -> None:
            await asyncio.to_thread(cluster.failover, replica)

        run = await run_consistency(caches, "cluster failover", fault=promote)
        after = epochs(caches)
        assert cluster.master_for_key(caches[0]._l2.generations_key) == replica
    start, end = run.workload.outcome.fault_windows[0]
    reads_after = [r for r in run.workload.outcome.reads if r.started > end]
    print(f"[cluster failover] recovery {1000 * (end - start):.0f} ms, {len(reads_after)} reads after; {run.errors}")
    assert len(reads_after) > 200, f"too few reads after the failover to judge it: {run.line}"
    assert_consistent(run)
    assert len(set(after)) == 1, after
    assert after[0] not in before, f"epoch {before} -> {after}: not renewed by the failover"


@pytest.mark.slow
async def test_a_killed_master_is_replaced_and_the_caches_keep_answering(
    private_cluster: RedisClusterProcess, namespace: str
) -> None:
    """SIGKILL the master of the meta slot: every call still returns the right value (factory fallback while its
    slots are down), a replica takes over after the node timeout, L2 and invalidations work again, new epoch."""
    cluster = private_cluster
    async with running_caches(cluster.url, namespace, count=2) as (first, second):
        assert first.internals.l2 is not None
        meta_master = cluster.master_for_key(first.internals.l2.generations_key)
        before = epochs([first, second])
        keys = [f"K:{n}" for n in range(30)]
        for key in keys:
            await first.get_or_create(key, const(key))
        kill = asyncio.create_task(asyncio.to_thread(cluster.fail_master, meta_master))
        answered = 0
        while not kill.done():
            for key in keys:
                assert await second.get_or_create(key, const(key)) == key
                answered += 1
            await asyncio.sleep(0.01)
        new_master = await kill
        assert new_master != meta_master
        assert answered > 0

        async def back() -> bool:
            for cache_ in (first, second):  # traffic drives the breaker's probe: it closes on a successful call
                assert await cache_.get_or_create(keys[0], const(keys[0])) == keys[0]
            return all(c.stats().backplane == "connected" and c.stats().circuit == "closed" for c in (first, second))

        await wait_until(back, timeout=15, interval=0.05, message="the caches did not reconnect after the takeover")
        assert epochs([first, second]) != before, "the new master has another run_id: a new epoch was expected"
        await first.set("after", "v1")
        assert await second.get("after") == "v1"
        await first.set("after", "v2")

        async def fresh() -> bool:
            return bool(await second.get("after") == "v2")

        await wait_until(fresh, timeout=0.5, interval=0.005, message="invalidation after the takeover not seen")


def _move_slot(cluster: RedisClusterProcess, slot: int, source: int, target: int, *, finish: bool = True) -> None:
    """Migrate ``slot`` from master ``source`` to master ``target`` as ``redis-cli --cluster reshard`` does:
    mark it importing/migrating, MIGRATE its keys, and (``finish``) assign it to ``target`` on every master.
    Unfinished, ``source`` answers ASK for the keys that left."""
    ids = {node.port: node.node_id for node in cluster.cluster_nodes() if node.is_master}
    with cluster.client(source) as source_node, cluster.client(target) as target_node:
        target_node.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        source_node.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        keys = source_node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            source_node.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    if finish:
        for port in ids:
            with cluster.client(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])


async def test_an_l2_read_follows_its_slot_to_another_master(
    redis_cluster: RedisClusterProcess, namespace: str
) -> None:
    """An L2 hit sends its GET straight to the master the client's slot map names (``RedisL2.get``); when that
    master answers ASK (slot migrating) or MOVED (slot moved), the read hands over to the cluster client, which
    follows the redirect: every read still hits, none is an error."""
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_cluster.url,
        memory_cache={"enabled": False},
        operation_timeout_milliseconds=2000,
    )
    async with HybridCache.from_settings(settings) as l2_only:
        assert l2_only.internals.l2 is not None
        await l2_only.set("Dealership:1", {"n": 1})
        assert await l2_only.get("Dealership:1") == {"n": 1}  # the client has mapped the slot
        slot = key_slot(l2_only.internals.l2.redis_key(f"{namespace}:v1:Dealership:1").encode())
        source = redis_cluster.master_for_slot(slot)
        target = next(port for _, port in redis_cluster.masters() if port != source)
        try:
            _move_slot(redis_cluster, slot, source, target, finish=False)
            assert await l2_only.get("Dealership:1") == {"n": 1}, "read during the migration (ASK)"
            _move_slot(redis_cluster, slot, source, target)
            assert await l2_only.get("Dealership:1") == {"n": 1}, "read after the move (MOVED)"
            assert await l2_only.get("Dealership:1") == {"n": 1}, "read with the refreshed slot map"
        finally:
            _move_slot(redis_cluster, slot, target, source)  # leave the session's cluster as it was
        assert await l2_only.get("Dealership:1") == {"n": 1}, "read after the slot came back"
        stats = l2_only.stats()
        assert stats.l2_errors == 0
        assert stats.l2_hits == 5


async def test_a_cache_given_a_cluster_client_subscribes_to_invalidations(
    redis_cluster: RedisClusterProcess, namespace: str
) -> None:
    """``HybridCache(settings, redis=RedisCluster(...))``: the subscriber is a plain client of the channel's master,
    built from the cluster client's node options; those hold entries a plain ``Redis()`` refuses (the connection
    class, response callbacks), and the backplane never came up."""
    host, port = redis_cluster.seeds[0]
    client = RedisCluster(host=host, port=port, socket_timeout=5)
    try:
        async with HybridCache(CacheSettings(service_name=namespace), redis=client) as cache:
            assert await cache.wait_until_connected(5.0), "the backplane never subscribed"
            assert cache.stats().backplane == "connected"
    finally:
        await client.aclose()
