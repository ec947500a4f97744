"""hybridcache next to cashews and aiocache, same workload, same run, one private Redis: memory-tier hit, Redis hit
from a second instance, miss, stampede. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from benchmarks._common import (
    Table,
    Variant,
    bench_main,
    dealership_dto,
    fmt,
    measure,
    package_versions,
    paired_ratio,
    percentile,
    ratio,
)
from dealership.dto import DealershipDto
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache

TTL = timedelta(minutes=30)
TTL_SECONDS = int(TTL.total_seconds())
STAMPEDE_CALLERS = 1000
STAMPEDE_FACTORY_SECONDS = 0.05
Reader = Callable[[int], Awaitable[Any]]
OPTIONS = {
    "rounds": (25, "round-robin rounds of memory-hit batches (at most)"),
    "max_seconds": (45.0, "time budget of the memory-hit rounds"),
    "keys": (3000, "distinct keys for Redis-hit and miss timing"),
    "chunks": (10, "interleaving chunks for Redis-hit and miss timing"),
}


@dataclass
class Database:
    """The shared "database": builds the DTO, counts queries, optionally waits like a remote round trip."""

    queries: int = 0
    delay: float = 0.0

    async def load(self, dealership_id: int) -> DealershipDto:
        self.queries += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return dealership_dto(dealership_id)


@dataclass
class Contender:
    """One cache configuration; ``peek`` reads without the factory; ``stampede_readers``: label -> reader."""

    local_tier: bool  # serves hits from process memory
    shared_tier: bool  # stores entries in Redis
    read: Reader
    peek: Reader
    start: Callable[[], Awaitable[Any]]
    close: Callable[[], Awaitable[Any]]
    stampede_readers: dict[str, Reader] = field(default_factory=dict)
    name: str = ""


def hybrid(db: Database, url: str, *, l1: bool) -> Contender:
    # Pub/sub channels ignore the database number: each configuration needs its own service name, or the
    # instances of one would see the other's invalidation messages (and their numbering) as their own.
    settings = {"service_name": "peers-l1-l2" if l1 else "peers-l2", "instance_name": "Bench:", "configuration": url}
    cache = HybridCache(CacheSettings(**settings, memory_cache={"enabled": l1}))

    async def start() -> None:
        await cache.start()
        if not await cache.wait_until_connected(5.0):
            raise RuntimeError("hybridcache invalidation subscription not confirmed within 5 s")

    return Contender(
        l1,
        True,
        read=lambda i: cache.get_or_create(f"Dealership:{i}", lambda: db.load(i), ttl=TTL, type_=DealershipDto),
        peek=lambda i: cache.get(f"Dealership:{i}", type_=DealershipDto, default=None),
        start=start,
        close=cache.close,
    )


def cashews(db: Database, url: str, **setup: Any) -> Contender:
    from cashews import Cache

    cache = Cache()
    cache.setup(url, **setup)

    @cache(ttl=TTL_SECONDS, key="dealership:{dealership_id}")
    async def get_dealership(dealership_id: int) -> DealershipDto:
        return await db.load(dealership_id)

    return Contender(
        url.startswith("mem://") or bool(setup.get("client_side")),
        url.startswith("redis://"),
        read=get_dealership,
        peek=lambda i: cache.get(f"dealership:{i}"),
        start=cache.init,
        close=cache.close,
    )


def aiocache(db: Database, server: RedisServer | None, db_index: int) -> Contender:
    from aiocache import RedisCache, SimpleMemoryCache, cached, cached_stampede  # type: ignore[import-untyped]
    from aiocache.serializers import PickleSerializer  # type: ignore[import-untyped]

    options: dict[str, Any] = {"cache": SimpleMemoryCache}
    if server is not None:
        options = {"cache": RedisCache, "endpoint": server.host, "port": server.port, "db": db_index}
        options["serializer"] = PickleSerializer()

    def key(_f: Any, dealership_id: int) -> str:
        return f"dealership:{dealership_id}"

    async def get_dealership(dealership_id: int) -> DealershipDto:
        return await db.load(dealership_id)

    read = cached(ttl=TTL_SECONDS, key_builder=key, **options)(get_dealership)
    guarded = cached_stampede(ttl=TTL_SECONDS, key_builder=key, lease=2, **options)(get_dealership)

    async def close() -> None:
        await read.cache.close()
        await guarded.cache.close()

    return Contender(
        server is None,
        server is not None,
        read=read,
        peek=lambda i: read.cache.get(f"dealership:{i}"),
        start=lambda: asyncio.sleep(0),
        close=close,
        stampede_readers={"@cached": read, "@cached_stampede": guarded},
    )


def factories(db: Database, server: RedisServer) -> dict[str, Callable[[], Contender]]:
    """Every contender by name, each in a Redis database of its own."""
    url = server.url_for_db
    return {
        "hybridcache L1+L2": lambda: hybrid(db, url(1), l1=True),
        "hybridcache L2-only": lambda: hybrid(db, url(2), l1=False),
        "cashews mem://": lambda: cashews(db, "mem://"),
        "cashews redis://": lambda: cashews(db, url(3)),
        "cashews client-side (RESP3 default)": lambda: cashews(db, url(4), client_side=True),
        "cashews client-side (protocol=2)": lambda: cashews(db, url(5), client_side=True, protocol=2),
        "aiocache SimpleMemoryCache": lambda: aiocache(db, None, 0),
        "aiocache RedisCache": lambda: aiocache(db, server, 6),
    }


@dataclass
class Row:
    """Everything measured for one contender (None: not applicable; ``errors`` says what failed)."""

    name: str
    memory_hit_ns: float | None = None
    redis_hit_us: float | None = None
    redis_hit_p99_us: float | None = None
    miss_us: float | None = None
    miss_p99_us: float | None = None
    stampede: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _hit_batch(op: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[None]]:
    async def batch(ops: int) -> None:
        # _common.measure pauses the garbage collector during a batch; here it runs, as in a service. A peer
        # that makes cyclic garbage on every call (cashews creates a Task per decorated call) is otherwise timed
        # without the collections it causes, and measured *slower* as its uncollected garbage piles up.
        gc.enable()
        for _ in range(ops):
            await op()

    return batch


async def measure_memory_hits(contenders: Sequence[Contender], rows: dict[str, Row], args: argparse.Namespace) -> Any:
    """Read-through hits on one warm key: ``_common.measure`` batches of ~20 ms, round-robin (GC on)."""
    variants = []
    for c in contenders:
        start = time.perf_counter()
        await _hit_batch(lambda c=c: c.read(1))(200)  # a probe, to size the batch
        per_op = max((time.perf_counter() - start) / 200, 1e-8)
        variants.append(Variant(c.name, _hit_batch(lambda c=c: c.read(1)), max(100, min(50_000, int(0.02 / per_op)))))
    timings = await measure(variants, rounds=args.rounds, max_seconds=args.max_seconds)
    for c in contenders:
        rows[c.name].memory_hit_ns = timings[c.name].median_ns
    return timings


async def measure_reads(
    readers: dict[str, Reader], rows: dict[str, Row], ids: Sequence[int], chunks: int, kind: str
) -> None:
    """Median and p99 µs per call of ``kind`` ("redis_hit" or "miss") for each reader on each id once, chunk by
    chunk, the readers in turn within a chunk."""
    samples: dict[str, list[float]] = {name: [] for name in readers}
    step = max(1, len(ids) // chunks)
    for lo in range(0, len(ids), step):
        for name, read in readers.items():
            gc.collect()
            for i in ids[lo : lo + step]:
                start = time.perf_counter_ns()
                await read(i)
                samples[name].append((time.perf_counter_ns() - start) / 1000)
    for name, values in samples.items():
        setattr(rows[name], f"{kind}_us", statistics.median(values))
        setattr(rows[name], f"{kind}_p99_us", percentile(values, 0.99))


async def measure_stampede(c: Contender, db: Database, key: int) -> dict[str, Any]:
    """``STAMPEDE_CALLERS`` concurrent cold calls to one key: how many times did the factory run?"""
    out = {}
    for label, reader in (c.stampede_readers or {"": c.read}).items():
        key += 1
        before, start = db.queries, time.perf_counter()
        try:
            calls = asyncio.gather(*(reader(key) for _ in range(STAMPEDE_CALLERS)), return_exceptions=True)
            results = await asyncio.wait_for(calls, 60)
        except TimeoutError:
            out[label] = {"error": "did not finish within 60 s"}
            continue
        failures = [r for r in results if isinstance(r, BaseException)]
        out[label] = {
            "callers": STAMPEDE_CALLERS,
            "factory_runs": db.queries - before,
            "wall_ms": (time.perf_counter() - start) * 1000,
            "failed_calls": len(failures),
            "first_failure": f"{failures[0].__class__.__name__}: {failures[0]}" if failures else None,
        }
    return out


async def start_all(makers: dict[str, Callable[[], Contender]], rows: dict[str, Row]) -> list[Contender]:
    """Build and start each contender (and check it caches); a failure goes to its row's ``errors``."""
    started = []
    for name, make in makers.items():
        contender = None
        try:
            contender = make()
            contender.name = name
            await asyncio.wait_for(contender.start(), 15)
            await contender.read(1)
            if await contender.peek(1) is None:
                raise RuntimeError("a value read through the cache is not found by get()")
            started.append(contender)
        except Exception as exc:
            rows.setdefault(name, Row(name)).errors.append(f"{exc.__class__.__name__}: {exc}")
            if contender is not None:
                await close_quietly([contender])
    return started


async def close_quietly(contenders: Iterable[Contender]) -> None:
    for c in contenders:
        try:
            await asyncio.wait_for(c.close(), 10)
        except Exception as exc:
            print(f"  (closing {c.name} failed: {exc.__class__.__name__}: {exc})")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    db = Database()
    logging.getLogger("aiocache").setLevel(logging.CRITICAL)  # a traceback per failed call; failed_calls counts them
    with RedisServer() as server:
        makers = factories(db, server)
        rows = {name: Row(name) for name in makers}
        contenders = await start_all(makers, rows)
        shared, twin_rows = [c for c in contenders if c.shared_tier], {c.name: Row(c.name) for c in contenders}
        twins = {t.name: t for t in await start_all({c.name: makers[c.name] for c in shared}, twin_rows)}
        pairs = [(c, twins[c.name]) for c in shared if c.name in twins]
        for name, row in twin_rows.items():
            rows[name].errors += [f"second instance: {error}" for error in row.errors]
        try:
            print(f"memory-tier hits: up to {args.rounds} rounds ...", flush=True)
            timings = await measure_memory_hits([c for c in contenders if c.local_tier], rows, args)
            print(f"Redis hits from a second instance: {args.keys} keys ...", flush=True)
            # Instance A fills the keys; instance B reads each once (an L2 hit, promoted to L1 where there is one).
            ids = list(range(100_000, 100_000 + args.keys))
            for writer, _ in pairs:
                for i in ids:
                    await writer.read(i)
            await measure_reads({a.name: b.read for a, b in pairs}, rows, ids, args.chunks, "redis_hit")
            print(f"misses: {args.keys} fresh keys ...", flush=True)
            misses = range(200_000, 200_000 + args.keys)  # an instant factory: a miss includes storing the value
            await measure_reads({c.name: c.read for c in contenders}, rows, misses, args.chunks, "miss")
            print(f"stampede: {STAMPEDE_CALLERS} concurrent cold calls ...", flush=True)
            db.delay = STAMPEDE_FACTORY_SECONDS
            for n, c in enumerate(contenders):
                rows[c.name].stampede = await measure_stampede(c, db, 300_000 + 10 * n)
            db.delay = 0.0
        finally:
            await close_quietly([*contenders, *twins.values()])
    return {
        "unit": (
            "memory hits: ns/op, median over rounds of a batch's mean (_common.measure, GC on); Redis hits and misses: "
            "us per call, median (and p99) over every call; stampede: factory runs for concurrent cold calls"
        ),
        "peer_versions": package_versions("cashews", "aiocache"),
        "parameters": {
            "max_rounds": args.rounds,
            "redis_keys": args.keys,
            "redis_chunks": args.chunks,
            "stampede_callers": STAMPEDE_CALLERS,
            "stampede_factory_seconds": STAMPEDE_FACTORY_SECONDS,
        },
        "rows": [vars(row) for row in rows.values()],
        "acceptance": acceptance(timings),
    }


def acceptance(timings: dict[str, Any]) -> dict[str, Any]:
    """The target (L1 hit >= 3x faster than the memory peers'), by the paired ratio; reported, not asserted."""
    out: dict[str, Any] = {}
    hc = timings.get("hybridcache L1+L2")
    for peer in ("cashews mem://", "aiocache SimpleMemoryCache"):
        if hc is not None and (other := timings.get(peer)) is not None:
            paired = paired_ratio(other, hc)
            out[f"l1_hit_speedup_vs_{peer}"] = {
                "paired_ratio": round(paired, 2),
                "ratio_of_medians": round(other.median_ns / hc.median_ns, 2),
                "target": 3.0,
                "met": paired >= 3.0,
            }
    return out


def tables(document: dict[str, Any]) -> list[Table]:
    rows, params = document["rows"], document["parameters"]
    hc = {r["name"]: r for r in rows if r["name"].startswith("hybridcache")}
    l1, l2 = hc.get("hybridcache L1+L2", {}), hc.get("hybridcache L2-only", {})
    latency = [
        [r["name"], fmt(r["memory_hit_ns"], 0), ratio(r["memory_hit_ns"], l1.get("memory_hit_ns")),
         fmt(r["redis_hit_us"], 1), fmt(r["redis_hit_p99_us"], 0), ratio(r["redis_hit_us"], l2.get("redis_hit_us")),
         fmt(r["miss_us"], 1), ratio(r["miss_us"], l2.get("miss_us"))]
        for r in rows
    ]  # fmt: skip
    stampede = [
        [r["name"] + (f" ({label})" if label else ""), fmt(s.get("factory_runs", s.get("error"))),
         fmt(s.get("wall_ms"), 0), fmt(s.get("failed_calls")), fmt(s.get("first_failure"))]
        for r in rows
        for label, s in r["stampede"].items()
    ]  # fmt: skip
    headers = ["contender", "mem hit ns", "vs hc", "Redis hit µs", "p99 µs", "vs hc L2", "miss µs", "vs hc L2"]
    out = [
        Table(
            headers,
            latency,
            "Memory-tier hit: median ns per read-through call on one warm key. Redis hit: a second instance reads "
            "keys the first stored, each once (with the promotion into a local tier), µs per call. Miss: a fresh key, "
            "an instant factory, the store included. Ratios: against hybridcache L1+L2 (memory hits) or L2-only.",
        ),
        Table(
            ["contender", "factory runs", "wall ms", "failed calls", "first failure"],
            stampede,
            f"**Stampede**: {params['stampede_callers']} concurrent cold calls to one key, the factory takes "
            f"{params['stampede_factory_seconds'] * 1000:.0f} ms.",
        ),
    ]
    if errors := [[r["name"], "; ".join(r["errors"])] for r in rows if r["errors"]]:
        out.append(Table(["contender", "error"], errors, "Contenders that failed to start:"))
    verdicts = [[k, fmt(v["paired_ratio"]), fmt(v["target"]), fmt(v["met"])] for k, v in document["acceptance"].items()]
    return [*out, Table(["target", "paired ratio", "target", "met"], verdicts)]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("peers", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
