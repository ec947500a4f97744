"""Run the benchmarks: ``python -m benchmarks [NAME ...]``.

Every module ``benchmarks/bench_<name>.py`` is a benchmark with a ``main(argv)``. With no NAME all of them run,
one after another in name order; ``python -m benchmarks cache l1_policy`` runs just those two (``--list`` shows
the names). Each ``main`` gets an empty argument list, so it runs with its own defaults. A benchmark that raises
or returns a non-zero int is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import write_results

PACKAGE_DIR = Path(__file__).resolve().parent
PREFIX = "bench_"


def discover() -> list[str]:
    """The names (without ``bench_``) of every benchmark module in this package, sorted."""
    return sorted(path.stem.removeprefix(PREFIX) for path in PACKAGE_DIR.glob(f"{PREFIX}*.py"))


def run_one(name: str) -> bool:
    """Import ``benchmarks.bench_<name>`` and run its ``main([])``; True when it succeeded."""
    module = importlib.import_module(f"{__package__ or 'benchmarks'}.{PREFIX}{name}")
    saved_argv = sys.argv
    sys.argv = [str(PACKAGE_DIR / f"{PREFIX}{name}.py")]  # a script reading sys.argv sees no runner arguments
    try:
        result = module.main([])
    except SystemExit as exit_:  # a script that calls sys.exit() inside main
        result = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
    return not (isinstance(result, int) and result != 0)


def main(argv: Sequence[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {available})")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n.removeprefix(PREFIX) not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    selected = [n.removeprefix(PREFIX) for n in args.names] or available
    failed: list[str] = []
    seconds: dict[str, float] = {}
    run_started = time.monotonic()
    for name in selected:
        print(f"\n=== {PREFIX}{name} " + "=" * max(0, 70 - len(name)), flush=True)
        started = time.monotonic()
        try:
            ok = run_one(name)
        except Exception:
            traceback.print_exc()
            ok = False
        seconds[name] = round(time.monotonic() - started, 1)
        print(f"=== {PREFIX}{name}: {'ok' if ok else 'FAILED'} in {seconds[name]:.1f}s", flush=True)
        if not ok:
            failed.append(name)
    total = round(time.monotonic() - run_started, 1)
    print(f"\nall selected benchmarks: {total:.0f}s", flush=True)
    if not args.names:  # a full run: record how long each part took (``make bench`` adds only set-up to this)
        write_results("run", {"seconds_per_benchmark": seconds, "total_seconds": total, "failed": failed})
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
