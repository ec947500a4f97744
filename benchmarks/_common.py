"""The benchmark toolkit: batch timing, percentiles, tables, the sample value, and result files. Every benchmark
uses these; none imports another's module. How timing works: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime
import functools
import gc
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dealership.dto import DealershipDto, StateProvinceDto, ZipCodeDto
from dealership.seed import generate
from harness.postgres import PostgresUnavailableError, check_postgres_sync, postgres_database
from hybridcache import CacheSettings, HybridCache

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
_PACKAGES = ("hybridcache", "redis", "hiredis", "pydantic", "pydantic-core", "orjson")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; 0.5 is the median; NaN when empty."""
    if not values:
        return math.nan
    if fraction == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(
    values: Sequence[float], stats: Sequence[str], *, unit: str = "", scale: float = 1.0, digits: int = 1
) -> dict[str, float]:
    """``{"<stat>_<unit>": value * scale}`` per stat ("median", "pNN", "min", "max", "mean", "count")."""

    aggregate: dict[str, Callable[[Sequence[float]], float]] = {"min": min, "max": max, "mean": statistics.fmean}
    out: dict[str, float] = {}
    for stat in stats:
        if stat == "count":
            out["count"] = len(values)
        else:
            fraction = 0.5 if stat == "median" else int(stat[1:]) / 100 if stat not in aggregate else None
            value = aggregate[stat](values) if fraction is None else percentile(values, fraction)
            out[f"{stat}_{unit}" if unit else stat] = round(value * scale, digits)
    return out


#: A batch: ``run(ops)`` performs the operation ``ops`` times (sync or async).
Batch = Callable[[int], None] | Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``run(ops)`` does ``ops`` operations; ``ops`` is sized so a batch takes ~10-50 ms."""

    name: str
    run: Batch
    ops: int


@dataclass
class Timing:
    """One variant's wall and CPU nanoseconds per operation, one sample per batch, in round order."""

    name: str
    ops: int
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        figures = summarize(self.samples, ("median", "p10", "p90", "min"), unit="ns")
        return figures | {
            "cpu_median_ns": round(statistics.median(self.cpu_samples), 1),
            "batches": len(self.samples),
            "ops_per_batch": self.ops,
        }


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of ``numerator / denominator`` in the same round (docs/benchmarks.md)."""
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples, strict=True))


async def _time_batch(variant: Variant, timing: Timing | None = None) -> None:
    """Time one batch of ``variant`` (GC paused, as ``timeit`` does) into ``timing``, per operation."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        cpu_start, start = time.process_time_ns(), time.perf_counter_ns()
        result = variant.run(variant.ops)
        if inspect.isawaitable(result):
            await result
        elapsed, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu_start
    finally:
        if enabled:
            gc.enable()
    if timing is not None:
        timing.samples.append(elapsed / variant.ops)
        timing.cpu_samples.append(cpu / variant.ops)


async def measure(
    variants: Sequence[Variant], *, rounds: int, max_seconds: float, warmup_rounds: int = 2
) -> dict[str, Timing]:
    """Time every variant round-robin for up to ``rounds`` rounds or ``max_seconds``."""
    for _ in range(warmup_rounds):
        for variant in variants:
            await _time_batch(variant)
    gc.collect()
    timings = {v.name: Timing(v.name, v.ops) for v in variants}
    deadline = time.monotonic() + max_seconds
    for _ in range(max(rounds, 1)):
        for variant in variants:
            await _time_batch(variant, timings[variant.name])
        if time.monotonic() >= deadline:
            break
    return timings


def looped(op: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[None]]:
    """A batch of ``ops`` sequential awaits of ``op`` (the loop's own cost is part of the figure)."""

    async def batch(ops: int) -> None:
        for _ in range(ops):
            await op()

    return batch


def zipf(n: int, alpha: float, rng: random.Random) -> Callable[[], int]:
    """A sampler of ranks 0..n-1 with probability proportional to ``1 / (rank + 1) ** alpha`` (inverse CDF)."""
    cumulative = list(itertools.accumulate(1.0 / (k**alpha) for k in range(1, n + 1)))
    total, draw, last = cumulative[-1], rng.random, n - 1
    return lambda: min(bisect.bisect_left(cumulative, draw() * total), last)


def format_ns(ns: float) -> str:
    """``812 ns`` / ``1.43 µs`` / ``61.2 µs`` / ``3.10 ms``: three significant figures in a readable unit."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.3g} µs"
    return f"{ns / 1_000_000:.3g} ms"


def fmt(value: Any, digits: int | None = None) -> str:
    """A figure as a table cell: ``-`` for None/NaN, thousands separators, ``digits`` (else 3 significant)."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return (
            f"{value:,.{digits}f}" if digits is not None else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        )
    return str(value)


def ratio(value: float | None, reference: float | None, digits: int = 1) -> str:
    """``value / reference`` as ``1.2x``, or ``-``."""
    return "-" if value is None or not reference else f"{value / reference:.{digits}f}x"


@dataclass
class Table:
    """A titled table with a note, as console text or Markdown (``make_report``); first column left-aligned."""

    headers: Sequence[str]
    rows: Sequence[Sequence[object]] = ()
    title: str = ""
    note: str = ""

    def text(self) -> str:
        cells = [[str(h) for h in self.headers], *([str(c) for c in row] for row in self.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: Sequence[str]) -> str:
            return "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

        body = [line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])]
        return "\n".join(filter(None, [self.title, *body, self.note]))

    def markdown(self) -> str:
        def row(cells: Sequence[object]) -> str:
            return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        align = "|" + "|".join([":---"] + ["---:"] * (len(self.headers) - 1)) + "|"
        body = [row(self.headers), align, *(row(r) for r in self.rows)]
        return "\n\n".join(filter(None, [self.title, "\n".join(body), self.note]))


SEED_COUNT = 2000  # the service's default seed count: dealerships seeded into its database; ids beyond reuse rows


@functools.cache
def _seed_rows() -> list[tuple[dict[str, object], ZipCodeDto]]:
    data = generate(SEED_COUNT)
    states = [StateProvinceDto(id=i + 1, code=s["code"], name=s["name"]) for i, s in enumerate(data.states)]
    zips = [
        ZipCodeDto(id=i + 1, code=c["code"], city=c["city"], state_province_id=s + 1, state_province=states[s])
        for i, (s, c) in enumerate(data.zip_codes)
    ]
    return [(columns, zips[zip_index]) for zip_index, columns in data.dealerships]


def dealership_dto(dealership_id: int = 42) -> DealershipDto:
    """The value every benchmark caches: one dealership of the service's seed, as the API returns it."""
    rows = _seed_rows()
    columns, zip_code = rows[(dealership_id - 1) % len(rows)]
    return DealershipDto(
        id=dealership_id,
        name=str(columns["name"]),
        business_address=str(columns["business_address"]),
        business_zip_code_id=zip_code.id,
        unique_key=columns["unique_key"],
        business_zip_code=zip_code,
    )


async def connected(stack: contextlib.AsyncExitStack, settings: CacheSettings, **options: Any) -> HybridCache:
    """A started cache, closed with ``stack``, whose invalidation subscription is confirmed (when it has Redis)."""
    cache = await stack.enter_async_context(HybridCache(settings, **options))
    if not await cache.wait_until_connected(10.0):
        raise RuntimeError(f"{settings.service_name}: the invalidation subscription was not confirmed in 10 s")
    return cache


@contextlib.contextmanager
def database_urls(names: Sequence[str], workdir: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """``({name: url}, {name: why skipped})``: a SQLite file, a throwaway PostgreSQL database if it answers."""
    urls = {"sqlite": f"sqlite+aiosqlite:///{workdir / 'dealership.db'}"} if "sqlite" in names else {}
    skipped: dict[str, str] = {}
    if "postgresql" in names:
        try:
            check_postgres_sync()
        except PostgresUnavailableError as exc:
            skipped["postgresql"] = str(exc)
    if "postgresql" not in names or skipped:
        yield urls, skipped
        return
    with postgres_database(prefix="hc_bench_") as url:
        yield {**urls, "postgresql": url}, skipped


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now: the figures are only as quiet as the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def package_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _run(*command: str) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, load, OS, Python, redis-server, library versions, the git commit."""
    cpu = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    dirty = _run("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "load_average": load_average(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _run("redis-server", "--version"),
        "packages": package_versions(*_PACKAGES),
        "git_commit": _run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") + ("-dirty" if dirty else ""),
    }


def write_results(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``: the payload plus the command, the machine and the time."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": shlex.join(sys.orig_argv),  # exactly as typed
        "generated_at": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "machine": machine_info(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def bench_main(
    name: str,
    argv: Sequence[str] | None,
    doc: str | None,
    work: Callable[[argparse.Namespace], Any],
    tables: Callable[[dict[str, Any]], Sequence[Table]],
    options: Mapping[str, tuple[Any, str]],
    *,
    per_file: bool = False,
) -> dict[str, Any]:
    """Parse ``argv`` (each ``options`` entry ``name: (default, help)`` is an option ``--name`` of its default's
    type, a list given comma-separated), run ``work(args)`` (awaited when async), print ``tables`` and write
    ``results/<name>.json`` with the load average at the start and the elapsed seconds; the payload. With
    ``per_file``, ``work`` returns ``{file name: payload}`` and each is written to ``results/<file name>.json``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.bench_{name}", description=doc)
    for option, (default, text) in options.items():
        kind = type(default)
        if kind is list:
            kind = functools.partial(lambda item, text: [item(x) for x in text.split(",") if x], type(default[0]))
        parser.add_argument(
            "--" + option.replace("_", "-"), type=kind, default=default, help=f"{text} (default {default})"
        )
    args = parser.parse_args(argv)
    load_at_start, started = load_average(), time.monotonic()
    payload = work(args)
    if inspect.isawaitable(payload):
        payload = asyncio.run(payload)
    elapsed = round(time.monotonic() - started, 1)
    for file, result in (payload if per_file else {name: payload}).items():
        path = write_results(file, {**result, "load_average_at_start": load_at_start, "elapsed_seconds": elapsed})
        print("\n\n".join(t.text() for t in tables(json.loads(path.read_text()))))  # what make_report shows
        print(f"\nwrote {path}\n")
    print(f"{elapsed:.0f} s")
    return dict(payload)
