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
from collections.abc import Sequence
from typing import Any

from benchmarks._common import Run, Table, Variant, format_ns, measure, zipf
from hybridcache._memory import L1Entry, MemoryStore

KEYS = 100_000
CAPACITY = 1_024
REQUESTS = 1_000_000
ALPHAS = (0.8, 1.0, 1.2)
SEED = 20240611


class LruStore:
    """The baseline: a plain LRU over ``OrderedDict`` (what ``functools.lru_cache`` and cachetools do)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, object] = OrderedDict()

    def get(self, key: str) -> object | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: object) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def new_entry(key: str) -> L1Entry:
    return L1Entry(key, key, math.inf, 0.0, "", {}, (), 0)


def zipf_trace(alpha: float, keys: Sequence[str], requests: int, rng: random.Random) -> list[str]:
    """``requests`` keys drawn with P(rank r) proportional to r^-alpha. Ranks are shuffled onto the key names so
    popularity is unrelated to insertion order."""
    by_rank = list(keys)
    rng.shuffle(by_rank)
    draw = zipf(len(keys), alpha, rng)
    return [by_rank[draw()] for _ in range(requests)]


def simulate_sieve(trace: Sequence[str], capacity: int) -> tuple[int, float]:
    """Hits and seconds for replaying ``trace`` through a ``MemoryStore`` (no expiry: entries live forever)."""
    store = MemoryStore(capacity, clock=lambda: 0.0)
    get, put = store.get, store.put
    hits = 0
    started = time.perf_counter()
    for key in trace:
        if get(key, 0.0) is not None:
            hits += 1
        else:
            put(new_entry(key))
    return hits, time.perf_counter() - started


def simulate_lru(trace: Sequence[str], capacity: int) -> tuple[int, float]:
    store = LruStore(capacity)
    get, put = store.get, store.put
    hits = 0
    started = time.perf_counter()
    for key in trace:
        if get(key) is not None:
            hits += 1
        else:
            put(key, new_entry(key))  # the same entry object the cache would store, so costs compare
    return hits, time.perf_counter() - started


def hit_ratios(requests: int) -> list[dict[str, Any]]:
    keys = [f"svc:v1:Dealership:{i}" for i in range(KEYS)]
    rows = []
    for alpha in ALPHAS:
        trace = zipf_trace(alpha, keys, requests, random.Random(SEED))
        sieve_hits, sieve_seconds = simulate_sieve(trace, CAPACITY)
        lru_hits, lru_seconds = simulate_lru(trace, CAPACITY)
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
    resident = [f"svc:v1:Dealership:{i}" for i in range(CAPACITY)]
    sieve = MemoryStore(CAPACITY, clock=lambda: 0.0)
    lru = LruStore(CAPACITY)
    for key in resident:
        sieve.put(new_entry(key))
        lru.put(key, key)
    assert len(sieve) == len(lru) == CAPACITY

    def sieve_hits(ops: int) -> None:
        get, keys, n = sieve.get, resident, CAPACITY
        for i in range(ops):
            get(keys[i % n], 0.0)

    def lru_hits(ops: int) -> None:
        get, keys, n = lru.get, resident, CAPACITY
        for i in range(ops):
            get(keys[i % n])

    def dict_hits(ops: int) -> None:
        table = dict.fromkeys(resident)
        get, keys, n = table.get, resident, CAPACITY
        for i in range(ops):
            get(keys[i % n])

    variants = [
        Variant("SIEVE MemoryStore.get (hit)", sieve_hits, 100_000),
        Variant("LRU OrderedDict get + move_to_end (hit)", lru_hits, 100_000),
        Variant("plain dict.get (reference)", dict_hits, 100_000),
    ]
    timings = asyncio.run(measure(variants, rounds=rounds, max_seconds=60))
    assert sieve.evictions == 0, "every measured SIEVE lookup was a hit"
    assert len(lru) == CAPACITY, "every measured LRU lookup was a hit"
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_l1_policy", description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS, help=f"requests per alpha (default {REQUESTS:,})")
    parser.add_argument("--rounds", type=int, default=30, help="batches per hit-cost variant (default 30)")
    args = parser.parse_args(argv)
    bench = Run("l1_policy")
    result = {
        "workload": {"keys": KEYS, "capacity": CAPACITY, "requests_per_alpha": args.requests, "seed": SEED},
        "hit_ratio": hit_ratios(args.requests),
        "hit_cost": hit_costs(args.rounds),
        "unit": "hit ratios over all requests (cold start included); costs in ns per lookup, median of batches",
    }
    bench.finish(result, tables)


if __name__ == "__main__":
    main()
