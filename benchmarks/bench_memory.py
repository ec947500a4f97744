"""Memory per cached entry in L1 (``tracemalloc``) and L2 (``MEMORY USAGE``), and whether zlib compression of the
stored payload would pay. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from benchmarks._common import Table, bench_main, dealership_dto, fmt, percentile
from dealership.dto import DealershipDto, DealershipPage
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache

TTL = timedelta(minutes=30)
_DTO = TypeAdapter(DealershipDto)
OPTIONS = {
    "entries": (5000, "L1 entries measured under tracemalloc"),
    "sample": (200, "L2 keys per value kind for MEMORY USAGE"),
}


def fresh_dto(dealership_id: int) -> DealershipDto:
    """A DTO that shares no nested object with any other (decoded from its own JSON)."""
    return _DTO.validate_json(_DTO.dump_json(dealership_dto(dealership_id)))


def traced(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated (per tracemalloc) after ``build()`` ran, and what it returned (kept alive)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before, kept


async def measure_l1(redis_url: str, entries: int) -> dict[str, Any]:
    settings = CacheSettings(
        service_name="memory", instance_name="Bench:", configuration=redis_url, memory_cache={"size_limit": entries + 1}
    )
    ids = range(1, entries + 1)

    async def ready(value: Any) -> Any:
        return value

    async with HybridCache(settings) as cache:
        # Warm every code path once (codecs, scripts, connection buffers) so it is not counted per entry.
        await cache.get_or_create("Dealership:0", lambda: ready(fresh_dto(1)), ttl=TTL, type_=DealershipDto)
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for i in ids:
                await cache.get_or_create(
                    f"Dealership:{i}", lambda i=i: ready(fresh_dto(i)), ttl=TTL, type_=DealershipDto
                )
            gc.collect()
            cached_bytes = tracemalloc.get_traced_memory()[0] - before
            if cache.stats().l1_entries != entries + 1 or cache.stats().l1_evictions:
                raise RuntimeError("L1 does not hold every entry measured")
            dto_bytes, kept = traced(lambda: [fresh_dto(i) for i in ids])
        finally:
            tracemalloc.stop()
    per_entry, per_dto = cached_bytes / entries, (dto_bytes - 8 * len(kept)) / entries  # less each list slot
    return {
        "entries": entries,
        "bytes_per_entry": round(per_entry),
        "dto_bytes": round(per_dto),
        "cache_overhead_bytes": round(per_entry - per_dto),
        "seed_size_limit_total_mib": round(per_entry * 1024 / 2**20, 2),
        "seed_claim": "L1 ~100 MB (1024 entries @ 100 KB avg)",
    }


def median_us(fn: Callable[[], Any], repeat: int = 2000) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return round(percentile(samples, 0.5), 2)


async def measure_l2(server: RedisServer, db: int, sample: int) -> list[dict[str, Any]]:
    """Per value kind: Redis ``MEMORY USAGE`` per entry, plain and zlib-compressed, and the CPU it costs."""
    search = tuple(fresh_dto(i) for i in range(1, 11))
    values: dict[str, tuple[Any, Any]] = {
        "entity (1 dealership)": (fresh_dto(42), DealershipDto),
        "search (10 results)": (search, tuple[DealershipDto, ...]),
        "list page (10)": (DealershipPage(items=search, total=2000), DealershipPage),
        "list page (50)": (DealershipPage(items=tuple(fresh_dto(i) for i in range(1, 51)), total=2000), DealershipPage),
    }
    settings = CacheSettings(service_name="memory-l2", instance_name="Bench:", configuration=server.url_for_db(db))
    rows = []
    async with HybridCache(settings) as cache, server.client(db=db) as client:
        for kind, (value, type_) in values.items():
            keys = [f"Memory:{kind.split()[0]}:{i}" for i in range(sample)]
            for key in keys:
                await cache.set(key, value, ttl=TTL, type_=type_)
            usage = [int(await client.memory_usage(f"Bench:memory-l2:v1:{key}") or 0) for key in keys]
            payload = await client.get(f"Bench:memory-l2:v1:{keys[0]}")
            assert isinstance(payload, bytes), "the cache stores every entry under its key"
            header = payload.index(b"\n") + 1
            row: dict[str, Any] = {
                "value": kind,
                "payload_bytes": len(payload),
                "header_bytes": header,
                "body_bytes": len(payload) - header,
                "redis_memory_usage_bytes": int(percentile(usage, 0.5)),
                "compression": {},
            }
            for level in (1, 6):
                packed, probe = zlib.compress(payload, level), f"Bench:memory-l2:zlib{level}:{kind.split()[0]}"
                await client.set(probe, packed, px=60_000)
                row["compression"][f"zlib-{level}"] = {
                    "payload_bytes": len(packed),
                    "ratio": round(len(packed) / len(payload), 3),
                    "redis_memory_usage_bytes": int(await client.memory_usage(probe) or 0),
                    "compress_us": median_us(lambda p=payload, lv=level: zlib.compress(p, lv)),
                    "decompress_us": median_us(lambda p=packed: zlib.decompress(p)),
                }
            body, codec = payload[header:], TypeAdapter(type_)
            row["json_decode_us"] = median_us(lambda c=codec, b=body: c.validate_json(b))
            rows.append(row)
    return rows


def verdict(l2: Sequence[dict[str, Any]]) -> str:
    """Per value kind: compression pays when zlib-1 halves Redis memory per entry, does not below a fifth."""
    parts = []
    for row in l2:
        z, before = row["compression"]["zlib-1"], row["redis_memory_usage_bytes"]
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
    with RedisServer() as server:
        print(f"L1: {args.entries:,} entries under tracemalloc ...", flush=True)
        l1 = await measure_l1(server.url_for_db(0), args.entries)
        print(f"L2: MEMORY USAGE over {args.sample} keys per value kind ...", flush=True)
        l2 = await measure_l2(server, 1, args.sample)
    return {"l1": l1, "l2": l2, "compression_verdict": verdict(l2)}


def tables(result: dict[str, Any]) -> list[Table]:
    l1 = result["l1"]
    l1_rows = [
        ["DTO + L1Entry + key + dict slot", fmt(l1["bytes_per_entry"])],
        ["of which the DealershipDto (with zip code and state)", fmt(l1["dto_bytes"])],
        ["of which the cache (entry, stamp, key, slot)", fmt(l1["cache_overhead_bytes"])],
        ["1024 entries (the seed's SizeLimit), MiB", fmt(l1["seed_size_limit_total_mib"])],
        ["measured over entries", fmt(l1["entries"])],
    ]
    rows = []
    for r in result["l2"]:
        z1, z6 = r["compression"]["zlib-1"], r["compression"]["zlib-6"]
        rows.append(
            [
                r["value"], fmt(r["payload_bytes"]), fmt(r["header_bytes"]), fmt(r["redis_memory_usage_bytes"]),
                f"{fmt(z1['payload_bytes'])} / {fmt(z1['redis_memory_usage_bytes'])}",
                f"{fmt(z6['payload_bytes'])} / {fmt(z6['redis_memory_usage_bytes'])}",
                f"{fmt(z1['compress_us'], 1)} / {fmt(z1['decompress_us'], 1)}", fmt(r["json_decode_us"], 1),
            ]
        )  # fmt: skip
    l2_title = (
        "L2: payload = envelope header + JSON body as stored; `MEMORY USAGE` as Redis reports it for the key (median "
        "over the sample). Compression columns: payload bytes / `MEMORY USAGE` bytes of the same payload compressed; "
        "zlib-1 µs to compress / decompress, against the µs the typed JSON decode takes anyway."
    )
    verdict_note = (
        "Compression verdict (rule in `bench_memory.verdict`: it pays when zlib-1 halves Redis memory per entry, is "
        f"marginal from a fifth to a half, does not pay below): {result['compression_verdict']}.\n\nThe option: "
        "`CompressionThresholdBytes` (off by default) stores bodies of at least that many bytes zlib-1-compressed "
        "when that makes them smaller; every instance reads both forms. Memory for CPU: set it to about 1024 when "
        "searches and lists fill Redis, and leave single entities (a few hundred bytes) plain."
    )
    headers = ["value", "payload B", "header B", "MEMORY USAGE B", "zlib-1 B / MU", "zlib-6 B / MU"]
    return [
        Table(["L1, per entry (tracemalloc)", "bytes"], l1_rows, note=f"The seed's figure: {l1['seed_claim']}."),
        Table([*headers, "zlib-1 µs c / d", "decode µs"], rows, l2_title, verdict_note),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("memory", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
