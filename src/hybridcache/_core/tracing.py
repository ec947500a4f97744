"""The hooks the cache calls on its slow paths (L2 reads, factory runs, invalidations) when a tracer is set.

:mod:`hybridcache.telemetry` (OpenTelemetry) and :mod:`hybridcache.prometheus` implement them; the cache knows only
these protocols, so it imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["CacheTracer", "SpanHandle", "report_error"]


class SpanHandle(Protocol):
    """What the cache may tell a running span."""

    def set_hit(self, hit: bool) -> None: ...

    def set_error(self, kind: str) -> None:
        """The operation failed without raising (an L2 read that Redis could not answer is a miss to the caller);
        ``kind`` names the error class. ``set_hit`` may still follow: the error wins. Optional at run time: a
        handle written before this method existed (``set_hit`` only) is told nothing, and the read still works."""


class CacheTracer(Protocol):
    """The hooks :class:`~hybridcache.HybridCache` calls on its slow paths when ``cache.tracer`` is set.

    Keys are *logical* keys (no ``{ServiceName}:{CacheVersion}:`` namespace); implementations decide what of
    them may be recorded. A batch call (``get_or_create_many``, ``get_many``) is one ``l2_read`` around its one L2
    read (``set_hit(True)`` only when every key was a current entry) and one ``factory`` around its one factory
    call, each given the batch's first key.
    """

    def l2_read(self, key: str) -> AbstractContextManager[SpanHandle]: ...

    def factory(self, key: str) -> AbstractContextManager[SpanHandle]: ...

    def invalidation(
        self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]
    ) -> AbstractContextManager[SpanHandle]: ...


def report_error(span: SpanHandle | None, kind: str) -> None:
    """``span.set_error(kind)`` if the span has it: ``set_error`` came after tracers were written against
    ``set_hit`` alone, and such a tracer must not turn a degraded read into an exception."""
    set_error = getattr(span, "set_error", None)
    if set_error is not None:
        set_error(kind)
