"""The Prometheus collector of ``hybridcache.prometheus``, scraped with ``generate_latest`` from a fresh registry
around real L1-only caches (no servers needed)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hybridcache import CacheSettings, CacheStats, HybridCache
from hybridcache.prometheus import CacheStatsCollector, register_cache_metrics

SRC = Path(__file__).resolve().parents[2] / "src"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    """The exposition text, and every sample in it by (name, labels)."""
    text = generate_latest(registry).decode()
    samples: Samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def snapshot(**overrides: object) -> CacheStats:
    """A snapshot whose numeric fields all differ (1, 8, 15, ...), so a field read in place of another shows."""
    numeric = [f.name for f in dataclasses.fields(CacheStats) if f.name not in ("circuit", "redis", "backplane")]
    fields: dict[str, object] = {name: 1 + 7 * i for i, name in enumerate(numeric)}
    fields.update(circuit="closed", redis="up", backplane="connected")
    fields.update(overrides)
    return CacheStats(**fields)  # type: ignore[arg-type]


async def test_scraped_values_follow_cache_activity() -> None:
    registry = CollectorRegistry()
    async with HybridCache.from_settings(CacheSettings(service_name="orders")) as cache:
        register_cache_metrics(cache, registry)
        _, before = scrape(registry)

        async def load() -> int:
            return 42

        assert await cache.get_or_create("Order:1", load) == 42
        assert await cache.get_or_create("Order:1", load) == 42
        _, after = scrape(registry)

    for name in ("hybridcache_l1_hits_total", "hybridcache_misses_total", "hybridcache_handler_runs_total"):
        assert value(before, name) == 0.0, name
        assert value(after, name) == 1.0, name
    assert value(before, "hybridcache_l1_entries") == 0.0
    assert value(after, "hybridcache_l1_entries") == 1.0
    assert value(after, "hybridcache_l2_hits_total") == 0.0
    assert value(after, "hybridcache_circuit", state="closed") == 1.0
    assert value(after, "hybridcache_circuit", state="open") == 0.0
    assert value(after, "hybridcache_redis", state="disabled") == 1.0
    assert value(after, "hybridcache_backplane", state="disabled") == 1.0


def test_every_stats_field_is_exported_with_its_name_type_and_help() -> None:
    stats = snapshot()
    registry = CollectorRegistry()
    registry.register(CacheStatsCollector(lambda: stats))

    text, samples = scrape(registry)

    for field in dataclasses.fields(CacheStats):
        name = f"hybridcache_{field.name}"
        current = getattr(stats, field.name)
        if field.name in ("circuit", "redis", "backplane"):
            assert f"# HELP {name} Cache {field.name} state (1 = current)\n# TYPE {name} gauge\n" in text
            assert value(samples, name, state=current) == 1.0
        elif field.name in ("pending_invalidations", "l1_entries", "outbox_depth", "outbox_lag_seconds"):
            assert f"# HELP {name} Cache {field.name.replace('_', ' ')}\n# TYPE {name} gauge\n" in text
            assert value(samples, name) == float(current)
        else:
            total = f"{name}_total"
            assert f"# HELP {total} Cache {field.name.replace('_', ' ')}\n# TYPE {total} counter\n" in text
            assert value(samples, total) == float(current)
    # The exact lines dashboards and the reference service's test scrape today.
    assert "hybridcache_l1_hits_total 1.0\n" in text
    assert 'hybridcache_circuit{state="closed"} 1.0\nhybridcache_circuit{state="open"} 0.0\n' in text
    assert 'hybridcache_circuit{state="half-open"} 0.0\n' in text


def test_an_unknown_state_gets_its_own_series() -> None:
    stats = snapshot(backplane="resyncing")
    registry = CollectorRegistry()
    registry.register(CacheStatsCollector(lambda: stats))

    _, samples = scrape(registry)

    assert value(samples, "hybridcache_backplane", state="resyncing") == 1.0
    for known in ("connected", "disconnected", "disabled"):
        assert value(samples, "hybridcache_backplane", state=known) == 0.0


def test_a_source_without_a_snapshot_exports_nothing_and_is_read_at_each_scrape() -> None:
    current: list[CacheStats] = []
    reads: list[int] = []

    def source() -> CacheStats | None:
        reads.append(1)
        return current[0] if current else None

    registry = CollectorRegistry()
    registry.register(CacheStatsCollector(source))
    assert reads == []  # registering reads nothing

    assert generate_latest(registry) == b""
    current.append(snapshot())
    _, samples = scrape(registry)

    assert value(samples, "hybridcache_l1_hits_total") == 1.0
    assert len(reads) == 2


async def test_several_caches_share_one_collector_labelled_by_name() -> None:
    registry = CollectorRegistry()
    async with (
        HybridCache.from_settings(CacheSettings(service_name="orders")) as orders,
        HybridCache.from_settings(CacheSettings(service_name="users")) as users,
    ):
        register_cache_metrics({"orders": orders, "users": users}, registry)

        async def load() -> str:
            return "v"

        await orders.get_or_create("Order:1", load)
        await orders.get_or_create("Order:1", load)
        text, samples = scrape(registry)

    assert text.count("# TYPE hybridcache_l1_hits_total counter") == 1
    assert value(samples, "hybridcache_l1_hits_total", cache="orders") == 1.0
    assert value(samples, "hybridcache_l1_hits_total", cache="users") == 0.0
    assert value(samples, "hybridcache_circuit", cache="users", state="closed") == 1.0


async def test_a_second_collector_on_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    first = HybridCache.from_settings(CacheSettings(service_name="orders"))
    second = HybridCache.from_settings(CacheSettings(service_name="users"))
    register_cache_metrics(first, registry)

    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_cache_metrics(second, registry)


@pytest.mark.parametrize("label", ["state", "1cache", "__cache", "cache-name"])
def test_a_label_prometheus_cannot_carry_is_refused(label: str) -> None:
    stats = snapshot()
    with pytest.raises(ValueError, match="label"):
        CacheStatsCollector({"orders": lambda: stats}, label=label)


def test_hybridcache_works_without_prometheus_client_installed() -> None:
    """``import hybridcache`` never loads prometheus_client; without it, the module says which extra to install."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        import hybridcache, hybridcache.cli, hybridcache.telemetry
        assert "prometheus_client" not in sys.modules, "importing hybridcache loaded prometheus_client"
        sys.modules["prometheus_client"] = None  # as if not installed
        from hybridcache import CacheSettings, HybridCache

        async def main():
            async with HybridCache.from_settings(CacheSettings()) as cache:
                async def load():
                    return 1
                assert await cache.get_or_create("A:1", load) == 1

        asyncio.run(main())
        try:
            import hybridcache.prometheus
        except ImportError as exc:
            print("ImportError:", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (
        "ImportError: hybridcache.prometheus needs prometheus-client: pip install 'hybridcache[prometheus]'"
        in result.stdout
    )
