"""``hybridcache.prometheus`` over caches on a real private redis-server: L2 hits, invalidations across instances and
the Redis/backplane states show in what a registry serves, and the latency histograms count L2 reads and factory
runs by namespace and result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.prometheus import register_cache_latency, register_cache_metrics
from tests.integration.conftest import CacheEnv, StartCache
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from hybridcache.telemetry import CacheTracer


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


async def test_latency_histograms_count_l2_reads_and_factory_runs_by_namespace_and_result(
    cache_env: CacheEnv, start_cache: StartCache
) -> None:
    a = await start_cache(cache_env.settings())
    b = await start_cache(cache_env.settings())
    registry = CollectorRegistry()
    register_cache_latency({"a": a, "b": b}, registry)

    async def load() -> str:
        return "value"

    async def fails() -> str:
        raise RuntimeError("database down")

    await a.get_or_create("Item:Search:some user text", load)  # L2 miss, factory ok
    await b.get_or_create("Item:Search:some user text", load)  # L2 hit
    await b.get_or_create("Item:Search:some user text", load)  # L1 hit: nothing recorded
    with pytest.raises(RuntimeError):
        await a.get_or_create("Other:1", fails)  # L2 miss, factory error

    def count(histogram: str, **labels: str) -> float:
        return sample(registry, f"hybridcache_{histogram}_duration_seconds_count", **labels)

    assert count("l2_read", cache="a", namespace="Item", result="miss") == 1.0
    assert count("l2_read", cache="b", namespace="Item", result="hit") == 1.0
    assert count("factory", cache="a", namespace="Item", result="ok") == 1.0
    assert count("factory", cache="a", namespace="Other", result="error") == 1.0
    assert count("l2_read", cache="a", namespace="Other", result="miss") == 1.0
    assert sample(registry, "hybridcache_l2_read_duration_seconds_sum", cache="b", namespace="Item", result="hit") > 0
    recorded = {labels for (name, labels) in scrape(registry) if name.endswith("_count")}
    assert len(recorded) == 5, "an L1 hit was recorded, or a series is missing"
    assert not any("some user text" in value for labels in recorded for _, value in labels), "user text in a label"


async def test_latency_recording_keeps_an_existing_tracer_working(cache_env: CacheEnv, start_cache: StartCache) -> None:
    """A tracer already on the cache (e.g. OpenTelemetry's) still sees every operation, hit flags included."""
    cache = await start_cache(cache_env.settings())
    seen: list[tuple[str, str, bool | None]] = []

    class Operation:
        def __init__(self, kind: str, key: str) -> None:
            self.kind, self.key = kind, key
            self.hit: bool | None = None

        def set_hit(self, hit: bool) -> None:
            self.hit = hit

        def set_error(self, kind: str) -> None:
            self.hit = None

        def __enter__(self) -> Operation:
            return self

        def __exit__(self, *exc_info: object) -> None:
            seen.append((self.kind, self.key, self.hit))

    class RecordingTracer:
        def l2_read(self, key: str) -> Operation:
            return Operation("l2", key)

        def factory(self, key: str) -> Operation:
            return Operation("factory", key)

        def invalidation(self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> Operation:
            return Operation("invalidation", ",".join(keys))

    cache.tracer = RecordingTracer()
    registry = CollectorRegistry()
    register_cache_latency(cache, registry)

    async def load() -> str:
        return "value"

    await cache.get_or_create("Item:1", load)
    await cache.remove("Item:1")

    assert seen == [("l2", "Item:1", False), ("factory", "Item:1", None), ("invalidation", "Item:1", None)]
    assert sample(registry, "hybridcache_l2_read_duration_seconds_count", namespace="Item", result="miss") == 1.0
    assert sample(registry, "hybridcache_factory_duration_seconds_count", namespace="Item", result="ok") == 1.0


async def _read_while_paused(cache: HybridCache, server: RedisServer) -> None:
    """One ``get_or_create`` of ``Item:1`` while ``server`` is frozen: its L2 read fails, the factory answers."""

    async def load() -> str:
        return "value"

    server.pause()
    try:
        assert await cache.get_or_create("Item:1", load) == "value"
    finally:
        server.resume()


async def test_an_l2_read_redis_could_not_answer_is_recorded_as_an_error(
    redis_server: RedisServer, namespace: str
) -> None:
    """To its caller a failed L2 read is a miss (the factory answers); the histogram must still tell it apart."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, operation_timeout_milliseconds=100)
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        registry = CollectorRegistry()
        register_cache_latency(cache, registry)

        await _read_while_paused(cache, redis_server)

    assert cache.counters.l2_errors >= 1
    assert sample(registry, "hybridcache_l2_read_duration_seconds_count", namespace="Item", result="error") == 1.0
    counted = {labels for name, labels in scrape(registry) if name == "hybridcache_l2_read_duration_seconds_count"}
    assert counted == {frozenset({("namespace", "Item"), ("result", "error")})}, "the failed read was also a miss"


@pytest.mark.parametrize("with_latency", [False, True], ids=["alone", "beside-latency"])
async def test_a_tracer_written_before_set_error_existed_still_lets_reads_survive_a_redis_outage(
    redis_server: RedisServer, namespace: str, with_latency: bool
) -> None:
    """``SpanHandle.set_error`` came after tracers were written against ``set_hit`` alone: such a tracer must not
    turn an L2 read Redis could not answer (a miss to the caller) into an AttributeError raised to the caller."""
    seen: list[tuple[str, bool | None]] = []

    class Operation:  # set_hit only, as every SpanHandle was before set_error
        def __init__(self, kind: str) -> None:
            self.kind = kind
            self.hit: bool | None = None

        def set_hit(self, hit: bool) -> None:
            self.hit = hit

        def __enter__(self) -> Operation:
            return self

        def __exit__(self, *exc_info: object) -> None:
            seen.append((self.kind, self.hit))

    class OlderTracer:
        def l2_read(self, key: str) -> Operation:
            return Operation("l2")

        def factory(self, key: str) -> Operation:
            return Operation("factory")

        def invalidation(self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> Operation:
            return Operation("invalidation")

    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, operation_timeout_milliseconds=100)
    registry = CollectorRegistry()
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        cache.tracer = cast("CacheTracer", OlderTracer())
        if with_latency:
            register_cache_latency(cache, registry)

        await _read_while_paused(cache, redis_server)

    assert cache.counters.l2_errors >= 1
    assert seen == [("l2", False), ("factory", None)]
    if with_latency:
        assert sample(registry, "hybridcache_l2_read_duration_seconds_count", namespace="Item", result="error") == 1.0
