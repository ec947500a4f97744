"""The seed's "Latency Comparison" table, measured (issue 7): single entity, search (10 results) and list (50
results) with no cache / L2 only / L1+L2, through the mediator pipeline and through HTTP, on SQLite and
PostgreSQL, with a simulated database round trip of 0, 1 and 10 ms added to every SQL statement.

Run: ``.venv/bin/python -m benchmarks.bench_latency_table`` (about 3 minutes; ``--delays-ms``, ``--databases``,
``--paths``, ``--requests``, ``--http-requests``, ``--cell-seconds``). Needs ``redis-server`` and, for the
PostgreSQL rows, a server on 127.0.0.1:5432 accepting user ``postgres`` (otherwise skipped with a note). Prints
the tables and writes ``benchmarks/results/latency_table.json``.

- **mediator**: in this process, :func:`dealership.bootstrap.bootstrap` builds the service's engine, cache and
  mediator once per cache mode (three side by side per database), and each request is one timed
  ``await mediator.send(query)``.
- **http**: one ``python -m dealership`` uvicorn process per (database, cache mode, delay), the three modes'
  processes running side by side, started through this module's ``serve`` command (the service plus the
  simulated round trip); an ``httpx.Client`` in this process sends the requests one after another over a
  kept-alive connection. Client time is included.
- **cache modes**: no cache = ``Enabled: false`` (every request runs the handler); L2 only =
  ``MemoryCache.Enabled: false`` (every request reads Redis); L1+L2 = the seed's settings. Every key is requested
  once before the timed requests, so the cached columns are steady-state hits; the cache's counters are read
  around each cell and the report says whether every timed request was served as intended (handler / L2 / L1).
- **simulated round trip**: a SQLAlchemy ``before_cursor_execute`` listener that awaits ``asyncio.sleep(delay)``
  before each statement. The listener is synchronous, but SQLAlchemy's asyncio layer runs it inside the greenlet
  of the awaiting call, so ``sqlalchemy.util.await_`` suspends only that request: the event loop keeps serving
  others. One sleep per SQL statement (a by-id read or a search is 1 statement, a list page is 2: the page and the
  count); BEGIN, ROLLBACK and the pool's pre-ping are not delayed, so a real remote database at that distance
  costs more than this. Cached hits never reach the database, so the delay only appears in the no-cache column.
- **figures**: the median over ``--requests`` (mediator) / ``--http-requests`` (http) timed requests per cell,
  taken in 3 rounds of one batch per cache mode (round-robin: a slow spell of the machine hits all modes alike,
  while each batch runs in its mode's steady state); a batch stops after a third of ``--cell-seconds``, so a cell
  may have fewer (the count is in the JSON, with p90, p99 and the minimum). Every loop is bounded.

Target (issue 7, acceptance 3), reported: a cached single-entity read through the mediator at least 100x faster
than the uncached PostgreSQL path with 10 ms simulated latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.util import await_

from benchmarks._common import format_ns, format_table, write_results
from benchmarks.bench_service_load import SEARCH_TERMS, SEED_COUNT, database_urls, stats_delta
from dealership.bootstrap import ServiceConfig, Services, bootstrap
from dealership.database import prepare_database
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from harness.redis_server import RedisServer
from harness.service import ServiceProcess
from hybridcache import CacheSettings
from hybridcache.cqrs import Request
from hybridcache.settings import MemoryCacheSettings

TARGET_RATIO = 100.0
ROUNDS = 3
MODES = ("none", "l2", "l1+l2")
MODE_LABELS = {"none": "no cache", "l2": "L2 only", "l1+l2": "L1 + L2"}
ENTITY_IDS = range(1, 101)
LIST_PAGES = range(1, 11)
SERVICE_NAME = "dealership-bench"


@dataclass(frozen=True)
class Operation:
    """A row of the seed's table: the mediator request and the HTTP path for the ``i``-th key."""

    name: str
    keys: int
    request: Callable[[int], Request[Any]]
    path: Callable[[int], str]


OPERATIONS = (
    Operation(
        "single entity",
        len(ENTITY_IDS),
        lambda i: GetDealershipById(ENTITY_IDS[i]),
        lambda i: f"/api/dealership/{ENTITY_IDS[i]}",
    ),
    Operation(
        "search (10 results)",
        len(SEARCH_TERMS),
        lambda i: SearchDealerships(SEARCH_TERMS[i], 10),
        lambda i: f"/api/dealership/search?term={SEARCH_TERMS[i]}&size=10",
    ),
    Operation(
        "list (50 results)",
        len(LIST_PAGES),
        lambda i: GetDealershipsList(LIST_PAGES[i], 50),
        lambda i: f"/api/dealership?page={LIST_PAGES[i]}&size=50",
    ),
)


# ---------------------------------------------------------------------------------- simulated round trip

_delay_seconds = 0.0
#: How many simulated round trips ran in this process, and how long they actually lasted (sleeps overshoot).
simulated = {"sleeps": 0, "slept_ns": 0}


def _simulated_round_trip(*_args: Any) -> None:
    # Runs inside SQLAlchemy's greenlet for the awaiting coroutine: await_ suspends that coroutine only.
    if _delay_seconds > 0:
        start = time.perf_counter_ns()
        await_(asyncio.sleep(_delay_seconds))
        simulated["slept_ns"] += time.perf_counter_ns() - start
        simulated["sleeps"] += 1


@contextlib.contextmanager
def simulated_latency(delay_ms: float) -> Iterator[None]:
    """Within the block, every SQL statement run by any async engine first waits ``delay_ms`` (0: no listener)."""
    global _delay_seconds
    if delay_ms <= 0:
        yield
        return
    _delay_seconds = delay_ms / 1000
    event.listen(Engine, "before_cursor_execute", _simulated_round_trip)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", _simulated_round_trip)
        _delay_seconds = 0.0


def serve(argv: Sequence[str]) -> None:
    """``serve --db-delay-ms MS [dealership options]``: run ``python -m dealership`` with the simulated round trip."""
    from dealership.__main__ import main as dealership_main

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_latency_table serve")
    parser.add_argument("--db-delay-ms", type=float, default=0.0)
    args, rest = parser.parse_known_args(argv)
    with simulated_latency(args.db_delay_ms):
        dealership_main(rest)


class DelayedService(ServiceProcess):
    """The harness's service process, but started as this module's ``serve`` command with ``delay_ms``."""

    def __init__(self, name: str, *, delay_ms: float, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.delay_ms = delay_ms

    def _try_start(self, deadline: float) -> str | None:
        # Same as the harness's start, with our module in front of the service's own command line.
        root = Path(__file__).resolve().parents[1]
        env = self._environment()
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{root}"
        command = [
            sys.executable, "-m", "benchmarks.bench_latency_table", "serve",
            "--db-delay-ms", str(self.delay_ms),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--database-url", self.database_url,
            "--seed-count", str(self.seed_count),
            "--log-level", "warning",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root
            )
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                return f"exited with status {code}; log tail:\n{self.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return None
            time.sleep(0.05)
        self.stop()
        return f"no healthy answer in time; log tail:\n{self.log_tail()}"


# ---------------------------------------------------------------------------------- measuring


def cache_settings(mode: str, redis_port: int) -> CacheSettings:
    """The seed's settings for ``mode``: ``none`` (disabled), ``l2`` (no L1), ``l1+l2``."""
    return CacheSettings(
        configuration=f"127.0.0.1:{redis_port}",
        service_name=f"{SERVICE_NAME}-{mode.replace('+', '')}",
        instance_name="Dealership:",
        enabled=mode != "none",
        memory_cache=MemoryCacheSettings(enabled=mode != "l2"),
    )


def cache_env(mode: str, redis_port: int) -> dict[str, str]:
    """:func:`cache_settings` as ``TheTechLoopCache__…`` variables for a service process."""
    env = {"Configuration": f"127.0.0.1:{redis_port}", "ServiceName": f"{SERVICE_NAME}-{mode.replace('+', '')}"}
    if mode == "none":
        env["Enabled"] = "false"
    if mode == "l2":
        env["MemoryCache__Enabled"] = "false"
    return env


def served_as_intended(mode: str, delta: dict[str, int], count: int) -> bool:
    """Whether every timed request was answered the way ``mode`` means (handler, L2 hit, L1 hit)."""
    expected = {"none": "handlerRuns", "l2": "l2Hits", "l1+l2": "l1Hits"}[mode]
    return delta[expected] == count and sum(delta.values()) == count


@dataclass(frozen=True)
class Subject:
    """One cache mode under test: ``send(op, i)`` makes the ``i``-th request of ``op``; ``stats()`` reads the
    cache's counters (``/api/cache/stats`` camelCase)."""

    mode: str
    send: Callable[[Operation, int], Awaitable[None]]
    stats: Callable[[], Awaitable[dict[str, Any]]]


async def measure_cells(
    path: str, database: str, delay: float, subjects: Sequence[Subject], requests: int, max_seconds: float
) -> list[dict[str, Any]]:
    """Per operation: every subject sends each key once (untimed), then up to ``requests`` timed requests each, in
    up to ``ROUNDS`` rounds of one batch per subject (round-robin, so a slow spell of the machine hits every cache
    mode alike, while each batch runs in its mode's steady state). A batch ends early after ``max_seconds /
    ROUNDS`` and no round starts after ``max_seconds``, so a slow mode gets fewer requests. One cell per
    (operation, subject)."""
    cells = []
    batch = max(1, -(-requests // ROUNDS))
    for op in OPERATIONS:
        for subject in subjects:
            for i in range(op.keys):
                await subject.send(op, i)
        before = {s.mode: await s.stats() for s in subjects}
        times: dict[str, list[float]] = {s.mode: [] for s in subjects}
        deadline = time.monotonic() + max_seconds
        for round_ in range(ROUNDS):
            for subject in subjects:
                batch_deadline = time.monotonic() + max_seconds / ROUNDS
                for i in range(round_ * batch, (round_ + 1) * batch):
                    start = time.perf_counter_ns()
                    await subject.send(op, i % op.keys)
                    times[subject.mode].append((time.perf_counter_ns() - start) / 1000)
                    if time.monotonic() >= batch_deadline:
                        break
            if time.monotonic() >= deadline:
                break
        after = {s.mode: await s.stats() for s in subjects}
        for subject in subjects:
            mode, n = subject.mode, len(times[subject.mode])
            delta = stats_delta(before[mode], after[mode])
            cell = {
                "path": path,
                "database": database,
                "delay_ms": delay,
                "operation": op.name,
                "cache": mode,
                **summary(times[mode]),
                "cache_stats": delta,
                "as_intended": served_as_intended(mode, delta, n),
            }
            if delay > 0 and mode == "none" and "slept_ns" in before[mode]:
                # Only the uncached requests reach the database, so every simulated round trip is theirs: what
                # it really cost each request (a sleep lasts a little longer than asked).
                cell["simulated_per_request"] = {
                    "sleeps": round((after[mode]["sleeps"] - before[mode]["sleeps"]) / n, 2),
                    "slept_us": round((after[mode]["slept_ns"] - before[mode]["slept_ns"]) / n / 1000, 1),
                }
            report(f"{path} {database} +{delay:g} ms {op.name} {MODE_LABELS[mode]}", cell)
            cells.append(cell)
    return cells


def summary(times: list[float]) -> dict[str, Any]:
    cuts = statistics.quantiles(times, n=100) if len(times) > 1 else [times[0]] * 99
    return {
        "median_us": round(statistics.median(times), 1),
        "p90_us": round(cuts[89], 1),
        "p99_us": round(cuts[98], 1),
        "min_us": round(min(times), 1),
        "requests": len(times),
    }


def report(message: str, cell: dict[str, Any]) -> None:
    ok = "" if cell["as_intended"] else f"  NOT AS INTENDED: {cell['cache_stats']}"
    print(f"  {message:58} {cell['median_us']:>10.1f} µs  (n={cell['requests']}){ok}", flush=True)


def _mediator_subject(mode: str, services: Services) -> Subject:
    async def send(op: Operation, i: int) -> None:
        await services.mediator.send(op.request(i))

    async def stats() -> dict[str, Any]:
        return {**services.cache.stats().as_dict(), **simulated}

    return Subject(mode, send, stats)


async def mediator_cells(database: str, url: str, redis: RedisServer, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The mediator cells of one database: the three cache modes bootstrapped side by side in this process."""
    cells = []
    with redis.sync_client() as client:
        client.flushall()
    async with contextlib.AsyncExitStack() as stack:
        subjects = []
        for mode in MODES:
            config = ServiceConfig(url, SEED_COUNT, cache_settings(mode, redis.port))
            services = await stack.enter_async_context(bootstrap(config))
            if mode != "none" and not await services.cache.wait_until_connected(10.0):
                raise RuntimeError("the cache did not connect to the private redis-server")
            subjects.append(_mediator_subject(mode, services))
        for delay in args.delays_ms:
            with simulated_latency(delay):
                cells += await measure_cells("mediator", database, delay, subjects, args.requests, args.cell_seconds)
    return cells


def _http_subject(mode: str, client: httpx.Client) -> Subject:
    # A blocking client on purpose: requests are sequential, nothing else runs on this loop, and the synchronous
    # client adds less of its own time to each measurement than httpx.AsyncClient would.
    async def send(op: Operation, i: int) -> None:
        client.get(op.path(i)).raise_for_status()  # noqa: ASYNC212

    async def stats() -> dict[str, Any]:
        body: dict[str, Any] = client.get("/api/cache/stats").json()  # noqa: ASYNC212
        return body

    return Subject(mode, send, stats)


def http_cells(
    database: str, url: str, redis: RedisServer, args: argparse.Namespace, logs: Path
) -> list[dict[str, Any]]:
    """The HTTP cells of one database: per delay, one service process per cache mode, running side by side."""
    cells = []
    for delay in args.delays_ms:
        with redis.sync_client() as client:
            client.flushall()
        with contextlib.ExitStack() as stack:
            subjects = []
            for mode in MODES:
                service = DelayedService(
                    f"{database}-{mode}-{delay:g}ms",
                    delay_ms=delay,
                    database_url=url,
                    log_dir=logs,
                    cache_env=cache_env(mode, redis.port),
                    seed_count=SEED_COUNT,
                    startup_timeout=60.0,
                )
                stack.enter_context(service)
                client = stack.enter_context(httpx.Client(base_url=service.base_url, timeout=30.0))
                subjects.append(_http_subject(mode, client))
            measuring = measure_cells("http", database, delay, subjects, args.http_requests, args.cell_seconds)
            cells += asyncio.run(measuring)
    return cells


# ---------------------------------------------------------------------------------- tables


def _ms(us: float | None) -> str:
    return "-" if us is None else format_ns(us * 1000)


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


def print_tables(rows: list[dict[str, Any]]) -> None:
    for path in ("mediator", "http"):
        selected = [r for r in rows if r["path"] == path]
        if not selected:
            continue
        print(f"\n{path}: median per request (no-cache column includes the simulated round trip per statement)")
        table = [
            [
                r["operation"],
                r["database"],
                f"+{r['delay_ms']:g} ms",
                _ms(r["none_median_us"]),
                _ms(r["l2_median_us"]),
                _ms(r["l1+l2_median_us"]),
                f"{r['speedup_l2']:g}x" if r["speedup_l2"] else "-",
                f"{r['speedup_l1+l2']:g}x" if r["speedup_l1+l2"] else "-",
            ]
            for r in selected
        ]
        headers = ["operation", "database", "db delay", "no cache", "L2 only", "L1 + L2", "L2 speed-up", "L1 speed-up"]
        print(format_table(headers, table))


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


# ---------------------------------------------------------------------------------- the doc

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "performance-service.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The seed's "Latency Comparison" figures (no cache, L2 only, L1+L2), quoted beside ours.
SEED_FIGURES = {
    "single entity": ("50 ms", "5 ms", "0.5 ms"),
    "search (10 results)": ("100 ms", "8 ms", "1 ms"),
    "list (50 results)": ("200 ms", "15 ms", "2 ms"),
}


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x"


def markdown_tables(document: dict[str, Any]) -> str:
    """The seed-format summary and the full tables of a ``latency_table.json`` document, as Markdown."""
    rows = document["rows"]
    out: list[str] = []
    delays = sorted({r["delay_ms"] for r in rows})
    worst = max(delays)
    headline = [r for r in rows if r["path"] == "mediator" and r["delay_ms"] == worst]
    if headline:
        database = "postgresql" if any(r["database"] == "postgresql" for r in headline) else headline[0]["database"]
        out += [
            f"Through the mediator, {database}, +{worst:g} ms simulated round trip per SQL statement "
            "(the seed's figures in parentheses):",
            "",
            "| operation | no cache | L2 only | L1 + L2 | L1 + L2 vs no cache |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in (r for r in headline if r["database"] == database):
            seed = SEED_FIGURES[r["operation"]]
            out.append(
                f"| {r['operation']} | {_ms(r['none_median_us'])} ({seed[0]}) | {_ms(r['l2_median_us'])} ({seed[1]}) "
                f"| {_ms(r['l1+l2_median_us'])} ({seed[2]}) | **{_x(r['speedup_l1+l2'])}** (100x) |"
            )
        out.append("")
    for path, title in (("mediator", "Through the mediator (in-process)"), ("http", "Through HTTP (uvicorn)")):
        selected = [r for r in rows if r["path"] == path]
        if not selected:
            continue
        out += [
            f"**{title}**: median per request; the simulated round trip is in the *no cache* column only "
            "(cached hits never reach the database).",
            "",
            "| operation | database | db round trip | no cache | L2 only | L1 + L2 | L2 speed-up | L1 + L2 speed-up |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in selected:
            out.append(
                f"| {r['operation']} | {r['database']} | +{r['delay_ms']:g} ms | {_ms(r['none_median_us'])} "
                f"| {_ms(r['l2_median_us'])} | {_ms(r['l1+l2_median_us'])} | {_x(r['speedup_l2'])} "
                f"| {_x(r['speedup_l1+l2'])} |"
            )
        out.append("")
    return "\n".join(out)


def _provenance(document: dict[str, Any]) -> str:
    machine = document["machine"]
    return (
        f"`{document['command']}` — {document['generated_at']}, commit {machine['git_commit']}, "
        f"{machine['cpu']} ({machine['cpus']} CPUs), load average {document.get('load_average_at_start')} at the "
        f"start and {machine['load_average']} at the end, {document['elapsed_seconds']:g} s"
    )


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return None
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _note_figures(latency: dict[str, Any] | None) -> dict[str, str]:
    ranges = {"mediator_hits": "microseconds", "http_hits": "about a millisecond", "slept": "not measured"}
    delayed = [
        c
        for c in (latency or {}).get("cells", ())
        if (c["path"], c["operation"], c["cache"]) == ("mediator", "single entity", "none") and c["delay_ms"] > 0
    ]
    if delayed:
        c = max(delayed, key=lambda c: (c["delay_ms"], c["database"] == "postgresql"))
        ranges["slept"] = (
            f"e.g. +{c['delay_ms']:g} ms on {c['database']}: {_ms(c['simulated_per_request']['slept_us'])} "
            "slept per single-entity read, on average"
        )
    for path in ("mediator", "http"):
        hits = [c["median_us"] for c in (latency or {}).get("cells", ()) if c["path"] == path and c["cache"] == "l1+l2"]
        if hits:
            ranges[f"{path}_hits"] = f"{_ms(min(hits))} to {_ms(max(hits))}"
    return ranges


def render_doc() -> str:
    """``docs/performance-service.md`` from ``results/latency_table.json`` and ``results/service_load.json``."""
    from benchmarks.bench_service_load import markdown_table as load_table

    latency, load = _load("latency_table"), _load("service_load")
    parts = [DOC_HEAD]
    if latency is None:
        parts.append("*No `benchmarks/results/latency_table.json` yet: run the latency benchmark.*\n")
    else:
        goal = latency["target"]
        if goal.get("met") is not None:
            verdict = "met" if goal["met"] else "**not met**"
            parts.append(
                f"**Target** (issue 7, acceptance 3): {goal['description']}: "
                f"{_ms(goal['uncached_median_us'])} / {_ms(goal['cached_median_us'])} = "
                f"**{_x(goal['ratio'])}** (at least {goal['required']:g}x required): {verdict}.\n"
            )
        parts += [markdown_tables(latency), f"Made by {_provenance(latency)}.\n"]
        if latency["skipped"]:
            parts.append(f"Skipped: {latency['skipped']}.\n")
    parts.append(DOC_LOAD_HEAD)
    if load is None:
        parts.append("*No `benchmarks/results/service_load.json` yet: run the load benchmark.*\n")
    else:
        parts += [
            f"`{load['settings']['wrk']}`, {load['settings']['warmup_seconds']} s warm-up per route; "
            f"{load['settings']['server']}.\n",
            load_table(load) + "\n",
            f"Made by {_provenance(load)}.\n",
        ]
        if load["skipped"]:
            parts.append(f"Skipped: {load['skipped']}.\n")
    parts.append(DOC_NOTES.format(**_note_figures(latency)))
    return "\n".join(parts)


def write_doc() -> Path:
    """Regenerate ``docs/performance-service.md`` from the JSON results; returns its path."""
    DOC_PATH.write_text(render_doc())
    return DOC_PATH


DOC_HEAD = """<!-- Generated by benchmarks/bench_latency_table.py (write_doc) from benchmarks/results/latency_table.json
     and benchmarks/results/service_load.json. Edit the generator, not this file. -->
# Performance of the dealership service

Two measurements of the reference service, each from a JSON file in `benchmarks/results/` that records the
command that made it and the machine it ran on. Regenerate this page without measuring:
`.venv/bin/python -m benchmarks.bench_latency_table doc`.

## The seed's latency table, measured

`.venv/bin/python -m benchmarks.bench_latency_table` (issue 7). Single entity (`GetDealershipById`, ids 1-100),
search (`SearchDealerships`, ten brand names, 10 results each) and list (`GetDealershipsList`, pages 1-10 of 50),
for **no cache** (`Enabled: false`: every request runs the handler), **L2 only** (`MemoryCache.Enabled: false`:
every request reads Redis) and **L1 + L2** (the seed's settings), on SQLite and PostgreSQL, through two paths:

- **mediator**: in the benchmark process, `dealership.bootstrap.bootstrap` builds the service's engine, cache
  and mediator, once per cache mode; one timed `await mediator.send(query)` per request.
- **HTTP**: one `python -m dealership` uvicorn process per (database, cache mode, round trip), an `httpx` client
  in the benchmark process sending requests one after another on a kept-alive connection (client time included).

The three cache modes are measured in 3 rounds of one batch each, round-robin, so a slow spell of the machine
hits them alike while each batch runs in its own mode's steady state.

Every key is requested once before the timed requests, so the cached columns are steady-state hits; the
service's cache counters are read around every cell and the JSON says, per cell, that every timed request was
answered as intended (by the handler, by an L2 hit, by an L1 hit).
"""

DOC_LOAD_HEAD = """## Throughput under load

`.venv/bin/python -m benchmarks.bench_service_load` (issue 6, acceptance 5). One `python -m dealership` process
per database and cache mode (cache on; `TheTechLoopCache__Enabled=false`), a private redis-server, `wrk` on the
same machine. Every path is requested once before a warm-up run, so with the cache on the measured run is all
hits (the cache counters in the JSON show it); only reads, so nothing is invalidated during the run.
"""

DOC_NOTES = """## Reading these figures

- **The machine.** 2 CPU cores, shared by the benchmark (or `wrk`), the service process, redis-server and
  PostgreSQL, and by whatever else runs at the time (the load averages above say how busy it was). Contention
  shows most in the tails: wrk's p99 is several times its p50 in every row, cache on or off, and these runs do
  not separate waiting for a CPU from pauses inside the process (such as garbage collection), so read p99 as an
  upper bound. Compare the columns of one run rather than runs with each other; the medians of the uncached
  rows, which need three processes (client, service, database) to get a CPU in turn, move the most between
  runs.
- **The simulated round trip** is an `await asyncio.sleep(delay)` before every SQL statement the service sends
  (a SQLAlchemy `before_cursor_execute` listener; it suspends only the request that runs the statement). A by-id
  read and a search send one statement, a list page two (the page and the count). BEGIN, ROLLBACK and the pool's
  pre-ping are not delayed, so a real database at that distance costs more per uncached request, not less. Each
  sleep lasts a little longer than asked ({slept}; the JSON's `simulated_per_request` has it per mediator cell),
  and a process that sleeps gives its CPU away on a shared 2-core machine and must wait to get it back, so a
  delayed *no cache* figure is often more than the `+0 ms` one plus the delay per statement. The `+0 ms` rows are
  a database on the same machine, reached over loopback (PostgreSQL) or in-process (SQLite).
- **Mediator vs HTTP.** Through the mediator an L1 hit costs {mediator_hits} (median per cell), so its ratio to
  an uncached read is large even against a local database. Over HTTP every request also pays for uvicorn
  (asyncio loop and h11: no uvloop or httptools installed), FastAPI routing, validation and JSON encoding, and
  the client: {http_hits} per L1 hit, whatever the cache does, so HTTP ratios stay small unless the database
  is slow. The seed's "100x faster" holds through the pipeline; end to end it depends on how far
  the database is.
- **Medians** over the requests of each cell (the JSON also has p90, p99, the minimum and the request count; a
  cell stops early when its time budget runs out). GC stays enabled, as in the service.
- **wrk is closed-loop**: each of the 32 connections waits for its answer before sending the next request, so
  p50 is roughly connections / throughput — it measures queueing in one single-threaded server process, not
  the cost of one request; use the latency table above for that. PostgreSQL runs with SQLAlchemy's default pool
  (5 + 10 overflow) for 32 concurrent requests.
- **Hit rates** here are 100% by construction (a fixed key set, primed, no writes); see the hit-rate benchmark
  for a Zipf workload with writes.
"""


# ---------------------------------------------------------------------------------- main


async def _prepare(urls: dict[str, str]) -> None:
    for url in urls.values():
        await prepare_database(url, SEED_COUNT)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-latency-") as tmp, RedisServer() as redis:
        workdir = Path(tmp)
        with database_urls(args.databases, workdir) as (urls, skipped):
            for name, reason in skipped.items():
                print(f"  {name}: skipped: {reason}")
            asyncio.run(_prepare(urls))  # seeded before any delay applies
            for database, url in urls.items():
                if "mediator" in args.paths:
                    cells.extend(asyncio.run(mediator_cells(database, url, redis, args)))
                if "http" in args.paths:
                    cells.extend(http_cells(database, url, redis, args, workdir))
    return {"cells": cells, "skipped": skipped}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    if argv[:1] == ["doc"]:
        print(f"wrote {write_doc()}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays-ms", default="0,1,10", help="simulated round trips per statement (default 0,1,10)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--paths", default="mediator,http", help="comma-separated: mediator,http")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per mediator cell (default 2000)")
    parser.add_argument("--http-requests", type=int, default=300, help="timed requests per HTTP cell (default 300)")
    parser.add_argument("--cell-seconds", type=float, default=3.0, help="time budget per cell (default 3 s)")
    args = parser.parse_args(argv)
    args.delays_ms = [float(d) for d in args.delays_ms.split(",") if d.strip()]
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if any(not (d == 0 or 1 <= d <= 100) for d in args.delays_ms) or not args.delays_ms:
        # asyncio's epoll timeouts are whole milliseconds: a shorter sleep lasts about 1 ms anyway
        parser.error("--delays-ms: 0, or values in 1..100")
    if set(args.databases) - {"sqlite", "postgresql"} or set(args.paths) - {"mediator", "http"}:
        parser.error("--databases: sqlite,postgresql; --paths: mediator,http")
    if args.requests < 1 or args.http_requests < 1 or not 0 < args.cell_seconds <= 60:
        parser.error("--requests and --http-requests must be positive, --cell-seconds in (0, 60]")

    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    measured = run(args)
    rows = comparison_rows(measured["cells"])
    print_tables(rows)
    goal = target(rows)
    if goal["met"] is not None:
        verdict = "met" if goal["met"] else "NOT met"
        print(f"\ntarget: {goal['description']}: {goal['ratio']}x (>= {TARGET_RATIO:g}x required): {verdict}")
    elapsed = time.monotonic() - started
    path = write_results(
        "latency_table",
        {
            "settings": {
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
                "modes": {m: MODE_LABELS[m] for m in MODES},
                "note": "2 CPU cores shared by this process, the service, redis-server and PostgreSQL",
            },
            "load_average_at_start": load_at_start,
            "skipped": measured["skipped"],
            "rows": rows,
            "target": goal,
            "cells": measured["cells"],
            "elapsed_seconds": round(elapsed, 1),
        },
    )
    print(f"\n{elapsed:.0f} s; wrote {path}")
    print(f"wrote {write_doc()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
