"""Prometheus metrics for a :class:`~hybridcache.HybridCache` (the optional ``prometheus`` extra).

Every field of :class:`~hybridcache.CacheStats` is exported as ``hybridcache_<field>``:

* counts as **counters** (``hybridcache_l1_hits_total``, ``hybridcache_misses_total``, ...; help text
  ``Cache <field with spaces>``);
* the levels ``pending_invalidations`` and ``l1_entries`` as **gauges** (``hybridcache_l1_entries``);
* the states ``circuit``, ``redis`` and ``backplane`` as **state sets**: one 0/1 gauge series per possible value,
  labelled ``state`` (``hybridcache_circuit{state="open"} 1.0``; help ``Cache circuit state (1 = current)``). A
  value outside the known ones gets its own series rather than being dropped.

Values are read from ``cache.stats()`` **at scrape time**, by a custom collector: no background task, no
Prometheus objects on the hot path (which keeps its plain integer counters), and nothing to stop.

One cache: ``register_cache_metrics(cache)`` exports unlabelled series. Several caches in one process must share
**one** collector — two collectors would emit the same metric families twice, which a registry refuses (see
:meth:`CacheStatsCollector.describe`) and Prometheus would reject — so pass them together, by name:
``register_cache_metrics({"orders": orders_cache, "users": users_cache})``; every series then also carries
``cache="<name>"`` (the label name is ``label=``).

This module imports ``prometheus_client`` when it is imported; without it, importing ``hybridcache.prometheus``
raises :class:`ImportError` naming the extra to install, and the rest of hybridcache works as usual (importing
``hybridcache`` never imports this module).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Literal, TypeAlias

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the package
    raise ImportError("hybridcache.prometheus needs prometheus-client: pip install 'hybridcache[prometheus]'") from exc

from hybridcache.metrics import CacheStats

if TYPE_CHECKING:
    from hybridcache.cache import HybridCache

__all__ = ["CacheStatsCollector", "StatsSource", "register_cache_metrics"]

StatsSource: TypeAlias = Callable[[], CacheStats | None]
"""Returns a cache's current snapshot, or ``None`` while there is none to export (a service not started yet)."""

_PREFIX = "hybridcache_"
# Fields of CacheStats that are levels, not monotonic counts.
_GAUGES = frozenset({"pending_invalidations", "l1_entries"})
# The values each state field can take, exported as one 0/1 series per value (a Prometheus state set).
_STATES: dict[str, tuple[str, ...]] = {
    "circuit": ("closed", "open", "half-open"),
    "redis": ("up", "down", "disabled"),
    "backplane": ("connected", "disconnected", "disabled"),
}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

_Kind: TypeAlias = Literal["counter", "gauge", "state"]


def _plan() -> tuple[tuple[str, _Kind], ...]:
    """Each exported field of :class:`CacheStats`, in declaration order, with how it is exported.

    Numeric fields are counters unless listed as levels; the listed state fields are state sets; any other field
    (none today) is not exported.
    """
    hints = typing.get_type_hints(CacheStats)
    plan: list[tuple[str, _Kind]] = []
    for field in dataclasses.fields(CacheStats):
        if field.name in _STATES:
            plan.append((field.name, "state"))
        elif hints[field.name] in (int, float):
            plan.append((field.name, "gauge" if field.name in _GAUGES else "counter"))
    return tuple(plan)


_PLAN = _plan()


class CacheStatsCollector(Collector):
    """A Prometheus collector exporting :class:`~hybridcache.CacheStats` snapshots (see the module docstring for
    the metric names, types and help texts).

    ``stats`` is either one :data:`StatsSource` (typically ``cache.stats``) — series without extra labels — or a
    mapping of cache names to sources, and then every series carries ``<label>="<name>"``. Sources are called on
    every :meth:`collect` (every scrape), never in between; a source returning ``None`` contributes nothing, and
    when every source does, nothing at all is exported.

    Register it on a :class:`~prometheus_client.CollectorRegistry` (or use :func:`register_cache_metrics`).
    """

    def __init__(self, stats: StatsSource | Mapping[str, StatsSource], *, label: str = "cache") -> None:
        if isinstance(stats, Mapping):
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "state":
                raise ValueError(f"label {label!r} is not usable: a Prometheus label name other than 'state'")
            self._sources: tuple[tuple[str | None, StatsSource], ...] = tuple(stats.items())
            self._labels: list[str] = [label]
        else:
            self._sources = ((None, stats),)
            self._labels = []

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples: lets a registry refuse a second collector exporting the same
        names (``ValueError: Duplicated timeseries``) instead of serving an exposition Prometheus rejects."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """Read every source now and yield one family per exported field, with one sample set per cache."""
        snapshots = [(name, snapshot) for name, source in self._sources if (snapshot := source()) is not None]
        if not snapshots:
            return
        families = self._families()
        for name, snapshot in snapshots:
            cache_labels = [] if name is None else [name]
            for (field, kind), family in zip(_PLAN, families, strict=True):
                value = getattr(snapshot, field)
                if kind == "state":
                    known = _STATES[field]
                    for state in (*known, *(() if value in known else (value,))):
                        family.add_metric([*cache_labels, state], 1.0 if state == value else 0.0)
                else:
                    family.add_metric(cache_labels, value)
        yield from families

    def _families(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        families: list[CounterMetricFamily | GaugeMetricFamily] = []
        for field, kind in _PLAN:
            name = _PREFIX + field
            if kind == "state":
                families.append(
                    GaugeMetricFamily(name, f"Cache {field} state (1 = current)", labels=[*self._labels, "state"])
                )
            elif kind == "gauge":
                families.append(GaugeMetricFamily(name, f"Cache {field.replace('_', ' ')}", labels=self._labels))
            else:
                families.append(CounterMetricFamily(name, f"Cache {field.replace('_', ' ')}", labels=self._labels))
        return families


def register_cache_metrics(
    cache: HybridCache | Mapping[str, HybridCache],
    registry: CollectorRegistry | None = None,
    *,
    label: str = "cache",
) -> CacheStatsCollector:
    """Export ``cache.stats()`` on ``registry`` (default: ``prometheus_client.REGISTRY``) and return the collector
    (``registry.unregister(collector)`` stops the export).

    ``cache`` is one cache (unlabelled series) or a mapping of names to caches, exported by one collector with
    ``<label>="<name>"`` on every series — ``cache.settings.service_name`` is a natural name. Values are read at
    each scrape; nothing runs in the background, so the cache may be registered before it starts. Raises
    ``ValueError`` when the registry already exports ``hybridcache_*`` metrics (register several caches in one
    call instead) or when ``label`` is not a usable label name.
    """
    stats: StatsSource | Mapping[str, StatsSource] = (
        {name: each.stats for name, each in cache.items()} if isinstance(cache, Mapping) else cache.stats
    )
    collector = CacheStatsCollector(stats, label=label)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
