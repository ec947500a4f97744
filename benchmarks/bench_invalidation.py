"""Invalidation (issue 3): how fast it reaches another process, and what ``remove_by_prefix`` costs with 1,000 vs
1,000,000 keys in Redis (target: ratio of medians under 1.5; ``invalidation.json``); what the generation hash costs
at 10k, 100k and 1M prefixes/tags (Redis memory, resync, the in-process mirror) and how fast the sweep forgets them
past the retention (``generations.json``). Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from redis.asyncio import Redis

from benchmarks._common import Table, bench_main, connected, percentile, summarize
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._generations import GenerationTable
from hybridcache._redis.l2 import SYNC_PAGE, RedisL2
from hybridcache._redis.scripts import SWEEP_COUNT
from hybridcache._resilience import CircuitBreaker

KEY, PREFIX, TAG = "Bench:Search:item", "Bench:Search", "bench"
#: How the writer invalidates the observer's key, in rotation: by exact key, by a prefix above it, by its tag.
INVALIDATIONS: dict[str, Callable[[HybridCache], Awaitable[Any]]] = {
    "key": lambda cache: cache.remove(KEY),
    "prefix": lambda cache: cache.remove_by_prefix(PREFIX),
    "tag": lambda cache: cache.remove_by_tag(TAG),
}
KINDS = tuple(INVALIDATIONS)
RETENTION_MS = 3_600_000  # the generation hash's retention in these runs
FILL_BATCH = 10_000
POLL_LIMIT = 1.0  # seconds the observer polls before counting an invalidation as never seen

_FILL = """
for i = tonumber(ARGV[4]), tonumber(ARGV[5]) do
  redis.call('SET', ARGV[1] .. i, ARGV[3], 'PX', 3600000)
  redis.call('SET', ARGV[2] .. i, ARGV[3], 'PX', 3600000)
end
return redis.call('DBSIZE')
"""
OPTIONS = {
    "iterations": (1000, "invalidations timed"),
    "rounds": (300, "timed remove_by_prefix calls per server"),
    "small_keys": (1_000, "keys in the small server"),
    "large_keys": (1_000_000, "keys in the large server"),
    "sizes": ([10_000, 100_000, 1_000_000], "generation hash sizes, comma-separated"),
}


async def observe(url: str, service: str) -> None:
    """The observer process: warm the key read from stdin, then report when it stopped being served."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with AsyncExitStack() as stack:
        cache = await connected(stack, CacheSettings(service_name=service, configuration=url))
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            version = int(line)

            async def load(version: int = version) -> int:
                return version

            await cache.get_or_create(KEY, load, tags=(TAG,))
            hits = cache.counters.l1_hits
            if await cache.get(KEY) != version or cache.counters.l1_hits != hits + 1:
                raise RuntimeError("the observer is not serving the key from L1")
            print(f"warm {version}", flush=True)
            deadline, seen = time.perf_counter() + POLL_LIMIT, None
            while seen is None and time.perf_counter() <= deadline:
                before = time.perf_counter()
                if await cache.get(KEY, default="missing") != version:
                    seen = before
                await asyncio.sleep(0)
            print(f"seen {version} {seen!r}", flush=True)


def summary(delays_s: Sequence[float]) -> dict[str, Any]:
    if not delays_s:
        return {"count": 0}
    return summarize(delays_s, ("count", "p50", "p90", "p99", "max", "mean"), unit="ms", scale=1e3, digits=4)


async def propagation(server: RedisServer, iterations: int) -> dict[str, Any]:
    """Delays from the writer's invalidation to the observer process no longer serving the key."""
    service = f"bench-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "benchmarks.bench_invalidation", "observe", server.url, service]
    child = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None
    assert child.stdout is not None

    async def expect(*words: str) -> str:
        line = (await asyncio.wait_for(child.stdout.readline(), 10)).decode().split()  # type: ignore[union-attr]
        if line[: len(words)] != list(words):
            raise RuntimeError(f"the observer said {line}, not {words}")
        return line[-1]

    records = []
    try:
        async with AsyncExitStack() as stack:
            writer = await connected(stack, CacheSettings(service_name=service, configuration=server.url))
            await expect("ready")
            for i in range(iterations):
                child.stdin.write(f"{i}\n".encode())
                await child.stdin.drain()
                await expect("warm", str(i))
                called = time.perf_counter()
                await INVALIDATIONS[KINDS[i % len(KINDS)]](writer)
                returned = time.perf_counter()
                if (seen := await expect("seen", str(i))) != "None":
                    records.append((KINDS[i % len(KINDS)], float(seen) - returned, float(seen) - called))
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()
    return {
        "invalidations": iterations,
        "never_seen": iterations - len(records),
        "delay_from_return": summary([r[1] for r in records]),
        "delay_from_call": summary([r[2] for r in records]),
        "by_kind": {k: summary([r[1] for r in records if r[0] == k]) for k in KINDS},
    }


async def prefix_cost(small_keys: int, large_keys: int, rounds: int) -> dict[str, Any]:
    """``remove_by_prefix`` with ``small_keys`` vs ``large_keys`` in Redis, and a SCAN MATCH walk of each."""
    results: dict[str, Any] = {}
    samples: dict[str, list[float]] = {"small": [], "large": []}
    with RedisServer() as small, RedisServer() as large:
        async with AsyncExitStack() as stack:
            writers, admins, patterns = {}, {}, {}
            for label, server, keys in (("small", small, small_keys), ("large", large, large_keys)):
                service = f"bench-{uuid.uuid4().hex[:6]}"
                settings = CacheSettings(service_name=service, configuration=server.url)
                writers[label] = await connected(stack, settings)
                await connected(stack, settings)  # a subscriber
                admins[label] = admin = server.client()
                stack.push_async_callback(admin.aclose)
                l2 = writers[label].internals.l2
                assert l2 is not None
                under, elsewhere = l2.redis_key(f"{service}:v1:{PREFIX}:"), l2.redis_key(f"{service}:v1:Elsewhere:")
                patterns[label], started, size = under + "*", time.perf_counter(), 0
                for start in range(0, keys // 2, 10_000):
                    size = await admin.eval(
                        _FILL, 0, under, elsewhere, "x" * 100, start, min(keys // 2, start + 10_000) - 1
                    )
                results[label] = {"keys": int(size), "fill_seconds": round(time.perf_counter() - started, 2)}
            for round_ in range(rounds):
                for label in ("small", "large") if round_ % 2 == 0 else ("large", "small"):
                    started = time.perf_counter()
                    await writers[label].remove_by_prefix(PREFIX)
                    samples[label].append(time.perf_counter() - started)
            for label in ("small", "large"):
                scans = []
                for _ in range(3):
                    started = time.perf_counter()
                    async for _key in admins[label].scan_iter(match=patterns[label], count=1000):
                        pass
                    scans.append(time.perf_counter() - started)
                results[label] |= summarize(samples[label], ("median", "p90", "min"), unit="us", scale=1e6)
                results[label] |= {
                    "calls": len(samples[label]),
                    "scan_match_ms": round(statistics.median(scans) * 1e3, 1),
                }
    paired = [b / a for a, b in zip(samples["small"], samples["large"], strict=True)]
    results["ratio_of_medians"] = round(results["large"]["median_us"] / results["small"]["median_us"], 3)
    results["paired_ratio_median"] = round(statistics.median(paired), 3)
    return results


async def _fill_hash(client: Redis, key: str, size: int, value: int) -> None:
    for start in range(0, size, FILL_BATCH):
        mapping = {f"t:order:{i}": value for i in range(start, min(size, start + FILL_BATCH))}
        await client.hset(key, mapping=mapping)  # type: ignore[arg-type]


async def _longest_command_ms(client: Redis) -> float:
    entries = await client.slowlog_get(1_000_000)
    return max((entry["duration"] for entry in entries), default=0) / 1000


async def _generation_costs(client: Redis, l2: RedisL2, size: int) -> dict[str, Any]:
    await client.delete(l2.generations_key, l2.sweep_key)
    await l2.generation_state()  # creates the epoch
    seconds, microseconds = await client.time()
    now = int(seconds) * 1000 + int(microseconds) // 1000
    await _fill_hash(client, l2.generations_key, size, now)
    memory = int(await client.memory_usage(l2.generations_key, samples=0) or 0)

    resync_ms = []  # the paged resync, and its longest command; then the one HGETALL it replaced
    for _ in range(3):
        await client.slowlog_reset()
        started = time.perf_counter()
        state = await l2.generation_state()
        resync_ms.append((time.perf_counter() - started) * 1000)
        assert len(state.counters) == size, (len(state.counters), size)
    longest_paged = await _longest_command_ms(client)
    await client.slowlog_reset()
    started = time.perf_counter()
    await client.hgetall(l2.generations_key)
    one_command_ms = (time.perf_counter() - started) * 1000
    longest_one_command = await _longest_command_ms(client)

    del state
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = GenerationTable("e", retention_ms=RETENTION_MS)
    loaded = await l2.generation_state()
    table.replace(loaded.epoch, loaded.counters)
    del loaded
    gc.collect()
    mirror = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del table

    # Make every field older than the retention, then sweep it away with invalidations of one live tag each.
    await _fill_hash(client, l2.generations_key, size, now - RETENTION_MS - 60_000)
    invalidations, started = 0, time.perf_counter()
    deadline = started + 600
    while await client.hlen(l2.generations_key) > 2 + invalidations and time.perf_counter() < deadline:
        await l2.invalidate([], [f"t:live:{invalidations}"], sender="bench")
        invalidations += 1
    sweep_s = time.perf_counter() - started
    left = int(await client.hlen(l2.generations_key)) - 2 - invalidations
    return {
        "fields": size,
        "redis_bytes": memory,
        "resync_ms_median": round(percentile(resync_ms, 0.5), 1),
        "resync_longest_command_ms": round(longest_paged, 2),
        "hgetall_ms": round(one_command_ms, 1),
        "hgetall_server_ms": round(longest_one_command, 2),
        "mirror_bytes": mirror,
        "sweep_invalidations": invalidations,
        "sweep_seconds": round(sweep_s, 2),
        "sweep_left": left,
    }


async def generations(sizes: Sequence[int]) -> dict[str, Any]:
    """Each size in a fresh hash of a private redis-server (``_generation_costs``)."""
    with RedisServer() as server:
        async with server.client() as client:
            await client.config_set("slowlog-log-slower-than", 0)
            await client.config_set("slowlog-max-len", 100_000)
            breaker = CircuitBreaker(failure_threshold=5, break_duration=60.0, name="bench")
            l2 = RedisL2(
                client, instance_name="bench:", namespace="generations:v1:", breaker=breaker, retention_ms=RETENTION_MS
            )
            rows = [await _generation_costs(client, l2, size) for size in sizes]
    return {"sync_page": SYNC_PAGE, "sweep_count": SWEEP_COUNT, "rows": rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    with RedisServer() as server:
        modes = {"two-process, 1 observer": await propagation(server, args.iterations)}
    cost = await prefix_cost(args.small_keys, args.large_keys, args.rounds)
    return {
        "invalidation": {"method": __doc__, "propagation": modes, "prefix_cost": cost},
        "generations": await generations(args.sizes),
    }


def tables(document: dict[str, Any]) -> list[Table]:
    if document["benchmark"] == "generations":
        return generation_tables(document)
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


def generation_tables(result: dict[str, Any]) -> list[Table]:
    mib = 1024 * 1024
    rows = [
        [
            f"{r['fields']:,}", f"{r['redis_bytes'] / mib:.1f}", r["resync_ms_median"], r["resync_longest_command_ms"],
            f"{r['hgetall_ms']} ({r['hgetall_server_ms']})", f"{r['mirror_bytes'] / mib:.1f}",
            f"{r['sweep_invalidations']:,} / {r['sweep_seconds']}",
        ]
        for r in result["rows"]
    ]  # fmt: skip
    headers = ["fields", "Redis MiB", "resync ms", "longest cmd ms", "HGETALL ms (server)", "mirror MiB"]
    return [Table([*headers, "sweep: invalidations / s"], rows)]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["observe"]:
        asyncio.run(observe(*argv[1:3]))
        return 0
    documents = bench_main("invalidation", argv, __doc__, run, tables, OPTIONS, per_file=True)
    cost_ok = documents["invalidation"]["prefix_cost"]["ratio_of_medians"] < 1.5
    return 0 if cost_ok and all(r["sweep_left"] <= 0 for r in documents["generations"]["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
