"""The multi-process history checker (:mod:`tests.faults.history_checker`): its checker on hand-made histories
(fast), its self-check, and one run per fault asserting that no read was older than the documented bound allows.

The runs are marked ``slow``: each starts a private redis-server, a SQLite file and three worker processes for
:data:`SECONDS` seconds. The seed is random and printed in each run's table; ``HC_HISTORY_SEED`` replays one
(the interleaving still depends on timing).
"""

from __future__ import annotations

import os
import random

import pytest

from tests.faults.history_checker import (
    FAULTS,
    PROPAGATION_BOUND,
    SILENT_DEATH_BOUND,
    BoundPolicy,
    HealthEvent,
    Injection,
    Read,
    Stall,
    Write,
    find_violations,
    find_violations_naive,
    policy_for,
    run_history,
)

SECONDS = 15.0
MIN_READS = 5_000  # a run that read less than this did not exercise anything


def seed_for_run() -> int:
    configured = os.environ.get("HC_HISTORY_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(2**32)


# ------------------------------------------------------------------------------------------- the checker, by hand


def flagged(reads: list[Read], writes: list[Write], policy: BoundPolicy) -> list[tuple[int, float]]:
    """(worker, started) of every violating read, from both implementations, which must agree."""
    fast = [(v.read.worker, v.read.started) for v in find_violations(reads, writes, policy)]
    naive = [(v.read.worker, v.read.started) for v in find_violations_naive(reads, writes, policy)]
    assert fast == naive
    return fast


def test_a_read_after_the_bound_returning_an_old_version_is_flagged_and_one_before_it_is_not() -> None:
    writes = [Write("k", 2, worker=0, done=10.0)]
    reads = [
        Read("k", 1, started=9.99, version=1),  # began before the invalidation returned: may be old
        Read("k", 1, started=10.0 + PROPAGATION_BOUND / 2, version=1),  # another worker, inside the bound
        Read("k", 1, started=10.0 + PROPAGATION_BOUND, version=1),  # exactly at done + bound: must be new
        Read("k", 2, started=10.2, version=1),  # past the bound: must be new
        Read("k", 2, started=10.3, version=2),  # new: fine
        Read("k", 2, started=10.4, version=3),  # newer than any write seen: fine
        Read("other", 1, started=11.0, version=0),  # another key
    ]
    assert flagged(reads, writes, BoundPolicy()) == [(1, 10.0 + PROPAGATION_BOUND), (2, 10.2)]


def test_a_read_on_the_writer_itself_has_bound_0() -> None:
    writes = [Write("k", 5, worker=0, done=10.0)]
    reads = [
        Read("k", 0, started=9.999, version=4),  # before the call returned
        Read("k", 0, started=10.0, version=4),  # at once after it: stale
        Read("k", 1, started=10.0, version=4),  # another worker at the same instant: within its bound
    ]
    assert flagged(reads, writes, BoundPolicy()) == [(0, 10.0)]
    (violation,) = find_violations(reads, writes, BoundPolicy())
    assert (violation.bound, violation.staleness, violation.write.version) == (0.0, 0.0, 5)


def test_each_read_is_compared_with_the_newest_write_it_had_to_see() -> None:
    writes = [Write("k", 1, worker=1, done=1.0), Write("k", 2, worker=2, done=2.0), Write("k", 3, worker=1, done=3.0)]
    reads = [Read("k", 0, started=2.5, version=1), Read("k", 0, started=3.01, version=2)]
    violations = find_violations(reads, writes, BoundPolicy())
    assert [(v.write.version, round(v.staleness, 3)) for v in violations] == [(2, 0.5)]  # 3.01 is within v3's 50 ms


def test_fault_windows_widen_the_bound_only_where_the_docs_allow_it() -> None:
    policy = BoundPolicy(
        outage_allowance=SILENT_DEATH_BOUND,  # 4 s for reads from 100 s until recovery at 105 s
        read_windows=((100.0, 105.0),),
        publish_windows=((100.0, 104.5, 104.5),),  # writes during a 3 s outage ending at 103 s: 103 + 1.5
    )
    before = Write("a", 1, worker=0, done=99.0)
    during = Write("b", 1, worker=0, done=101.0)
    reads = [
        Read("a", 1, started=102.0, version=0),  # in the read window: 3 s stale, allowed
        Read("a", 1, started=103.5, version=0),  # in the read window: 4.5 s stale, flagged
        Read("b", 1, started=104.0, version=0),  # before the publish deadline: allowed
        Read("b", 1, started=105.5, version=0),  # after the deadline (and the read window): flagged
        Read("b", 0, started=101.0, version=0),  # on the writer: bound 0 even during the outage
    ]
    assert flagged(reads, [before, during], policy) == [(1, 103.5), (1, 105.5), (0, 101.0)]
    assert policy.bound(reads[3], during) == pytest.approx(3.5)


def test_a_stall_of_the_reading_process_extends_its_bound_by_the_stall_and_nothing_else() -> None:
    """Its event loop did not run from 20.00 to 20.12 s: a message waiting in its socket could not be handled."""
    policy = BoundPolicy(stalls=(Stall(1, 20.0, 20.12),))
    write = Write("k", 1, worker=0, done=19.99)
    reads = [
        Read("k", 1, started=20.125, version=0),  # just after the stall: 135 ms stale, allowed 50 + 120 ms
        Read("k", 1, started=20.20, version=0),  # 210 ms stale: past 170 ms, flagged
        Read("k", 2, started=20.125, version=0),  # another process did not stall: 50 ms, flagged
        Read("k", 1, started=20.2, version=1),  # fresh
    ]
    assert flagged(reads, [write], policy) == [(1, 20.20), (2, 20.125)]
    assert policy.stall_allowance(reads[0]) == pytest.approx(PROPAGATION_BOUND + 0.12)
    assert policy.stall_allowance(reads[2]) == 0.0


def test_policy_for_extends_a_fault_window_until_the_last_worker_recovered() -> None:
    injections = [Injection("sigstop", start=10.0, end=13.0)]
    health = [
        HealthEvent(0, 5.0, "connected", 0, 1, "closed"),
        HealthEvent(0, 12.0, "disconnected", 2, 1, "open"),
        HealthEvent(0, 13.8, "connected", 0, 2, "open"),
        HealthEvent(1, 5.0, "connected", 0, 1, "closed"),
        HealthEvent(1, 14.2, "connected", 0, 2, "closed"),  # resynced last
        HealthEvent(1, 40.0, "connected", 0, 3, "closed"),  # long after: not part of this fault
    ]
    policy, windows = policy_for(FAULTS["sigstop"], injections, health, run_end=30.0)
    assert policy.read_windows == ((10.0, 14.2),)
    assert policy.publish_windows == ((10.0, 14.5, 14.5),)
    assert windows[0]["recovered_seconds_after_action"] == pytest.approx(1.2)
    assert windows[0]["workers_not_recovered"] == []


def test_the_fast_checker_agrees_with_the_contract_on_random_histories() -> None:
    rng = random.Random(1234)
    for _ in range(30):
        keys = ["a", "b", "c"]
        versions = dict.fromkeys(keys, 0)
        writes = []
        for n in range(60):
            key = rng.choice(keys)
            versions[key] += 1
            writes.append(Write(key, versions[key], worker=rng.randrange(3), done=n * 0.03 + rng.uniform(0, 0.05)))
        reads = [
            Read(rng.choice(keys), rng.randrange(3), started=rng.uniform(0, 2.0), version=rng.randrange(0, 25))
            for _ in range(400)
        ]
        stall_start = rng.uniform(0, 2.0)
        policy = BoundPolicy(
            outage_allowance=rng.choice([0.0, 1.0, 4.0]),
            read_windows=((0.5, 0.9),),
            publish_windows=((1.0, 1.3, 1.6),),
            stalls=(Stall(rng.randrange(3), stall_start, stall_start + rng.uniform(0.02, 0.3)),),
        )
        assert find_violations(reads, writes, policy) == find_violations_naive(reads, writes, policy)


# ------------------------------------------------------------------------------------------------- the real runs


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_self_check_finds_stale_reads_when_a_writer_skips_invalidation() -> None:
    """If this fails, the checker (or the workload) cannot see stale reads and every other run proves nothing."""
    result = run_history("none", seconds=SECONDS, seed=seed_for_run(), self_check=True)
    assert result.reads >= MIN_READS, result.summary()
    assert result.stale_reads >= 1, f"the checker found no stale read with invalidation skipped:\n{result.summary()}"


# The fault matrix: one run per fault of FAULTS, in `make test` (and so in CI), and alone with `make test-faults`.
# A read is held to the bound of docs/invalidation.md §1 for its situation; a read that started while its own
# process was stalled (its event loop held: see STALL_THRESHOLD) gets that stall on top of the 50 ms, since no
# message can be handled by a process that does not run. Each run's table reports the stalls it saw.


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_read_is_staler_than_the_documented_bound(fault: str) -> None:
    spec = FAULTS[fault]
    result = run_history(fault, seconds=SECONDS, seed=seed_for_run())  # raises if a fault could not be injected
    assert result.reads >= MIN_READS, result.summary()
    if spec.expects_evictions:
        assert result.evicted_keys, f"Redis evicted nothing: this run did not test eviction\n{result.summary()}"
    assert result.stale_reads == 0, f"{result.stale_reads} stale reads:\n{result.summary()}"
