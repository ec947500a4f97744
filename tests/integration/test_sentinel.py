"""Issue 8, acceptance 1 on Sentinel: the cache's suites behind three sentinels, the circuit breaker around a paused
master, and the consistency checker across a failover.

As on the cluster (see test_cluster.py), the tests marked ``@pytest.mark.all_topologies`` in the contract,
invalidation, stampede, fail-safe and eager-refresh suites run behind Sentinel too, from their own modules: the
integration conftest parametrises them over the topologies (ids ``[sentinel-l2-only]``, ``[sentinel-l1+l2]``,
``[sentinel]`` …; select them with ``-k sentinel``), in the L2-only and L1+L2 modes, on the session's Sentinel
setup configured in the StackExchange form ``s1:p1,s2:p2,s3:p3,serviceName=mymaster``. ``raw_redis`` and
``redis_endpoint.sync_client()`` are plain clients of the current master. Left out, as on the cluster: the L1-only
tests, and those that pause the one standalone server (test_fail_safe.py's outage tests, test_circuit_faults.py).

Circuit faults here instead: SIGSTOP the master for less than the sentinels' down-after period (a private setup,
``slow``); the breaker opens, every call still answers without waiting on it, and it closes once the master is
back, with L2 hits returning. Then the randomized consistency workload, and the same across ``SENTINEL
FAILOVER``; a killed master; and a cache started after the sentinels switched but before they demoted the old
master (private setups, ``slow``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator

import pytest

from harness.redis_sentinel import RedisSentinelSetup
from hybridcache import HybridCache
from tests.integration.test_cluster import (
    assert_consistent,
    assert_no_call_waited_on_the_frozen_node,
    const,
    epochs,
    errors,
    fault_settings,
    pause_opens_and_resume_closes_the_breaker,
    run_consistency,
    running_caches,
)
from tests.integration.test_consistency import HEARTBEAT
from tests.support.waiting import wait_until

# ------------------------------------------------------------------------------------ Sentinel-specific


@pytest.mark.parametrize("form", ["stackexchange", "url"])
async def test_both_configuration_forms_reach_the_master_through_the_sentinels(
    redis_sentinel: RedisSentinelSetup, namespace: str, form: str
) -> None:
    configuration = redis_sentinel.configuration if form == "stackexchange" else redis_sentinel.url
    async with running_caches(configuration, namespace, count=2) as (writer, other):
        assert writer.internals.clients is not None
        assert writer.internals.clients.topology == "sentinel"
        assert await writer.get_or_create("k", const("v")) == "v"
        assert await other.get_or_create("k", const("other")) == "v", "the value must come from the master"
        with redis_sentinel.client(redis_sentinel.master()) as master:
            assert master.exists(f"hc-test:{namespace}:v1:k") == 1
        await writer.remove("k")
        await wait_until(
            lambda: other.stats().invalidations_received == 1, timeout=1.0, message="invalidation not received"
        )
        assert errors([writer, other]) == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}


async def test_the_consistency_workload_holds_behind_sentinel(
    redis_sentinel: RedisSentinelSetup, namespace: str
) -> None:
    async with running_caches(redis_sentinel.configuration, namespace) as caches:
        run = await run_consistency(caches, "sentinel")
        prevented = sum(c.stats().stale_sets_prevented for c in caches)
    assert prevented > 0, f"the workload never raced a store against a write: {run.line}"
    assert_consistent(run)
    assert run.errors == {"l2_errors": 0, "invalidation_failures": 0, "pending": 0}, run.line


@pytest.mark.slow
async def test_a_paused_master_opens_the_breaker_and_its_return_closes_it(namespace: str) -> None:
    """SIGSTOP the master for less than the sentinels' down-after period, so they do not fail over: the breaker
    opens, every ``get_or_create`` answers from the factory with no call waiting more than a few operation
    timeouts; after SIGCONT the breaker closes within its break plus a probe, and the entries stored before the
    pause are L2 hits again."""
    with RedisSentinelSetup(down_after_ms=10_000) as setup:  # private; a ~1 s pause stays far below down-after
        master = setup.master()
        async with HybridCache.from_settings(fault_settings(namespace, setup.configuration)) as cache_:
            assert await cache_.wait_until_connected(5)
            keys = (f"Dealership:{n}" for n in itertools.count())
            warm = [next(keys) for _ in range(5)]
            node = setup.servers[master]
            outcome = await pause_opens_and_resume_closes_the_breaker(cache_, warm, keys, node.pause, node.resume)
            assert setup.master() == master, "the sentinels failed over during the pause"
            print(f"[sentinel pause] {outcome}")
            assert_no_call_waited_on_the_frozen_node(outcome)


@pytest.fixture
def private_sentinel() -> Iterator[RedisSentinelSetup]:
    """A Sentinel setup of this test's own, to fail over or break."""
    with RedisSentinelSetup() as setup:
        yield setup


@pytest.mark.slow
async def test_consistency_holds_across_a_sentinel_failover(
    private_sentinel: RedisSentinelSetup, namespace: str
) -> None:
    """SENTINEL FAILOVER while readers and writers run. The fault window ends once the sentinels name the new master
    and every cache has resynchronised, so the strict bound covers the ten seconds in which the old master is
    still a writable master; after the sentinels demote it, every cache still serves every key fresh. Every cache
    moves to a new generation epoch (the promoted replica has another run_id)."""
    setup = private_sentinel
    async with running_caches(setup.configuration, namespace) as caches:
        old_master = setup.master()
        before = epochs(caches)
        assert len(set(before)) == 1
        assert before[0] is not None

        async def promote(_caches: list[HybridCache]) -> None:
            await asyncio.to_thread(setup.failover, demoted=False)

        run = await run_consistency(caches, "sentinel failover", fault=promote)
        after = epochs(caches)
        assert setup.role(old_master) == "master", "the old master was demoted within the run: window not covered"
        await asyncio.to_thread(setup.wait_demoted, old_master)
        stale_after_demotion = await run.workload.final_sweep()
    start, end = run.workload.outcome.fault_windows[0]
    reads_after = [r for r in run.workload.outcome.reads if r.started > end]
    print(f"[sentinel failover] recovery {1000 * (end - start):.0f} ms, {len(reads_after)} reads after; {run.errors}")
    assert len(reads_after) > 200, f"too few reads after the failover to judge it: {run.line}"
    assert_consistent(run)
    assert not stale_after_demotion, f"stale once the old master was demoted: {stale_after_demotion[:5]}"
    assert len(set(after)) == 1, after
    assert after[0] not in before, f"epoch {before} -> {after}: not renewed by the failover"


@pytest.mark.slow
async def test_a_resync_after_a_failover_moves_the_subscription_to_the_new_master(
    private_sentinel: RedisSentinelSetup, namespace: str
) -> None:
    """Issue 13, item 15: one instance's request connections reach the new master before its heartbeat has moved
    its subscription (they resolve the master when they connect). A read there finds the new master's epoch and
    asks for a resync; the resync must move the subscription first, or the table is trusted with the new master's
    state while listening to the old master, which no longer carries anyone's invalidations. The lagging
    instance's heartbeat is 30 s here, so only the resync can move it."""
    setup = private_sentinel
    slow = HEARTBEAT.model_copy(update={"heartbeat_interval_seconds": 30.0, "heartbeat_timeout_seconds": 5.0})
    async with (
        running_caches(setup.configuration, namespace, count=1) as (writer,),
        running_caches(setup.configuration, namespace, count=1, backplane=slow) as (lagging,),
    ):
        source = {"K": 1}

        def load() -> Callable[[], Awaitable[int]]:
            async def factory() -> int:
                return source["K"]

            return factory

        assert await lagging.get_or_create("K", load()) == 1
        old_master = setup.master()
        await asyncio.to_thread(setup.failover, demoted=False)
        assert setup.master() != old_master

        async def writer_moved() -> bool:
            await writer.get_or_create("warm", const("w"))
            return writer.internals.table.epoch != epochs([lagging])[0] and writer.stats().backplane == "connected"

        await wait_until(writer_moved, timeout=10, interval=0.05, message="the writer never moved to the new master")
        assert lagging.internals.client is not None
        await (
            lagging.internals.client.connection_pool.disconnect()
        )  # its next request connection resolves the new master
        resyncs = lagging.stats().backplane_resyncs
        probes = (f"probe:{n}" for n in itertools.count())

        async def lagging_resynced() -> bool:
            await lagging.get_or_create(next(probes), const("p"))  # a miss: its capture meets the new epoch
            return lagging.stats().backplane_resyncs > resyncs and lagging.internals.table.trusted

        await wait_until(lagging_resynced, timeout=10, interval=0.05, message="the lagging instance never resynced")
        assert lagging.internals.table.epoch == writer.internals.table.epoch

        source["K"] = 2
        await writer.remove("K")

        async def fresh() -> bool:
            return await lagging.get_or_create("K", load()) == 2

        await wait_until(
            fresh,
            timeout=2.0,
            interval=0.02,
            message="the lagging instance kept serving the value the writer removed on the new master",
        )


@pytest.mark.slow
async def test_a_killed_master_is_replaced_and_the_caches_keep_answering(
    private_sentinel: RedisSentinelSetup, namespace: str
) -> None:
    """SIGKILL the master: every call still returns the right value, the sentinels promote the replica after
    down-after-milliseconds, and the caches reconnect to it (new epoch) with invalidations working again."""
    setup = private_sentinel
    async with running_caches(setup.configuration, namespace, count=2) as (first, second):
        before = epochs([first, second])
        keys = [f"K:{n}" for n in range(30)]
        for key in keys:
            await first.get_or_create(key, const(key))
        kill = asyncio.create_task(asyncio.to_thread(setup.kill_master))
        answered = 0
        while not kill.done():
            for key in keys:
                assert await second.get_or_create(key, const(key)) == key
                answered += 1
            await asyncio.sleep(0.01)
        await kill
        assert answered > 0

        async def back() -> bool:
            for cache_ in (first, second):  # traffic drives the breaker's probe: it closes on a successful call
                assert await cache_.get_or_create(keys[0], const(keys[0])) == keys[0]
            return all(c.stats().backplane == "connected" and c.stats().circuit == "closed" for c in (first, second))

        await wait_until(back, timeout=15, interval=0.05, message="the caches did not reconnect after the promotion")
        assert epochs([first, second]) != before, "the promoted replica has another run_id: a new epoch was expected"
        await first.set("after", "v1")
        assert await second.get("after") == "v1"
        await first.set("after", "v2")

        async def fresh() -> bool:
            return bool(await second.get("after") == "v2")

        await wait_until(fresh, timeout=0.5, interval=0.005, message="invalidation after the promotion not seen")


@pytest.mark.slow
async def test_instances_follow_the_new_master_before_the_old_one_is_demoted(
    private_sentinel: RedisSentinelSetup, namespace: str
) -> None:
    """After SENTINEL FAILOVER the old master stays a writable master until the sentinels convert it (about ten
    seconds later), and connections opened meanwhile go to the new one. A cache started in that window (a rolling
    deploy) writes and publishes on the new master: the caches that were already running must move there within
    a heartbeat, not keep serving from L1 what the newcomer invalidated."""
    setup = private_sentinel
    version = {"K": 1}

    async def load() -> int:
        return version["K"]

    async with running_caches(setup.configuration, namespace, count=2) as old_caches:
        for cache_ in old_caches:
            assert await cache_.get_or_create("K", load) == 1
            assert await cache_.get_or_create("K", load) == 1  # now an L1 hit
        old_master = setup.master()
        await asyncio.to_thread(setup.failover, demoted=False)
        async with running_caches(setup.configuration, namespace, count=1) as (newcomer,):
            assert setup.role(old_master) == "master", "the old master was demoted already: nothing to test"
            version["K"] = 2
            await newcomer.remove("K")
            bound = HEARTBEAT.heartbeat_interval_seconds + HEARTBEAT.heartbeat_timeout_seconds + 0.2
            for index, cache_ in enumerate(old_caches):

                async def fresh(cache_: HybridCache = cache_) -> bool:
                    return bool(await cache_.get_or_create("K", load) == 2)

                await wait_until(fresh, timeout=bound, interval=0.01, message=f"old instance {index} still serves v1")
