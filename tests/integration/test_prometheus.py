"""The Prometheus collector of ``hybridcache.prometheus`` over two caches on a real private redis-server: L2 hits,
invalidations across instances and the Redis/backplane states show in what a registry serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hybridcache.prometheus import register_cache_metrics
from tests.integration.conftest import CacheEnv, StartCache
from tests.support.waiting import wait_until


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return scrape(registry)[(name, frozenset(labels.items()))]


async def test_two_instances_on_redis_show_l2_hits_and_invalidations(
    cache_env: CacheEnv, start_cache: StartCache
) -> None:
    a = await start_cache(cache_env.settings())
    b = await start_cache(cache_env.settings())
    registry = CollectorRegistry()
    register_cache_metrics({"a": a, "b": b}, registry)

    async def load() -> str:
        return "value"

    await a.get_or_create("Item:1", load)
    await b.get_or_create("Item:1", load)

    assert sample(registry, "hybridcache_handler_runs_total", cache="a") == 1.0
    assert sample(registry, "hybridcache_l2_hits_total", cache="a") == 0.0
    assert sample(registry, "hybridcache_l2_hits_total", cache="b") == 1.0
    assert sample(registry, "hybridcache_handler_runs_total", cache="b") == 0.0
    for name in ("a", "b"):
        assert sample(registry, "hybridcache_redis", cache=name, state="up") == 1.0
        assert sample(registry, "hybridcache_backplane", cache=name, state="connected") == 1.0
        assert sample(registry, "hybridcache_circuit", cache=name, state="closed") == 1.0

    await a.remove("Item:1")

    assert sample(registry, "hybridcache_invalidations_published_total", cache="a") == 1.0
    await wait_until(
        lambda: sample(registry, "hybridcache_invalidations_received_total", cache="b") == 1.0,
        timeout=5.0,
        message="b never counted a's invalidation",
    )
    assert sample(registry, "hybridcache_l1_entries", cache="b") == 0.0
