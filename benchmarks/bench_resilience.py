"""Resilience figures (issue 4): stampedes, the miss path with the breaker open (target: < 0.1 ms added) and
the time to close again, eager refresh, memory after many distinct keys. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import statistics
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from benchmarks._common import Run, Table, Variant, format_ns, measure, summarize
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._generations import fields_for
from hybridcache._resilience import CircuitState
from hybridcache.settings import CircuitBreakerSettings, DistributedLockSettings, MemoryCacheSettings

ADDED_TARGET_NS = 100_000
CALLERS = 1_000
INSTANCES = 4
OPERATION_TIMEOUT_MS = 50
BREAK = 0.5
MISS_OPS = 2_000


def _settings(**overrides: Any) -> CacheSettings:
    return CacheSettings(service_name=f"bench-{uuid.uuid4().hex[:8]}", **overrides)


# ---------------------------------------------------------------------------------------------- stampede


class _Counting:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.runs = 0

    async def __call__(self) -> str:
        self.runs += 1
        await asyncio.sleep(self.delay)
        return "value"


async def _stampede_trials(caches: list[HybridCache], trials: int, delay: float) -> dict[str, Any]:
    runs, seconds = [], []
    per_instance = CALLERS // len(caches)
    for trial in range(trials):
        factory = _Counting(delay)
        key = f"Stampede:{trial}"
        began = time.perf_counter()
        results = await asyncio.gather(
            *(c.get_or_create(key, factory, ttl=60, type_=str) for c in caches for _ in range(per_instance))
        )
        seconds.append(time.perf_counter() - began)
        assert results == ["value"] * CALLERS
        runs.append(factory.runs)
    return {
        "trials": trials,
        "more_than_once": sum(r > 1 for r in runs),
        "runs_histogram": {str(k): runs.count(k) for k in sorted(set(runs))},
        "mean_runs": statistics.mean(runs),
        "median_trial_ms": statistics.median(seconds) * 1000,
    }


async def bench_stampede(trials: int, delay: float) -> dict[str, Any]:
    results: dict[str, Any] = {"callers": CALLERS, "factory_ms": delay * 1000}
    with RedisServer() as server:
        async with HybridCache.from_settings(_settings(configuration=server.url)) as single:
            results["1 instance x 1000"] = await _stampede_trials([single], trials, delay)
        for locked in (False, True):
            settings = _settings(configuration=server.url, distributed_lock=DistributedLockSettings(enabled=locked))
            async with AsyncExitStack() as stack:
                caches = [await stack.enter_async_context(HybridCache.from_settings(settings)) for _ in range(4)]
                for cache in caches:
                    await cache.wait_until_connected(5)
                name = f"4 instances x 250, distributed lock {'on' if locked else 'off'}"
                results[name] = await _stampede_trials(caches, trials, delay)
    return results


# ---------------------------------------------------------------------------------------------- breaker


async def _constant() -> str:
    return "value"


def _miss_batch(cache: HybridCache, prefix: str) -> Callable[[int], Awaitable[None]]:
    counter = itertools.count()

    async def run(ops: int) -> None:
        for _ in range(ops):
            await cache.get_or_create(f"{prefix}:{next(counter)}", _constant, ttl=60, type_=str)

    return run


@asynccontextmanager
async def _broken(server: RedisServer, fault: str, break_seconds: float) -> AsyncIterator[HybridCache]:
    """A cache whose breaker has been opened by ``fault`` ("killed" or "paused") and stays open."""
    settings = _settings(
        configuration=server.url,
        operation_timeout_milliseconds=OPERATION_TIMEOUT_MS,
        circuit_breaker=CircuitBreakerSettings(failure_threshold=3, break_duration_seconds=break_seconds),
    )
    async with HybridCache.from_settings(settings) as cache:
        await cache.wait_until_connected(5)
        if fault == "killed":
            server.kill()
        else:
            server.pause()
        for n in range(100):
            if cache.breaker.state is CircuitState.OPEN:
                break
            await cache.get_or_create(f"opening:{n}", _constant, ttl=60, type_=str)
        assert cache.breaker.state is CircuitState.OPEN
        yield cache
        if server.is_paused:
            server.resume()


async def _tail_while_open(cache: HybridCache, calls: int) -> dict[str, Any]:
    """Per-call latency of misses with the breaker open (each call timed alone)."""
    durations = []
    for n in range(calls):
        began = time.perf_counter_ns()
        await cache.get_or_create(f"tail:{n}", _constant, ttl=60, type_=str)
        durations.append(time.perf_counter_ns() - began)
    figures = summarize(durations, ("p50", "p99", "max"))
    figures["at_least_operation_timeout"] = sum(d >= OPERATION_TIMEOUT_MS * 1_000_000 for d in durations)
    figures["calls"] = calls
    return figures


async def _time_to_close(fault: str, repeats: int) -> list[float]:
    """Seconds from Redis being back to the breaker closing, misses flowing every millisecond."""
    out = []
    with RedisServer() as server:
        for repeat in range(repeats):
            async with _broken(server, fault, BREAK) as cache:
                # Let part of a break pass, so recovery lands at a different phase of the break each time.
                await asyncio.sleep(BREAK * repeat / repeats)
                if fault == "killed":
                    server.restart()
                else:
                    server.resume()
                back = time.monotonic()
                for n in range(10_000):
                    if cache.breaker.state is CircuitState.CLOSED or time.monotonic() - back > 10:
                        break
                    await cache.get_or_create(f"recover:{repeat}:{n}", _constant, ttl=60, type_=str)
                    await asyncio.sleep(0.001)
                assert cache.breaker.state is CircuitState.CLOSED
                out.append(time.monotonic() - back)
    return out


async def bench_breaker(rounds: int, max_seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"operation_timeout_ms": OPERATION_TIMEOUT_MS}
    with RedisServer() as dead, RedisServer() as frozen, RedisServer() as healthy:
        async with AsyncExitStack() as stack:
            # A long break for the latency figures: every measured call meets an open breaker, none is the probe.
            killed = await stack.enter_async_context(_broken(dead, "killed", 3600))
            paused = await stack.enter_async_context(_broken(frozen, "paused", 3600))
            l1_only = await stack.enter_async_context(HybridCache.from_settings(_settings()))
            up = await stack.enter_async_context(HybridCache.from_settings(_settings(configuration=healthy.url)))
            variants = [
                Variant("miss, L1-only cache", _miss_batch(l1_only, "l1"), MISS_OPS),
                Variant("miss, breaker open (Redis killed)", _miss_batch(killed, "killed"), MISS_OPS),
                Variant("miss, breaker open (Redis paused)", _miss_batch(paused, "paused"), MISS_OPS),
                Variant("miss, healthy Redis (L1+L2)", _miss_batch(up, "up"), MISS_OPS // 10),
            ]
            timings = await measure(variants, rounds=rounds, max_seconds=max_seconds)
            base = timings["miss, L1-only cache"]
            results["timings"] = {name: t.as_dict() for name, t in timings.items()}
            for fault, cache in (("killed", killed), ("paused", paused)):
                timing = timings[f"miss, breaker open (Redis {fault})"]
                added = statistics.median(a - b for a, b in zip(timing.samples, base.samples, strict=True))
                results[f"added_ns_{fault}"] = added
                results[f"tail_{fault}"] = await _tail_while_open(cache, 5_000)
                assert cache.breaker.state is CircuitState.OPEN
    results["close_after_back_s"] = {
        fault: [round(s, 3) for s in await _time_to_close(fault, 5)] for fault in ("killed", "paused")
    }
    results["break_duration_s"] = BREAK
    return results


# ---------------------------------------------------------------------------------------------- eager refresh


async def _hit_stream(cache: HybridCache, eager: float | None, seconds: float) -> dict[str, Any]:
    runs = 0

    async def slow() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return runs

    await cache.get_or_create("k", slow, ttl=0.4, type_=int, eager_refresh=eager)
    durations = []
    end = time.monotonic() + seconds
    for _ in range(20_000):
        if time.monotonic() >= end:
            break
        began = time.perf_counter_ns()
        await cache.get_or_create("k", slow, ttl=0.4, type_=int, eager_refresh=eager)
        durations.append(time.perf_counter_ns() - began)
        await asyncio.sleep(0.002)
    figures = summarize(durations, ("p50", "p99", "max"))
    figures.update(hits=len(durations), factory_runs=runs, eager_refreshes=cache.counters.eager_refreshes)
    figures["hits_over_25ms"] = sum(d > 25_000_000 for d in durations)
    return figures


async def bench_eager_refresh() -> dict[str, Any]:
    results: dict[str, Any] = {"ttl_s": 0.4, "factory_ms": 50, "stream_s": 2.0}
    with RedisServer() as server:
        for topology in ("l1-only", "l1+l2"):
            configuration = server.url if topology == "l1+l2" else None
            for eager in (None, 0.5):
                async with HybridCache.from_settings(_settings(configuration=configuration)) as cache:
                    await cache.wait_until_connected(5)
                    results[f"{topology}, eager_refresh={eager}"] = await _hit_stream(cache, eager, 2.0)
    return results


# ---------------------------------------------------------------------------------------------- memory


MEMORY_SIZE_LIMIT = 256


def trace_warmup_keys() -> int:
    """Keys read under tracing before the steady-state mark: enough for every bounded structure (L1, the memo of
    ``fields_for``) to turn over once; tracemalloc misses frees of older blocks, so churn would look like growth."""
    return 2 * MEMORY_SIZE_LIMIT + (fields_for.cache_info().maxsize or 0)


async def bench_memory(untraced: int, traced: int) -> dict[str, Any]:
    settings = _settings(memory_cache=MemoryCacheSettings(size_limit=MEMORY_SIZE_LIMIT))
    warm_up = trace_warmup_keys()
    async with HybridCache.from_settings(settings) as cache:
        began = time.perf_counter()
        for n in range(untraced):
            await cache.get_or_create(f"m:{n}", _constant, ttl=60, type_=str)
        untraced_seconds = time.perf_counter() - began
        tracemalloc.start()
        try:
            for n in range(untraced, untraced + warm_up):
                await cache.get_or_create(f"m:{n}", _constant, ttl=60, type_=str)
            gc.collect()
            steady, _ = tracemalloc.get_traced_memory()
            middle = untraced + warm_up + (traced - warm_up) // 2
            for n in range(untraced + warm_up, middle):
                await cache.get_or_create(f"m:{n}", _constant, ttl=60, type_=str)
            gc.collect()
            halfway, _ = tracemalloc.get_traced_memory()
            for n in range(middle, untraced + traced):
                await cache.get_or_create(f"m:{n}", _constant, ttl=60, type_=str)
            gc.collect()
            final, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        second_half = untraced + traced - middle
        return {
            "keys": untraced + traced,
            "traced_keys": traced - warm_up,
            "misses_per_second_untraced": round(untraced / untraced_seconds),
            "l1_traced_bytes": steady,
            # A leak grows with keys: the second half adds as much as the first. Bounded churn (a dict resizing,
            # the memo's links) shows up once, in the first half.
            "growth_bytes": final - steady,
            "growth_first_half_bytes": halfway - steady,
            "growth_second_half_bytes": final - halfway,
            "growth_bytes_per_key": round((final - halfway) / second_half, 4),
            "flights_left": len(cache.internals.loads),
            "l1_entries": len(cache.internals.l1) if cache.internals.l1 is not None else 0,
        }


# ---------------------------------------------------------------------------------------------- report


async def run(trials: int, rounds: int, max_seconds: float) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.ERROR)  # the faults are deliberate
    return {
        "stampede": await bench_stampede(trials, 0.01),
        "breaker": await bench_breaker(rounds, max_seconds),
        "eager_refresh": await bench_eager_refresh(),
        "memory": await bench_memory(200_000, 50_000),
    }


def tables(result: dict[str, Any]) -> list[Table]:
    stampede, breaker, eager, memory = (result[k] for k in ("stampede", "breaker", "eager_refresh", "memory"))
    stampedes = [
        [name, s["trials"], s["more_than_once"], s["runs_histogram"], f"{s['median_trial_ms']:.1f} ms"]
        for name, s in stampede.items()
        if isinstance(s, dict)
    ]
    misses = [[n, *(format_ns(t[k]) for k in ("median_ns", "p10_ns", "p90_ns"))] for n, t in breaker["timings"].items()]
    faults = []
    for fault in ("killed", "paused"):
        added, tail = breaker[f"added_ns_{fault}"], breaker[f"tail_{fault}"]
        faults.append(
            [f"Redis {fault}", format_ns(added), "met" if added < ADDED_TARGET_NS else "MISSED"]
            + [format_ns(tail[k]) for k in ("p50", "p99", "max")]
            + [f"{tail['at_least_operation_timeout']}/{tail['calls']}", breaker["close_after_back_s"][fault]]
        )
    hits = [
        [name, e["hits"], *(format_ns(e[k]) for k in ("p50", "p99", "max")), e["hits_over_25ms"]]
        for name, e in eager.items()
        if isinstance(e, dict)
    ]
    memory_rows = [[k, f"{v:,}" if isinstance(v, int) else v] for k, v in memory.items()]
    breaker_headers = ["fault", "added", "< 0.1 ms", "per call p50", "p99", "max"]
    return [
        Table(
            ["setup", "trials", "ran >1", "runs: trials", "median trial"],
            stampedes,
            f"Stampede: {stampede['callers']} concurrent callers, one cold key, factory {stampede['factory_ms']:g} ms",
        ),
        Table(["variant", "median", "p10", "p90"], misses, "Miss latency, breaker open vs L1-only (median per op):"),
        Table(
            [*breaker_headers, f">= {breaker['operation_timeout_ms']} ms", "closed after back (s)"],
            faults,
            note=f"BreakDuration {breaker['break_duration_s']} s; closing measured with misses every millisecond.",
        ),
        Table(
            ["setup", "hits", "p50", "p99", "max", "> 25 ms"],
            hits,
            "Eager refresh: hits on one key for 2 s, TTL 0.4 s, factory 50 ms",
        ),
        Table(["memory (L1-only, SizeLimit 256)", ""], memory_rows),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_resilience", description=__doc__)
    parser.add_argument("--trials", type=int, default=50, help="stampede trials per setup (default 50)")
    parser.add_argument("--rounds", type=int, default=30, help="batches per miss variant (default 30)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop starting rounds after this long")
    args = parser.parse_args(argv)
    bench = Run("resilience")
    bench.finish(asyncio.run(run(args.trials, args.rounds, args.max_seconds)), tables)


if __name__ == "__main__":
    main()
