"""Memory per cached entry: L1 bytes per Dealership entry, L2 bytes per entry, and whether compression would pay.

* **L1**: ``tracemalloc`` over N entries put into a real ``HybridCache`` (L1+L2, the service's configuration)
  through ``get_or_create``, divided by N. Each DTO is decoded from its own JSON, so no nested object or string
  is shared between entries (as when values come from the database or from Redis). Counted: the DTO with its
  zip code and state, the ``L1Entry`` (with its generation stamp), the key string and the store's dict slot.
  The DTOs alone are measured the same way, so the cache's own overhead per entry is the difference.
* **L2**: ``MEMORY USAGE`` of the entry keys in a private redis-server (median over a sample), next to the
  payload length (envelope header + JSON body).
* **Compression**: zlib (levels 1 and 6) of the stored payload for one entity, a search result (10) and list
  pages (10 and 50), with the CPU it costs per write and per L2 hit, and what Redis then holds. Measured only:
  hybridcache has no compression option.

Run: ``.venv/bin/python -m benchmarks.bench_memory`` (``--entries``). Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from benchmarks._common import format_table, write_results
from benchmarks._peers_common import dealership_dto, load_average, private_redis
from dealership.dto import DealershipDto, DealershipPage
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import MemoryCacheSettings

TTL = timedelta(minutes=30)
_DTO = TypeAdapter(DealershipDto)


def fresh_dto(dealership_id: int) -> DealershipDto:
    """A DTO that shares no nested object with any other (decoded from its own JSON)."""
    return _DTO.validate_json(_DTO.dump_json(dealership_dto(dealership_id)))


def _traced_bytes_after(build: Any) -> tuple[int, Any]:
    """Bytes still allocated (per tracemalloc) after ``build()`` ran, and what it returned (kept alive)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before, kept


async def measure_l1(redis_url: str, entries: int) -> dict[str, Any]:
    settings = CacheSettings(
        service_name="memory",
        instance_name="Bench:",
        configuration=redis_url,
        memory_cache=MemoryCacheSettings(size_limit=entries + 1),
    )
    async with HybridCache.from_settings(settings) as cache:
        # Warm every code path once (codecs, scripts, connection buffers) so it is not counted per entry.
        await cache.get_or_create("Dealership:0", lambda: _ready(fresh_dto(1)), ttl=TTL, type_=DealershipDto)
        ids = range(1, entries + 1)
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for i in ids:
                await cache.get_or_create(
                    f"Dealership:{i}",
                    lambda i=i: _ready(fresh_dto(i)),  # type: ignore[misc]
                    ttl=TTL,
                    type_=DealershipDto,
                )
            gc.collect()
            cached_bytes = tracemalloc.get_traced_memory()[0] - before
            if cache.stats().l1_entries != entries + 1 or cache.stats().l1_evictions:
                raise RuntimeError("L1 does not hold every entry measured")
            dto_bytes, kept = _traced_bytes_after(lambda: [fresh_dto(i) for i in ids])
            list_slot = 8 * len(kept)
            keys_bytes, kept_keys = _traced_bytes_after(lambda: [f"bench:v1:Dealership:{i}" for i in ids])
        finally:
            tracemalloc.stop()
    per_entry = cached_bytes / entries
    per_dto = (dto_bytes - list_slot) / entries
    return {
        "entries": entries,
        "bytes_per_entry": round(per_entry),
        "dto_bytes": round(per_dto),
        "cache_overhead_bytes": round(per_entry - per_dto),
        "key_string_bytes": round((keys_bytes - 8 * len(kept_keys)) / entries),
        "seed_size_limit_total_mib": round(per_entry * 1024 / 2**20, 2),
        "seed_claim": "L1 ~100 MB (1024 entries @ 100 KB avg)",
    }


async def _ready(value: Any) -> Any:
    return value


def _values() -> dict[str, tuple[Any, Any]]:
    """Representative cached values by query kind, with the type the cache decodes them as."""
    search = tuple(fresh_dto(i) for i in range(1, 11))
    return {
        "entity (1 dealership)": (fresh_dto(42), DealershipDto),
        "search (10 results)": (search, tuple[DealershipDto, ...]),
        "list page (10)": (DealershipPage(items=search, total=2000), DealershipPage),
        "list page (50)": (DealershipPage(items=tuple(fresh_dto(i) for i in range(1, 51)), total=2000), DealershipPage),
    }


def _median_us(fn: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples)


async def measure_l2(server: RedisServer, db: int, sample: int) -> list[dict[str, Any]]:
    settings = CacheSettings(service_name="memory-l2", instance_name="Bench:", configuration=server.url_for_db(db))
    rows = []
    client = server.client(db=db)
    async with HybridCache.from_settings(settings) as cache:
        for kind, (value, type_) in _values().items():
            keys = [f"Memory:{kind.split()[0]}:{i}" for i in range(sample)]
            for key in keys:
                await cache.set(key, value, ttl=TTL, type_=type_)
            redis_keys = [f"Bench:memory-l2:v1:{key}" for key in keys]
            usage = [int(await client.memory_usage(k) or 0) for k in redis_keys]
            payload = await client.get(redis_keys[0])
            assert isinstance(payload, bytes), "the cache stores every entry under its key"
            header_length = payload.index(b"\n") + 1
            body = payload[header_length:]
            row: dict[str, Any] = {
                "value": kind,
                "payload_bytes": len(payload),
                "header_bytes": header_length,
                "body_bytes": len(body),
                "redis_memory_usage_bytes": int(statistics.median(usage)),
                "compression": {},
            }
            for level in (1, 6):
                packed = zlib.compress(payload, level)
                probe = f"Bench:memory-l2:zlib{level}:{kind.split()[0]}"
                await client.set(probe, packed, px=60_000)
                row["compression"][f"zlib-{level}"] = {
                    "payload_bytes": len(packed),
                    "ratio": round(len(packed) / len(payload), 3),
                    "redis_memory_usage_bytes": int(await client.memory_usage(probe) or 0),
                    "compress_us": round(_median_us(lambda p=payload, lv=level: zlib.compress(p, lv), 2000), 2),
                    "decompress_us": round(_median_us(lambda p=packed: zlib.decompress(p), 2000), 2),
                }
            codec = TypeAdapter(type_)
            row["json_decode_us"] = round(_median_us(lambda c=codec, b=body: c.validate_json(b), 2000), 2)
            rows.append(row)
    await client.aclose()
    return rows


def verdict(l2: Sequence[dict[str, Any]]) -> str:
    """Whether a compression option would pay, per value kind, from the measured sizes and costs.

    Rule: it pays when zlib-1 cuts Redis memory per entry by at least half; below a fifth it does not; between,
    it is marginal. The CPU it adds to an L2 hit is shown next to the JSON decode the hit pays anyway.
    """
    parts = []
    for row in l2:
        z = row["compression"]["zlib-1"]
        before = row["redis_memory_usage_bytes"]
        saved = before - z["redis_memory_usage_bytes"]
        share = saved / before if before else 0.0
        call = "pays" if share >= 0.5 else "marginal" if share >= 0.2 else "does not pay"
        parts.append(
            f"{row['value']}: {call} (zlib-1 saves {saved:,} of {before:,} B per entry in Redis, {share:.0%}, for "
            f"+{z['decompress_us']:.1f} us per L2 hit next to a {row['json_decode_us']:.1f} us JSON decode and "
            f"+{z['compress_us']:.1f} us per write)"
        )
    return "; ".join(parts)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    with private_redis() as server:
        print(f"L1: {args.entries:,} entries under tracemalloc ...", flush=True)
        l1 = await measure_l1(server.url_for_db(0), args.entries)
        print(f"L2: MEMORY USAGE over {args.sample} keys per value kind ...", flush=True)
        l2 = await measure_l2(server, 1, args.sample)
    return {"load_average_at_start": load_before, "l1": l1, "l2": l2, "compression_verdict": verdict(l2)}


def print_tables(result: dict[str, Any]) -> None:
    l1 = result["l1"]
    print(
        format_table(
            ["L1 (tracemalloc)", "bytes"],
            [
                ["per entry (DTO + L1Entry + key + slot)", f"{l1['bytes_per_entry']:,}"],
                ["  of which the DTO", f"{l1['dto_bytes']:,}"],
                ["  of which the cache", f"{l1['cache_overhead_bytes']:,}"],
                ["1024 entries (seed SizeLimit), MiB", l1["seed_size_limit_total_mib"]],
            ],
        )
    )
    rows = []
    for r in result["l2"]:
        z1, z6 = r["compression"]["zlib-1"], r["compression"]["zlib-6"]
        rows.append(
            [
                r["value"],
                f"{r['payload_bytes']:,}",
                f"{r['header_bytes']:,}",
                f"{r['redis_memory_usage_bytes']:,}",
                f"{z1['payload_bytes']:,} / {z1['redis_memory_usage_bytes']:,}",
                f"{z6['payload_bytes']:,} / {z6['redis_memory_usage_bytes']:,}",
                f"{z1['compress_us']:.1f} / {z1['decompress_us']:.1f}",
                f"{r['json_decode_us']:.1f}",
            ]
        )
    headers = ["L2 value", "payload B", "header B", "MEMORY USAGE B", "zlib-1 B / MU", "zlib-6 B / MU"]
    print()
    print(format_table([*headers, "zlib-1 us c/d", "decode us"], rows))
    print(f"\n{result['compression_verdict']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=5000, help="L1 entries measured under tracemalloc")
    parser.add_argument("--sample", type=int, default=200, help="L2 keys per value kind for MEMORY USAGE")
    parser.add_argument("--quick", action="store_true", help="a smoke run; does not write JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries, args.sample = 500, 20
    result = asyncio.run(run(args))
    print_tables(result)
    if not args.quick:
        print(f"wrote {write_results('memory', result)}")


if __name__ == "__main__":
    main()
