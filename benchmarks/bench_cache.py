"""Latency of L1 and L2 hits beside a dict lookup and a raw redis-py GET + decode, in one round-robin run.
Targets reported, not asserted (L1 hit < 1.5 µs; L2 hit within 10% of raw GET + decode). Rows: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from benchmarks._common import Table, Variant, bench_main, dealership_dto, format_ns, looped, measure, paired_ratio
from dealership.dto import DealershipDto
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache

L1_TARGET_NS = 1_500
L2_TARGET_RATIO = 1.10
KEY = "Dealership:42"
TTL = timedelta(hours=1)
FAST_OPS = 20_000
REDIS_OPS = 200

DICT = "dict lookup"
L1_HIT = "get_or_create L1 hit (L1+L2)"
RAW = "raw GET + decode"
RAW_DIRECT = "raw GET on a connection of its own + decode"
L2_HIT = "get_or_create L2 hit (L1 off)"

Op = Callable[[], Awaitable[Any]]
OPTIONS = {"rounds": (60, "batches per operation"), "max_seconds": (90.0, "stop starting rounds after this long")}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dto = dealership_dto(42)
    adapter: TypeAdapter[DealershipDto] = TypeAdapter(DealershipDto)
    payload = adapter.dump_json(dto)
    factory_runs = 0

    async def factory() -> DealershipDto:
        nonlocal factory_runs
        factory_runs += 1
        return dto

    with RedisServer() as server:

        def cache(*, l1: bool) -> HybridCache:
            memory = {"enabled": l1, "default_expiration_seconds": 3600}  # no L1 entry expires during the run
            return HybridCache(CacheSettings(service_name="bench", configuration=server.url, memory_cache=memory))

        both, l2_only = cache(l1=True), cache(l1=False)
        # A plain client configured as the cache configures its own (protocol, socket timeouts).
        settings = l2_only.settings
        timeouts = settings.operation_timeout_milliseconds / 1000, settings.connect_timeout_milliseconds / 1000
        raw = server.client(protocol=settings.protocol, socket_timeout=timeouts[0], socket_connect_timeout=timeouts[1])
        async with both, l2_only:
            await raw.set("raw:" + KEY, payload)
            for each in (both, l2_only):
                assert await each.get_or_create(KEY, factory, ttl=TTL, type_=DealershipDto) == dto
            table = {KEY: dto}
            direct = raw.connection_pool.make_connection()

            def dict_lookup(ops: int) -> None:
                for _ in range(ops):
                    table[KEY]

            def hit(cache: HybridCache) -> Op:
                return lambda: cache.get_or_create(KEY, factory, ttl=TTL, type_=DealershipDto)

            async def raw_get_decode() -> DealershipDto:
                return adapter.validate_json(await raw.get("raw:" + KEY))  # type: ignore[arg-type]

            async def direct_get_decode() -> DealershipDto:
                await direct.send_packed_command(direct.pack_command("GET", "raw:" + KEY), False)
                return adapter.validate_json(await direct.read_response())

            variants = [
                Variant(DICT, dict_lookup, FAST_OPS * 10),
                Variant(L1_HIT, looped(hit(both)), FAST_OPS),
                Variant(RAW, looped(raw_get_decode), REDIS_OPS),
                Variant(RAW_DIRECT, looped(direct_get_decode), REDIS_OPS),
                Variant(L2_HIT, looped(hit(l2_only)), REDIS_OPS),
            ]
            runs_before = factory_runs
            timings = await measure(variants, rounds=args.rounds, max_seconds=args.max_seconds)
            assert factory_runs == runs_before, "a measured read missed and ran the factory"
            assert l2_only.stats().l1_hits == 0, "the L2 figures include L1 hits"
            assert both.stats().l2_hits == 0, "the L1 figures include L2 hits"
            stats = {"l1+l2": both.stats().as_dict(), "l2-only": l2_only.stats().as_dict()}
            await direct.disconnect()
        await raw.aclose()

    def paired(a: str, b: str) -> float:
        return round(paired_ratio(timings[a], timings[b]), 3)

    l1_ns, l2_paired = timings[L1_HIT].median_ns, paired_ratio(timings[L2_HIT], timings[RAW])
    return {
        "unit": "ns per operation: median over rounds of each batch's mean (loop overhead included)",
        "results": {name: t.as_dict() for name, t in timings.items()},
        "ratios": {
            "l1_hit_over_dict_lookup": round(l1_ns / timings[DICT].median_ns, 1),
            "l2_hit_over_raw_get_decode": round(timings[L2_HIT].median_ns / timings[RAW].median_ns, 3),
            "l2_hit_over_raw_get_decode_paired": round(l2_paired, 3),
            "raw_direct_over_raw_paired": paired(RAW_DIRECT, RAW),
            "l2_hit_over_raw_direct_paired": paired(L2_HIT, RAW_DIRECT),
            "l2_hit_cpu_over_raw_cpu": round(timings[L2_HIT].cpu_median_ns / timings[RAW].cpu_median_ns, 3),
        },
        "targets": {
            "l1_hit_ns": L1_TARGET_NS,
            "l1_hit_met": l1_ns < L1_TARGET_NS,
            "l2_hit_max_ratio_to_raw": L2_TARGET_RATIO,
            "l2_hit_met": l2_paired <= L2_TARGET_RATIO,
            "l2_hit_judged_by": "l2_hit_over_raw_get_decode_paired",
        },
        "cache_stats": stats,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    results, ratios, targets = result["results"], result["ratios"], result["targets"]
    reference = {L1_HIT: DICT, L2_HIT: RAW, RAW_DIRECT: RAW}
    rows = []
    for name, row in results.items():
        base = reference.get(name)
        ratio = f"{row['median_ns'] / results[base]['median_ns']:.2f}x {base}" if base else ""
        rows.append(
            [name, *(format_ns(row[k]) for k in ("median_ns", "p10_ns", "p90_ns", "min_ns", "cpu_median_ns")), ratio]
        )
    l1, l2 = results[L1_HIT]["median_ns"], results[L2_HIT]["median_ns"]
    note = (
        f"L1 hit {format_ns(l1)} median: target < {format_ns(targets['l1_hit_ns'])} "
        f"{'met' if targets['l1_hit_met'] else 'MISSED'} ({ratios['l1_hit_over_dict_lookup']}x a dict lookup). "
        f"L2 hit {format_ns(l2)} median: {ratios['l2_hit_over_raw_get_decode_paired']:.3f}x raw GET + decode "
        f"(paired; {ratios['l2_hit_over_raw_get_decode']:.3f}x by medians), target <= "
        f"{targets['l2_hit_max_ratio_to_raw']:.2f}x {'met' if targets['l2_hit_met'] else 'MISSED'}; CPU per op "
        f"{format_ns(results[L2_HIT]['cpu_median_ns'])} vs {format_ns(results[RAW]['cpu_median_ns'])}; the cache's "
        f"own work, against the same GET on a connection of its own: {ratios['l2_hit_over_raw_direct_paired']:.3f}x."
    )
    headers = ["operation", "median", "p10", "p90", "min", "CPU (median)", "ratio of medians"]
    return [Table(headers, rows, note=note), Table(["ratio", "value"], list(ratios.items()))]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("cache", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
