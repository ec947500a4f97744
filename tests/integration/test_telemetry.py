"""OpenTelemetry metrics and traces of a cache (``hybridcache.telemetry``), read back through the SDK's in-memory
metric reader and span exporter, with caches on a real private redis-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.prometheus import register_cache_latency
from hybridcache.telemetry import FLAT_KEY_NAMESPACE, Instrumentation, instrument, key_namespace, prefix_namespace
from tests.integration.conftest import CacheEnv, StartCache

SECRET = "Pat's secret search"  # user text inside a key: must never reach telemetry
SRC = Path(__file__).resolve().parents[2] / "src"


class Telemetry:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def instrument(self, cache: HybridCache) -> Instrumentation:
        return instrument(cache, meter_provider=self.meters, tracer_provider=self.tracers)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
        """``{(metric name, attributes): value}`` of one collection; histograms give their count."""
        data = self.reader.get_metrics_data()
        found: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found[metric.name, frozenset(point.attributes.items())] = value  # type: ignore[union-attr]
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    try:
        yield t
    finally:
        t.meters.shutdown()
        t.tracers.shutdown()


async def load_value() -> dict[str, str]:
    return {"name": "Ford of Springfield"}


def search_key(term: str) -> str:
    return f"Dealership:Search:{term}:10"


async def test_metrics_follow_the_cache_counters(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry
) -> None:
    a = await start_cache(cache_env.settings())
    b = await start_cache(cache_env.settings())
    telemetry.instrument(a)
    await a.get_or_create("Dealership:1", load_value)  # miss, handler run
    await a.get_or_create("Dealership:1", load_value)  # L1 hit
    await a.remove("Dealership:2")  # one invalidation published
    await b.get_or_create("Dealership:1", load_value)  # B: L2 hit (not instrumented: not counted)

    name = {("cache.name", f"{cache_env.service_name}:v1")}
    metrics = telemetry.metrics()

    def value(metric: str, **attributes: Any) -> Any:
        return metrics[metric, frozenset(name | set(attributes.items()))]

    assert value("hybridcache.hits", **{"cache.level": "l1"}) == 1
    assert value("hybridcache.hits", **{"cache.level": "l2"}) == 0
    assert value("hybridcache.misses") == 1
    assert value("hybridcache.handler_runs") == 1
    assert value("hybridcache.invalidations", direction="published") == 1
    assert value("hybridcache.invalidations", direction="failed") == 0
    assert value("hybridcache.l1.entries") == 1
    assert value("hybridcache.invalidations.pending") == 0
    assert [value("hybridcache.circuit.state", state=s) for s in ("closed", "open", "half-open")] == [1, 0, 0]
    assert value("hybridcache.l2.read.duration", **{"cache.namespace": "Dealership", "cache.hit": False}) == 1
    assert value("hybridcache.factory.duration", **{"cache.namespace": "Dealership", "cache.hit": False}) == 1

    # The counters are read at collection time: the next collection sees new activity.
    await a.get_or_create("Dealership:1", load_value)
    metrics = telemetry.metrics()
    assert value("hybridcache.hits", **{"cache.level": "l1"}) == 2


async def test_spans_for_l2_reads_factory_runs_and_invalidations_name_only_the_namespace(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry
) -> None:
    a = await start_cache(cache_env.settings())
    b = await start_cache(cache_env.settings())
    telemetry.instrument(a)
    telemetry.instrument(b)
    key = search_key(SECRET.replace(" ", "-"))

    await a.get_or_create(key, load_value)  # A: L2 miss, factory
    await b.get_or_create(key, load_value)  # B: L2 hit
    await a.remove_by_prefix("Dealership:Search")

    reads = telemetry.spans("hybridcache.l2.read")
    assert [span.attributes["cache.hit"] for span in reads if span.attributes] == [False, True]
    for span in reads:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["cache.level"] == "l2"
        assert span.attributes["cache.namespace"] == "Dealership"
    (factory,) = telemetry.spans("hybridcache.factory")
    assert factory.attributes is not None
    assert dict(factory.attributes) == {
        "cache.name": f"{cache_env.service_name}:v1",
        "cache.namespace": "Dealership",
        "cache.level": "factory",
        "cache.hit": False,
    }
    (invalidation,) = telemetry.spans("hybridcache.invalidate")
    assert invalidation.attributes is not None
    assert invalidation.attributes["cache.namespace"] == "Dealership"
    assert invalidation.attributes["cache.invalidation.prefixes"] == 1

    for span in telemetry.spans():
        text = repr((span.name, dict(span.attributes or {}), [e.attributes for e in span.events]))
        assert "secret" not in text.lower(), text
        assert "Search" not in text, text


async def test_an_l1_hit_makes_no_span(cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry) -> None:
    cache = await start_cache(cache_env.settings())
    telemetry.instrument(cache)
    await cache.get_or_create("Dealership:7", load_value)
    before = len(telemetry.spans())
    for _ in range(10):
        await cache.get_or_create("Dealership:7", load_value)
    assert cache.stats().l1_hits == 10
    assert len(telemetry.spans()) == before


async def test_the_factory_span_records_its_failure_and_nests_the_factorys_own_spans(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry
) -> None:
    cache = await start_cache(cache_env.settings())
    telemetry.instrument(cache)
    tracer = telemetry.tracers.get_tracer("test")

    async def failing() -> str:
        with tracer.start_as_current_span("database.query"):
            raise LookupError("database is down")

    with pytest.raises(LookupError):
        await cache.get_or_create("Dealership:9", failing)
    (factory,) = telemetry.spans("hybridcache.factory")
    (query,) = telemetry.spans("database.query")
    assert factory.status.status_code is StatusCode.ERROR
    assert [event.name for event in factory.events] == ["exception"]
    assert query.parent is not None
    assert factory.context is not None
    assert query.parent.span_id == factory.context.span_id


async def test_an_l2_read_redis_could_not_answer_is_an_error_span_and_an_error_in_the_histogram(
    redis_server: RedisServer, namespace: str, telemetry: Telemetry
) -> None:
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, operation_timeout_milliseconds=100)
    async with HybridCache.from_settings(settings) as cache:
        assert await cache.wait_until_connected(5)
        telemetry.instrument(cache)
        redis_server.pause()
        try:
            assert await cache.get_or_create("Dealership:1", load_value) == await load_value()
        finally:
            redis_server.resume()

    [span] = telemetry.spans("hybridcache.l2.read")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "L2UnavailableError"
    durations = {attributes for (name, attributes) in telemetry.metrics() if name == "hybridcache.l2.read.duration"}
    assert [dict(a).get("error.type") for a in durations] == ["L2UnavailableError"]


@pytest.mark.parametrize("otel_first", [True, False], ids=["otel-first", "latency-first"])
async def test_spans_and_latency_histograms_share_the_tracer_hook_in_either_order(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry, otel_first: bool
) -> None:
    cache = await start_cache(cache_env.settings())
    registry = CollectorRegistry()
    if otel_first:
        handle = telemetry.instrument(cache)
        register_cache_latency(cache, registry)
    else:
        register_cache_latency(cache, registry)
        handle = telemetry.instrument(cache)

    def factory_runs_timed() -> float | None:
        return registry.get_sample_value(
            "hybridcache_factory_duration_seconds_count", {"namespace": "Dealership", "result": "ok"}
        )

    await cache.get_or_create(search_key("one"), load_value)
    assert len(telemetry.spans("hybridcache.factory")) == 1
    assert factory_runs_timed() == 1.0

    handle.uninstrument()  # the spans stop; the histograms keep going
    await cache.get_or_create(search_key("two"), load_value)
    assert len(telemetry.spans("hybridcache.factory")) == 1
    assert factory_runs_timed() == 2.0


async def test_uninstrument_stops_spans_and_metrics(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry
) -> None:
    cache = await start_cache(cache_env.settings())
    handle = telemetry.instrument(cache)
    handle.uninstrument()
    assert cache.tracer is None
    await cache.get_or_create("Dealership:3", load_value)
    assert telemetry.spans() == []
    assert not any(name.startswith("hybridcache.hits") for name, _ in telemetry.metrics())


async def test_an_l1_only_cache_traces_invalidations_and_factories(
    cache_env: CacheEnv, start_cache: StartCache, telemetry: Telemetry
) -> None:
    cache = await start_cache(cache_env.settings(redis=False))
    telemetry.instrument(cache)
    await cache.get_or_create("Dealership:4", load_value)
    await cache.clear()
    assert [span.name for span in telemetry.spans()] == ["hybridcache.factory", "hybridcache.invalidate"]
    (invalidation,) = telemetry.spans("hybridcache.invalidate")
    assert invalidation.attributes is not None
    assert invalidation.attributes["cache.namespace"] == "*"


def test_key_namespace_is_the_first_segment_bounded_and_never_a_flat_keys_text() -> None:
    assert key_namespace("Dealership:Search:ford:10") == "Dealership"
    assert key_namespace("user42") == key_namespace("user43") == FLAT_KEY_NAMESPACE, "one series per flat key"
    assert key_namespace(":x") == "*"
    assert key_namespace("x" * 500 + ":1") == "x" * 64
    assert prefix_namespace("Dealership") == "Dealership"
    assert prefix_namespace("Dealership:Search") == "Dealership"
    assert prefix_namespace("") == "*"


def test_hybridcache_works_without_opentelemetry_installed() -> None:
    """Block the opentelemetry packages in a fresh interpreter: the cache runs, instrument() says what to install."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if not installed
        import hybridcache, hybridcache.cli, hybridcache.telemetry
        from hybridcache import CacheSettings, HybridCache

        async def main():
            async with HybridCache.from_settings(CacheSettings()) as cache:
                async def load():
                    return 1
                assert await cache.get_or_create("A:1", load) == 1
                try:
                    hybridcache.telemetry.instrument(cache)
                except ImportError as exc:
                    print("ImportError:", exc)
            assert not any(name.startswith("opentelemetry") for name in sys.modules if sys.modules[name])

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError: hybridcache.telemetry needs OpenTelemetry: pip install 'hybridcache[otel]'" in result.stdout
