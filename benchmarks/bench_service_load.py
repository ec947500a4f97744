"""Load on the real service (issue 6, acceptance 5): ``wrk`` against ``python -m dealership`` under uvicorn,
with the cache on and with ``TheTechLoopCache__Enabled=false``, on SQLite and on PostgreSQL.

Run: ``.venv/bin/python -m benchmarks.bench_service_load`` (about 3 minutes; ``--duration``, ``--warmup``,
``--connections``, ``--threads``, ``--ids``, ``--databases``, ``--routes``). Needs ``wrk`` on PATH
(``apt-get install -y wrk``), ``redis-server`` (``make redis-server``) and, for the PostgreSQL rows, a server on
127.0.0.1:5432 accepting user ``postgres`` (without one those rows are skipped with a note). Prints a table and
writes ``benchmarks/results/service_load.json``.

What runs: a private redis-server on a free loopback port; per database (a SQLite file in a temporary folder, a
throwaway PostgreSQL database that is dropped afterwards) and per cache mode, one service process
(``tests/e2e/harness.ServiceProcess``, 2000 seeded dealerships, access log off). Per route: every path requested
once in order (with the cache on, every key is then cached), a warm-up ``wrk`` run, then the measured run
(``wrk -t2 -c32 -d10s`` by default). The by-id route spreads ids over 1..500 with a Lua script (each thread walks
the ids in its own order), the list route pages 1..50 of 10, the search route cycles brand names (10 results
each); the script's ``done`` hook prints the exact figures as one JSON line. The service's ``/api/cache/stats``
is read around each measured run, so the report shows what the cache did.

Caveats: the machine has 2 cores shared by wrk, the single uvicorn worker (asyncio loop, h11: no uvloop or
httptools installed), redis-server and PostgreSQL, so throughput is bounded by CPU contention and the figures are
this box's, not the code's ceiling. wrk is closed-loop: with 32 connections each waiting for its answer,
p50 is roughly 32 / throughput, i.e. latency here mostly measures queueing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import format_table, write_results
from harness.postgres import PostgresUnavailableError, check_postgres_sync, postgres_database
from harness.redis_server import RedisServer
from harness.service import ServiceProcess

SEED_COUNT = 2000
#: Brand names each matching at least 10 of the 2000 seeded dealerships (the search route's terms).
SEARCH_TERMS = ("ford", "toyota", "honda", "chevrolet", "nissan", "hyundai", "kia", "subaru", "mazda", "jeep")
LIST_PAGES = 50
WRK_INSTALL_HINT = "wrk was not found on PATH; install it with `apt-get install -y wrk` (Debian/Ubuntu)."
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


@dataclass(frozen=True)
class Route:
    """One route under load: ``paths`` are the request targets wrk cycles through."""

    name: str
    description: str
    paths: tuple[str, ...]


def routes(ids: int) -> dict[str, Route]:
    """The routes measured, keyed by name; ``by-id`` spreads over dealership ids ``1..ids``."""
    return {
        "by-id": Route(
            "by-id",
            f"GET /api/dealership/{{id}}, id in 1..{ids}",
            tuple(f"/api/dealership/{i}" for i in range(1, ids + 1)),
        ),
        "list": Route(
            "list",
            f"GET /api/dealership?page={{1..{LIST_PAGES}}}&size=10",
            tuple(f"/api/dealership?page={p}&size=10" for p in range(1, LIST_PAGES + 1)),
        ),
        "search": Route(
            "search",
            f"GET /api/dealership/search?term={{{len(SEARCH_TERMS)} brands}}&size=10",
            tuple(f"/api/dealership/search?term={t}&size=10" for t in SEARCH_TERMS),
        ),
    }


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; ``errors`` counts socket errors, timeouts and non-2xx answers."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]


def wrk_binary() -> str:
    """Path of ``wrk``; exits with the install command when it is missing."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_INSTALL_HINT)
    return path


def lua_script(route: Route) -> str:
    """The wrk Lua script that requests ``route.paths`` and reports its figures as JSON."""
    paths = ", ".join(json.dumps(p) for p in route.paths)  # JSON string literals are valid Lua literals here
    return _LUA_TEMPLATE % {"paths": paths, "marker": _WRK_MARKER}


def parse_wrk(output: str) -> WrkResult:
    """The figures of a wrk run from its standard output (the ``done`` hook's JSON line)."""
    for line in output.splitlines():
        if line.startswith(_WRK_MARKER):
            raw: dict[str, Any] = json.loads(line.removeprefix(_WRK_MARKER))
            break
    else:
        raise ValueError(f"no {_WRK_MARKER.strip()} line in wrk output:\n{output}")
    duration_s = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        duration_s=round(duration_s, 3),
        requests_per_s=round(raw["requests"] / duration_s, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
        errors={k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")},
    )


def run_wrk(
    base_url: str, script: Path, *, threads: int, connections: int, duration_s: int, timeout_s: float = 5.0
) -> WrkResult:
    """Run wrk once against ``base_url`` with ``script`` (bounded: wrk stops after ``duration_s``; the process is
    killed if it has not exited 30 s after that)."""
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(script),
        base_url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


# ------------------------------------------------------------------------------------------ databases


@contextmanager
def database_urls(names: Sequence[str], workdir: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """``({name: url}, {name: why skipped})`` for ``sqlite`` (a file in ``workdir``) and ``postgresql`` (a
    throwaway database, dropped on exit; skipped when the server is unreachable)."""
    urls: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if "sqlite" in names:
        urls["sqlite"] = f"sqlite+aiosqlite:///{workdir / 'dealership.db'}"
    if "postgresql" not in names:
        yield urls, skipped
        return
    try:
        check_postgres_sync()
    except PostgresUnavailableError as exc:
        skipped["postgresql"] = str(exc)
        yield urls, skipped
        return
    with postgres_database(prefix="hc_bench_") as url:
        urls["postgresql"] = url
        yield urls, skipped


def cache_stats(base_url: str) -> dict[str, Any]:
    """The service's ``/api/cache/stats``."""
    response = httpx.get(f"{base_url}/api/cache/stats", timeout=10.0)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def prime(base_url: str, route: Route) -> None:
    """Request every path of ``route`` once, in order (with the cache on: every key is then cached)."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for path in route.paths:
            client.get(path).raise_for_status()


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """What the cache did between two ``/api/cache/stats`` readings (hits by level, misses, handler runs)."""
    return {k: int(after[k]) - int(before[k]) for k in ("l1Hits", "l2Hits", "misses", "handlerRuns")}


# ------------------------------------------------------------------------------------------ the run


def measure_database(
    database: str, url: str, redis: RedisServer, args: argparse.Namespace, scripts: dict[str, Path], logs: Path
) -> list[dict[str, Any]]:
    """Every route with the cache on and off against one database; one service process per cache mode."""
    rows: list[dict[str, Any]] = []
    all_routes = routes(args.ids)
    modes = {
        "on": {"Configuration": f"127.0.0.1:{redis.port}"},
        "off": {"Configuration": f"127.0.0.1:{redis.port}", "Enabled": "false"},
    }
    for mode, cache_env in modes.items():
        with redis.sync_client() as client:
            client.flushall()  # our private server: each mode starts from an empty L2
        service = ServiceProcess(
            f"{database}-cache-{mode}",
            database_url=url,
            log_dir=logs,
            cache_env=cache_env,
            seed_count=SEED_COUNT,
            startup_timeout=60.0,
        )
        with service:
            for route in args.routes:
                print(f"  {database:10} cache {mode:3} {route:6} ...", end=" ", flush=True)
                common = {"threads": args.threads, "connections": args.connections}
                prime(service.base_url, all_routes[route])
                run_wrk(service.base_url, scripts[route], duration_s=args.warmup, **common)
                before = cache_stats(service.base_url)
                result = run_wrk(service.base_url, scripts[route], duration_s=args.duration, **common)
                delta = stats_delta(before, cache_stats(service.base_url))
                print(f"{result.requests_per_s:8.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms")
                rows.append(
                    {"route": route, "database": database, "cache": mode, **asdict(result), "cache_stats": delta}
                )
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per route and database: throughput with the cache on divided by throughput with it off."""
    index = {(r["route"], r["database"], r["cache"]): r for r in rows}
    ratios = []
    for (route, database, cache), row in index.items():
        if cache != "on" or (route, database, "off") not in index:
            continue
        off = index[(route, database, "off")]
        ratios.append(
            {
                "route": route,
                "database": database,
                "throughput_ratio": round(row["requests_per_s"] / off["requests_per_s"], 2),
                "p50_ratio": round(off["p50_ms"] / row["p50_ms"], 2) if row["p50_ms"] else None,
            }
        )
    return ratios


def print_table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    ratio_of = {(r["route"], r["database"]): r["throughput_ratio"] for r in ratios}
    table = []
    for row in rows:
        ratio = ratio_of.get((row["route"], row["database"])) if row["cache"] == "on" else None
        errors = sum(row["errors"].values())
        table.append(
            [
                row["route"],
                row["database"],
                row["cache"],
                f"{row['requests_per_s']:.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{ratio:.1f}x" if ratio is not None else "",
                errors,
            ]
        )
    headers = ["route", "database", "cache", "req/s", "p50 ms", "p99 ms", "on/off req/s", "errors"]
    print(format_table(headers, table))


def markdown_table(document: dict[str, Any]) -> str:
    """The load table of a ``service_load.json`` document, as Markdown."""
    ratio_of = {(r["route"], r["database"]): r["throughput_ratio"] for r in document["ratios"]}
    lines = [
        "| route | database | cache | req/s | p50 | p99 | cache on / off (req/s) | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {"by-id": 0, "list": 1, "search": 2, "sqlite": 0, "postgresql": 1, "on": 0, "off": 1}
    for row in sorted(document["rows"], key=lambda r: (order[r["route"]], order[r["database"]], order[r["cache"]])):
        ratio = ratio_of.get((row["route"], row["database"])) if row["cache"] == "on" else None
        lines.append(
            f"| {document['settings']['routes'][row['route']]} | {row['database']} | {row['cache']} "
            f"| {row['requests_per_s']:,.0f} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms "
            f"| {f'**{ratio:.1f}x**' if ratio is not None else ''} | {sum(row['errors'].values())} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up per route (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--ids", type=int, default=500, help="by-id route spreads over ids 1..IDS (default 500)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--routes", default="by-id,list,search", help="comma-separated: by-id,list,search")
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    all_routes = routes(args.ids)
    if unknown := [d for d in databases if d not in ("sqlite", "postgresql")]:
        parser.error(f"unknown database(s) {unknown}")
    if unknown := [r for r in args.routes if r not in all_routes]:
        parser.error(f"unknown route(s) {unknown}")
    if not 1 <= args.duration <= 60 or not 0 < args.warmup <= 30 or not 1 <= args.ids <= SEED_COUNT:
        parser.error("--duration must be 1..60, --warmup 1..30, --ids 1..2000")
    wrk_binary()

    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-load-") as tmp, RedisServer() as redis:
        workdir = Path(tmp)
        scripts = {}
        for name in args.routes:
            scripts[name] = workdir / f"{name}.lua"
            scripts[name].write_text(lua_script(all_routes[name]))
        with database_urls(databases, workdir) as (urls, skipped):
            for name, reason in skipped.items():
                print(f"  {name}: skipped: {reason}")
            for database, url in urls.items():
                rows.extend(measure_database(database, url, redis, args, scripts, workdir))
    ratios = with_ratios(rows)
    print()
    print_table(rows, ratios)
    elapsed = time.monotonic() - started
    path = write_results(
        "service_load",
        {
            "settings": {
                "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency -s <route>.lua",
                "warmup_seconds": args.warmup,
                "seed_count": SEED_COUNT,
                "server": "one uvicorn worker (python -m dealership), asyncio loop, h11, access log off",
                "routes": {name: all_routes[name].description for name in args.routes},
                "note": "2 CPU cores shared by wrk, the service, redis-server and PostgreSQL",
            },
            "load_average_at_start": load_at_start,
            "skipped": skipped,
            "rows": rows,
            "ratios": ratios,
            "elapsed_seconds": round(elapsed, 1),
        },
    )
    print(f"\n{elapsed:.0f} s; wrote {path}")
    from benchmarks.bench_latency_table import write_doc  # that module imports this one

    print(f"wrote {write_doc()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
