"""What ``@cache.cached`` and the batch path cost: ``python -m benchmarks.bench_decorator [--rounds N]``.

One run, variants timed round-robin (``_common.measure``), the service's dealership DTO as the value:

* **L1 hit**: a decorated ``get_dealership(42)`` beside ``get_or_create`` with a ready key and factory (the floor),
  beside the same call written by hand (f-string key, lambda factory: what the decorator replaces), and beside
  cashews' decorator on its in-memory backend.
* **50 keys in L2** (L1 off, a private redis-server): ``get_or_create_many`` of 50 keys beside 50 sequential
  ``get_or_create`` L2 hits, and beside cashews' decorator called 50 times on the same server.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from benchmarks._common import Table, Variant, bench_main, dealership_dto, format_ns, looped, measure, paired_ratio
from dealership.dto import DealershipDto
from hybridcache import CacheSettings, HybridCache

BATCH = 50
TTL_SECONDS = 600


async def load(dealership_id: int) -> DealershipDto:
    return dealership_dto(dealership_id)


async def l1_hits(rounds: int) -> dict[str, Any]:
    from cashews import Cache

    async with HybridCache(CacheSettings(service_name="bench-decorator")) as cache:

        @cache.cached(key="Dealership:{dealership_id}", ttl=TTL_SECONDS)
        async def get_dealership(dealership_id: int) -> DealershipDto:
            return await load(dealership_id)

        peer = Cache()
        peer.setup("mem://")

        @peer(ttl=TTL_SECONDS, key="Dealership:{dealership_id}")
        async def peer_get_dealership(dealership_id: int) -> DealershipDto:
            return await load(dealership_id)

        def factory() -> Any:
            return load(42)

        dealership_id = 42
        await cache.get_or_create("Dealership:42", factory, type_=DealershipDto, ttl=TTL_SECONDS)
        await peer_get_dealership(42)
        variants = [
            Variant(
                "get_or_create, ready key and factory",
                looped(lambda: cache.get_or_create("Dealership:42", factory, type_=DealershipDto, ttl=TTL_SECONDS)),
                20_000,
            ),
            Variant(
                "get_or_create, key and factory per call",
                looped(
                    lambda: cache.get_or_create(
                        f"Dealership:{dealership_id}",
                        lambda: load(dealership_id),
                        type_=DealershipDto,
                        ttl=TTL_SECONDS,
                    )
                ),
                20_000,
            ),
            Variant("@cache.cached", looped(lambda: get_dealership(42)), 20_000),
            Variant("cashews @cache (mem://)", looped(lambda: peer_get_dealership(42)), 5_000),
        ]
        timings = await measure(variants, rounds=rounds, max_seconds=60)
        await peer.close()
    floor, by_hand, decorated = (timings[v.name] for v in variants[:3])
    return {
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "decorated_minus_get_or_create_ns": round(decorated.median_ns - floor.median_ns, 1),
        "decorated_over_get_or_create": round(paired_ratio(decorated, floor), 3),
        "decorated_over_by_hand": round(paired_ratio(decorated, by_hand), 3),
        "cashews_over_decorated": round(paired_ratio(timings[variants[3].name], decorated), 2),
    }


def tables(document: dict[str, Any]) -> list[Table]:
    l1 = document["l1_hit"]
    rows = [[name, format_ns(t["median_ns"]), format_ns(t["p90_ns"])] for name, t in l1["timings"].items()]
    note = (
        f"decorated - get_or_create (ready key): {l1['decorated_minus_get_or_create_ns']} ns at the median "
        f"(paired ratio {l1['decorated_over_get_or_create']}); decorated / by hand {l1['decorated_over_by_hand']}; "
        f"cashews / decorated {l1['cashews_over_decorated']}"
    )
    return [Table(["L1 hit, dealership DTO", "median", "p90"], rows, note=note)]


OPTIONS = {"rounds": (30, "measurement rounds (each times every variant)")}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    return {"method": __doc__, "l1_hit": await l1_hits(args.rounds)}


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("decorator", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
