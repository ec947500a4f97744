"""Redis faults against a private redis-server: killed (connection refused), paused with SIGSTOP (timeouts) and
restarted. Through all of them every ``get_or_create`` returns the right value; once the breaker is open a miss
costs no socket wait; and the breaker closes within ``BreakDurationSeconds`` plus one probe of Redis being back.

The breaker's state machine is unit-tested in tests/unit/test_circuit_breaker.py; here it runs in the cache.
The <0.1 ms added-latency figure is measured by benchmarks/bench_resilience.py; the bounds below are generous so
a loaded machine cannot make them flake, yet a socket wait (>= the 50 ms operation timeout) still fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._resilience import CircuitState
from hybridcache.settings import CircuitBreakerSettings
from tests.support.waiting import wait_until

OPERATION_TIMEOUT = 0.05
BREAK = 0.5
THRESHOLD = 3
# Generous so a busy CI machine cannot flake it; an open breaker that still touched the socket would blow it.
MEDIAN_ADDED_BOUND = 0.005


def expected(key: str) -> str:
    return f"value-of-{key}"


def factory_for(key: str) -> Callable[[], Awaitable[str]]:
    async def compute() -> str:
        return expected(key)

    return compute


class Transitions:
    """Records (monotonic time, new state) of every breaker transition."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, CircuitState]] = []

    def __call__(self, old: CircuitState, new: CircuitState) -> None:
        self.seen.append((time.monotonic(), new))

    def last(self, state: CircuitState) -> float:
        return max(at for at, s in self.seen if s is state)


class Traffic:
    """Calls ``get_or_create`` on fresh keys (misses) and checks every answer."""

    def __init__(self, cache: HybridCache, prefix: str) -> None:
        self.cache = cache
        self._keys = (f"{prefix}:{n}" for n in itertools.count())
        self.calls = 0

    async def miss(self) -> float:
        key = next(self._keys)
        return await self.call(key)

    async def call(self, key: str) -> float:
        factory = factory_for(key)
        began = time.perf_counter()
        value = await self.cache.get_or_create(key, factory, ttl=60, type_=str)
        took = time.perf_counter() - began
        assert value == expected(key), f"{key}: got {value!r}"
        self.calls += 1
        return took


@pytest.fixture
async def cache(redis_server: RedisServer, namespace: str) -> AsyncIterator[HybridCache]:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        operation_timeout_milliseconds=int(OPERATION_TIMEOUT * 1000),
        circuit_breaker=CircuitBreakerSettings(failure_threshold=THRESHOLD, break_duration_seconds=BREAK),
    )
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        yield cache


async def _l1_only_median(namespace: str, samples: int) -> float:
    """Median miss latency of a cache with no Redis at all: the baseline an open breaker must match."""
    async with HybridCache.from_settings(CacheSettings(service_name=namespace)) as baseline:
        traffic = Traffic(baseline, "baseline")
        return statistics.median([await traffic.miss() for _ in range(samples)])


async def _drive_until_open(cache: HybridCache, traffic: Traffic, warm: list[str]) -> list[float]:
    """Misses and warm-key reads until the breaker opens (bounded); every answer is checked on the way."""
    durations = []
    deadline = time.monotonic() + 10
    for n in range(200):
        if cache.breaker.state is CircuitState.OPEN or time.monotonic() > deadline:
            break
        durations.append(await traffic.call(warm[n % len(warm)]) if n % 2 else await traffic.miss())
    assert cache.breaker.state is CircuitState.OPEN, f"breaker still {cache.breaker.state} after {n} calls"
    return durations


async def _misses_while_open(cache: HybridCache, traffic: Traffic, opened_at: float) -> list[float]:
    """Miss latencies of calls that all ran inside the break (so none of them can be the half-open probe)."""
    durations = []
    for _ in range(200):
        took = await traffic.miss()
        if time.monotonic() >= opened_at + BREAK * 0.8:
            break
        assert cache.breaker.state is CircuitState.OPEN
        durations.append(took)
    return durations


async def _wait_closed(traffic: Traffic, since: float) -> float:
    """Keep misses flowing (they carry the probe) until the breaker closes; returns seconds since ``since``."""

    async def closed() -> bool:
        await traffic.miss()
        return traffic.cache.breaker.state is CircuitState.CLOSED

    await wait_until(
        closed,
        timeout=BREAK + OPERATION_TIMEOUT + 1.0,
        interval=0.002,
        message=f"breaker did not close within {BREAK}s + one probe of Redis being back",
    )
    return time.monotonic() - since


async def _fill_lands_in_redis(cache: HybridCache, server: RedisServer, namespace: str, key: str) -> None:
    await cache.get_or_create(key, factory_for(key), ttl=60, type_=str)
    with server.sync_client(socket_timeout=5) as client:
        assert client.exists(f"{namespace}:v1:{key}") == 1, "after recovery values must be stored in L2 again"


@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_breaker_opens_serves_without_socket_waits_and_closes_after_recovery(
    fault: str, cache: HybridCache, redis_server: RedisServer, namespace: str
) -> None:
    transitions = Transitions()
    cache.breaker.on_transition = transitions
    traffic = Traffic(cache, fault)
    warm = [f"warm:{n}" for n in range(5)]
    for key in warm:
        await traffic.call(key)
    baseline = await _l1_only_median(namespace, 300)

    if fault == "killed":
        redis_server.kill()
    else:
        redis_server.pause()

    failing = await _drive_until_open(cache, traffic, warm)
    # Before it opens, a call waits at most for its few Redis operations, each bounded by the timeout.
    assert max(failing) < 10 * OPERATION_TIMEOUT, f"a call waited {max(failing):.3f}s on a dead Redis"

    open_misses = await _misses_while_open(cache, traffic, transitions.last(CircuitState.OPEN))
    assert len(open_misses) >= 50, f"only {len(open_misses)} misses fitted in the break"
    added = statistics.median(open_misses) - baseline
    assert added < MEDIAN_ADDED_BOUND, f"median added latency of a miss while open: {added * 1000:.3f} ms"
    assert max(open_misses) < OPERATION_TIMEOUT, f"a call took {max(open_misses) * 1000:.1f} ms while open"
    for key in warm:
        await traffic.call(key)

    if fault == "killed":
        redis_server.restart()
    else:
        redis_server.resume()
    back = time.monotonic()
    took = await _wait_closed(traffic, back)

    assert took <= BREAK + OPERATION_TIMEOUT + 1.0
    assert transitions.last(CircuitState.CLOSED) >= back
    await _fill_lands_in_redis(cache, redis_server, namespace, f"{fault}:after")
    for key in warm:
        await traffic.call(key)


async def test_a_restart_under_steady_traffic_never_returns_a_wrong_value(
    cache: HybridCache, redis_server: RedisServer, namespace: str
) -> None:
    traffic = Traffic(cache, "restart")
    warm = [f"warm:{n}" for n in range(20)]
    for key in warm:
        await traffic.call(key)
    stop = asyncio.Event()

    async def steady() -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            await (traffic.call(warm[n % len(warm)]) if n % 3 else traffic.miss())
            await asyncio.sleep(0.001)

    flow = asyncio.create_task(steady())
    try:
        await wait_until(lambda: traffic.calls >= 50, timeout=5, message="traffic did not start")
        redis_server.restart()  # empty data, new run_id, same port
        back = time.monotonic()
        await wait_until(
            lambda: cache.breaker.state is CircuitState.CLOSED and cache.health()["redis"] == "up",
            timeout=BREAK + OPERATION_TIMEOUT + 5.0,
            message="cache did not report Redis up after the restart",
        )
        calls_at_recovery = traffic.calls
        await wait_until(lambda: traffic.calls >= calls_at_recovery + 50, timeout=5, message="traffic stalled")
    finally:
        stop.set()
        await asyncio.wait_for(flow, 10)  # re-raises any wrong value seen by the traffic

    assert time.monotonic() - back < 10
    await _fill_lands_in_redis(cache, redis_server, namespace, "restart:after")
    # Invalidation works against the new server: the next read recomputes.
    await cache.remove(warm[0])
    calls = 0

    async def recount() -> str:
        nonlocal calls
        calls += 1
        return expected(warm[0])

    assert await cache.get_or_create(warm[0], recount, ttl=60, type_=str) == expected(warm[0])
    assert calls == 1


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose connects hang, like a host dropping packets: a listener that never accepts, its
    one-slot backlog already full, so further SYNs are dropped by the kernel."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_a_redis_whose_connects_hang_costs_a_caller_no_more_than_its_operation_timeouts(namespace: str) -> None:
    with blackhole() as port:
        settings = CacheSettings(
            service_name=namespace,
            configuration=f"127.0.0.1:{port},abortConnect=false",
            operation_timeout_milliseconds=int(OPERATION_TIMEOUT * 1000),
            circuit_breaker=CircuitBreakerSettings(failure_threshold=THRESHOLD, break_duration_seconds=60),
        )
        async with HybridCache.from_settings(settings) as cache:
            traffic = Traffic(cache, "blackhole")
            durations = [await traffic.miss() for _ in range(THRESHOLD + 2)]

    assert cache.breaker.state is CircuitState.OPEN
    # A miss makes at most three L2 calls (read, capture, store), each bounded by the operation timeout.
    assert max(durations) < 3 * OPERATION_TIMEOUT + 0.2, [round(d, 3) for d in durations]
