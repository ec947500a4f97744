"""OpenTelemetry metrics and traces for a :class:`~hybridcache.HybridCache` (the optional ``otel`` extra).

``instrument(cache)`` adds, on the given (or global) providers:

* **metrics**, as observable instruments read from ``cache.stats()`` at collection time, so the hot path keeps its
  plain integer counters and pays nothing: ``hybridcache.hits`` (``cache.level`` = ``l1``/``l2``),
  ``hybridcache.misses``, ``hybridcache.handler_runs``, ``hybridcache.invalidations`` (``direction`` =
  ``published``/``received``/``failed``), ``hybridcache.stale`` (``kind``), ``hybridcache.l2.errors``,
  ``hybridcache.l1.entries``, ``hybridcache.invalidations.pending`` and ``hybridcache.circuit.state`` (one
  0/1 series per ``state``); plus the histograms ``hybridcache.l2.read.duration`` and
  ``hybridcache.factory.duration`` (seconds), recorded by the spans below. Every series carries ``cache.name``
  (``{ServiceName}:{CacheVersion}``).
* **traces**: a span per L2 read (``hybridcache.l2.read``, kind CLIENT), per factory run (``hybridcache.factory``;
  the factory's own spans nest under it, and its exception is recorded) and per invalidation
  (``hybridcache.invalidate``). Attributes: ``cache.name``, ``cache.namespace`` — only the *first segment* of
  the logical key (``Dealership`` for ``Dealership:Search:ford:10``, ``-`` for a key without a ``:``), never the
  key itself nor any user text in it — ``cache.level`` (``l2``/``factory``) and ``cache.hit``; an L2 read Redis
  could not answer also carries ``error.type`` and an error status. An L1 hit makes no span: that path stays a
  few dictionary operations. A batch (``get_or_create_many``, ``get_many``) makes one L2-read span and one
  factory span, named by its first key; its L2 read is a hit when every key was.

The ``opentelemetry`` packages are imported only by :func:`instrument`; without them hybridcache works as usual
and :func:`instrument` raises :class:`ImportError` naming the extra to install.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hybridcache._core.tracing import CacheTracer, SpanHandle, report_error
from hybridcache.keys import SEPARATOR
from hybridcache.metrics import package_version

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from hybridcache.cache import HybridCache
    from hybridcache.metrics import CacheStats

__all__ = [
    "FLAT_KEY_NAMESPACE",
    "CacheTracer",
    "Instrumentation",
    "SpanHandle",
    "add_tracer",
    "instrument",
    "key_namespace",
    "prefix_namespace",
    "remove_tracer",
    "report_error",
]

_NAME = "hybridcache"
_MAX_NAMESPACE = 64
_CIRCUIT_STATES = ("closed", "open", "half-open")


# The namespace label of a key without a separator: its text may be anything (an id, a user's input), and one
# label value per key would grow metric series without bound.
FLAT_KEY_NAMESPACE = "-"


def key_namespace(key: str) -> str:
    """The first ``:`` segment of a logical key, the only part of a key that telemetry records.

    ``Dealership:Search:ford:10`` → ``Dealership``. A key without a separator (``user42``) records
    :data:`FLAT_KEY_NAMESPACE`, never its text. Bounded to 64 characters.
    """
    head, separator, _ = key.partition(SEPARATOR)
    if not separator:
        return FLAT_KEY_NAMESPACE
    return head[:_MAX_NAMESPACE] if head else "*"


def prefix_namespace(prefix: str) -> str:
    """:func:`key_namespace` for an invalidated prefix, which names a namespace even without a separator:
    ``Dealership`` → ``Dealership``; the empty prefix (``clear()``) is ``*``. Bounded to 64 characters."""
    head = prefix.split(SEPARATOR, 1)[0]
    return head[:_MAX_NAMESPACE] if head else "*"


class _Operation:
    """One traced operation: an OpenTelemetry span, plus a duration histogram when one is given."""

    __slots__ = ("_attributes", "_error", "_histogram", "_hit", "_manager", "_name", "_span", "_started", "_tracer")

    def __init__(
        self, tracer: Tracer, name: str, attributes: dict[str, AttributeValue], histogram: Histogram | None
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._histogram = histogram
        hit = attributes.get("cache.hit")
        self._hit: bool | None = hit if isinstance(hit, bool) else None
        self._error: str | None = None
        self._started = 0.0
        self._manager: AbstractContextManager[Span] | None = None
        self._span: Span | None = None

    def set_hit(self, hit: bool) -> None:
        self._hit = hit
        if self._span is not None:
            self._span.set_attribute("cache.hit", hit)

    def set_error(self, kind: str) -> None:
        from opentelemetry.trace import StatusCode

        self._error = kind
        if self._span is not None:
            self._span.set_attribute("error.type", kind)
            self._span.set_status(StatusCode.ERROR)

    def __enter__(self) -> _Operation:
        from opentelemetry.trace import SpanKind

        kind = SpanKind.CLIENT if self._name.endswith("l2.read") else SpanKind.INTERNAL
        self._manager = self._tracer.start_as_current_span(self._name, kind=kind, attributes=self._attributes)
        self._span = self._manager.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        elapsed = time.perf_counter() - self._started
        if self._histogram is not None:
            attributes = {k: v for k, v in self._attributes.items() if k in ("cache.name", "cache.namespace")}
            if self._hit is not None:
                attributes["cache.hit"] = self._hit
            if exc_type is not None:
                attributes["error.type"] = exc_type.__qualname__
            elif self._error is not None:
                attributes["error.type"] = self._error
            self._histogram.record(elapsed, attributes)
        assert self._manager is not None
        return self._manager.__exit__(exc_type, exc, tb)


class _Tracer:
    """:class:`CacheTracer` over an OpenTelemetry tracer."""

    def __init__(self, tracer: Tracer, cache_name: str, l2_duration: Histogram, factory_duration: Histogram) -> None:
        self._tracer = tracer
        self._cache_name = cache_name
        self._l2_duration = l2_duration
        self._factory_duration = factory_duration

    def l2_read(self, key: str) -> _Operation:
        attributes: dict[str, AttributeValue] = {
            "cache.name": self._cache_name,
            "cache.namespace": key_namespace(key),
            "cache.level": "l2",
            "db.system.name": "redis",
        }
        return _Operation(self._tracer, f"{_NAME}.l2.read", attributes, self._l2_duration)

    def factory(self, key: str) -> _Operation:
        attributes: dict[str, AttributeValue] = {
            "cache.name": self._cache_name,
            "cache.namespace": key_namespace(key),
            "cache.level": "factory",
            "cache.hit": False,
        }
        return _Operation(self._tracer, f"{_NAME}.factory", attributes, self._factory_duration)

    def invalidation(self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> _Operation:
        namespaces = sorted({*map(key_namespace, keys), *map(prefix_namespace, prefixes)})
        attributes: dict[str, AttributeValue] = {
            "cache.name": self._cache_name,
            "cache.namespace": ",".join(namespaces)[: _MAX_NAMESPACE * 4],
            "cache.invalidation.keys": len(keys),
            "cache.invalidation.prefixes": len(prefixes),
            "cache.invalidation.tags": len(tags),
        }
        return _Operation(self._tracer, f"{_NAME}.invalidate", attributes, None)


def add_tracer(cache: HybridCache, tracer: CacheTracer) -> None:
    """Hook ``tracer`` into ``cache``, beside any tracer already there (each sees every operation, in the order
    they were added). :func:`instrument` and :func:`hybridcache.prometheus.register_cache_latency` use it."""
    cache.tracer = tracer if cache.tracer is None else _Chain(cache.tracer, tracer)


def remove_tracer(cache: HybridCache, tracer: CacheTracer) -> None:
    """Unhook ``tracer`` from ``cache``, leaving the others in place."""
    cache.tracer = _without(cache.tracer, tracer)


def _without(current: CacheTracer | None, tracer: CacheTracer) -> CacheTracer | None:
    if current is tracer:
        return None
    if not isinstance(current, _Chain):
        return current
    first, second = _without(current.first, tracer), _without(current.second, tracer)
    if first is None or second is None:
        return first or second
    return current if (first, second) == (current.first, current.second) else _Chain(first, second)


class _Chain:
    """Two tracers on one cache: every operation enters the first's context, then the second's."""

    def __init__(self, first: CacheTracer, second: CacheTracer) -> None:
        self.first = first
        self.second = second

    def l2_read(self, key: str) -> _Pair:
        return _Pair(self.first.l2_read(key), self.second.l2_read(key))

    def factory(self, key: str) -> _Pair:
        return _Pair(self.first.factory(key), self.second.factory(key))

    def invalidation(self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> _Pair:
        return _Pair(self.first.invalidation(keys, prefixes, tags), self.second.invalidation(keys, prefixes, tags))


class _Pair:
    """Enters two operation contexts in order and leaves them in reverse; ``set_hit``/``set_error`` reach both."""

    __slots__ = ("_inner", "_inner_handle", "_outer", "_outer_handle")

    def __init__(self, outer: AbstractContextManager[SpanHandle], inner: AbstractContextManager[SpanHandle]) -> None:
        self._outer = outer
        self._inner = inner
        self._outer_handle: SpanHandle | None = None
        self._inner_handle: SpanHandle | None = None

    def set_hit(self, hit: bool) -> None:
        for handle in (self._outer_handle, self._inner_handle):
            if handle is not None:
                handle.set_hit(hit)

    def set_error(self, kind: str) -> None:
        report_error(self._outer_handle, kind)
        report_error(self._inner_handle, kind)

    def __enter__(self) -> _Pair:
        self._outer_handle = self._outer.__enter__()
        try:
            self._inner_handle = self._inner.__enter__()
        except BaseException:
            self._outer.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            self._inner.__exit__(exc_type, exc, tb)
        finally:
            suppressed = self._outer.__exit__(exc_type, exc, tb)
        return suppressed


class Instrumentation:
    """What :func:`instrument` set up; :meth:`uninstrument` stops tracing and empties the metric callbacks."""

    def __init__(self, cache: HybridCache, tracer: CacheTracer) -> None:
        self.cache = cache
        self.tracer = tracer
        self.active = True

    def uninstrument(self) -> None:
        """Stop tracing this cache; its observable instruments report nothing from now on."""
        self.active = False
        remove_tracer(self.cache, self.tracer)


def instrument(
    cache: HybridCache,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Export ``cache``'s counters as OpenTelemetry metrics and trace its L2 reads, factory runs and invalidations.

    ``None`` providers mean the global ones (``opentelemetry.metrics`` / ``opentelemetry.trace``). Its tracer is
    added beside any other on the cache (:func:`add_tracer`); call it once per cache. Raises
    :class:`ImportError` when ``opentelemetry-api`` is not installed (``pip install 'hybridcache[otel]'``).
    """
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import Observation
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the packages
        raise ImportError(
            "hybridcache.telemetry needs OpenTelemetry: pip install 'hybridcache[otel]' "
            "(opentelemetry-api, plus opentelemetry-sdk to export)"
        ) from exc
    version = package_version()
    meter = (meter_provider or metrics.get_meter_provider()).get_meter(_NAME, version)
    otel_tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(_NAME, version)
    cache_name = f"{cache.settings.service_name}:{cache.settings.cache_version}"
    base: dict[str, AttributeValue] = {"cache.name": cache_name}

    tracer = _Tracer(
        otel_tracer,
        cache_name,
        meter.create_histogram(f"{_NAME}.l2.read.duration", unit="s", description="Duration of L2 (Redis) reads"),
        meter.create_histogram(f"{_NAME}.factory.duration", unit="s", description="Duration of factory runs"),
    )
    handle = Instrumentation(cache, tracer)

    def observe(read: Callable[[CacheStats], Iterable[tuple[float, dict[str, AttributeValue]]]]) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not handle.active:
                return []
            stats = cache.stats()
            return [Observation(value, {**base, **extra}) for value, extra in read(stats)]

        return [callback]

    meter.create_observable_counter(
        f"{_NAME}.hits",
        observe(lambda s: [(s.l1_hits, {"cache.level": "l1"}), (s.l2_hits, {"cache.level": "l2"})]),
        unit="{hit}",
        description="Reads answered by L1 (memory) or L2 (Redis)",
    )
    meter.create_observable_counter(
        f"{_NAME}.misses",
        observe(lambda s: [(s.misses, {})]),
        unit="{miss}",
        description="Reads that found no usable entry in L1 or L2",
    )
    meter.create_observable_counter(
        f"{_NAME}.handler_runs",
        observe(lambda s: [(s.handler_runs, {})]),
        unit="{run}",
        description="Factory (query handler) runs",
    )
    meter.create_observable_counter(
        f"{_NAME}.invalidations",
        observe(
            lambda s: [
                (s.invalidations_published, {"direction": "published"}),
                (s.invalidations_received, {"direction": "received"}),
                (s.invalidation_failures, {"direction": "failed"}),
            ]
        ),
        unit="{invalidation}",
        description="Invalidations published by this instance, received from others, or not published",
    )
    meter.create_observable_counter(
        f"{_NAME}.stale",
        observe(
            lambda s: [
                (s.stale_sets_prevented, {"kind": "set_prevented"}),
                (s.stale_reads_rejected, {"kind": "read_rejected"}),
            ]
        ),
        unit="{entry}",
        description="Values not stored because an invalidation overtook them, or L2 entries refused as stale",
    )
    meter.create_observable_counter(
        f"{_NAME}.l2.errors",
        observe(lambda s: [(s.l2_errors, {})]),
        unit="{error}",
        description="Redis calls that failed or were skipped by the open circuit",
    )
    meter.create_observable_gauge(
        f"{_NAME}.l1.entries",
        observe(lambda s: [(s.l1_entries, {})]),
        unit="{entry}",
        description="Entries in L1",
    )
    meter.create_observable_gauge(
        f"{_NAME}.invalidations.pending",
        observe(lambda s: [(s.pending_invalidations, {})]),
        unit="{invalidation}",
        description="Invalidations waiting to be published (Redis unavailable)",
    )
    meter.create_observable_gauge(
        f"{_NAME}.outbox.depth",
        observe(lambda s: [(s.outbox_depth, {})]),
        unit="{row}",
        description="Outbox rows whose invalidations are not yet published",
    )
    meter.create_observable_gauge(
        f"{_NAME}.outbox.lag",
        observe(lambda s: [(s.outbox_lag_seconds, {})]),
        unit="s",
        description="Age of the oldest outbox row not yet published",
    )
    meter.create_observable_gauge(
        f"{_NAME}.circuit.state",
        observe(
            lambda s: [
                (1 if s.circuit == state else 0, {"state": state})
                for state in (*_CIRCUIT_STATES, *(() if s.circuit in _CIRCUIT_STATES else (s.circuit,)))
            ]
        ),
        description="The Redis circuit breaker's state: 1 for the current state, 0 for the others",
    )
    add_tracer(cache, tracer)
    return handle
