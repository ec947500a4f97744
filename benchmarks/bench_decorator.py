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
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    Table,
    Variant,
    bench_main,
    connected,
    dealership_dto,
    format_ns,
    looped,
    measure,
    paired_ratio,
)
from dealership.dto import DealershipDto
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache, MemoryCacheSettings

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


async def batch_of_l2_hits(rounds: int) -> dict[str, Any]:
    """50 keys all in L2 (L1 off): one ``get_or_create_many`` vs 50 sequential ``get_or_create``, vs cashews."""
    from cashews import Cache

    ids = list(range(1, BATCH + 1))
    keys = [f"Dealership:{i}" for i in ids]

    async def load_many(missing: list[str]) -> dict[str, DealershipDto]:
        return {key: dealership_dto(int(key.split(":")[1])) for key in missing}

    with RedisServer() as server:
        l1_off = MemoryCacheSettings(enabled=False)
        settings = CacheSettings(service_name="bench-batch", configuration=server.url, memory_cache=l1_off)
        async with contextlib.AsyncExitStack() as stack:
            cache = await connected(stack, settings)
            peer = Cache()
            peer.setup(server.url_for_db(1))

            @peer(ttl=TTL_SECONDS, key="Dealership:{dealership_id}")
            async def peer_get_dealership(dealership_id: int) -> DealershipDto:
                return await load(dealership_id)

            await cache.get_or_create_many(keys, load_many, type_=DealershipDto, ttl=TTL_SECONDS)
            for i in ids:
                await peer_get_dealership(i)

            async def sequential() -> None:
                for i, key in zip(ids, keys, strict=True):
                    await cache.get_or_create(key, lambda i=i: load(i), type_=DealershipDto, ttl=TTL_SECONDS)

            async def peer_sequential() -> None:
                for i in ids:
                    await peer_get_dealership(i)

            variants = [
                Variant(
                    "get_or_create_many, 50 keys",
                    looped(lambda: cache.get_or_create_many(keys, load_many, type_=DealershipDto, ttl=TTL_SECONDS)),
                    50,
                ),
                Variant("50 x get_or_create", looped(sequential), 5),
                Variant("cashews @cache (redis://), 50 calls", looped(peer_sequential), 5),
            ]
            warm_misses = cache.stats().misses
            timings = await measure(variants, rounds=rounds, max_seconds=90)
            if cache.stats().misses != warm_misses:
                raise RuntimeError("an L2 hit was expected for every key and every call")
            await peer.close()
    batch, sequential_hits, peer_hits = (timings[v.name] for v in variants)
    return {
        "timings": {name: t.as_dict() for name, t in timings.items()},
        "sequential_over_batch": round(paired_ratio(sequential_hits, batch), 2),
        "cashews_over_batch": round(paired_ratio(peer_hits, batch), 2),
    }


def tables(document: dict[str, Any]) -> list[Table]:
    l1 = document["l1_hit"]
    rows = [[name, format_ns(t["median_ns"]), format_ns(t["p90_ns"])] for name, t in l1["timings"].items()]
    note = (
        f"decorated - get_or_create (ready key): {l1['decorated_minus_get_or_create_ns']} ns at the median "
        f"(paired ratio {l1['decorated_over_get_or_create']}); decorated / by hand {l1['decorated_over_by_hand']}; "
        f"cashews / decorated {l1['cashews_over_decorated']}"
    )
    batch = document["batch"]
    batch_rows = [[name, format_ns(t["median_ns"]), format_ns(t["p90_ns"])] for name, t in batch["timings"].items()]
    batch_note = (
        f"50 sequential get_or_create / get_or_create_many: {batch['sequential_over_batch']}x (paired); "
        f"cashews / get_or_create_many: {batch['cashews_over_batch']}x"
    )
    return [
        Table(["L1 hit, dealership DTO", "median", "p90"], rows, note=note),
        Table(["50 dealerships, all in L2 (L1 off)", "median", "p90"], batch_rows, note=batch_note),
    ]


OPTIONS = {"rounds": (30, "measurement rounds (each times every variant)")}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    return {"method": __doc__, "l1_hit": await l1_hits(args.rounds), "batch": await batch_of_l2_hits(args.rounds)}


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("decorator", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
