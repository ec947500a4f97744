"""What the generation hash costs at 10k, 100k and 1M prefixes/tags (Redis memory, resync, the in-process mirror),
and how fast the sweep forgets them past the retention. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from benchmarks._common import Table, bench_main, percentile
from harness.redis_server import RedisServer
from hybridcache._generations import GenerationTable
from hybridcache._redis.l2 import SYNC_PAGE, RedisL2
from hybridcache._redis.scripts import SWEEP_COUNT
from hybridcache._resilience import CircuitBreaker

RETENTION_MS = 3_600_000
FILL_BATCH = 10_000
OPTIONS = {"sizes": ([10_000, 100_000, 1_000_000], "hash sizes, comma-separated")}


async def _fill(client: Redis, key: str, size: int, value: int) -> None:
    for start in range(0, size, FILL_BATCH):
        mapping = {f"t:order:{i}": value for i in range(start, min(size, start + FILL_BATCH))}
        await client.hset(key, mapping=mapping)  # type: ignore[arg-type]


async def _longest_command_ms(client: Redis) -> float:
    entries = await client.slowlog_get(1_000_000)
    return max((entry["duration"] for entry in entries), default=0) / 1000


async def _measure(client: Redis, l2: RedisL2, size: int) -> dict[str, Any]:
    await client.delete(l2.generations_key, l2.sweep_key)
    await l2.generation_state()  # creates the epoch
    seconds, microseconds = await client.time()
    now = int(seconds) * 1000 + int(microseconds) // 1000
    await _fill(client, l2.generations_key, size, now)
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
    await _fill(client, l2.generations_key, size, now - RETENTION_MS - 60_000)
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with RedisServer() as server:
        client = server.client()
        try:
            await client.config_set("slowlog-log-slower-than", 0)
            await client.config_set("slowlog-max-len", 100_000)
            l2 = RedisL2(
                client,
                instance_name="bench:",
                namespace="generations:v1:",
                breaker=CircuitBreaker(failure_threshold=5, break_duration=60.0, name="bench"),
                retention_ms=RETENTION_MS,
            )
            rows = [await _measure(client, l2, size) for size in args.sizes]
            return {"sync_page": SYNC_PAGE, "sweep_count": SWEEP_COUNT, "rows": rows}
        finally:
            await client.aclose()


def tables(result: dict[str, Any]) -> list[Table]:
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
    document = bench_main("generations", argv, __doc__, run, tables, OPTIONS)
    return 0 if all(r["sweep_left"] <= 0 for r in document["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
