"""What the outbox costs a write: ``python -m benchmarks.bench_outbox [--writes N]``.

The dealership's ``UpdateDealership`` through the mediator (handler, unit of work, invalidation behavior), on
SQLite and PostgreSQL, with the outbox off and on, alternating write by write so load falls on both alike. For
each write: its latency (``send`` call to return), and how long after it returned a second cache instance (same
process, its own connections, the key in its L1) stopped serving the old entry. The outbox's relay runs as in
the service; its marks (``UPDATE … published_at``) run in the background, between and during the writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Table, bench_main, connected, database_urls, summarize
from dealership.bootstrap import build_mediator
from dealership.commands import UpdateDealership
from dealership.database import create_engine, prepare_database
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache, OutboxSettings
from hybridcache.persistence import Outbox, create_session_factory

SEED = 200
_GONE = object()
POLL_LIMIT = 2.0


async def seen_after(observer: HybridCache, key: str) -> float | None:
    """perf_counter() just before the first ``get`` that no longer finds ``key`` (None: not within the limit)."""
    deadline = time.perf_counter() + POLL_LIMIT
    while True:
        before = time.perf_counter()
        if await observer.get(key, default=_GONE) is _GONE:
            return before
        if before > deadline:
            return None
        await asyncio.sleep(0)


async def measure(url: str, server: RedisServer, writes: int) -> dict[str, Any]:
    await prepare_database(url, SEED)
    engine = create_engine(url)
    settings = CacheSettings(service_name=f"bench-{uuid.uuid4().hex[:6]}", configuration=server.url)
    samples: dict[str, dict[str, list[float]]] = {m: {"write": [], "propagation": []} for m in ("off", "on")}
    never = {"off": 0, "on": 0}
    rng = random.Random(15)
    try:
        async with contextlib.AsyncExitStack() as stack:
            writer = await connected(stack, settings)
            observer = await connected(stack, settings)
            outbox = await stack.enter_async_context(Outbox(writer, engine, OutboxSettings(enabled=True)))
            sessions = create_session_factory(engine)
            mediators = {"off": build_mediator(writer, sessions), "on": build_mediator(writer, sessions, outbox)}
            for i in range(2 * writes):
                mode = ("off", "on")[i % 2]
                dealership_id = rng.randint(1, SEED)
                key = f"Dealership:{dealership_id}"
                await observer.set(key, {"warm": i})
                command = UpdateDealership(id=dealership_id, name=f"Bench {i}", business_address=f"{i} Outbox St")
                started = time.perf_counter()
                await mediators[mode].send(command)
                returned = time.perf_counter()
                samples[mode]["write"].append(returned - started)
                seen = await seen_after(observer, key)
                if seen is None:
                    never[mode] += 1
                else:
                    samples[mode]["propagation"].append(max(0.0, seen - returned))
            relayed = outbox.relayed
    finally:
        await engine.dispose()
    stats = ("count", "p50", "p90", "p99", "max")
    result: dict[str, Any] = {
        mode: {
            "write": summarize(s["write"], stats, unit="ms", scale=1e3, digits=3),
            "propagation": summarize(s["propagation"], stats, unit="ms", scale=1e3, digits=3),
            "never_seen": never[mode],
        }
        for mode, s in samples.items()
    }
    off, on = result["off"]["write"], result["on"]["write"]
    result["write_p50_extra_ms"] = round(on["p50_ms"] - off["p50_ms"], 3)
    result["write_p50_ratio"] = round(on["p50_ms"] / off["p50_ms"], 3)
    result["rows_relayed"] = relayed  # rows the relay had to publish: 0 when every fast path succeeded
    return result


def tables(document: dict[str, Any]) -> list[Table]:
    rows = []
    for database, result in document["databases"].items():
        for mode in ("off", "on"):
            w, p = result[mode]["write"], result[mode]["propagation"]
            rows.append([f"{database}, outbox {mode}", w["count"], w["p50_ms"], w["p99_ms"], p["p50_ms"], p["p99_ms"]])
    extra = "; ".join(
        f"{db}: +{r['write_p50_extra_ms']} ms ({r['write_p50_ratio']}x) per write at the median"
        for db, r in document["databases"].items()
    )
    headers = [
        "UpdateDealership via mediator",
        "writes",
        "write p50 ms",
        "write p99 ms",
        "prop. p50 ms",
        "prop. p99 ms",
    ]
    return [Table(headers, rows, note=f"outbox cost: {extra}; skipped: {document['skipped'] or 'none'}")]


OPTIONS = {"writes": (400, "writes per mode and database")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("hybridcache").setLevel(logging.WARNING)
    logging.getLogger("dealership").setLevel(logging.WARNING)
    databases: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="hc-bench-outbox-") as workdir,
        RedisServer() as server,
        database_urls(("sqlite", "postgresql"), Path(workdir)) as (urls, skipped),
    ):
        for name, url in urls.items():
            databases[name] = asyncio.run(measure(url, server, args.writes))
    return {"method": __doc__, "databases": databases, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("outbox", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
