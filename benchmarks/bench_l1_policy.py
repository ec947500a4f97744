"""L1 eviction policy: hit ratio of the SIEVE ``MemoryStore`` against a plain LRU on the same Zipf traffic, and the
cost of a hit on a full store. Method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._common import Table, Variant, bench_main, format_ns, measure, zipf
from hybridcache._memory import L1Entry, MemoryStore

KEYS = 100_000
CAPACITY = 1_024
ALPHAS = (0.8, 1.0, 1.2)
SEED = 20240611
OPTIONS = {"requests": (1_000_000, "requests per alpha"), "rounds": (30, "batches per hit-cost variant")}


class LruStore:
    """The baseline: a plain LRU over ``OrderedDict``, with the ``MemoryStore`` calls the replay makes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, object] = OrderedDict()

    def get(self, key: str, _now: float = 0.0) -> object | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, entry: L1Entry) -> None:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


def new_entry(key: str) -> L1Entry:
    return L1Entry(key, key, math.inf, 0.0, "", {}, (), 0)


def replay(store: MemoryStore | LruStore, trace: Sequence[str]) -> tuple[int, float]:
    """Hits and seconds for replaying ``trace`` through ``store`` (a miss inserts; no expiry)."""
    get, put, hits, started = store.get, store.put, 0, time.perf_counter()
    for key in trace:
        if get(key, 0.0) is not None:
            hits += 1
        else:
            put(new_entry(key))
    return hits, time.perf_counter() - started


def hit_ratios(requests: int) -> list[dict[str, Any]]:
    """Per alpha: both stores replay the same Zipf trace (ranks shuffled onto the key names)."""
    keys = [f"svc:v1:Dealership:{i}" for i in range(KEYS)]
    rows = []
    for alpha in ALPHAS:
        rng, by_rank = random.Random(SEED), list(keys)
        rng.shuffle(by_rank)
        draw = zipf(len(keys), alpha, rng)
        trace = [by_rank[draw()] for _ in range(requests)]
        sieve_hits, sieve_seconds = replay(MemoryStore(CAPACITY, clock=lambda: 0.0), trace)
        lru_hits, lru_seconds = replay(LruStore(CAPACITY), trace)
        sieve_ratio, lru_ratio = sieve_hits / requests, lru_hits / requests
        rows.append(
            {
                "alpha": alpha,
                "requests": requests,
                "distinct_keys_requested": len(set(trace)),
                "sieve_hit_ratio": round(sieve_ratio, 4),
                "lru_hit_ratio": round(lru_ratio, 4),
                "hit_ratio_gain_points": round(100 * (sieve_ratio - lru_ratio), 2),
                # Fewer misses is what the database sees: 1 - SIEVE misses / LRU misses.
                "miss_reduction": round(1 - (1 - sieve_ratio) / (1 - lru_ratio), 4),
                "sieve_ns_per_request": round(sieve_seconds * 1e9 / requests, 1),
                "lru_ns_per_request": round(lru_seconds * 1e9 / requests, 1),
            }
        )
    return rows


def hit_costs(rounds: int) -> dict[str, Any]:
    """Per-hit cost of each store when full (every lookup a hit), beside a plain dict."""
    resident = [f"svc:v1:Dealership:{i}" for i in range(CAPACITY)]
    sieve = MemoryStore(CAPACITY, clock=lambda: 0.0)
    lru = LruStore(CAPACITY)
    for key in resident:
        sieve.put(new_entry(key))
        lru.put(new_entry(key))
    assert len(sieve) == len(lru.entries) == CAPACITY

    def sieve_hits(ops: int) -> None:
        get, keys, n = sieve.get, resident, CAPACITY
        for i in range(ops):
            get(keys[i % n], 0.0)

    def lookups(get: Callable[[str], object]) -> Callable[[int], None]:
        def batch(ops: int) -> None:
            keys, n = resident, CAPACITY
            for i in range(ops):
                get(keys[i % n])

        return batch

    variants = [
        Variant("SIEVE MemoryStore.get (hit)", sieve_hits, 100_000),
        Variant("LRU OrderedDict get + move_to_end (hit)", lookups(lru.get), 100_000),
        Variant("plain dict.get (reference)", lookups(dict.fromkeys(resident).get), 100_000),
    ]
    timings = asyncio.run(measure(variants, rounds=rounds, max_seconds=60))
    assert sieve.evictions == 0, "every measured SIEVE lookup was a hit"
    assert len(lru.entries) == CAPACITY, "every measured LRU lookup was a hit"
    return {name: t.as_dict() for name, t in timings.items()}


def tables(result: dict[str, Any]) -> list[Table]:
    w = result["workload"]
    ratios = [
        [
            r["alpha"], f"{r['sieve_hit_ratio']:.2%}", f"{r['lru_hit_ratio']:.2%}",
            f"{r['hit_ratio_gain_points']:+.2f}", f"{r['miss_reduction']:.1%}",
            f"{r['sieve_ns_per_request']:.0f}", f"{r['lru_ns_per_request']:.0f}",
        ]
        for r in result["hit_ratio"]
    ]  # fmt: skip
    costs = [[n, *(format_ns(c[k]) for k in ("median_ns", "p10_ns", "p90_ns"))] for n, c in result["hit_cost"].items()]
    return [
        Table(
            ["alpha", "SIEVE", "LRU", "gain (points)", "fewer misses", "SIEVE ns/req", "LRU ns/req"],
            ratios,
            f"Hit ratio, {w['keys']:,} keys, capacity {w['capacity']:,}, {w['requests_per_alpha']:,} Zipf requests "
            "per alpha (cold start included):",
        ),
        Table(["operation", "median", "p10", "p90"], costs, "Per-hit cost on a full store (loop overhead included):"),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workload": {"keys": KEYS, "capacity": CAPACITY, "requests_per_alpha": args.requests, "seed": SEED},
        "hit_ratio": hit_ratios(args.requests),
        "hit_cost": hit_costs(args.rounds),
        "unit": "hit ratios over all requests (cold start included); costs in ns per lookup, median of batches",
    }


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("l1_policy", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
