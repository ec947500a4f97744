"""Load on the real service (issue 6): ``wrk`` against ``python -m dealership``, cache on and off, on SQLite and
PostgreSQL (skipped if 127.0.0.1:5432 is down). Needs ``wrk`` on PATH. Method and caveats: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import SEARCH_TERMS, SEED_COUNT, Table, bench_main, database_urls, stats_delta
from harness.redis_server import RedisServer
from harness.service import ServiceProcess

LIST_PAGES = 50
OPTIONS = {
    "duration": (10, "seconds per measured wrk run"),
    "warmup": (2, "seconds of wrk warm-up per route"),
    "threads": (2, "wrk threads"),
    "connections": (32, "wrk connections"),
    "ids": (500, "the by-id route spreads over ids 1..IDS"),
    "databases": (["sqlite", "postgresql"], "comma-separated: sqlite,postgresql"),
    "routes": (["by-id", "list", "search"], "comma-separated: by-id,list,search"),
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


def routes(ids: int) -> dict[str, tuple[str, list[str]]]:
    """The routes measured: name -> (description, the request targets wrk cycles through)."""
    return {
        "by-id": (f"GET /api/dealership/{{id}}, id in 1..{ids}", [f"/api/dealership/{i}" for i in range(1, ids + 1)]),
        "list": (
            f"GET /api/dealership?page={{1..{LIST_PAGES}}}&size=10",
            [f"/api/dealership?page={p}&size=10" for p in range(1, LIST_PAGES + 1)],
        ),
        "search": (
            f"GET /api/dealership/search?term={{{len(SEARCH_TERMS)} brands}}&size=10",
            [f"/api/dealership/search?term={t}&size=10" for t in SEARCH_TERMS],
        ),
    }


def run_wrk(base_url: str, script: Path, args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    """Run wrk once (killed if it has not exited 30 s after ``seconds``); its figures, latencies in ms."""
    options = [f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout=5s", "--latency"]
    done = subprocess.run(
        ["wrk", *options, "-s", str(script), base_url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    line = next((x for x in done.stdout.splitlines() if x.startswith(_WRK_MARKER)), None)
    if line is None:
        raise ValueError(f"no {_WRK_MARKER.strip()} line in wrk output:\n{done.stdout}")
    raw = json.loads(line.removeprefix(_WRK_MARKER))
    duration = raw["duration_us"] / 1e6
    ms = {f"{k}_ms": raw[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")}
    return {
        "requests": raw["requests"],
        "duration_s": round(duration, 3),
        "requests_per_s": round(raw["requests"] / duration, 1),
        **ms,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "errors": {k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")},
    }


def measure_database(
    database: str, url: str, redis: RedisServer, args: argparse.Namespace, scripts: dict[str, Path], logs: Path
) -> list[dict[str, Any]]:
    """Every route with the cache on and off against one database (one service process per mode)."""
    rows = []
    for mode, extra in (("on", {}), ("off", {"Enabled": "false"})):
        with redis.sync_client() as client:
            client.flushall()  # our private server: each mode starts from an empty L2
        env = {"Configuration": f"127.0.0.1:{redis.port}", **extra}
        service = ServiceProcess(
            f"{database}-cache-{mode}", database_url=url, log_dir=logs, cache_env=env, seed_count=SEED_COUNT,
            startup_timeout=60.0,
        )  # fmt: skip
        with service, httpx.Client(base_url=service.base_url, timeout=30.0) as client:
            for route in args.routes:
                print(f"  {database:10} cache {mode:3} {route:6} ...", end=" ", flush=True)
                for path in routes(args.ids)[route][1]:
                    client.get(path).raise_for_status()
                run_wrk(service.base_url, scripts[route], args, args.warmup)
                before = client.get("/api/cache/stats").json()
                result = run_wrk(service.base_url, scripts[route], args, args.duration)
                delta = stats_delta(before, client.get("/api/cache/stats").json())
                print(f"{result['requests_per_s']:8.0f} req/s, p50 {result['p50_ms']:.2f} ms", flush=True)
                rows.append({"route": route, "database": database, "cache": mode, **result, "cache_stats": delta})
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per route and database: throughput with the cache on divided by throughput with it off."""
    index = {(r["route"], r["database"], r["cache"]): r for r in rows}
    return [
        {
            "route": route,
            "database": database,
            "throughput_ratio": round(row["requests_per_s"] / off["requests_per_s"], 2),
            "p50_ratio": round(off["p50_ms"] / row["p50_ms"], 2) if row["p50_ms"] else None,
        }
        for (route, database, cache), row in index.items()
        if cache == "on" and (off := index.get((route, database, "off")))
    ]


def tables(document: Mapping[str, Any]) -> list[Table]:
    """The load table of a ``service_load.json`` document."""
    ratio_of = {(r["route"], r["database"]): r["throughput_ratio"] for r in document["ratios"]}
    order = {"by-id": 0, "list": 1, "search": 2, "sqlite": 0, "postgresql": 1, "on": 0, "off": 1}
    rows = []
    for row in sorted(document["rows"], key=lambda r: (order[r["route"]], order[r["database"]], order[r["cache"]])):
        ratio = ratio_of.get((row["route"], row["database"])) if row["cache"] == "on" else None
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    if set(args.routes) - set(routes(1)) or not 1 <= args.ids <= SEED_COUNT:
        raise SystemExit("--routes: by-id,list,search; --ids 1..2000")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk was not found on PATH; install it with `apt-get install -y wrk` (Debian/Ubuntu).")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-load-") as tmp, RedisServer() as redis:
        workdir, scripts = Path(tmp), {}
        for name in args.routes:
            paths = ", ".join(json.dumps(p) for p in routes(args.ids)[name][1])  # JSON strings are Lua literals here
            scripts[name] = workdir / f"{name}.lua"
            scripts[name].write_text(_LUA_TEMPLATE % {"paths": paths, "marker": _WRK_MARKER})
        with database_urls(args.databases, workdir) as (urls, skipped):
            for database, url in urls.items():
                rows += measure_database(database, url, redis, args, scripts, workdir)
    settings = {
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency -s <route>.lua",
        "warmup_seconds": args.warmup,
        "seed_count": SEED_COUNT,
        "server": "one uvicorn worker (python -m dealership), asyncio loop, h11, access log off",
        "routes": {name: routes(args.ids)[name][0] for name in args.routes},
        "note": "2 CPU cores shared by wrk, the service, redis-server and PostgreSQL",
    }
    return {"settings": settings, "skipped": skipped, "rows": rows, "ratios": with_ratios(rows)}


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("service_load", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
