"""The seed's "Latency Comparison" table, measured (issue 7): no cache / L2 only / L1+L2 through the mediator and
HTTP, on SQLite and PostgreSQL, with a simulated round trip per SQL statement. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.util import await_

from benchmarks._common import (
    SEARCH_TERMS,
    SEED_COUNT,
    Table,
    bench_main,
    database_urls,
    format_ns,
    stats_delta,
    summarize,
)
from dealership.bootstrap import ServiceConfig, bootstrap
from dealership.database import prepare_database
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from harness.redis_server import RedisServer
from harness.service import ServiceProcess
from hybridcache import CacheSettings
from hybridcache.cqrs import Request

TARGET_RATIO = 100.0
ROUNDS = 3
MODES = {"none": "no cache", "l2": "L2 only", "l1+l2": "L1 + L2"}
SERVED_BY = {"none": "handlerRuns", "l2": "l2Hits", "l1+l2": "l1Hits"}
ENTITY_IDS = range(1, 101)
LIST_PAGES = range(1, 11)
SERVICE_NAME = "dealership-bench"
#: The seed's "Latency Comparison" figures (no cache, L2 only, L1+L2), quoted beside ours.
SEED_FIGURES = {
    "single entity": ("50 ms", "5 ms", "0.5 ms"),
    "search (10 results)": ("100 ms", "8 ms", "1 ms"),
    "list (50 results)": ("200 ms", "15 ms", "2 ms"),
}
OPTIONS = {
    "delays_ms": ([0.0, 1.0, 10.0], "simulated round trips per statement, comma-separated; 0 or at least 1"),
    "databases": (["sqlite", "postgresql"], "comma-separated: sqlite,postgresql"),
    "paths": (["mediator", "http"], "comma-separated: mediator,http"),
    "requests": (2000, "timed requests per mediator cell"),
    "http_requests": (300, "timed requests per HTTP cell"),
    "cell_seconds": (3.0, "time budget per cell"),
}


#: A row of the seed's table: its key count, the mediator request and the HTTP path for the ``i``-th key.
OPERATIONS: dict[str, tuple[int, Callable[[int], Request[Any]], Callable[[int], str]]] = {
    "single entity": (len(ENTITY_IDS), lambda i: GetDealershipById(i + 1), lambda i: f"/api/dealership/{i + 1}"),
    "search (10 results)": (
        len(SEARCH_TERMS),
        lambda i: SearchDealerships(SEARCH_TERMS[i], 10),
        lambda i: f"/api/dealership/search?term={SEARCH_TERMS[i]}&size=10",
    ),
    "list (50 results)": (
        len(LIST_PAGES),
        lambda i: GetDealershipsList(i + 1, 50),
        lambda i: f"/api/dealership?page={i + 1}&size=50",
    ),
}
#: The delay before each SQL statement, how many simulated round trips ran in this process, and how long they
#: actually lasted (sleeps overshoot).
simulated = {"delay_seconds": 0.0, "sleeps": 0, "slept_ns": 0}


def _simulated_round_trip(*_args: Any) -> None:
    # Runs inside SQLAlchemy's greenlet for the awaiting coroutine: await_ suspends that coroutine only.
    start = time.perf_counter_ns()
    await_(asyncio.sleep(simulated["delay_seconds"]))
    simulated["slept_ns"] += time.perf_counter_ns() - start
    simulated["sleeps"] += 1


@contextlib.contextmanager
def simulated_latency(delay_ms: float) -> Iterator[None]:
    """Within the block, every SQL statement run by any async engine first waits ``delay_ms`` (0: no listener)."""
    if delay_ms <= 0:
        yield
        return
    simulated["delay_seconds"] = delay_ms / 1000
    event.listen(Engine, "before_cursor_execute", _simulated_round_trip)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", _simulated_round_trip)


def serve(argv: Sequence[str]) -> None:
    """``serve DELAY_MS [dealership options]``: run ``python -m dealership`` with the simulated round trip."""
    from dealership.__main__ import main as dealership_main

    with simulated_latency(float(argv[0])):
        dealership_main(argv[1:])


@dataclass(frozen=True)
class Subject:
    """One cache mode: ``send(op, i)`` makes the ``i``-th request of ``op``; ``stats()`` reads its counters."""

    mode: str
    send: Callable[[str, int], Awaitable[None]]
    stats: Callable[[], Awaitable[dict[str, Any]]]


async def measure_cells(
    path: str, database: str, delay: float, subjects: Sequence[Subject], requests: int, max_seconds: float
) -> list[dict[str, Any]]:
    """One cell per (operation, subject): warm, then ``ROUNDS`` round-robin batches (docs/benchmarks.md)."""
    cells = []
    batch = max(1, -(-requests // ROUNDS))
    for op, (keys, _, _) in OPERATIONS.items():
        for subject in subjects:
            for i in range(keys):
                await subject.send(op, i)
        before = {s.mode: await s.stats() for s in subjects}
        times: dict[str, list[float]] = {s.mode: [] for s in subjects}
        deadline = time.monotonic() + max_seconds
        for round_ in range(ROUNDS):
            for subject in subjects:
                batch_deadline = time.monotonic() + max_seconds / ROUNDS
                for i in range(round_ * batch, (round_ + 1) * batch):
                    start = time.perf_counter_ns()
                    await subject.send(op, i % keys)
                    times[subject.mode].append((time.perf_counter_ns() - start) / 1000)
                    if time.monotonic() >= batch_deadline:
                        break
            if time.monotonic() >= deadline:
                break
        for subject in subjects:
            mode, n, after = subject.mode, len(times[subject.mode]), await subject.stats()
            delta = stats_delta(before[mode], after)
            cell = {"path": path, "database": database, "delay_ms": delay, "operation": op, "cache": mode}
            cell |= summarize(times[mode], ("median", "p90", "p99", "min"), unit="us") | {"requests": n}
            cell |= {"cache_stats": delta, "as_intended": delta[SERVED_BY[mode]] == n and sum(delta.values()) == n}
            if delay > 0 and mode == "none" and "slept_ns" in after:
                # Only uncached requests reach the database, so every simulated round trip is theirs.
                cell["simulated_per_request"] = {
                    "sleeps": round((after["sleeps"] - before[mode]["sleeps"]) / n, 2),
                    "slept_us": round((after["slept_ns"] - before[mode]["slept_ns"]) / n / 1000, 1),
                }
            ok = "" if cell["as_intended"] else f"  NOT AS INTENDED: {delta}"
            label = f"{path} {database} +{delay:g} ms {op} {MODES[mode]}"
            print(f"  {label:58} {cell['median_us']:>10.1f} µs  (n={n}){ok}", flush=True)
            cells.append(cell)
    return cells


async def mediator_cells(database: str, url: str, redis: RedisServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The mediator cells of one database: the three cache modes bootstrapped side by side in this process."""
    cells = []
    with redis.sync_client() as client:
        client.flushall()
    async with contextlib.AsyncExitStack() as stack:
        subjects = []
        for mode in MODES:
            settings = CacheSettings(
                configuration=f"127.0.0.1:{redis.port}",
                service_name=f"{SERVICE_NAME}-{mode.replace('+', '')}",
                instance_name="Dealership:",
                enabled=mode != "none",
                memory_cache={"enabled": mode != "l2"},
            )
            services = await stack.enter_async_context(bootstrap(ServiceConfig(url, SEED_COUNT, settings)))
            if mode != "none" and not await services.cache.wait_until_connected(10.0):
                raise RuntimeError("the cache did not connect to the private redis-server")

            async def send(op: str, i: int, mediator: Any = services.mediator) -> None:
                await mediator.send(OPERATIONS[op][1](i))

            async def stats(cache: Any = services.cache) -> dict[str, Any]:
                return {**cache.stats().as_dict(), **simulated}

            subjects.append(Subject(mode, send, stats))
        for delay in args.delays_ms:
            with simulated_latency(delay):
                cells += await measure_cells("mediator", database, delay, subjects, args.requests, args.cell_seconds)
    return cells


def http_cells(database: str, url: str, redis: RedisServer, args: argparse.Namespace, logs: Path) -> list[Any]:
    """The HTTP cells of one database: per delay, a service process per cache mode, side by side."""
    cells = []
    for delay in args.delays_ms:
        with redis.sync_client() as client:
            client.flushall()
        with contextlib.ExitStack() as stack:
            subjects = []
            for mode in MODES:
                env = {
                    "Configuration": f"127.0.0.1:{redis.port}",
                    "ServiceName": f"{SERVICE_NAME}-{mode.replace('+', '')}",
                }
                env |= {"none": {"Enabled": "false"}, "l2": {"MemoryCache__Enabled": "false"}}.get(mode, {})
                service = ServiceProcess(
                    f"{database}-{mode}-{delay:g}ms", database_url=url, log_dir=logs, cache_env=env,
                    seed_count=SEED_COUNT, startup_timeout=60.0, module="benchmarks.bench_latency_table",
                    args=["serve", str(delay), "--log-level", "warning"],
                )  # fmt: skip
                stack.enter_context(service)
                client = stack.enter_context(httpx.Client(base_url=service.base_url, timeout=30.0))

                # A blocking client on purpose: requests are sequential, nothing else runs on this loop, and it
                # adds less of its own time to each measurement than httpx.AsyncClient would.
                async def send(op: str, i: int, client: httpx.Client = client) -> None:
                    client.get(OPERATIONS[op][2](i)).raise_for_status()  # noqa: ASYNC212

                async def stats(client: httpx.Client = client) -> dict[str, Any]:
                    body: dict[str, Any] = client.get("/api/cache/stats").json()  # noqa: ASYNC212
                    return body

                subjects.append(Subject(mode, send, stats))
            measured = measure_cells("http", database, delay, subjects, args.http_requests, args.cell_seconds)
            cells += asyncio.run(measured)
    return cells


def run(args: argparse.Namespace) -> dict[str, Any]:
    if any(0 < d < 1 for d in args.delays_ms):  # epoll timeouts are whole milliseconds
        raise SystemExit("--delays-ms: 0, or at least 1")
    cells: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="hc-bench-latency-") as tmp,
        RedisServer() as redis,
        database_urls(args.databases, Path(tmp)) as (urls, skipped),
    ):
        for url in urls.values():
            asyncio.run(prepare_database(url, SEED_COUNT))  # seeded before any delay applies
        for database, url in urls.items():
            if "mediator" in args.paths:
                cells += asyncio.run(mediator_cells(database, url, redis, args))
            if "http" in args.paths:
                cells += http_cells(database, url, redis, args, Path(tmp))
    rows = comparison_rows(cells)
    settings = {
        "delays_ms": args.delays_ms,
        "delay_applies_to": "every SQL statement (1 for by-id and search, 2 for a list page); "
        "not BEGIN/ROLLBACK/pre-ping; cached hits never reach the database",
        "requests_per_cell": {"mediator": args.requests, "http": args.http_requests},
        "cell_seconds": args.cell_seconds,
        "seed_count": SEED_COUNT,
        "keys": {
            "single entity": f"ids {ENTITY_IDS.start}..{ENTITY_IDS.stop - 1}",
            "search (10 results)": list(SEARCH_TERMS),
            "list (50 results)": f"pages {LIST_PAGES.start}..{LIST_PAGES.stop - 1} of 50",
        },
        "modes": MODES,
        "note": "2 CPU cores shared by this process, the service, redis-server and PostgreSQL",
    }
    return {"settings": settings, "skipped": skipped, "rows": rows, "target": target(rows), "cells": cells}


def comparison_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (path, database, delay, operation): the three medians and the speed-ups over no cache."""
    index = {(c["path"], c["database"], c["delay_ms"], c["operation"], c["cache"]): c for c in cells}
    rows = []
    for (path, database, delay, operation, mode), cell in index.items():
        if mode != "none":
            continue
        row: dict[str, Any] = {"path": path, "database": database, "delay_ms": delay, "operation": operation}
        for other in MODES:
            found = index.get((path, database, delay, operation, other))
            row[f"{other}_median_us"] = found["median_us"] if found else None
        for other in ("l2", "l1+l2"):
            median = row[f"{other}_median_us"]
            row[f"speedup_{other}"] = round(cell["median_us"] / median, 1) if median else None
        rows.append(row)
    return rows


def target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Acceptance 3: mediator, PostgreSQL, +10 ms, single entity: no cache / L1+L2 >= 100."""
    for r in rows:
        if (r["path"], r["database"], r["delay_ms"], r["operation"]) == ("mediator", "postgresql", 10, "single entity"):
            ratio = r["speedup_l1+l2"]
            return {
                "description": "cached (L1+L2) single-entity read through the mediator vs uncached PostgreSQL + 10 ms",
                "uncached_median_us": r["none_median_us"],
                "cached_median_us": r["l1+l2_median_us"],
                "ratio": ratio,
                "required": TARGET_RATIO,
                "met": ratio is not None and ratio >= TARGET_RATIO,
            }
    return {"description": "not measured (needs --databases postgresql, --delays-ms 10, mediator path)", "met": None}


def ms(us: float | None) -> str:
    return "-" if us is None else format_ns(us * 1000)


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x"


def tables(document: Mapping[str, Any]) -> list[Table]:
    """The seed-format summary (mediator, the largest delay) and the full tables per path."""
    rows, goal, out = document["rows"], document["target"], []
    worst = max((r["delay_ms"] for r in rows), default=0)
    if headline := [r for r in rows if r["path"] == "mediator" and r["delay_ms"] == worst]:
        database = "postgresql" if any(r["database"] == "postgresql" for r in headline) else headline[0]["database"]
        seed_rows = []
        for r in (r for r in headline if r["database"] == database):
            seed = [
                f"{ms(r[f'{m}_median_us'])} ({s})" for m, s in zip(MODES, SEED_FIGURES[r["operation"]], strict=True)
            ]
            seed_rows.append([r["operation"], *seed, f"**{times(r['speedup_l1+l2'])}** (100x)"])
        verdict = ""
        if goal.get("met") is not None:
            verdict = (
                f"**Target** (issue 7, acceptance 3): {goal['description']}: {ms(goal['uncached_median_us'])} / "
                f"{ms(goal['cached_median_us'])} = **{times(goal['ratio'])}** (at least {goal['required']:g}x "
                f"required): {'met' if goal['met'] else '**not met**'}."
            )
        title = f"Through the mediator, {database}, +{worst:g} ms simulated round trip per SQL statement (the seed's"
        headers = ["operation", "no cache", "L2 only", "L1 + L2", "L1 + L2 vs no cache"]
        out.append(Table(headers, seed_rows, title + " figures in parentheses):", verdict))
    for path, name in (("mediator", "Through the mediator (in-process)"), ("http", "Through HTTP (uvicorn)")):
        body = [
            [r["operation"], r["database"], f"+{r['delay_ms']:g} ms", *(ms(r[f"{m}_median_us"]) for m in MODES),
             times(r["speedup_l2"]), times(r["speedup_l1+l2"])]
            for r in rows
            if r["path"] == path
        ]  # fmt: skip
        headers = ["operation", "database", "db round trip", "no cache", "L2 only", "L1 + L2", "L2 speed-up"]
        title = f"**{name}**: median per request; the simulated round trip is in the *no cache* column only"
        if body:
            out.append(Table([*headers, "L1 + L2 speed-up"], body, title + " (cached hits never reach the database)."))
    if document["skipped"]:
        out.append(Table(["skipped", "why"], list(document["skipped"].items())))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return
    bench_main("latency_table", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
