"""Filling a key: run the factory under its timeouts and store the result, or fall back to a stale value.

The second half of an L1 miss (the first, in ``read_path.py``, reads L2 and decides who loads). Before the factory
runs, the generations the value depends on are captured; afterwards the value is stored in L2 only if none of them
moved (atomically in Redis) and in L1 only if no invalidation of the key was applied here meanwhile. Fail-safe
fallbacks (serving a stale value when the factory fails or is slow) and eager refreshes are decided here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from hybridcache._generations import fields_for
from hybridcache._memory import L1Entry
from hybridcache._redis.l2 import Capture, L2UnavailableError, RedisL2
from hybridcache._serialization import EntryHeader, ValueCodec, encode_entry
from hybridcache.errors import FactoryTimeoutError
from hybridcache.metrics import Counters
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from hybridcache._core.coherence import Coherence
    from hybridcache._core.loads import InFlightLoads
    from hybridcache._core.tracing import CacheTracer
    from hybridcache._generations import GenerationTable
    from hybridcache._memory import MemoryStore
    from hybridcache._redis.backplane import Backplane
    from hybridcache._redis.lock import DistributedSingleFlight

logger = logging.getLogger("hybridcache")

_NEVER: Final = float("inf")
# Appended to a key, the name its eager refresh runs under in the loads in flight (one refresh per key at a time).
REFRESHING: Final = "\x00refresh"
TtlLike = timedelta | float | int


def seconds_of(ttl: TtlLike) -> float:
    return ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)


async def _no_factory() -> Any:
    raise AssertionError("set() never runs a factory")


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """Everything one ``get_or_create`` call decided, built once on the slow path."""

    full_key: str
    factory: Callable[[], Awaitable[Any]]
    codec: ValueCodec
    seconds: float
    tags: tuple[str, ...]
    fail_safe: bool
    soft_timeout: float | None
    hard_timeout: float | None
    eager_refresh: float | None


class _Found(NamedTuple):
    """A current value read from L2 (or kept in L1): fresh, or a fail-safe fallback past its TTL.

    A named tuple rather than a frozen dataclass: one is built on every L2 hit, and a tuple is built in a third
    of the time.
    """

    value: Any
    fresh: bool
    epoch: str
    generations: Mapping[str, int]
    fields: tuple[str, ...]
    retain: float  # seconds from now it may still serve as a fail-safe fallback


@dataclasses.dataclass(frozen=True, slots=True)
class _Capture:
    """Generations read before a factory runs: from Redis (None when unreachable), our mirror, our log position."""

    remote: Capture | None
    snapshot: dict[str, int]
    mark: int
    fields: tuple[str, ...]
    started: float  # this process's clock before Redis was asked: the entry's life counts from here


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """A computed value as it is to be stored: seconds fresh, seconds kept after that as a fail-safe fallback, and
    (when its capture came from Redis) the L2 payload and its TTL."""

    seconds: float
    retain: float
    payload: bytes | None
    ttl_ms: int


class FillPath:
    """Computes and stores values: the collaborator the miss path (:class:`~hybridcache._core.read_path.ReadPath`)
    hands loads to, and the cache its ``set``.

    Built with only what it uses; the Redis side (L2, the distributed lock, the backplane) is given by
    :meth:`connect` when the cache starts. It owns its background tasks (refreshes, stores of timed-out
    factories) and its tracer hook (factory spans); the cache lends it L1, the generation table, the invalidation state
    (:class:`~hybridcache._core.coherence.Coherence`), the loads in flight and the counters.
    """

    def __init__(
        self,
        settings: CacheSettings,
        *,
        l1: MemoryStore | None,
        table: GenerationTable,
        coherence: Coherence,
        loads: InFlightLoads,
        counters: Counters,
        namespace_length: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        stale_set_protection: bool = True,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.tracer: CacheTracer | None = None
        self.background: set[asyncio.Future[Any]] = set()
        self._l1 = l1
        self._table = table
        self._coherence = coherence
        self._loads = loads
        self._namespace_length = namespace_length
        self._clock = clock
        self._wall = wall_clock
        self._stale_set_protection = stale_set_protection
        self._l1_max_ttl = float(settings.memory_cache.default_expiration_seconds)
        self._null_ttl = float(settings.null_expiration_seconds)
        self._disconnected_ttl = float(settings.backplane.disconnected_expiration_seconds)
        self._jitter = float(settings.jitter_max_duration_seconds)
        self._compress_from = settings.compression_threshold_bytes
        self._fail_safe_duration = settings.fail_safe.max_duration_minutes * 60.0
        self._retention = settings.generation_retention_hours * 3600.0
        self._retention_cut_logged = False
        self._l2: RedisL2 | None = None
        self._dlock: DistributedSingleFlight | None = None
        self._backplane: Backplane | None = None

    def connect(self, l2: RedisL2, dlock: DistributedSingleFlight | None, backplane: Backplane | None) -> None:
        """Use Redis from now on: ``l2`` for entries, ``dlock`` for leases, ``backplane`` to ask for a resync."""
        self._l2, self._dlock, self._backplane = l2, dlock, backplane

    async def compute(self, plan: _Plan, stale: _Found | None) -> Any:
        """Run the factory (with its timeouts) and store the result; fall back to ``stale`` under fail-safe."""
        capture = await self.capture(plan)
        self.counters.handler_runs += 1
        try:
            if self.tracer is None:
                value = await self._run_factory(plan, capture, stale is not None)
            else:
                with self.tracer.factory(plan.full_key[self._namespace_length :]):
                    value = await self._run_factory(plan, capture, stale is not None)
        except Exception as exc:
            if isinstance(exc, FactoryTimeoutError):
                self.counters.factory_timeouts += 1
            else:
                self.counters.factory_errors += 1
            if stale is None or not plan.fail_safe:
                raise
            return self.serve_stale(plan, stale, exc)
        await self.store(plan, value, capture)
        return value

    async def _run_factory(self, plan: _Plan, capture: _Capture, stale_available: bool) -> Any:
        soft = plan.soft_timeout if plan.fail_safe and stale_available else None
        hard = plan.hard_timeout
        if soft is None and hard is None:
            return await plan.factory()
        task = asyncio.ensure_future(plan.factory())
        limit = min(t for t in (soft, hard) if t is not None)
        done, _ = await asyncio.wait((task,), timeout=limit)
        if done:
            return task.result()
        # Let it finish in the background and store what it returns (the stale-set checks still apply).
        self.background.add(task)
        task.add_done_callback(lambda finished: self._store_in_background(plan, capture, finished))
        kind = "soft" if limit == soft else "hard"
        raise FactoryTimeoutError(f"factory for {plan.full_key} exceeded its {kind} timeout of {limit}s")

    def _store_in_background(self, plan: _Plan, capture: _Capture, task: asyncio.Future[Any]) -> None:
        self.background.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        store = asyncio.ensure_future(self.store(plan, task.result(), capture))
        self.background.add(store)
        store.add_done_callback(self.background.discard)

    def serve_stale(self, plan: _Plan, stale: _Found, exc: Exception, *, log: bool = True) -> Any:
        """``stale``'s value for a caller whose factory failed (fail-safe), kept in L1 for the throttle period.
        ``log=False``: the caller logs the failure itself (a batch, once for all its keys)."""
        self.counters.fail_safe_activations += 1
        if log:
            logger.warning(
                "Factory for %s failed (%s: %s); serving the stale value (fail-safe)",
                plan.full_key,
                exc.__class__.__name__,
                exc,
            )
        if self._l1 is not None:
            # Keep serving it for the throttle period instead of hammering a failing factory on every request.
            throttle = float(self.settings.fail_safe.throttle_duration_seconds)
            self.put_l1(
                plan.full_key, stale.value, throttle, stale.epoch, stale.generations, stale.fields, retain=stale.retain
            )
        return stale.value

    def stale_from_l1(self, full_key: str) -> _Found | None:
        entry = self._l1.peek(full_key) if self._l1 is not None else None
        if entry is None or entry.retain_until <= self._clock():
            return None
        table = self._table
        if not table.trusted or not table.is_current(entry.epoch, entry.generations, entry.fields):
            return None
        return _Found(
            entry.value, False, entry.epoch, entry.generations, entry.fields, entry.retain_until - self._clock()
        )

    def finish_in_background(self, task: asyncio.Future[Any], store: Callable[[Any], Awaitable[None]]) -> None:
        """Keep ``task`` (a factory run past its timeout) running after its caller gave up, and ``store`` what it
        returns (the stale-set checks still apply); both are waited for by the cache's ``close()``."""

        def stored(finished: asyncio.Future[Any]) -> None:
            self.background.discard(finished)
            if finished.cancelled() or finished.exception() is not None:
                return
            self.keep_in_background(asyncio.ensure_future(store(finished.result())))

        self.background.add(task)
        task.add_done_callback(stored)

    def keep_in_background(self, task: asyncio.Future[Any]) -> None:
        """Hold ``task`` until it ends (the cache's ``close()`` waits for it, within a bound)."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def refresh_later(self, plan: _Plan) -> None:
        """Start one background refresh of ``plan``'s key (eager refresh); errors are logged, never raised.

        With the distributed lock the refresh runs under the key's lease, so of the instances that reach a hot
        key's refresh point together one refreshes it; the others skip theirs (the holder is refreshing or
        loading the key, and its value reaches them through L2). Without Redis to ask, it refreshes anyway.
        """
        refresh_key = plan.full_key + REFRESHING
        if refresh_key in self._loads:
            return

        async def refresh() -> None:
            try:
                await self._refresh_under_lease(plan)
            except Exception as exc:  # the entry in hand stays valid until it expires
                logger.warning("Eager refresh of %s failed: %s: %s", plan.full_key, exc.__class__.__name__, exc)

        task = asyncio.ensure_future(self._loads.run(refresh_key, refresh))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _refresh_under_lease(self, plan: _Plan) -> None:
        """Refresh ``plan``'s key, under its lease when the distributed lock is on (counted only when it runs)."""
        dlock = self._dlock
        token = None
        if dlock is not None:
            try:
                token = await dlock.try_acquire(plan.full_key)
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                if token is None:
                    return  # another instance holds the lease: it is refreshing or loading the key
        self.counters.eager_refreshes += 1
        try:
            await self.compute(plan, None)
        finally:
            if dlock is not None and token is not None:
                await dlock.release(plan.full_key, token)

    async def capture(self, plan: _Plan) -> _Capture:
        """What a value about to be computed depends on: Redis's generations, ours, and our log position."""
        mark = self._coherence.log.sequence
        started = self._clock()
        fields = fields_for(plan.full_key, self._namespace_length, plan.tags)
        snapshot = self._table.snapshot(fields)
        remote = None
        if self._l2 is not None:
            table = self._table
            mirror = (table.epoch, snapshot) if self._l2.cluster and table.trusted and table.epoch else None
            try:
                remote = await self._l2.capture(plan.full_key, fields, mirror)
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                self._saw_epoch(remote.epoch)
        return _Capture(remote, snapshot, mark, fields, started)

    def _saw_epoch(self, epoch: str) -> None:
        """A capture read ``epoch`` in Redis: if it is not the trusted table's, ask for a resync."""
        table = self._table
        if epoch != table.epoch and table.trusted and self._backplane is not None:
            # Redis lost the generation hash (FLUSHDB, eviction) and drew a new epoch: until the table
            # learns it, every stamp of the new epoch is rejected here and caching is off. Learn it now.
            self._backplane.request_resync()

    async def capture_many(self, plans: Sequence[_Plan]) -> list[_Capture]:
        """:meth:`capture` for several keys: one log position, and their generations read from Redis in one round
        trip (per server)."""
        mark = self._coherence.log.sequence
        started = self._clock()
        table = self._table
        fields = [fields_for(plan.full_key, self._namespace_length, plan.tags) for plan in plans]
        snapshots = [table.snapshot(each) for each in fields]
        remotes: list[Capture | None] = [None] * len(plans)
        if self._l2 is not None:
            mirror = (table.epoch, snapshots) if self._l2.cluster and table.trusted and table.epoch else None
            requests = [(plan.full_key, each) for plan, each in zip(plans, fields, strict=True)]
            try:
                captured = await self._l2.capture_many(requests, mirror)
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                remotes = list(captured)
                for epoch in {each.epoch for each in captured}:
                    self._saw_epoch(epoch)
        return [
            _Capture(remote, snapshot, mark, each, started)
            for remote, snapshot, each in zip(remotes, snapshots, fields, strict=True)
        ]

    async def store(self, plan: _Plan, value: Any, capture: _Capture) -> None:
        entry = self._entry(plan, value, capture)
        if entry is None:
            return
        remote = capture.remote
        if remote is not None:
            assert self._l2 is not None
            assert entry.payload is not None
            try:
                if self._stale_set_protection:
                    stored = await self._l2.set_if_current(plan.full_key, entry.payload, entry.ttl_ms, remote)
                else:
                    await self._l2.set(plan.full_key, entry.payload, entry.ttl_ms)
                    stored = True
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                if not stored:
                    self.counters.stale_sets_prevented += 1
                    return
        self._store_l1(plan, value, capture, entry)

    async def store_many(self, items: Sequence[tuple[_Plan, Any, _Capture]]) -> None:
        """:meth:`store` for several values, their L2 stores in one round trip (per server): each still checked
        against its own capture, atomically in Redis, and kept out of L1 when an invalidation covered it."""
        entries = [(plan, value, capture, self._entry(plan, value, capture)) for plan, value, capture in items]
        writes = [
            (plan.full_key, entry.payload, entry.ttl_ms, capture.remote)
            for plan, _, capture, entry in entries
            if entry is not None and entry.payload is not None and capture.remote is not None
        ]
        refused: set[str] = set()
        if writes:
            assert self._l2 is not None
            try:
                if self._stale_set_protection:
                    stored = await self._l2.set_many_if_current(writes)
                    refused = {write[0] for write, ok in zip(writes, stored, strict=True) if not ok}
                else:
                    await self._l2.set_many([write[:3] for write in writes])
            except L2UnavailableError:
                self.counters.l2_errors += 1
        for plan, value, capture, entry in entries:
            if entry is None:
                continue
            if plan.full_key in refused:
                self.counters.stale_sets_prevented += 1
                continue
            self._store_l1(plan, value, capture, entry)

    def _entry(self, plan: _Plan, value: Any, capture: _Capture) -> _Entry | None:
        """How ``value`` is to be stored: its lifetimes and (with a capture from Redis) its L2 payload; None when
        it is not stored at all (a lifetime of 0, or a capture older than the generation retention)."""
        seconds = plan.seconds
        if value is None:
            seconds = min(seconds, self._null_ttl)
        if seconds <= 0:
            return None
        if self._jitter > 0:
            seconds += random.uniform(0, self._jitter)
        retain = self._fail_safe_duration if plan.fail_safe else 0.0
        remote = capture.remote
        if remote is None:
            return _Entry(seconds, retain, None, 0)
        now = self._wall()
        header = EntryHeader(
            now,
            now + seconds,
            remote.epoch,
            remote.generations,
            plan.tags,
            value is None,
            retain=now + seconds + retain,
        )
        payload = encode_entry(None if value is None else plan.codec.encode(value), header, self._compress_from)
        ttl_ms = max(1, int((seconds + retain) * 1000))
        # No entry outlives its capture by more than the generation retention: after that, a generation
        # bumped since the capture may have been forgotten (generations.py), and the stamp could look current.
        life_ms = int((self._retention - (self._clock() - capture.started)) * 1000)
        if life_ms <= 0:
            self.counters.stale_sets_prevented += 1
            return None
        if ttl_ms > life_ms:
            ttl_ms = life_ms
            self._warn_retention_cut(plan.full_key, seconds + retain)
        return _Entry(seconds, retain, payload, ttl_ms)

    def _store_l1(self, plan: _Plan, value: Any, capture: _Capture, entry: _Entry) -> None:
        """Put a computed value in L1 unless an invalidation applied here since its capture covers it."""
        if self._l1 is None:
            return
        if self._stale_set_protection and self._coherence.log.covers_since(
            capture.mark, plan.full_key, self._namespace_length, plan.tags
        ):
            self.counters.stale_sets_prevented += 1
            return
        remote = capture.remote
        if not self._stale_set_protection:
            remote = None  # pretend the value was computed now: the unprotected cache-aside race
            capture = _Capture(
                None, self._table.snapshot(capture.fields), capture.mark, capture.fields, capture.started
            )
        epoch, generations = (remote.epoch, remote.generations) if remote else (self._table.epoch, capture.snapshot)
        seconds = entry.seconds
        refresh_in = _NEVER if plan.eager_refresh is None else plan.eager_refresh * seconds
        self.put_l1(
            plan.full_key,
            value,
            seconds,
            epoch,
            generations,
            capture.fields,
            refresh_in=refresh_in,
            retain=seconds + entry.retain,
        )

    def _warn_retention_cut(self, full_key: str, wanted: float) -> None:
        if not self._retention_cut_logged:
            self._retention_cut_logged = True
            logger.warning(
                "L2 lifetime of %s cut from %.0f s to GenerationRetentionHours (%.0f s); logged once per cache",
                full_key,
                wanted,
                self._retention,
            )

    def put_l1(
        self,
        full_key: str,
        value: Any,
        seconds: float,
        epoch: str | None,
        generations: Mapping[str, int],
        fields: tuple[str, ...],
        *,
        refresh_in: float = _NEVER,
        retain: float = 0.0,
    ) -> None:
        assert self._l1 is not None
        table = self._table
        seconds = min(seconds, self._l1_max_ttl)
        if table.trusted:
            if not table.is_current(epoch or "", generations, fields):
                return
            checked = table.version
        else:
            seconds = min(seconds, self._disconnected_ttl)
            retain = 0.0
            checked = 0
        now = self._clock()
        # A fail-safe fallback is kept in L1 no longer than L1 would keep a fresh value past its expiry.
        retain_until = now + min(retain, seconds + self._l1_max_ttl) if retain > seconds else 0.0
        self._l1.put(
            L1Entry(
                full_key,
                value,
                now + seconds,
                now,
                epoch or "",
                generations,
                fields,
                checked,
                refresh_at=now + refresh_in,
                retain_until=retain_until,
            )
        )
