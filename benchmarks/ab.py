"""Compare one benchmark on two commits: ``python -m benchmarks.ab BASE [TARGET] [--bench cache] [-- options]``,
run from temporary worktrees in turn (BASE, TARGET, …); writes ``results/ab_<bench>.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, Table, fmt, write_results


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _run_once(tree: Path, bench: str, extra: list[str]) -> dict[str, float]:
    """Run ``benchmarks.bench_<bench>`` from ``tree``; the median ns/op of each operation it measured."""
    environment = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    command = [sys.executable, "-m", f"benchmarks.bench_{bench}", *extra]
    subprocess.run(command, cwd=tree, env=environment, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((tree / "benchmarks" / "results" / f"{bench}.json").read_text())["results"]
    return {name: float(row["median_ns"]) for name, row in results.items() if "median_ns" in row}


def tables(document: dict[str, Any]) -> list[Table]:
    commits, rows = document["commits"], document["rows"]
    title = (
        f"Median ns per operation: {commits['base']} (base) vs {commits['target']} (target), {document['runs']} runs"
    )
    cells = [[r["operation"], fmt(r["base_ns"], 1), fmt(r["target_ns"], 1), fmt(r["ratio"], 3)] for r in rows]
    return [Table(["operation", "base ns", "target ns", "ratio"], cells, title)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", help="the commit to compare against (e.g. a tag, a hash, main~3)")
    parser.add_argument("target", nargs="?", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--bench", default="cache", help="benchmark name, as in python -m benchmarks --list")
    parser.add_argument("--runs", type=int, default=2, help="BASE/TARGET pairs (default 2)")
    given = sys.argv[1:] if argv is None else argv
    own, extra = (given[: given.index("--")], given[given.index("--") + 1 :]) if "--" in given else (given, [])
    args = parser.parse_args(own)
    commits = {"base": _git("rev-parse", "--short", args.base), "target": _git("rev-parse", "--short", args.target)}
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "target": {}}
    with tempfile.TemporaryDirectory(prefix="hc-ab-") as scratch:
        trees = {side: Path(scratch) / side for side in commits}
        for side, commit in commits.items():
            _git("worktree", "add", "--detach", "--quiet", str(trees[side]), commit)
        try:
            for run in range(args.runs):
                for side in ("base", "target"):
                    print(f"run {run + 1}/{args.runs}: {side} ({commits[side]})", file=sys.stderr, flush=True)
                    for name, median in _run_once(trees[side], args.bench, extra).items():
                        samples[side].setdefault(name, []).append(median)
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    rows = []
    for name in (n for n in samples["base"] if n in samples["target"]):
        base, target = statistics.median(samples["base"][name]), statistics.median(samples["target"][name])
        rows.append({"operation": name, "base_ns": base, "target_ns": target, "ratio": target / base})
    document = {"commits": commits, "runs": args.runs, "rows": rows}
    path = write_results(f"ab_{args.bench}", document)
    print("\n\n".join(t.text() for t in tables(document)), f"\nwritten to {path.relative_to(ROOT)}", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
