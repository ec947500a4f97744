"""Prometheus exposition for ``GET /metrics``: the cache's counters and HTTP request counts and latency.

Each application gets its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one process
(tests) never collide on metric names. Cache metrics are read from ``cache.stats()`` at scrape time by a custom
collector: the hot path keeps its plain integer counters and pays nothing for Prometheus.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridcache import CacheStats

__all__ = ["CacheStatsCollector", "HttpMetrics", "PrometheusMiddleware"]

# Fields of CacheStats that are levels, not monotonic counts.
_GAUGES = frozenset({"pending_invalidations", "l1_entries"})
# The values each state field can take, exported as one 0/1 series per value (a Prometheus state set).
_STATES: dict[str, tuple[str, ...]] = {
    "circuit": ("closed", "open", "half-open"),
    "redis": ("up", "down", "disabled"),
    "backplane": ("connected", "disconnected", "disabled"),
}


class CacheStatsCollector(Collector):
    """Exports every field of :class:`~hybridcache.CacheStats` as ``hybridcache_<field>``: counters with a
    ``_total`` suffix, levels as gauges, ``circuit``/``redis``/``backplane`` as 0/1 gauges labelled ``state``.

    ``stats`` returns the current snapshot, or ``None`` while the service is not started (nothing exported).
    """

    def __init__(self, stats: Callable[[], CacheStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        snapshot = self._stats()
        if snapshot is None:
            return
        for item in dataclasses.fields(snapshot):
            value: Any = getattr(snapshot, item.name)
            name = f"hybridcache_{item.name}"
            if item.name in _STATES:
                family = GaugeMetricFamily(name, f"Cache {item.name} state (1 = current)", labels=["state"])
                states = _STATES[item.name]
                for state in (*states, *(() if value in states else (value,))):
                    family.add_metric([state], 1.0 if state == value else 0.0)
                yield family
            elif isinstance(value, int | float):
                if item.name in _GAUGES:
                    yield GaugeMetricFamily(name, f"Cache {item.name.replace('_', ' ')}", value=value)
                else:
                    yield CounterMetricFamily(name, f"Cache {item.name.replace('_', ' ')}", value=value)


class HttpMetrics:
    """Request count and latency per method, route template and status, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests", "HTTP requests served", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end",
            ["method", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )


class PrometheusMiddleware:
    """Pure ASGI middleware recording :class:`HttpMetrics` for every HTTP request.

    The ``route`` label is the matched route's template (``/api/dealership/{id}``), never the raw path, so the
    number of series stays bounded whatever clients send; unmatched paths share the label ``<unmatched>``.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
