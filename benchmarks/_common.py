"""Shared benchmark plumbing: batch timing, plain-text tables, and JSON result files.

Timing method: an operation is timed in *batches* — a loop of ``ops`` repetitions inside one function, measured
with ``time.perf_counter_ns`` around the whole loop — so the clock's own cost is amortised; the figure for a batch
is its elapsed time divided by ``ops`` (loop overhead included, nothing subtracted). Several variants are run
round-robin, one batch each per round, so that a machine whose speed drifts (turbo, a noisy neighbour) affects all
of them alike; the reported figure is the median over rounds. This process's CPU time per operation
(``time.process_time_ns``) is recorded beside the wall time: it leaves out waiting for Redis and being preempted,
so it shows what the code itself costs even on a busy machine. Garbage collection is paused while a batch runs,
as ``timeit`` does. Every loop is bounded by a count and by a time budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_PACKAGES = ("hybridcache", "redis", "hiredis", "pydantic", "pydantic-core", "orjson")

#: A batch: ``run(ops)`` performs the operation ``ops`` times (sync or async).
Batch = Callable[[int], None] | Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``run(ops)`` does ``ops`` operations; ``ops`` is sized so a batch takes ~10-50 ms."""

    name: str
    run: Batch
    ops: int


@dataclass(frozen=True)
class Timing:
    """Per-operation figures of one variant, in nanoseconds, over ``batches`` batches of ``ops`` operations."""

    name: str
    median_ns: float
    p10_ns: float
    p90_ns: float
    min_ns: float
    batches: int
    ops: int
    samples: tuple[float, ...] = ()  # per-op ns of each batch, in round order
    cpu_median_ns: float = 0.0  # this process's CPU time per op: what the code costs, minus waiting and preemption

    @classmethod
    def of(cls, name: str, per_op_ns: Sequence[float], ops: int, cpu_per_op_ns: Sequence[float] = ()) -> Timing:
        deciles = statistics.quantiles(per_op_ns, n=10) if len(per_op_ns) > 1 else [per_op_ns[0]] * 9
        return cls(
            name=name,
            median_ns=statistics.median(per_op_ns),
            p10_ns=deciles[0],
            p90_ns=deciles[-1],
            min_ns=min(per_op_ns),
            batches=len(per_op_ns),
            ops=ops,
            samples=tuple(per_op_ns),
            cpu_median_ns=statistics.median(cpu_per_op_ns) if cpu_per_op_ns else 0.0,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_ns": round(self.median_ns, 1),
            "p10_ns": round(self.p10_ns, 1),
            "p90_ns": round(self.p90_ns, 1),
            "min_ns": round(self.min_ns, 1),
            "cpu_median_ns": round(self.cpu_median_ns, 1),
            "batches": self.batches,
            "ops_per_batch": self.ops,
        }


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of ``numerator / denominator`` measured in the same round.

    Both batches of a round ran back to back, so a slow spell of the machine inflates both alike; this ratio is
    steadier than the ratio of the two medians when the machine is busy.
    """
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples, strict=True))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _time_batch(variant: Variant) -> tuple[float, float]:
    """Wall-clock and CPU nanoseconds per operation for one batch of ``variant``."""
    with _gc_paused():
        cpu_start = time.process_time_ns()
        start = time.perf_counter_ns()
        result = variant.run(variant.ops)
        if inspect.isawaitable(result):
            await result
        elapsed = time.perf_counter_ns() - start
        cpu = time.process_time_ns() - cpu_start
    return elapsed / variant.ops, cpu / variant.ops


async def measure(
    variants: Sequence[Variant], *, rounds: int, max_seconds: float, warmup_rounds: int = 2
) -> dict[str, Timing]:
    """Time every variant round-robin for up to ``rounds`` rounds (fewer if ``max_seconds`` runs out).

    Async variants are awaited in the running loop; call this with ``await`` (or through :func:`measure_sync`).
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for _ in range(warmup_rounds):
        for variant in variants:
            await _time_batch(variant)
    gc.collect()
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu: dict[str, list[float]] = {v.name: [] for v in variants}
    deadline = time.monotonic() + max_seconds
    for _ in range(rounds):
        for variant in variants:
            wall_ns, cpu_ns = await _time_batch(variant)
            samples[variant.name].append(wall_ns)
            cpu[variant.name].append(cpu_ns)
        if time.monotonic() >= deadline:
            break
    return {v.name: Timing.of(v.name, samples[v.name], v.ops, cpu[v.name]) for v in variants}


def measure_sync(
    variants: Sequence[Variant], *, rounds: int, max_seconds: float, warmup_rounds: int = 2
) -> dict[str, Timing]:
    """:func:`measure` for purely synchronous variants, from synchronous code."""
    return asyncio.run(measure(variants, rounds=rounds, max_seconds=max_seconds, warmup_rounds=warmup_rounds))


# ---------------------------------------------------------------------------------------------- output


def format_ns(ns: float) -> str:
    """``812 ns`` / ``1.43 µs`` / ``61.2 µs`` / ``3.10 ms``: three significant figures in a readable unit."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.3g} µs"
    return f"{ns / 1_000_000:.3g} ms"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def command_line() -> str:
    """The command line that started this process, exactly as typed (``sys.orig_argv``)."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _run(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, load, OS, Python, redis-server, library versions, the git commit."""
    versions: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    root = Path(__file__).resolve().parent.parent
    dirty = _run("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _run("redis-server", "--version"),
        "packages": versions,
        "git_commit": _run("git", "-C", str(root), "rev-parse", "--short", "HEAD") + ("-dirty" if dirty else ""),
    }


def write_results(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``: the payload plus the command, the machine and the time."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": command_line(),
        "generated_at": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "machine": machine_info(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
