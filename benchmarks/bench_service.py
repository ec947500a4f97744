"""The reference service measured (issues 6 and 7): the seed's latency table, no cache / L2 only / L1+L2 through
the mediator and HTTP with a simulated round trip per SQL statement (``latency_table.json``), and ``wrk`` load with
the cache on and off (``service_load.json``), on SQLite and PostgreSQL. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
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

from benchmarks._common import SEED_COUNT, Table, bench_main, database_urls, format_ns, summarize
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
WRK_IDS, WRK_LIST_PAGES = 500, 50  # wrk spreads its by-id route over ids 1..500, its list route over 50 pages
SERVICE_NAME = "dealership-bench"
#: Brand names each matching at least 10 of the 2000 seeded dealerships (the search terms).
SEARCH_TERMS = ("ford", "toyota", "honda", "chevrolet", "nissan", "hyundai", "kia", "subaru", "mazda", "jeep")
#: The seed's "Latency Comparison" figures (no cache, L2 only, L1+L2), quoted beside ours.
SEED_FIGURES = {
    "single entity": ("50 ms", "5 ms", "0.5 ms"),
    "search (10 results)": ("100 ms", "8 ms", "1 ms"),
    "list (50 results)": ("200 ms", "15 ms", "2 ms"),
}
OPTIONS = {
    "paths": (["mediator", "http", "wrk"], "comma-separated: mediator,http (the latency table), wrk (the load)"),
    "databases": (["sqlite", "postgresql"], "comma-separated: sqlite,postgresql"),
    "delays_ms": ([0.0, 1.0, 10.0], "simulated round trips per statement, comma-separated; 0 or at least 1"),
    "requests": (2000, "timed requests per mediator cell"),
    "http_requests": (300, "timed requests per HTTP cell"),
    "cell_seconds": (3.0, "time budget per cell"),
    "duration": (10, "seconds per measured wrk run"),
    "warmup": (2, "seconds of wrk warm-up per route"),
    "threads": (2, "wrk threads"),
    "connections": (32, "wrk connections"),
    "routes": (["by-id", "list", "search"], "wrk routes, comma-separated: by-id,list,search"),
}
_WRK_MARKER = "WRKJSON "

# A wrk Lua script: ``request`` builds each request from a thread-local counter (every thread starts at its own
# offset and walks the keys with a stride coprime to their count, so all keys are hit evenly and the threads do
# not move in lockstep); ``done`` prints the run's exact figures as one JSON line for the parser below.
_LUA_TEMPLATE = """
local paths = {%(paths)s}
local count = #paths
-- globals: thread:set() in setup() overrides offset in each thread's own Lua state
n = 0
offset = 0
local threads_seen = 0

function setup(thread)
  thread:set("offset", threads_seen * 104729)
  threads_seen = threads_seen + 1
end

function request()
  n = n + 1
  return wrk.format("GET", paths[((offset + n * 7919) %% count) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f,"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,' ..
    '"timeouts":%%d,"non_2xx":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


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
#: The wrk routes: name -> (description, the request targets wrk cycles through).
ROUTES = {
    "by-id": (
        f"GET /api/dealership/{{id}}, id in 1..{WRK_IDS}",
        [f"/api/dealership/{i}" for i in range(1, WRK_IDS + 1)],
    ),
    "list": (
        f"GET /api/dealership?page={{1..{WRK_LIST_PAGES}}}&size=10",
        [f"/api/dealership?page={p}&size=10" for p in range(1, WRK_LIST_PAGES + 1)],
    ),
    "search": (
        f"GET /api/dealership/search?term={{{len(SEARCH_TERMS)} brands}}&size=10",
        [f"/api/dealership/search?term={t}&size=10" for t in SEARCH_TERMS],
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


def stats_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """What the cache did between two ``/api/cache/stats`` readings (hits by level, misses, handler runs)."""
    return {k: int(after[k]) - int(before[k]) for k in ("l1Hits", "l2Hits", "misses", "handlerRuns")}


def run_wrk(base_url: str, script: Path, args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    """Run wrk once (killed if it has not exited 30 s after ``seconds``); its figures, latencies in ms."""
    options = [f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout=5s", "--latency"]
    command = ["wrk", *options, "-s", str(script), base_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    line = next((x for x in done.stdout.splitlines() if x.startswith(_WRK_MARKER)), None)
    if line is None:
        raise ValueError(f"no {_WRK_MARKER.strip()} line in wrk output:\n{done.stdout}")
    raw = json.loads(line.removeprefix(_WRK_MARKER))
    duration = raw["duration_us"] / 1e6
    latencies = {f"{k}_ms": raw[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")}
    return {
        "requests": raw["requests"],
        "duration_s": round(duration, 3),
        "requests_per_s": round(raw["requests"] / duration, 1),
        **latencies,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "errors": {k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")},
    }


def service_runs(
    database: str, url: str, redis: RedisServer, args: argparse.Namespace, workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per delay, a ``python -m dealership`` process per cache mode, side by side: the HTTP cells, and at +0 ms
    the wrk rows (cache on: the seed's L1 + L2; off: no cache)."""
    cells, rows = [], []
    for delay in args.delays_ms:
        http, load = "http" in args.paths, "wrk" in args.paths and delay == 0
        if not (http or load):
            continue
        with redis.sync_client() as client:
            client.flushall()
        with contextlib.ExitStack() as stack:
            subjects, services = [], {}
            for mode in MODES:
                env = {
                    "Configuration": f"127.0.0.1:{redis.port}",
                    "ServiceName": f"{SERVICE_NAME}-{mode.replace('+', '')}",
                }
                env |= {"none": {"Enabled": "false"}, "l2": {"MemoryCache__Enabled": "false"}}.get(mode, {})
                service = ServiceProcess(
                    f"{database}-{mode}-{delay:g}ms", database_url=url, log_dir=workdir, cache_env=env,
                    seed_count=SEED_COUNT, startup_timeout=60.0, module="benchmarks.bench_service",
                    args=["serve", str(delay), "--log-level", "warning"],
                )  # fmt: skip
                stack.enter_context(service)
                client = stack.enter_context(httpx.Client(base_url=service.base_url, timeout=30.0))
                services[mode] = service, client

                # A blocking client on purpose: requests are sequential, nothing else runs on this loop, and it
                # adds less of its own time to each measurement than httpx.AsyncClient would.
                async def send(op: str, i: int, client: httpx.Client = client) -> None:
                    client.get(OPERATIONS[op][2](i)).raise_for_status()  # noqa: ASYNC212

                async def stats(client: httpx.Client = client) -> dict[str, Any]:
                    body: dict[str, Any] = client.get("/api/cache/stats").json()  # noqa: ASYNC212
                    return body

                subjects.append(Subject(mode, send, stats))
            if http:
                measured = measure_cells("http", database, delay, subjects, args.http_requests, args.cell_seconds)
                cells += asyncio.run(measured)
            for cache, mode in (("on", "l1+l2"), ("off", "none")) if load else ():
                for route in args.routes:
                    labels = {"route": route, "database": database, "cache": cache}
                    rows.append(labels | wrk_route(route, *services[mode], args, workdir))
    return cells, rows


def wrk_route(
    route: str, service: ServiceProcess, client: httpx.Client, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One route under wrk: every path requested once, a warm-up run, then the measured run."""
    print(f"  wrk {service.name:22} {route:6} ...", end=" ", flush=True)
    paths = ROUTES[route][1]
    script = workdir / f"{route}.lua"
    quoted = ", ".join(json.dumps(p) for p in paths)  # JSON strings are Lua literals here
    script.write_text(_LUA_TEMPLATE % {"paths": quoted, "marker": _WRK_MARKER})
    for path in paths:
        client.get(path).raise_for_status()
    run_wrk(service.base_url, script, args, args.warmup)
    before = client.get("/api/cache/stats").json()
    result = run_wrk(service.base_url, script, args, args.duration)
    print(f"{result['requests_per_s']:8.0f} req/s, p50 {result['p50_ms']:.2f} ms", flush=True)
    return result | {"cache_stats": stats_delta(before, client.get("/api/cache/stats").json())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if any(0 < d < 1 for d in args.delays_ms):  # epoll timeouts are whole milliseconds
        raise SystemExit("--delays-ms: 0, or at least 1")
    if set(args.routes) - set(ROUTES):
        raise SystemExit("--routes: by-id,list,search")
    if "wrk" in args.paths and (0 not in args.delays_ms or shutil.which("wrk") is None):
        raise SystemExit("--paths wrk: needs 0 in --delays-ms, and wrk on PATH (`apt-get install -y wrk`)")
    cells: list[dict[str, Any]] = []
    load_rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="hc-bench-service-") as tmp,
        RedisServer() as redis,
        database_urls(args.databases, Path(tmp)) as (urls, skipped),
    ):
        for url in urls.values():
            asyncio.run(prepare_database(url, SEED_COUNT))  # seeded before any delay applies
        for database, url in urls.items():
            if "mediator" in args.paths:
                cells += asyncio.run(mediator_cells(database, url, redis, args))
            http, load = service_runs(database, url, redis, args, Path(tmp))
            cells, load_rows = cells + http, load_rows + load
    results = {}
    if {"mediator", "http"} & set(args.paths):
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
        rows = comparison_rows(cells)
        document = {"settings": settings, "skipped": skipped, "rows": rows, "target": target(rows), "cells": cells}
        results["latency_table"] = document
    if "wrk" in args.paths:
        settings = {
            "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency -s <route>.lua",
            "warmup_seconds": args.warmup,
            "seed_count": SEED_COUNT,
            "server": "one uvicorn worker (python -m dealership), asyncio loop, h11, access log off",
            "routes": {name: ROUTES[name][0] for name in args.routes},
            "note": "2 CPU cores shared by wrk, the service, redis-server and PostgreSQL",
        }
        results["service_load"] = {"settings": settings, "skipped": skipped, "rows": load_rows}
    return results


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


def latency_tables(document: Mapping[str, Any]) -> list[Table]:
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


def load_tables(document: Mapping[str, Any]) -> list[Table]:
    """The load table of a ``service_load.json`` document, with each route's req/s cache on over cache off."""
    off = {(r["route"], r["database"]): r["requests_per_s"] for r in document["rows"] if r["cache"] == "off"}
    order = {"by-id": 0, "list": 1, "search": 2, "sqlite": 0, "postgresql": 1, "on": 0, "off": 1}
    rows = []
    for row in sorted(document["rows"], key=lambda r: (order[r["route"]], order[r["database"]], order[r["cache"]])):
        base = off.get((row["route"], row["database"])) if row["cache"] == "on" else None
        ratio = row["requests_per_s"] / base if base else None
        rows.append(
            [
                document["settings"]["routes"][row["route"]], row["database"], row["cache"],
                f"{row['requests_per_s']:,.0f}", f"{row['p50_ms']:.1f} ms", f"{row['p99_ms']:.1f} ms",
                f"**{ratio:.1f}x**" if ratio is not None else "", sum(row["errors"].values()),
            ]
        )  # fmt: skip
    headers = ["route", "database", "cache", "req/s", "p50", "p99", "cache on / off (req/s)", "errors"]
    skipped = f"Skipped: {document['skipped']}." if document["skipped"] else ""
    return [Table(headers, rows, note=skipped)]


def tables(document: Mapping[str, Any]) -> list[Table]:
    """The tables of either result file this module writes."""
    return load_tables(document) if document["benchmark"] == "service_load" else latency_tables(document)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return
    bench_main("service", argv, __doc__, run, tables, OPTIONS, per_file=True)


if __name__ == "__main__":
    main()
