"""Prometheus exposition for ``GET /metrics``: the cache's counters and HTTP request counts and latency.

Each application gets its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one process
(tests) never collide on metric names. Cache metrics come from the library's
:class:`hybridcache.prometheus.CacheStatsCollector` (re-exported here), read from ``cache.stats()`` at scrape time;
this module keeps only what is the service's own: HTTP request counts and latency.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridcache.prometheus import CacheStatsCollector

__all__ = ["CacheStatsCollector", "HttpMetrics", "PrometheusMiddleware"]


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
