"""Latency of L1 and L2 hits beside a dict lookup and a raw redis-py GET + decode (``cache.json``), and of the CQRS
pipeline on an L1 hit, ``mediator.send`` through ``CachingBehavior`` (``pipeline.json``), in one round-robin run.
Targets reported, not asserted: L1 hit < 1.5 µs, L2 hit within 10% of raw GET + decode, pipeline L1 hit < 5 µs.
Rows: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import TypeAdapter

from benchmarks._common import Table, Variant, bench_main, dealership_dto, fmt, format_ns, looped, measure, paired_ratio
from dealership.dto import DealershipDto
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import Cacheable, CacheInvalidationBehavior, CachingBehavior, Mediator, Query, RequestHandler

L1_TARGET_NS = 1_500
L2_TARGET_RATIO = 1.10
PIPELINE_TARGET_NS = 5_000
KEY = "Dealership:42"
TTL = timedelta(hours=1)
FAST_OPS = 20_000
REDIS_OPS = 200

DICT = "dict lookup"
L1_HIT = "get_or_create L1 hit (L1+L2)"
RAW = "raw GET + decode"
RAW_DIRECT = "raw GET on a connection of its own + decode"
L2_HIT = "get_or_create L2 hit (L1 off)"
PIPELINE = "pipeline send (L1 hit)"
PER_REQUEST = "pipeline send, request built per op"
MEDIATOR = "mediator only (no behavior, no cache)"
BARE = "bare get_or_create (L1 hit)"  # pipeline.json's name for the L1 hit

Op = Callable[[], Awaitable[Any]]
OPTIONS = {"rounds": (60, "batches per operation"), "max_seconds": (90.0, "stop starting rounds after this long")}


@dataclass(frozen=True)
class GetDealershipById(Query[DealershipDto], Cacheable):
    id: int
    cache_duration: ClassVar[timedelta] = TTL

    @property
    def cache_key(self) -> str:
        return f"Dealership:{self.id}"


class GetDealershipByIdHandler(RequestHandler[GetDealershipById, DealershipDto]):
    async def handle(self, request: GetDealershipById) -> DealershipDto:
        raise AssertionError("the pipeline's L1 hit ran the handler")


@dataclass(frozen=True)
class Ping(Query[int]):
    """Not cacheable: measures the mediator alone (no behavior applies)."""


class PingHandler(RequestHandler[Ping, int]):
    async def handle(self, request: Ping) -> int:
        return 1


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
            mediator = Mediator([CachingBehavior(both), CacheInvalidationBehavior(both)])
            mediator.register(GetDealershipById, lambda _: GetDealershipByIdHandler())
            mediator.register(Ping, lambda _: PingHandler())
            query, ping = GetDealershipById(42), Ping()
            assert await mediator.send(query) == dto

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
                Variant(PIPELINE, looped(lambda: mediator.send(query)), FAST_OPS),
                Variant(PER_REQUEST, looped(lambda: mediator.send(GetDealershipById(42))), FAST_OPS),
                Variant(MEDIATOR, looped(lambda: mediator.send(ping)), FAST_OPS),
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
    cache = {
        "unit": "ns per operation: median over rounds of each batch's mean (loop overhead included)",
        "results": {name: timings[name].as_dict() for name in (DICT, L1_HIT, RAW, RAW_DIRECT, L2_HIT)},
        "ratios": {
            "l1_hit_over_dict_lookup": round(l1_ns / timings[DICT].median_ns, 1),
            "l2_hit_over_raw_get_decode": round(timings[L2_HIT].median_ns / timings[RAW].median_ns, 3),
            "l2_hit_over_raw_get_decode_paired": round(l2_paired, 3),
            "l2_hit_over_raw_direct_paired": paired(L2_HIT, RAW_DIRECT),
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
    pipeline_ns = timings[PIPELINE].median_ns
    pipeline = {
        "unit": "ns/op, median over rounds of a batch's mean (benchmarks._common.measure)",
        "rounds": len(timings[PIPELINE].samples),
        "ops_per_round": FAST_OPS,
        "results": {
            BARE if name == L1_HIT else name: timings[name].as_dict()
            | {"ratio_to_bare": round(timings[name].median_ns / l1_ns, 2)}
            for name in (L1_HIT, PIPELINE, PER_REQUEST, MEDIATOR)
        },
        "pipeline_overhead_ns": round(pipeline_ns - l1_ns, 1),
        # Each round's pipeline time over the same round's bare time: robust to a machine whose speed drifts.
        "pipeline_to_bare_ratio_median_per_round": paired(PIPELINE, L1_HIT),
        "target_ns": PIPELINE_TARGET_NS,
        "meets_target": pipeline_ns < PIPELINE_TARGET_NS,
    }
    return {"cache": cache, "pipeline": pipeline}


def tables(result: dict[str, Any]) -> list[Table]:
    if result["benchmark"].startswith("pipeline"):  # pipeline.json ("pipeline_l1_hit" in older files)
        return pipeline_tables(result)
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


def pipeline_tables(document: dict[str, Any]) -> list[Table]:
    results = document["results"]
    rows = [
        [n, *(fmt(r.get(k), 0) for k in ("median_ns", "min_ns", "p90_ns")), r["ratio_to_bare"]]  # no p90 in older files
        for n, r in results.items()
    ]
    note = (
        f"pipeline L1 hit: {results[PIPELINE]['median_ns']:.0f} ns "
        f"({'meets' if document['meets_target'] else 'MISSES'} the {document['target_ns']} ns target); overhead "
        f"over bare get_or_create {document['pipeline_overhead_ns']:.0f} ns (paired ratio "
        f"{document['pipeline_to_bare_ratio_median_per_round']:.2f}x); {document['rounds']} rounds x "
        f"{document['ops_per_round']} ops"
    )
    return [Table(["variant", "median ns/op", "min", "p90", "x bare"], rows, note=note)]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("cache", argv, __doc__, run, tables, OPTIONS, per_file=True)


if __name__ == "__main__":
    main()
