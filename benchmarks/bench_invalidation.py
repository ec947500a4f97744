"""Invalidation (issue 3): how fast it reaches other instances, and what ``remove_by_prefix`` costs with 1,000 vs
1,000,000 keys in Redis (target: ratio of medians under 1.5). Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import hybridcache
from benchmarks._common import Run, Table, summarize
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache

KEY, PREFIX, TAG = "Bench:Search:item", "Bench:Search", "bench"
KINDS = ("key", "prefix", "tag")
POLL_LIMIT = 1.0  # seconds an observer polls before counting an invalidation as never seen
_MISSING = "missing"

_FILL = """
for i = tonumber(ARGV[4]), tonumber(ARGV[5]) do
  redis.call('SET', ARGV[1] .. i, ARGV[3], 'PX', 3600000)
  redis.call('SET', ARGV[2] .. i, ARGV[3], 'PX', 3600000)
end
return redis.call('DBSIZE')
"""


def settings(url: str, service: str) -> CacheSettings:
    return CacheSettings(service_name=service, configuration=url)


async def invalidate(cache: HybridCache, kind: str) -> None:
    if kind == "key":
        await cache.remove(KEY)
    elif kind == "prefix":
        await cache.remove_by_prefix(PREFIX)
    else:
        await cache.remove_by_tag(TAG)


async def warm(cache: HybridCache, version: int) -> None:
    async def load() -> int:
        return version

    await cache.get_or_create(KEY, load, tags=(TAG,))
    hits = cache.counters.l1_hits
    if await cache.get(KEY) != version or cache.counters.l1_hits != hits + 1:
        raise RuntimeError("the observer is not serving the key from L1")


async def poll_until_changed(cache: HybridCache, old: int) -> float | None:
    """The perf_counter() taken just before the first get() that no longer returns ``old`` (None: never)."""
    deadline = time.perf_counter() + POLL_LIMIT
    while True:
        before = time.perf_counter()
        if await cache.get(KEY, default=_MISSING) != old:
            return before
        if before > deadline:
            return None
        await asyncio.sleep(0)


def summary(delays_s: Sequence[float]) -> dict[str, Any]:
    if not delays_s:
        return {"count": 0}
    return summarize(delays_s, ("count", "p50", "p90", "p99", "max", "mean"), unit="ms", scale=1e3, digits=4)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    seen = [r for r in records if r["delay"] is not None]
    return {
        "invalidations": len(records),
        "never_seen": len(records) - len(seen),
        "delay_from_return": summary([r["delay"] for r in seen]),
        "delay_from_call": summary([r["delay_from_call"] for r in seen]),
        "by_kind": {k: summary([r["delay"] for r in seen if r["kind"] == k]) for k in KINDS},
    }


# ------------------------------------------------------------------------------------------------ same loop


async def propagation_same_loop(server: RedisServer, iterations: int, observers: int) -> dict[str, Any]:
    service = f"bench-{uuid.uuid4().hex[:6]}"
    records = []
    async with AsyncExitStack() as stack:
        writer, *others = [
            await stack.enter_async_context(HybridCache(settings(server.url, service))) for _ in range(1 + observers)
        ]
        for cache in (writer, *others):
            await cache.wait_until_connected(5.0)
        for i in range(iterations):
            kind = KINDS[i % len(KINDS)]
            for cache in others:
                await warm(cache, i)
            called = time.perf_counter()
            await invalidate(writer, kind)
            returned = time.perf_counter()
            seen = await asyncio.gather(*(poll_until_changed(cache, i) for cache in others))
            latest = None if any(s is None for s in seen) else max(s for s in seen if s is not None)
            records.append(
                {
                    "kind": kind,
                    "delay": None if latest is None else latest - returned,
                    "delay_from_call": None if latest is None else latest - called,
                }
            )
    return summarise(records)


# ------------------------------------------------------------------------------------------------ two processes


async def observer_process(url: str, service: str) -> None:
    """Child side: warm on request, then poll and report when the change was seen."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with HybridCache(settings(url, service)) as cache:
        await cache.wait_until_connected(5.0)
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            version = int(line)
            await warm(cache, version)
            print(f"warm {version}", flush=True)
            seen = await poll_until_changed(cache, version)
            print(f"seen {version} {'none' if seen is None else repr(seen)}", flush=True)


async def propagation_two_processes(server: RedisServer, iterations: int) -> dict[str, Any]:
    service = f"bench-{uuid.uuid4().hex[:6]}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_invalidation",
        "--observer",
        server.url,
        service,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    records = []
    try:
        async with HybridCache(settings(server.url, service)) as writer:
            await writer.wait_until_connected(5.0)
            if (await asyncio.wait_for(child.stdout.readline(), 10)).strip() != b"ready":
                raise RuntimeError("the observer process did not start")
            for i in range(iterations):
                kind = KINDS[i % len(KINDS)]
                child.stdin.write(f"{i}\n".encode())
                await child.stdin.drain()
                if (await asyncio.wait_for(child.stdout.readline(), 5)).split() != [b"warm", str(i).encode()]:
                    raise RuntimeError("the observer lost step")
                called = time.perf_counter()
                await invalidate(writer, kind)
                returned = time.perf_counter()
                _, _, stamp = (await asyncio.wait_for(child.stdout.readline(), 5)).decode().split()
                seen = None if stamp == "none" else float(stamp)
                records.append(
                    {
                        "kind": kind,
                        "delay": None if seen is None else seen - returned,
                        "delay_from_call": None if seen is None else seen - called,
                    }
                )
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()
    return summarise(records)


# ------------------------------------------------------------------------------------------------ prefix cost


async def fill(cache: HybridCache, admin: Any, service: str, keys: int) -> int:
    """``keys`` entries, half under PREFIX and half elsewhere, in batches of one Lua script each."""
    l2 = cache.internals.l2
    assert l2 is not None
    under = l2.redis_key(f"{service}:v1:{PREFIX}:")
    elsewhere = l2.redis_key(f"{service}:v1:Elsewhere:")
    value = "x" * 100
    batch = 10_000
    size = 0
    for start in range(0, keys // 2, batch):
        end = min(keys // 2, start + batch) - 1
        size = await admin.eval(_FILL, 0, under, elsewhere, value, start, end)
    return int(size)


async def prefix_cost(small_keys: int, large_keys: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with RedisServer() as small, RedisServer() as large:
        async with AsyncExitStack() as stack:
            writers = {}
            admins = {}
            for label, server, keys in (("small", small, small_keys), ("large", large, large_keys)):
                service = f"bench-{uuid.uuid4().hex[:6]}"
                writer = await stack.enter_async_context(HybridCache(settings(server.url, service)))
                subscriber = await stack.enter_async_context(HybridCache(settings(server.url, service)))
                await writer.wait_until_connected(5.0)
                await subscriber.wait_until_connected(5.0)
                admin = server.client()
                stack.push_async_callback(admin.aclose)
                started = time.perf_counter()
                dbsize = await fill(writer, admin, service, keys)
                results[label] = {"keys": dbsize, "fill_seconds": round(time.perf_counter() - started, 2)}
                writers[label], admins[label] = writer, admin
            samples: dict[str, list[float]] = {"small": [], "large": []}
            for round_ in range(rounds):
                for label in ("small", "large") if round_ % 2 == 0 else ("large", "small"):
                    started = time.perf_counter()
                    await writers[label].remove_by_prefix(PREFIX)
                    samples[label].append(time.perf_counter() - started)
            for label in ("small", "large"):
                figures = summarize(samples[label], ("median", "p90", "min"), unit="us", scale=1e6)
                scan_ms = await scan_cost(admins[label], writers[label])
                results[label].update(figures, calls=len(samples[label]), scan_match_ms=scan_ms)
            paired = [b / a for a, b in zip(samples["small"], samples["large"], strict=True)]
            results["ratio_of_medians"] = round(results["large"]["median_us"] / results["small"]["median_us"], 3)
            results["paired_ratio_median"] = round(statistics.median(paired), 3)
    return results


async def scan_cost(admin: Any, cache: HybridCache, runs: int = 3) -> float:
    """Median milliseconds of one full ``SCAN MATCH <prefix>*`` walk (counted only, nothing deleted)."""
    l2 = cache.internals.l2
    assert l2 is not None
    pattern = l2.redis_key(f"{cache.settings.service_name}:v1:{PREFIX}:*")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async for _key in admin.scan_iter(match=pattern, count=1000):
            pass
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 1)


# ------------------------------------------------------------------------------------------------ main


def tables(document: dict[str, Any]) -> list[Table]:
    rows = []
    for mode, result in document["propagation"].items():
        d = result["delay_from_return"]
        rows.append([mode, result["invalidations"], result["never_seen"], d["p50_ms"], d["p99_ms"], d["max_ms"]])
    cost = document["prefix_cost"]
    costs = [
        [label, *(cost[label][k] for k in ("keys", "median_us", "p90_us", "scan_match_ms"))]
        for label in ("small", "large")
    ]
    note = f"ratio of medians {cost['ratio_of_medians']} (paired {cost['paired_ratio_median']}); target < 1.5"
    return [
        Table(["propagation (ms after invalidate returned)", "n", "never", "p50", "p99", "max"], rows),
        Table(["remove_by_prefix", "keys in Redis", "median µs", "p90 µs", "SCAN MATCH walk ms"], costs, note=note),
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    propagation: dict[str, Any] = {}
    with RedisServer() as server:
        propagation["same-loop, 1 observer"] = await propagation_same_loop(server, args.iterations, 1)
        propagation["same-loop, 2 observers"] = await propagation_same_loop(server, args.iterations, 2)
        propagation["two-process, 1 observer"] = await propagation_two_processes(server, args.iterations)
    cost = await prefix_cost(args.small_keys, args.large_keys, args.rounds)
    return {"method": __doc__, "propagation": propagation, "prefix_cost": cost}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_invalidation", description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=1000, help="invalidations per propagation mode")
    parser.add_argument("--rounds", type=int, default=300, help="timed remove_by_prefix calls per server")
    parser.add_argument("--small-keys", type=int, default=1_000)
    parser.add_argument("--large-keys", type=int, default=1_000_000)
    parser.add_argument("--observer", nargs=2, metavar=("URL", "SERVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.observer:
        asyncio.run(observer_process(*args.observer))
        return 0
    bench = Run("invalidation")
    document = asyncio.run(run(args))
    # The git commit in "machine" may be "-dirty" from others' work in progress: say which code was measured.
    document["hybridcache_source"] = str(Path(hybridcache.__file__).resolve().parent)
    bench.finish(document, tables)
    return 0 if document["prefix_cost"]["ratio_of_medians"] < 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
