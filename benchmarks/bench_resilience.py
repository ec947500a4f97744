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

from benchmarks._common import Table, Variant, bench_main, connected, format_ns, measure, summarize
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._generations import fields_for
from hybridcache._resilience import CircuitState

ADDED_TARGET_NS = 100_000
CALLERS = 1_000
OPERATION_TIMEOUT_MS = 50
BREAK = 0.5
MISS_OPS = 2_000
MEMORY_SIZE_LIMIT = 256
OPTIONS = {
    "trials": (50, "stampede trials per setup"),
    "rounds": (30, "batches per miss variant"),
    "max_seconds": (60.0, "stop starting rounds after this long"),
}


def _settings(**overrides: Any) -> CacheSettings:
    """Settings of a service of its own (a fresh name): instances built from one share their entries and locks."""
    return CacheSettings(service_name=f"bench-{uuid.uuid4().hex[:8]}", **overrides)


def _cache(**overrides: Any) -> HybridCache:
    return HybridCache(_settings(**overrides))


class _Counting:
    """A factory that counts its runs and takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.runs = delay, 0

    async def __call__(self) -> str:
        self.runs += 1
        await asyncio.sleep(self.delay)
        return "value"


async def _constant() -> str:
    return "value"


async def _miss(cache: HybridCache, key: str) -> None:
    await cache.get_or_create(key, _constant, ttl=60, type_=str)


def _misses(cache: HybridCache, prefix: str) -> Callable[[int], Awaitable[None]]:
    """A batch of misses, each on a key not read before."""
    counter = itertools.count()

    async def run(ops: int) -> None:
        for _ in range(ops):
            await _miss(cache, f"{prefix}:{next(counter)}")

    return run


async def bench_stampede(trials: int, delay: float) -> dict[str, Any]:
    """``CALLERS`` concurrent ``get_or_create`` on one cold key, ``trials`` times per setup: factory runs."""
    results: dict[str, Any] = {"callers": CALLERS, "factory_ms": delay * 1000}
    with RedisServer() as server:
        setups = {"1 instance x 1000": (1, False)}
        setups |= {
            f"4 instances x 250, distributed lock {'on' if lock else 'off'}": (4, lock) for lock in (False, True)
        }
        for name, (instances, lock) in setups.items():
            async with AsyncExitStack() as stack:
                settings = _settings(configuration=server.url, distributed_lock={"enabled": lock})
                caches = [await connected(stack, settings) for _ in range(instances)]
                runs, seconds = [], []
                for trial in range(trials):
                    factory, began = _Counting(delay), time.perf_counter()
                    key, per_instance = f"Stampede:{trial}", CALLERS // instances
                    calls = [
                        c.get_or_create(key, factory, ttl=60, type_=str) for c in caches for _ in range(per_instance)
                    ]
                    values = await asyncio.gather(*calls)
                    seconds.append(time.perf_counter() - began)
                    assert values == ["value"] * CALLERS
                    runs.append(factory.runs)
            results[name] = {
                "trials": trials,
                "more_than_once": sum(r > 1 for r in runs),
                "runs_histogram": {str(k): runs.count(k) for k in sorted(set(runs))},
                "mean_runs": statistics.mean(runs),
                "median_trial_ms": statistics.median(seconds) * 1000,
            }
    return results


@asynccontextmanager
async def _broken(server: RedisServer, fault: str, break_seconds: float) -> AsyncIterator[HybridCache]:
    """A cache whose breaker has been opened by ``fault`` ("killed" or "paused") and stays open."""
    breaker = {"failure_threshold": 3, "break_duration_seconds": break_seconds}
    cache = _cache(
        configuration=server.url, operation_timeout_milliseconds=OPERATION_TIMEOUT_MS, circuit_breaker=breaker
    )
    async with cache:
        await cache.wait_until_connected(5)
        server.kill() if fault == "killed" else server.pause()
        for n in range(100):
            if cache.breaker.state is CircuitState.OPEN:
                break
            await _miss(cache, f"opening:{n}")
        assert cache.breaker.state is CircuitState.OPEN
        yield cache
        if server.is_paused:
            server.resume()


async def _time_to_close(fault: str, repeats: int) -> list[float]:
    """Seconds from Redis being back to the breaker closing, misses flowing every millisecond."""
    out = []
    with RedisServer() as server:
        for repeat in range(repeats):
            async with _broken(server, fault, BREAK) as cache:
                # Let part of a break pass, so recovery lands at a different phase of the break each time.
                await asyncio.sleep(BREAK * repeat / repeats)
                server.restart() if fault == "killed" else server.resume()
                back = time.monotonic()
                for n in range(10_000):
                    if cache.breaker.state is CircuitState.CLOSED or time.monotonic() - back > 10:
                        break
                    await _miss(cache, f"recover:{repeat}:{n}")
                    await asyncio.sleep(0.001)
                assert cache.breaker.state is CircuitState.CLOSED
                out.append(round(time.monotonic() - back, 3))
    return out


async def bench_breaker(rounds: int, max_seconds: float) -> dict[str, Any]:
    """Misses with the breaker open vs on an L1-only cache; the tail while open; the time to close."""
    results: dict[str, Any] = {"operation_timeout_ms": OPERATION_TIMEOUT_MS}
    with RedisServer() as dead, RedisServer() as frozen, RedisServer() as healthy:
        async with AsyncExitStack() as stack:
            # A long break for the latency figures: every measured call meets an open breaker, none is the probe.
            broken = {}
            for fault, server in (("killed", dead), ("paused", frozen)):
                broken[fault] = await stack.enter_async_context(_broken(server, fault, 3600))
            l1_only = await stack.enter_async_context(_cache())
            up = await stack.enter_async_context(_cache(configuration=healthy.url))
            variants = [
                Variant("miss, L1-only cache", _misses(l1_only, "l1"), MISS_OPS),
                Variant("miss, breaker open (Redis killed)", _misses(broken["killed"], "killed"), MISS_OPS),
                Variant("miss, breaker open (Redis paused)", _misses(broken["paused"], "paused"), MISS_OPS),
                Variant("miss, healthy Redis (L1+L2)", _misses(up, "up"), MISS_OPS // 10),
            ]
            timings = await measure(variants, rounds=rounds, max_seconds=max_seconds)
            results["timings"] = {name: t.as_dict() for name, t in timings.items()}
            for fault, cache in broken.items():
                open_, base = timings[f"miss, breaker open (Redis {fault})"], timings["miss, L1-only cache"]
                results[f"added_ns_{fault}"] = statistics.median(
                    a - b for a, b in zip(open_.samples, base.samples, strict=True)
                )
                durations = []  # each call timed alone
                for n in range(5_000):
                    began = time.perf_counter_ns()
                    await _miss(cache, f"tail:{n}")
                    durations.append(time.perf_counter_ns() - began)
                tail = summarize(durations, ("p50", "p99", "max"))
                tail["at_least_operation_timeout"] = sum(d >= OPERATION_TIMEOUT_MS * 1_000_000 for d in durations)
                results[f"tail_{fault}"] = tail | {"calls": len(durations)}
                assert cache.breaker.state is CircuitState.OPEN
    results["close_after_back_s"] = {fault: await _time_to_close(fault, 5) for fault in ("killed", "paused")}
    results["break_duration_s"] = BREAK
    return results


async def bench_eager_refresh(seconds: float = 2.0) -> dict[str, Any]:
    """Hits on one key every 2 ms (TTL 0.4 s, factory 50 ms), with and without ``eager_refresh=0.5``."""
    results: dict[str, Any] = {"ttl_s": 0.4, "factory_ms": 50, "stream_s": seconds}
    with RedisServer() as server:
        for topology, eager in itertools.product(("l1-only", "l1+l2"), (None, 0.5)):
            factory = _Counting(0.05)
            async with _cache(configuration=server.url if topology == "l1+l2" else None) as cache:
                await cache.wait_until_connected(5)
                await cache.get_or_create("k", factory, ttl=0.4, type_=str, eager_refresh=eager)
                durations, end = [], time.monotonic() + seconds
                while len(durations) < 20_000 and time.monotonic() < end:
                    began = time.perf_counter_ns()
                    await cache.get_or_create("k", factory, ttl=0.4, type_=str, eager_refresh=eager)
                    durations.append(time.perf_counter_ns() - began)
                    await asyncio.sleep(0.002)
                results[f"{topology}, eager_refresh={eager}"] = summarize(durations, ("p50", "p99", "max")) | {
                    "hits": len(durations),
                    "factory_runs": factory.runs,
                    "eager_refreshes": cache.counters.eager_refreshes,
                    "hits_over_25ms": sum(d > 25_000_000 for d in durations),
                }
    return results


async def bench_memory(untraced: int, traced: int) -> dict[str, Any]:
    """Traced bytes held after many distinct keys, and the growth per half after a turnover warm-up."""
    warm_up = 2 * MEMORY_SIZE_LIMIT + (fields_for.cache_info().maxsize or 0)
    async with _cache(memory_cache={"size_limit": MEMORY_SIZE_LIMIT}) as cache:
        began = time.perf_counter()
        for n in range(untraced):
            await _miss(cache, f"m:{n}")
        untraced_seconds = time.perf_counter() - began
        middle, end, start = untraced + warm_up + (traced - warm_up) // 2, untraced + traced, untraced
        readings = []
        tracemalloc.start()
        try:
            for stop in (untraced + warm_up, middle, end):  # the steady state, halfway, the end
                for n in range(start, stop):
                    await _miss(cache, f"m:{n}")
                gc.collect()
                readings.append(tracemalloc.get_traced_memory()[0])
                start = stop
        finally:
            tracemalloc.stop()
        steady, halfway, final = readings
        return {
            "keys": end,
            "traced_keys": traced - warm_up,
            "misses_per_second_untraced": round(untraced / untraced_seconds),
            "l1_traced_bytes": steady,
            # A leak grows with keys: the second half adds as much as the first. Bounded churn (a dict resizing,
            # the memo's links) shows up once, in the first half.
            "growth_bytes": final - steady,
            "growth_first_half_bytes": halfway - steady,
            "growth_second_half_bytes": final - halfway,
            "growth_bytes_per_key": round((final - halfway) / (end - middle), 4),
            "flights_left": len(cache.internals.loads),
            "l1_entries": len(cache.internals.l1) if cache.internals.l1 is not None else 0,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.ERROR)  # the faults are deliberate
    return {
        "stampede": await bench_stampede(args.trials, 0.01),
        "breaker": await bench_breaker(args.rounds, args.max_seconds),
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
    bench_main("resilience", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
