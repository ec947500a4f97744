"""Redis Cluster and Sentinel against a standalone Redis (issue 8): L2-hit latency per topology, and throughput
with 1 vs 3 masters, uncapped and server-bound (``_cpu_cap``). Method: docs/benchmarks.md, docs/cluster.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster

from benchmarks._common import Table, Variant, bench_main, connected, dealership_dto, format_ns, measure, paired_ratio
from benchmarks._cpu_cap import CpuCapUnavailable, Throttling, cpu_cap, period_and_quota
from dealership.dto import DealershipDto
from harness.redis_cluster import RedisClusterProcess
from harness.redis_sentinel import RedisSentinelSetup
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache

LATENCY_TARGET_RATIO = 1.20
SERVICE = "bench-cluster"
TTL = timedelta(hours=2)
LATENCY_KEYS = 64
REDIS_OPS = 200
OPERATION_TIMEOUT_MS = 2000
CAPPED_OPERATION_TIMEOUT_MS = 10_000  # a margin: callers queue behind a capped master's throttled stretches
SERVER_BOUND_SHARE_OF_CAP = 0.9  # the 1-master run is server-bound when its busiest master used this much of its cap

STANDALONE, CLUSTER_1, CLUSTER_3, SENTINEL = "standalone", "cluster, 1 master", "cluster, 3 masters", "sentinel"
L2_STANDALONE = "get_or_create L2 hit, standalone"
L2_CLUSTER = "get_or_create L2 hit, cluster (3 masters)"
L2_SENTINEL = "get_or_create L2 hit, Sentinel"
RAW_STANDALONE = "raw GET, standalone client"
RAW_CLUSTER = "raw GET, RedisCluster client"
L2_CLUSTER_ONE = "get_or_create L2 hit, cluster, keys of one master"
RAW_CLUSTER_ONE = "raw GET, RedisCluster client, keys of one master"
#: Run figures summarized by their median over the runs of a topology, and the digits kept.
MEDIANS = {"ops_per_s": None, "client_cpu_us_per_op": 1, "master_cpu_us_per_get": 2, "busiest_master_core_share": 3}
#: A topology under load: its configuration, and (port, pid) of each master that answers its GETs.
Topology = tuple[str, tuple[tuple[int, int], ...]]
OPTIONS = {
    "rounds": (40, "latency batches per operation"),
    "max_seconds": (60.0, "stop starting latency rounds after this"),
    "processes": (2, "client processes for throughput"),
    "tasks": (16, "concurrent callers per process"),
    "keys": (3000, "distinct stored keys"),
    "duration": (5.0, "seconds per throughput window"),
    "repeats": (3, "interleaved throughput runs per topology"),
    "master_cpu_percent": (3.0, "each master's CPU budget in the server-bound runs, percent of one core"),
    "server_bound_repeats": (2, "interleaved server-bound runs per topology"),
}


def settings_for(configuration: str, operation_timeout_ms: int = OPERATION_TIMEOUT_MS) -> CacheSettings:
    """L1 off: every ``get_or_create`` of a stored key is an L2 hit."""
    return CacheSettings(
        service_name=SERVICE,
        configuration=configuration,
        memory_cache={"enabled": False},
        operation_timeout_milliseconds=operation_timeout_ms,
    )


def key_of(n: int) -> str:
    return f"Dealership:{n}"


async def _never() -> DealershipDto:
    raise AssertionError("an L2 hit was expected; the factory ran")


def l2_hit(cache: HybridCache) -> Callable[[str], Awaitable[Any]]:
    return lambda key: cache.get_or_create(key, _never, ttl=TTL, type_=DealershipDto)


async def fill(configuration: str, count: int) -> None:
    """Store ``count`` dealerships (keys ``Dealership:0..count-1``) in a topology, 64 at a time."""
    async with HybridCache(settings_for(configuration)) as cache:
        for start in range(0, count, 64):
            ids = range(start, min(count, start + 64))
            await asyncio.gather(*(cache.set(key_of(n), dealership_dto(n), ttl=TTL, type_=DealershipDto) for n in ids))


def cycling(name: str, op: Callable[[str], Awaitable[Any]], keys: Sequence[str]) -> Variant:
    """``name``: batches of ``REDIS_OPS`` awaits of ``op`` on ``keys`` in turn."""

    async def run(ops: int) -> None:
        for i in range(ops):
            await op(keys[i % len(keys)])

    return Variant(name, run, REDIS_OPS)


async def latency(configurations: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """L2-hit latency per topology (and raw GET references), measured round-robin in one loop; paired ratios to
    the standalone L2 hit, and of the cluster client's raw GET to the standalone client's."""
    async with AsyncExitStack() as stack:
        caches = {}
        for name, configuration in configurations.items():
            await fill(configuration, LATENCY_KEYS)
            caches[name] = await connected(stack, settings_for(configuration))
        standalone, cluster = caches[STANDALONE].internals.l2, caches[CLUSTER_3].internals.l2
        assert standalone is not None
        assert cluster is not None
        assert isinstance(cluster.client, RedisCluster)
        redis_keys = [standalone.redis_key(f"{SERVICE}:v1:{key_of(n)}") for n in range(LATENCY_KEYS)]
        keys = [key_of(n) for n in range(LATENCY_KEYS)]
        # The keys one master serves: separates what spreading requests over several server processes costs on
        # this machine from what the cluster client costs.
        first = cluster.client.get_node_from_key(redis_keys[0])
        one = [i for i, k in enumerate(redis_keys) if cluster.client.get_node_from_key(k) == first]
        variants = [
            cycling(L2_STANDALONE, l2_hit(caches[STANDALONE]), keys),
            cycling(L2_CLUSTER, l2_hit(caches[CLUSTER_3]), keys),
            cycling(L2_CLUSTER_ONE, l2_hit(caches[CLUSTER_3]), [keys[i] for i in one]),
            cycling(L2_SENTINEL, l2_hit(caches[SENTINEL]), keys),
            cycling(RAW_STANDALONE, standalone.client.get, redis_keys),
            cycling(RAW_CLUSTER, cluster.client.get, redis_keys),
            cycling(RAW_CLUSTER_ONE, cluster.client.get, [redis_keys[i] for i in one]),
        ]
        timings = await measure(variants, rounds=args.rounds, max_seconds=args.max_seconds)
        stats = {name: cache.stats().as_dict() for name, cache in caches.items()}
    for name, cache_stats in stats.items():
        if cache_stats["misses"] or cache_stats["l2Errors"]:
            raise AssertionError(f"{name}: the latency run was not all L2 hits: {cache_stats}")
    client_ratios = {
        f"raw GET, RedisCluster / standalone client, keys on {where}": round(
            paired_ratio(timings[raw], timings[RAW_STANDALONE]), 3
        )
        for where, raw in (("3 masters", RAW_CLUSTER), ("1 master", RAW_CLUSTER_ONE))
    }
    return {
        "results": {name: t.as_dict() for name, t in timings.items()},
        "ratios": {name: round(paired_ratio(t, timings[L2_STANDALONE]), 3) for name, t in timings.items()},
        "client_ratios": client_ratios,
        "cache_stats": stats,
    }


@dataclass(frozen=True)
class Load:
    """The client side of a throughput run: ``processes`` x ``tasks`` callers on ``keys`` keys for ``duration`` s."""

    processes: int
    tasks: int
    keys: int
    duration: float
    operation_timeout_ms: int = OPERATION_TIMEOUT_MS

    def setup(self, repeats: int) -> dict[str, Any]:
        clients = {"processes": self.processes, "tasks": self.tasks, "keys": self.keys}
        return clients | {"duration_s": self.duration, "repeats": repeats}


def _client(configuration: str, load: Load, start_at: float, seed: int) -> tuple[int, float, int, int, int]:
    """One client process: its ops, CPU seconds, L2 hits, misses and L2 errors in the window."""
    return asyncio.run(_work(configuration, load, start_at, seed))


async def _work(configuration: str, load: Load, start_at: float, seed: int) -> tuple[int, float, int, int, int]:
    async with HybridCache(settings_for(configuration, load.operation_timeout_ms)) as cache:
        assert await cache.wait_until_connected(10.0)
        names, read = [key_of(n) for n in range(load.keys)], l2_hit(cache)
        await asyncio.gather(*(read(names[i]) for i in range(load.tasks)))  # every connection warm before the clock
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end, c = start_at + load.duration, cache.counters
        before, cpu0 = (c.l2_hits, c.misses, c.l2_errors), time.process_time()
        counts = [0] * load.tasks

        async def caller(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while counts[index] < 10_000_000 and time.time() < end:  # bounded by a count besides the clock
                await read(rng.choice(names))
                counts[index] += 1

        await asyncio.gather(*(caller(i) for i in range(load.tasks)))
        cpu = time.process_time() - cpu0
        return sum(counts), cpu, c.l2_hits - before[0], c.misses - before[1], c.l2_errors - before[2]


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s threads from the scheduler (ns precision; utime counts 10 ms ticks)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        line = next(x for x in (task / "sched").read_text().splitlines() if x.startswith("se.sum_exec_runtime"))
        total += float(line.split(":", 1)[1]) / 1000  # milliseconds
    return total


def _masters_now(nodes: Sequence[tuple[int, int]]) -> dict[int, tuple[float, int]]:
    """CPU seconds and GET calls so far of each master."""
    out = {}
    for port, pid in nodes:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
            gets = int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
        out[port] = (_cpu_seconds(pid), gets)
    return out


def run_load(name: str, topology: Topology, load: Load, seed: int, throttling: Throttling | None) -> dict[str, Any]:
    """One window of ``load`` against one topology, with each master's CPU, GETs and throttling."""
    configuration, nodes = topology
    start_at = time.time() + 4.0  # spawning and connecting take a few seconds on a busy 2-core machine
    with ProcessPoolExecutor(load.processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        clients = [pool.submit(_client, configuration, load, start_at, seed + i) for i in range(load.processes)]
        time.sleep(max(0.0, start_at - time.time()))
        before, throttled_before = _masters_now(nodes), throttling() if throttling else {}
        time.sleep(load.duration)
        after, throttled_after = _masters_now(nodes), throttling() if throttling else {}
        results = [client.result(timeout=load.duration + 60) for client in clients]
    ops, client_cpu, l2_hits, misses, errors = (sum(column) for column in zip(*results, strict=True))
    per_master: dict[str, dict[str, Any]] = {}
    for port, pid in nodes:
        cpu, gets = after[port][0] - before[port][0], after[port][1] - before[port][1]
        per_master[str(port)] = {"cpu_seconds": round(cpu, 3), "gets": gets}
        if pid in throttled_after:
            periods, throttled = (a - b for a, b in zip(throttled_after[pid], throttled_before[pid], strict=True))
            per_master[str(port)]["throttled_periods_share"] = round(throttled / max(periods, 1), 3)
    gets = sum(m["gets"] for m in per_master.values())
    master_cpu = sum(m["cpu_seconds"] for m in per_master.values())
    return {
        "topology": name,
        "ops": ops,
        "ops_per_s": round(ops / load.duration),
        "client_cpu_seconds": round(client_cpu, 3),
        "client_cpu_us_per_op": round(1e6 * client_cpu / max(ops, 1), 1),
        "master_cpu_seconds": round(master_cpu, 3),
        "master_cpu_us_per_get": round(1e6 * master_cpu / max(gets, 1), 2),
        "busiest_master_core_share": round(max(m["cpu_seconds"] for m in per_master.values()) / load.duration, 3),
        "gets_share_per_master": [round(m["gets"] / max(gets, 1), 3) for m in per_master.values()],
        "per_master": per_master,
        "l2_hits": l2_hits,
        "misses": misses,
        "errors": errors,
    }


def throughput(
    topologies: dict[str, Topology], load: Load, repeats: int, throttling: Throttling | None = None, percent: float = 0
) -> dict[str, Any]:
    """``repeats`` interleaved ``run_load`` rounds per topology: the runs and a summary of medians (with each
    master's share of its cap, when ``throttling`` reads the caps of ``percent`` of a core)."""
    runs = []
    for repeat in range(repeats):
        for name in list(topologies) if repeat % 2 == 0 else list(reversed(topologies)):
            runs.append(run_load(name, topologies[name], load, repeat * 100, throttling) | {"repeat": repeat})
            print(f"  {name:<20} repeat {repeat}: {runs[-1]['ops_per_s']:>7,} ops/s", flush=True)
    summary = {}
    for name in topologies:
        mine = [r for r in runs if r["topology"] == name]
        summary[name] = {f"{k}_median": round(statistics.median(r[k] for r in mine), d) for k, d in MEDIANS.items()}
        summary[name] |= {
            "ops_per_s_runs": [r["ops_per_s"] for r in mine],
            "gets_share_per_master": mine[-1]["gets_share_per_master"],
            "misses": sum(r["misses"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
        }
        if throttling is not None:
            share = summary[name]["busiest_master_core_share_median"] / (percent / 100)
            throttled = [max(m.get("throttled_periods_share", 0.0) for m in r["per_master"].values()) for r in mine]
            summary[name]["busiest_master_share_of_cap_median"] = round(share, 3)
            summary[name]["busiest_master_throttled_periods_share_median"] = round(statistics.median(throttled), 3)
    ratio = summary[CLUSTER_3]["ops_per_s_median"] / max(summary[CLUSTER_1]["ops_per_s_median"], 1)
    return {"runs": runs, "summary": summary, "ratio_3_vs_1_masters": round(ratio, 3)}


def throughput_server_bound(topologies: dict[str, Topology], load: Load, percent: float, repeats: int) -> Any:
    """``throughput`` with every master capped at ``percent`` of one core (or why it was skipped), and its target:
    3 masters beat 1 while the 1-master run is server-bound."""
    load = dataclasses.replace(load, operation_timeout_ms=CAPPED_OPERATION_TIMEOUT_MS)
    pids = [pid for _, nodes in topologies.values() for _, pid in nodes]
    period, quota = period_and_quota(percent)
    setup = {"master_cpu_percent": percent, "cfs_period_us": period, "cfs_quota_us": quota}
    setup |= load.setup(repeats) | {
        "operation_timeout_ms": load.operation_timeout_ms,
        "master_cpu_clock": "scheduler runtime (/proc/<pid>/task/*/sched)",
    }
    try:
        with cpu_cap(pids, percent) as throttling:
            result = throughput(topologies, load, repeats, throttling, percent)
    except CpuCapUnavailable as exc:
        return {"setup": setup, "skipped": str(exc)}, {"skipped": str(exc), "met": None}
    share_of_cap = result["summary"][CLUSTER_1]["busiest_master_share_of_cap_median"]
    bound = share_of_cap >= SERVER_BOUND_SHARE_OF_CAP
    target = {
        "ratio": result["ratio_3_vs_1_masters"],
        "mode": f"each master capped at {percent:g}% of one core",
        "one_master_share_of_cap": share_of_cap,
        "met": bound and result["ratio_3_vs_1_masters"] > 1.0,
    }
    return {"setup": setup, **result, "one_master_share_of_cap": share_of_cap, "one_master_server_bound": bound}, target


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args.processes, args.tasks, args.keys, args.duration)
    with ExitStack() as stack:
        print("starting: standalone, 3-master cluster (+3 replicas), 1-master cluster (+1 replica), Sentinel ...")
        standalone = stack.enter_context(RedisServer())
        cluster3 = stack.enter_context(RedisClusterProcess(masters=3, replicas=1))
        cluster1 = stack.enter_context(RedisClusterProcess(masters=1, replicas=1))
        sentinel = stack.enter_context(RedisSentinelSetup())
        print(f"latency: {args.rounds} rounds of {REDIS_OPS} L2 hits per operation ...")
        configurations = {STANDALONE: standalone.url, CLUSTER_3: cluster3.url, SENTINEL: sentinel.configuration}
        latencies = asyncio.run(latency(configurations, args))
        print(f"throughput: filling {args.keys:,} keys on each topology ...")
        topologies = {STANDALONE: (standalone.url, ((standalone.port, standalone.pid),))}
        for name, cluster in ((CLUSTER_1, cluster1), (CLUSTER_3, cluster3)):
            topologies[name] = (cluster.url, tuple((p, cluster.nodes[p].pid) for _, p in cluster.masters()))

        for configuration, _ in topologies.values():
            asyncio.run(fill(configuration, args.keys))
        client_bound = throughput(topologies, load, args.repeats)
        print(f"server-bound throughput: every master capped at {args.master_cpu_percent:g}% of one core ...")
        server_bound, bound_target = throughput_server_bound(
            topologies, load, args.master_cpu_percent, args.server_bound_repeats
        )
    ratio, scaling = latencies["ratios"][L2_CLUSTER], client_bound["ratio_3_vs_1_masters"]
    return {
        "unit": "ns per operation (latency); operations per second (throughput)",
        "latency": latencies,
        "throughput": {"setup": load.setup(args.repeats), **client_bound},
        "throughput_server_bound": server_bound,
        "targets": {
            "cluster L2 hit vs standalone": {
                "ratio": ratio,
                "limit": LATENCY_TARGET_RATIO,
                "met": ratio <= LATENCY_TARGET_RATIO,
            },
            "throughput 3 vs 1 masters": {
                "ratio": scaling,
                "cores": os.cpu_count() or 0,
                "mode": "uncapped: clients and masters share the cores (client-bound)",
                "met": scaling > 1.0,
            },
            "throughput 3 vs 1 masters, server-bound": bound_target,
        },
    }


def _throughput_rows(summary: dict[str, Any], *, capped: bool) -> list[list[Any]]:
    rows = []
    for name, r in summary.items():
        rows.append([
            name, f"{r['ops_per_s_median']:,}", f"{r['client_cpu_us_per_op_median']} µs",
            f"{r['master_cpu_us_per_get_median']} µs", f"{100 * r['busiest_master_core_share_median']:.1f}% of a core",
            ", ".join(f"{100 * s:.0f}%" for s in r["gets_share_per_master"]),
        ])  # fmt: skip
        if capped:
            rows[-1] += [
                f"{100 * r['busiest_master_share_of_cap_median']:.0f}%",
                f"{100 * r['busiest_master_throttled_periods_share_median']:.0f}% of periods",
                f"{r['errors']} / {r['misses']}",
            ]
    return rows


def tables(document: dict[str, Any]) -> list[Table]:
    """The latency and throughput tables of a ``cluster.json`` document."""
    lat, thr, bound = document["latency"], document["throughput"], document["throughput_server_bound"]
    latency = [
        [name, format_ns(t["median_ns"]), format_ns(t["p90_ns"]), f"{lat['ratios'][name]:.2f}x"]
        for name, t in lat["results"].items()
    ]
    batches = next(iter(lat["results"].values()))["batches"]
    client = "; ".join(f"{k}: {v:.2f}x" for k, v in lat.get("client_ratios", {}).items())
    setup = thr["setup"]
    headers = ["topology", "ops/s", "client CPU per op", "master CPU per GET", "busiest master", "GET share per master"]
    out = [
        Table(
            ["operation", "median", "p90", "vs standalone L2 hit (paired)"],
            latency,
            f"L2 hit latency (median of {batches} batches, one loop, round-robin):",
            client,
        ),
        Table(
            headers,
            _throughput_rows(thr["summary"], capped=False),
            f"Throughput: {setup['processes']} client processes of {setup['tasks']} tasks, L2 hits on random keys out "
            f"of {setup['keys']:,}, {setup['duration_s']} s windows, median of {setup['repeats']} interleaved runs, "
            f"on {document['machine']['cpus']} cores shared by clients and servers:",
            f"3 masters / 1 master: **{thr['ratio_3_vs_1_masters']:.2f}x** (client-bound).",
        ),
    ]
    if "skipped" in bound:
        return [*out, Table(["server-bound throughput (masters CPU-capped)"], [[f"skipped — {bound['skipped']}"]])]
    setup = bound["setup"]
    verdict = "server-bound" if bound["one_master_server_bound"] else "**not** server-bound"
    title = (
        f"Server-bound throughput: the same client load, but every master process capped at "
        f"{setup['master_cpu_percent']:g}% of one core (cgroup CPU quota {setup['cfs_quota_us']} µs per "
        f"{setup['cfs_period_us']} µs), modelling masters on cores of their own; median of {setup['repeats']} "
        "interleaved runs:"
    )
    note = (
        f"3 masters / 1 master: **{bound['ratio_3_vs_1_masters']:.2f}x** (the 1-master run's busiest master at "
        f"{100 * bound['one_master_share_of_cap']:.0f}% of its cap: {verdict})."
    )
    capped = [*headers, "of its cap", "throttled", "errors / misses"]
    return [*out, Table(capped, _throughput_rows(bound["summary"], capped=True), title, note)]


def main(argv: Sequence[str] | None = None) -> None:
    bench_main("cluster", argv, __doc__, run, tables, OPTIONS)


if __name__ == "__main__":
    main()
