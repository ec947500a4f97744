"""The CQRS pipeline's cost on an L1 hit (``mediator.send`` through ``CachingBehavior``) next to a bare
``get_or_create`` L1 hit. Target: under 5 µs. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from benchmarks._common import Table, Variant, bench_main, dealership_dto, fmt, looped, measure, paired_ratio
from dealership.dto import DealershipDto
from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import Cacheable, CacheInvalidationBehavior, CachingBehavior, Mediator, Query, RequestHandler

TARGET_NS = 5_000
BARE, PIPELINE = "bare get_or_create (L1 hit)", "pipeline send (L1 hit)"
OPTIONS = {
    "rounds": (30, "rounds per variant"),
    "ops": (20_000, "awaits per round"),
    "max_seconds": (60.0, "stop starting rounds after this long"),
}


@dataclass(frozen=True)
class GetDealershipById(Query[DealershipDto | None], Cacheable):
    id: int
    cache_duration: ClassVar[timedelta] = timedelta(minutes=30)

    @property
    def cache_key(self) -> str:
        return f"Dealership:{self.id}"


@dataclass(frozen=True)
class Ping(Query[int]):
    """Not cacheable: measures the mediator alone (no behavior applies)."""


class GetDealershipByIdHandler(RequestHandler[GetDealershipById, DealershipDto | None]):
    runs = 0

    async def handle(self, request: GetDealershipById) -> DealershipDto | None:
        GetDealershipByIdHandler.runs += 1
        return dealership_dto(request.id)


class PingHandler(RequestHandler[Ping, int]):
    async def handle(self, request: Ping) -> int:
        return 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ops = args.ops
    async with HybridCache.from_settings(CacheSettings(service_name="bench")) as cache:
        mediator = Mediator([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
        mediator.register(GetDealershipById, lambda _: GetDealershipByIdHandler())
        mediator.register(Ping, lambda _: PingHandler())
        query, ping, ttl = GetDealershipById(42), Ping(), GetDealershipById.cache_duration

        async def factory() -> DealershipDto | None:
            return dealership_dto(42)

        def bare() -> Awaitable[Any]:
            return cache.get_or_create("Dealership:42", factory, ttl=ttl, type_=DealershipDto | None, tags=())

        await mediator.send(query)  # the one miss: fills L1
        assert await mediator.send(query) == await bare()
        runs_before = GetDealershipByIdHandler.runs
        variants = [
            Variant(BARE, looped(bare), ops),
            Variant(PIPELINE, looped(lambda: mediator.send(query)), ops),
            Variant("pipeline send, request built per op", looped(lambda: mediator.send(GetDealershipById(42))), ops),
            Variant("mediator only (no behavior, no cache)", looped(lambda: mediator.send(ping)), ops),
        ]
        timings = await measure(variants, rounds=args.rounds, max_seconds=args.max_seconds)
        assert GetDealershipByIdHandler.runs == runs_before, "an L1 hit ran the handler"
        l1_hits = cache.stats().l1_hits
    bare_ns, pipeline_ns = timings[BARE].median_ns, timings[PIPELINE].median_ns
    return {
        "unit": "ns/op, median over rounds of a batch's mean (benchmarks._common.measure)",
        "rounds": timings[BARE].batches,
        "ops_per_round": ops,
        "results": {n: t.as_dict() | {"ratio_to_bare": round(t.median_ns / bare_ns, 2)} for n, t in timings.items()},
        "pipeline_overhead_ns": round(pipeline_ns - bare_ns, 1),
        # Each round's pipeline time over the same round's bare time: robust to a machine whose speed drifts.
        "pipeline_to_bare_ratio_median_per_round": round(paired_ratio(timings[PIPELINE], timings[BARE]), 2),
        "target_ns": TARGET_NS,
        "meets_target": pipeline_ns < TARGET_NS,
        "cache_l1_hits": l1_hits,
    }


def tables(document: Mapping[str, Any]) -> list[Table]:
    results = document["results"]
    return [
        Table(
            ["variant", "median ns/op", "min", "p90", "x bare"],
            [
                [n, fmt(r["median_ns"], 0), fmt(r["min_ns"], 0), fmt(r.get("p90_ns"), 0), r["ratio_to_bare"]]
                for n, r in results.items()
            ],
            note=f"pipeline L1 hit: {results[PIPELINE]['median_ns']:.0f} ns "
            f"({'meets' if document['meets_target'] else 'MISSES'} the {document['target_ns']} ns target); overhead "
            f"over bare get_or_create {document['pipeline_overhead_ns']:.0f} ns (paired ratio "
            f"{document['pipeline_to_bare_ratio_median_per_round']:.2f}x); {document['rounds']} rounds x "
            f"{document['ops_per_round']} ops",
        )
    ]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("pipeline", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
