"""Counters a cache keeps, and their snapshot (:class:`CacheStats`) for ``/api/cache/stats`` and exporters."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import itertools
from typing import Any, Protocol


class Counters:
    """Plain integer counters incremented on the hot path (an attribute increment, nothing more)."""

    __slots__ = (
        "corrupt_entries",
        "eager_refreshes",
        "factory_errors",
        "factory_timeouts",
        "fail_safe_activations",
        "handler_runs",
        "invalidation_failures",
        "invalidations_published",
        "invalidations_received",
        "l1_hits",
        "l2_errors",
        "l2_hits",
        "misses",
        "stale_reads_rejected",
        "stale_sets_prevented",
    )

    def __init__(self) -> None:
        self.l1_hits = 0
        self.l2_hits = 0
        self.misses = 0
        self.handler_runs = 0
        self.invalidations_published = 0
        self.invalidations_received = 0
        self.invalidation_failures = 0
        self.stale_sets_prevented = 0
        self.stale_reads_rejected = 0
        self.corrupt_entries = 0
        self.l2_errors = 0
        self.factory_errors = 0
        self.factory_timeouts = 0
        self.fail_safe_activations = 0
        self.eager_refreshes = 0


def count_value(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on ``counter`` (started at 0), without advancing it.

    An ``itertools.count`` is the counter several threads may share: ``next()`` on it is one C call, atomic
    under the GIL, where ``x += 1`` on an attribute can lose increments (and so make a counter go back).
    Its value is read from its ``repr`` (``count(17)``), the only way to read it without advancing it;
    ``tests/unit/test_metrics.py`` pins that form.
    """
    return int(repr(counter)[6:-1])


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache instance's counters and state.

    ``handler_runs`` counts factory (query handler) executions; ``misses`` counts reads that found no usable
    entry in L1 or L2. ``stale_sets_prevented`` counts values not stored because an invalidation overtook their
    computation; ``stale_reads_rejected`` counts entries found in L2 but refused because a generation moved.
    ``backplane_gaps`` counts invalidation messages found missing (by number, or by the heartbeat) and
    ``backplane_resyncs`` every reload of the generation table (on each (re)subscription and after each gap).
    ``outbox_depth`` and ``outbox_lag_seconds`` are the attached outbox's unpublished rows and the age of the
    oldest of them, as its relay last measured them (0 without an outbox; see :class:`OutboxGauge`).
    """

    l1_hits: int
    l2_hits: int
    misses: int
    handler_runs: int
    invalidations_published: int
    invalidations_received: int
    invalidation_failures: int
    pending_invalidations: int
    stale_sets_prevented: int
    stale_reads_rejected: int
    corrupt_entries: int
    l2_errors: int
    factory_errors: int
    factory_timeouts: int
    fail_safe_activations: int
    eager_refreshes: int
    backplane_gaps: int
    backplane_resyncs: int
    l1_entries: int
    l1_evictions: int
    circuit: str
    redis: str
    backplane: str
    outbox_depth: int = 0
    outbox_lag_seconds: float = 0.0

    @property
    def hit_ratio(self) -> float:
        reads = self.l1_hits + self.l2_hits + self.misses
        return (self.l1_hits + self.l2_hits) / reads if reads else 0.0

    def as_dict(self) -> dict[str, Any]:
        """camelCase keys, as the reference service's ``/api/cache/stats`` returns them."""
        return {_camel(field.name): getattr(self, field.name) for field in dataclasses.fields(self)}


class OutboxGauge(Protocol):
    """What :meth:`HybridCache.attach_outbox` reads for :class:`CacheStats` (``hybridcache.persistence.Outbox``)."""

    @property
    def depth(self) -> int:
        """Rows not yet published, as last measured."""
        ...

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest row not yet published (0 when there is none), as last measured."""
        ...


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@functools.cache
def package_version() -> str:
    """The installed hybridcache version (reported with each instance's counters and on telemetry), or "unknown"."""
    try:
        return importlib.metadata.version("hybridcache")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
