"""What the sync API costs: ``python -m benchmarks.bench_sync [--rounds N]``.

One run, variants timed round-robin (``_common.measure``), the service's dealership DTO as the value, a private
redis-server:

* **L1 hit** (L1+L2): ``SyncHybridCache.get_or_create`` and ``get`` served in the calling thread, and a call to a
  function decorated with the sync ``@cached``, beside a dict lookup and the async ``get_or_create`` L1 hit.
  Target: median <= 0.5 µs.
* **L2 hit** (L1 off): the sync ``get_or_create`` and ``get`` beside a raw sync redis-py ``GET`` + pydantic decode of
  the same value on the same server (target: <= 1.2x, paired per round), and beside the async cache's L2 hit and
  a raw ``redis.asyncio`` GET + decode for context. The sync L2 hit crosses to the cache's loop thread and back:
  a round trip to a loop thread with a trivial coroutine is timed alone, as the floor of that crossing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
import redis.asyncio
from pydantic import TypeAdapter

from benchmarks._common import Run, Table, Variant, dealership_dto, format_ns, looped, measure, paired_ratio
from dealership.dto import DealershipDto
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._loop_thread import LoopThread
from hybridcache.sync import SyncHybridCache

KEY = "Dealership:42"
TTL = timedelta(hours=1)
L1_TARGET_NS = 500
L2_TARGET_RATIO = 1.2
FAST_OPS = 20_000
REDIS_OPS = 200

DICT = "dict lookup"
SYNC_L1 = "sync get_or_create L1 hit"
SYNC_GET_L1 = "sync get L1 hit"
SYNC_DECORATED = "sync @cached L1 hit"
ASYNC_L1 = "async get_or_create L1 hit"
ROUND_TRIP = "round trip to a loop thread (trivial coroutine)"
RAW_SYNC = "raw sync GET + decode"
SYNC_L2 = "sync get_or_create L2 hit (L1 off)"
SYNC_GET_L2 = "sync get L2 hit (L1 off)"
RAW_ASYNC = "raw async GET + decode"
ASYNC_L2 = "async get_or_create L2 hit (L1 off)"


def settings_for(server: RedisServer, *, l1: bool) -> CacheSettings:
    # L1 entries outlive the run: hits are measured, not refreshes.
    return CacheSettings(
        service_name="bench-sync",
        configuration=server.url,
        memory_cache={"enabled": l1, "default_expiration_seconds": 3600},
    )


async def run(rounds: int, max_seconds: float) -> dict[str, Any]:
    dto = dealership_dto(42)
    adapter: TypeAdapter[DealershipDto] = TypeAdapter(DealershipDto)
    payload = adapter.dump_json(dto)
    runs = [0]

    def factory() -> DealershipDto:
        runs[0] += 1
        return dto

    async def async_factory() -> DealershipDto:
        runs[0] += 1
        return dto

    with RedisServer() as server:
        both = SyncHybridCache(settings_for(server, l1=True))
        l2_only = SyncHybridCache(settings_for(server, l1=False))
        async_l2 = HybridCache(settings_for(server, l1=False))
        async_both = HybridCache(settings_for(server, l1=True))
        timeouts = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "protocol": l2_only.settings.protocol}
        raw = redis.Redis(host=server.host, port=server.port, **timeouts)
        raw_async = redis.asyncio.Redis(host=server.host, port=server.port, **timeouts)
        loop_thread = LoopThread("bench-round-trip")
        with both, l2_only:
            async with async_l2, async_both:
                raw.set("raw:" + KEY, payload)
                for cache in (both, l2_only):
                    assert cache.get_or_create(KEY, factory, ttl=TTL, type_=DealershipDto) == dto
                for async_cache in (async_l2, async_both):
                    assert await async_cache.get_or_create(KEY, async_factory, ttl=TTL, type_=DealershipDto) == dto

                @both.cached(key="Dealership:{dealership_id}", ttl=TTL)
                def get_dealership(dealership_id: int) -> DealershipDto:
                    return factory()

                assert get_dealership(42) == dto
                table = {KEY: dto}

                def dict_lookup(ops: int) -> None:
                    for _ in range(ops):
                        table[KEY]

                def sync_l1(ops: int) -> None:
                    get_or_create = both.get_or_create
                    for _ in range(ops):
                        get_or_create(KEY, factory, ttl=TTL, type_=DealershipDto)

                def sync_get_l1(ops: int) -> None:
                    get = both.get
                    for _ in range(ops):
                        get(KEY, type_=DealershipDto)

                def decorated(ops: int) -> None:
                    for _ in range(ops):
                        get_dealership(42)

                async def trivial() -> None:
                    return None

                def round_trip(ops: int) -> None:
                    call = loop_thread.call
                    for _ in range(ops):
                        call(trivial())

                def raw_sync(ops: int) -> None:
                    for _ in range(ops):
                        adapter.validate_json(raw.get("raw:" + KEY))  # type: ignore[arg-type]

                def sync_l2(ops: int) -> None:
                    get_or_create = l2_only.get_or_create
                    for _ in range(ops):
                        get_or_create(KEY, factory, ttl=TTL, type_=DealershipDto)

                def sync_get_l2(ops: int) -> None:
                    get = l2_only.get
                    for _ in range(ops):
                        get(KEY, type_=DealershipDto)

                async def raw_async_op() -> DealershipDto:
                    return adapter.validate_json(await raw_async.get("raw:" + KEY))  # type: ignore[arg-type]

                variants = [
                    Variant(DICT, dict_lookup, FAST_OPS * 10),
                    Variant(SYNC_L1, sync_l1, FAST_OPS),
                    Variant(SYNC_GET_L1, sync_get_l1, FAST_OPS),
                    Variant(SYNC_DECORATED, decorated, FAST_OPS),
                    Variant(
                        ASYNC_L1,
                        looped(lambda: async_both.get_or_create(KEY, async_factory, ttl=TTL, type_=DealershipDto)),
                        FAST_OPS,
                    ),
                    Variant(ROUND_TRIP, round_trip, REDIS_OPS),
                    Variant(RAW_SYNC, raw_sync, REDIS_OPS),
                    Variant(SYNC_L2, sync_l2, REDIS_OPS),
                    Variant(SYNC_GET_L2, sync_get_l2, REDIS_OPS),
                    Variant(RAW_ASYNC, looped(raw_async_op), REDIS_OPS),
                    Variant(
                        ASYNC_L2,
                        looped(lambda: async_l2.get_or_create(KEY, async_factory, ttl=TTL, type_=DealershipDto)),
                        REDIS_OPS,
                    ),
                ]
                before = runs[0]
                timings = await measure(variants, rounds=rounds, max_seconds=max_seconds)
                assert runs[0] == before, "a measured read missed and ran the factory"
                assert l2_only.stats().l1_hits == 0, "the L2 figures include L1 hits"
                assert both.stats().l2_hits == 0, "the L1 figures include L2 hits"
                stats = {"l1+l2": both.stats().as_dict(), "l2-only": l2_only.stats().as_dict()}
        raw.close()
        await raw_async.aclose()
        loop_thread.stop()

    l1_ns = timings[SYNC_L1].median_ns
    l2_ratio = paired_ratio(timings[SYNC_L2], timings[RAW_SYNC])
    return {
        "unit": "ns per operation: median over rounds of each batch's mean (loop overhead included)",
        "results": {name: t.as_dict() for name, t in timings.items()},
        "ratios": {
            "sync_l1_over_async_l1_paired": round(paired_ratio(timings[SYNC_L1], timings[ASYNC_L1]), 3),
            "sync_decorated_over_sync_l1_paired": round(paired_ratio(timings[SYNC_DECORATED], timings[SYNC_L1]), 3),
            "sync_l2_over_raw_sync_paired": round(l2_ratio, 3),
            "sync_get_l2_over_raw_sync_paired": round(paired_ratio(timings[SYNC_GET_L2], timings[RAW_SYNC]), 3),
            "sync_l2_over_async_l2_paired": round(paired_ratio(timings[SYNC_L2], timings[ASYNC_L2]), 3),
            "async_l2_over_raw_sync_paired": round(paired_ratio(timings[ASYNC_L2], timings[RAW_SYNC]), 3),
            "raw_async_over_raw_sync_paired": round(paired_ratio(timings[RAW_ASYNC], timings[RAW_SYNC]), 3),
            "sync_l2_minus_async_l2_ns": round(timings[SYNC_L2].median_ns - timings[ASYNC_L2].median_ns),
            "round_trip_ns": round(timings[ROUND_TRIP].median_ns),
        },
        "targets": {
            "l1_hit_ns": L1_TARGET_NS,
            "l1_hit_met": l1_ns <= L1_TARGET_NS,
            "l2_hit_max_ratio_to_raw_sync": L2_TARGET_RATIO,
            "l2_hit_met": l2_ratio <= L2_TARGET_RATIO,
            "l2_hit_judged_by": "sync_l2_over_raw_sync_paired",
        },
        "cache_stats": stats,
    }


def tables(document: dict[str, Any]) -> list[Table]:
    results, ratios, targets = document["results"], document["ratios"], document["targets"]
    rows = [
        [name, *(format_ns(row[k]) for k in ("median_ns", "p10_ns", "p90_ns", "cpu_median_ns"))]
        for name, row in results.items()
    ]
    l1 = results[SYNC_L1]["median_ns"]
    note = (
        f"sync L1 hit {format_ns(l1)} median: target <= {format_ns(targets['l1_hit_ns'])} "
        f"{'met' if targets['l1_hit_met'] else 'MISSED'}. sync L2 hit "
        f"{ratios['sync_l2_over_raw_sync_paired']:.3f}x raw sync GET + decode (paired), target <= "
        f"{targets['l2_hit_max_ratio_to_raw_sync']:.2f}x {'met' if targets['l2_hit_met'] else 'MISSED'}."
    )
    headers = ["operation", "median", "p10", "p90", "CPU (median)"]
    return [Table(headers, rows, note=note), Table(["ratio", "value"], list(ratios.items()))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sync", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="measurement rounds (each times every variant)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="stop starting rounds after this long")
    args = parser.parse_args(argv)
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    bench = Run("sync")
    bench.finish({"method": __doc__, **asyncio.run(run(args.rounds, args.max_seconds))}, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
