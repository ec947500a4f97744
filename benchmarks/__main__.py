"""Run the benchmarks: ``python -m benchmarks [NAME ...]``: each ``bench_<name>.py``'s ``main([])`` in name order;
a failure is reported and the others still run. A full run writes ``results/run.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Table, fmt, write_results

PACKAGE_DIR = Path(__file__).resolve().parent


def run_one(name: str) -> bool:
    """Run ``benchmarks.bench_<name>.main([])``; True unless it raised or returned a non-zero status."""
    try:
        return not importlib.import_module(f"benchmarks.bench_{name}").main([])
    except (Exception, SystemExit):  # SystemExit: a benchmark refusing to run (a missing tool, say)
        traceback.print_exc()
        return False


def tables(document: dict[str, Any]) -> list[Table]:
    """The seconds each benchmark of a full run took (``run.json``)."""
    rows = [[name, fmt(seconds, 1)] for name, seconds in document["seconds_per_benchmark"].items()]
    note = f"{document['total_seconds'] / 60:.1f} min in all; failed: {', '.join(document['failed']) or 'none'}."
    return [Table(["benchmark", "seconds"], rows, note=note)]


def main(argv: Sequence[str] | None = None) -> int:
    available = sorted(path.stem.removeprefix("bench_") for path in PACKAGE_DIR.glob("bench_*.py"))
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {available})")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available))
        return 0
    selected = [n.removeprefix("bench_") for n in args.names] or available
    if unknown := [n for n in selected if n not in available]:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for name in selected:
        print(f"\n=== bench_{name} " + "=" * max(0, 70 - len(name)), flush=True)
        started = time.monotonic()
        ok = run_one(name)
        seconds[name] = round(time.monotonic() - started, 1)
        print(f"=== bench_{name}: {'ok' if ok else 'FAILED'} in {seconds[name]:.1f}s", flush=True)
        if not ok:
            failed.append(name)
    total = round(sum(seconds.values()), 1)
    print(f"\nall selected benchmarks: {total:.0f}s", flush=True)
    if not args.names:  # a full run: record how long each part took (``make bench`` adds only set-up to this)
        write_results("run", {"seconds_per_benchmark": seconds, "total_seconds": total, "failed": failed})
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
