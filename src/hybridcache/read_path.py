"""The read path of :class:`~hybridcache.cache.HybridCache`: L2 reads, the factory run, and storing its result.

Everything here runs only on an L1 miss. The order of a miss: read L2 (outside the single flight, so a hit costs
no task) → join or start the key's single flight (optionally a distributed one) → capture the generations the
value will depend on → run the factory under its soft/hard timeouts → store it in L2 only if no generation moved
(atomically in Redis) and in L1 only if no invalidation of the key was applied here meanwhile. Fail-safe
fallbacks and eager refreshes are decided here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hybridcache.generations import fields_for
from hybridcache.memory import L1Entry
from hybridcache.redis import Capture, L2UnavailableError
from hybridcache.serialization import CorruptEntryError, EntryHeader, ValueCodec, codec_for, decode_entry, encode_entry

if TYPE_CHECKING:
    from hybridcache.telemetry import CacheTracer

from hybridcache._state import _NEVER, CacheState, TtlLike, seconds_of
from hybridcache.errors import FactoryTimeoutError

logger = logging.getLogger("hybridcache")


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


class _LeaderGone(Exception):
    """The caller reading L2 for a key was cancelled or failed before telling its followers anything."""


class ReadPath(CacheState):
    """The miss path of the cache (a mixin of :class:`~hybridcache.cache.HybridCache`)."""

    async def _lead(self, full_key: str, codec: ValueCodec, eager: float | None, plan: Callable[[], _Plan]) -> Any:
        """Read L2 for ``full_key`` on behalf of every caller that arrives meanwhile, then run or share the load.

        One caller per key (the leader) reads L2, without creating a task — the common L2 hit costs one GET.
        Callers arriving while it reads or while the load it started is in flight wait on its *lead*: they get
        its L2 hit, or join its load. The lead is kept until that load completes, so every caller overlapping a
        load shares it (one GET and one factory run per key per process, however many callers). An invalidation
        of the key drops the lead (see ``WritePath._apply_locally``): later callers never share an older read.
        """
        lead: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        leads = self._leads
        leads[full_key] = lead
        handed_over = False
        try:
            found = await self._read_l2(full_key, codec, eager, plan)
            if found is not None and found.fresh:
                self.counters.l2_hits += 1
                lead.set_result(found)
                return found.value
            planned = plan()
            flight = self._flights.start(full_key, lambda: self._load(planned, found))
            lead.set_result(flight)
            handed_over = True
            flight.add_done_callback(lambda _: leads.pop(full_key, None) if leads.get(full_key) is lead else None)
            return await asyncio.shield(flight)
        finally:
            if not lead.done():
                lead.set_exception(_LeaderGone())
                lead.exception()  # followers may all be gone: never report it as unretrieved
            if not handed_over and leads.get(full_key) is lead:
                del leads[full_key]

    def _plan(
        self,
        key: str,
        full_key: str,
        factory: Callable[[], Awaitable[Any]],
        ttl: TtlLike | None,
        type_: Any,
        tags: Sequence[str],
        fail_safe: bool | None,
        soft_timeout: TtlLike | None,
        hard_timeout: TtlLike | None,
        eager_refresh: float | None,
    ) -> _Plan:
        defaults = self.settings.fail_safe
        soft = soft_timeout if soft_timeout is not None else defaults.factory_soft_timeout
        hard = hard_timeout if hard_timeout is not None else defaults.factory_hard_timeout
        eager = eager_refresh if eager_refresh is not None else self.settings.eager_refresh_threshold
        if eager is not None and not 0 < eager < 1:
            raise ValueError(f"eager_refresh must be between 0 and 1 (exclusive), got {eager}")
        return _Plan(
            full_key=full_key,
            factory=factory,
            codec=codec_for(type_),
            seconds=self._default_ttl if ttl is None else seconds_of(ttl),
            tags=tuple(tags),
            fail_safe=defaults.enabled if fail_safe is None else fail_safe,
            soft_timeout=None if soft is None else seconds_of(soft),
            hard_timeout=None if hard is None else seconds_of(hard),
            eager_refresh=eager,
        )

    def _revalidate(self, entry: L1Entry) -> bool:
        table = self._table
        if not table.trusted:
            # Invalidations may be passing us by: serve only what is young enough to be within the bound.
            return entry.created >= self._clock() - self._disconnected_ttl
        if table.is_current(entry.epoch, entry.generations, entry.fields):
            entry.checked = table.version
            return True
        assert self._l1 is not None
        self._l1.remove(entry.key)
        return False

    async def _load(self, plan: _Plan, stale: _Found | None) -> Any:
        """The miss path, run once per key however many callers share it (L2 was already read by the caller)."""
        if stale is None and plan.fail_safe:
            stale = self._stale_from_l1(plan.full_key)
        self.counters.misses += 1
        if self._dlock is not None:
            return await self._load_with_lock(plan, stale)
        return await self._compute(plan, stale)

    async def _load_with_lock(self, plan: _Plan, stale: _Found | None) -> Any:
        assert self._dlock is not None
        try:
            token = await self._dlock.try_acquire(plan.full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1
            return await self._compute(plan, stale)
        if token is not None:
            try:
                # Double-checked: another instance may have filled the key and released its lease between our L2
                # miss and this lease. Without the second read its whole run fits in that gap and we repeat it.
                filled = await self._filled_by_another(plan)
                if filled is not None:
                    return filled.value
                return await self._compute(plan, stale)
            finally:
                await self._dlock.release(plan.full_key, token)
        notice = self._dlock.register(plan.full_key)
        try:
            for attempt in range(2):  # once right after registering (it may be filled already), once after notice
                filled = await self._filled_by_another(plan)
                if filled is not None:
                    return filled.value
                if attempt == 0 and not await self._dlock.wait(notice):
                    break
        finally:
            self._dlock.unregister(plan.full_key, notice)
        return await self._compute(plan, stale)

    async def _filled_by_another(self, plan: _Plan) -> _Found | None:
        """A fresh L2 entry for ``plan``'s key, counted as the L2 hit it turned out to be (not as a miss)."""
        found = await self._read_l2(plan.full_key, plan.codec, plan.eager_refresh, lambda: plan)
        if found is None or not found.fresh:
            return None
        self.counters.l2_hits += 1
        self.counters.misses -= 1
        return found

    async def _compute(self, plan: _Plan, stale: _Found | None) -> Any:
        """Run the factory (with its timeouts) and store the result; fall back to ``stale`` under fail-safe."""
        capture = await self._capture(plan)
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
            return self._serve_stale(plan, stale, exc)
        await self._store(plan, value, capture)
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
        self._background.add(task)
        task.add_done_callback(lambda finished: self._store_in_background(plan, capture, finished))
        kind = "soft" if limit == soft else "hard"
        raise FactoryTimeoutError(f"factory for {plan.full_key} exceeded its {kind} timeout of {limit}s")

    def _store_in_background(self, plan: _Plan, capture: _Capture, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        store = asyncio.ensure_future(self._store(plan, task.result(), capture))
        self._background.add(store)
        store.add_done_callback(self._background.discard)

    def _serve_stale(self, plan: _Plan, stale: _Found, exc: Exception) -> Any:
        self.counters.fail_safe_activations += 1
        logger.warning(
            "Factory for %s failed (%s: %s); serving the stale value (fail-safe)",
            plan.full_key,
            exc.__class__.__name__,
            exc,
        )
        if self._l1 is not None:
            # Keep serving it for the throttle period instead of hammering a failing factory on every request.
            throttle = float(self.settings.fail_safe.throttle_duration_seconds)
            self._put_l1(
                plan.full_key, stale.value, throttle, stale.epoch, stale.generations, stale.fields, retain=stale.retain
            )
        return stale.value

    def _stale_from_l1(self, full_key: str) -> _Found | None:
        entry = self._l1.peek(full_key) if self._l1 is not None else None
        if entry is None or entry.retain_until <= self._clock():
            return None
        table = self._table
        if not table.trusted or not table.is_current(entry.epoch, entry.generations, entry.fields):
            return None
        return _Found(
            entry.value, False, entry.epoch, entry.generations, entry.fields, entry.retain_until - self._clock()
        )

    def _refresh_later(self, plan: _Plan) -> None:
        """Start one background refresh of ``plan``'s key (eager refresh); errors are logged, never raised."""
        refresh_key = plan.full_key + "\x00refresh"
        if refresh_key in self._flights:
            return
        self.counters.eager_refreshes += 1

        async def refresh() -> None:
            try:
                await self._compute(plan, None)
            except Exception as exc:  # the entry in hand stays valid until it expires
                logger.warning("Eager refresh of %s failed: %s: %s", plan.full_key, exc.__class__.__name__, exc)

        task = asyncio.ensure_future(self._flights.run(refresh_key, refresh))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _read_l2(
        self,
        full_key: str,
        codec: ValueCodec,
        eager_refresh: float | None = None,
        plan: Callable[[], _Plan] | None = None,
    ) -> Awaitable[_Found | None]:
        """What L2 holds for ``full_key`` if it is current (fresh or, past its TTL, a fail-safe candidate).

        Traced when ``tracer`` is set; without one this adds no coroutine to the L2 path.
        """
        if self.tracer is None:
            return self._read_l2_untraced(full_key, codec, eager_refresh, plan)
        return self._read_l2_traced(self.tracer, full_key, codec, eager_refresh, plan)

    async def _read_l2_traced(
        self,
        tracer: CacheTracer,
        full_key: str,
        codec: ValueCodec,
        eager_refresh: float | None,
        plan: Callable[[], _Plan] | None,
    ) -> _Found | None:
        with tracer.l2_read(full_key[self._namespace_length :]) as span:
            found = await self._read_l2_untraced(full_key, codec, eager_refresh, plan)
            span.set_hit(found is not None and found.fresh)
            return found

    async def _read_l2_untraced(
        self,
        full_key: str,
        codec: ValueCodec,
        eager_refresh: float | None,
        plan: Callable[[], _Plan] | None,
    ) -> _Found | None:
        assert self._l2 is not None
        if self._pending and not await self._flush_pending():
            self.counters.l2_errors += 1
            return None
        mark = self._log.sequence
        try:
            raw = await self._l2.get(full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1
            return None
        except CorruptEntryError as exc:  # a value of another Redis type under the key
            await self._discard_corrupt(full_key, exc)
            return None
        if raw is None:
            return None
        try:
            header, body = decode_entry(raw)
            fields = fields_for(full_key, self._namespace_length, header.tags)
            table = self._table
            current = (
                table.is_current(header.epoch, header.generations, fields)
                if table.trusted
                else await self._is_current_remotely(header, fields)
            )
            if not current:
                self.counters.stale_reads_rejected += 1
                return None
            value = None if body is None else codec.decode(body)
        except CorruptEntryError as exc:
            await self._discard_corrupt(full_key, exc)
            return None
        wall = self._wall()
        remaining = header.expires - wall
        if remaining <= 0:
            retain = header.retain - wall
            return _Found(value, False, header.epoch, header.generations, fields, retain) if retain > 0 else None
        refresh_in = _NEVER
        if plan is not None and eager_refresh is not None:
            refresh_in = header.created + eager_refresh * (header.expires - header.created) - wall
            if refresh_in <= 0:
                self._refresh_later(plan())
                refresh_in = _NEVER
        if self._l1 is not None and not self._log.covers_since(mark, full_key, self._namespace_length, header.tags):
            self._put_l1(
                full_key,
                value,
                remaining,
                header.epoch,
                header.generations,
                fields,
                refresh_in=refresh_in,
                retain=header.retain - wall,
            )
        return _Found(value, True, header.epoch, header.generations, fields, header.retain - wall)

    async def _is_current_remotely(self, header: EntryHeader, fields: tuple[str, ...]) -> bool:
        """Check an entry's stamp against Redis itself (while the local mirror is not trusted)."""
        assert self._l2 is not None
        try:
            epoch, counters = await self._l2.current_generations(fields)
        except L2UnavailableError:
            return False
        recorded = header.generations
        return epoch == header.epoch and all(recorded.get(f, 0) >= g for f, g in counters.items())

    async def _discard_corrupt(self, full_key: str, exc: CorruptEntryError) -> None:
        self.counters.corrupt_entries += 1
        logger.warning("Removed undecodable entry %s: %s", full_key, exc)
        assert self._l2 is not None
        try:
            await self._l2.delete(full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1

    async def _capture(self, plan: _Plan) -> _Capture:
        """What a value about to be computed depends on: Redis's generations, ours, and our log position."""
        mark = self._log.sequence
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
        return _Capture(remote, snapshot, mark, fields)

    async def _store(self, plan: _Plan, value: Any, capture: _Capture) -> None:
        seconds = plan.seconds
        if value is None:
            seconds = min(seconds, self._null_ttl)
        if seconds <= 0:
            return
        if self._jitter > 0:
            seconds += random.uniform(0, self._jitter)
        retain = self._fail_safe_duration if plan.fail_safe else 0.0
        remote = capture.remote
        if remote is not None:
            assert self._l2 is not None
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
            payload = encode_entry(None if value is None else plan.codec.encode(value), header)
            ttl_ms = max(1, int((seconds + retain) * 1000))
            try:
                if self._stale_set_protection:
                    stored = await self._l2.set_if_current(plan.full_key, payload, ttl_ms, remote)
                else:
                    await self._l2.set(plan.full_key, payload, ttl_ms)
                    stored = True
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                if not stored:
                    self.counters.stale_sets_prevented += 1
                    return
        if self._l1 is None:
            return
        if self._stale_set_protection and self._log.covers_since(
            capture.mark, plan.full_key, self._namespace_length, plan.tags
        ):
            self.counters.stale_sets_prevented += 1
            return
        if not self._stale_set_protection:
            remote = None  # pretend the value was computed now: the unprotected cache-aside race
            capture = _Capture(None, self._table.snapshot(capture.fields), capture.mark, capture.fields)
        epoch, generations = (remote.epoch, remote.generations) if remote else (self._table.epoch, capture.snapshot)
        refresh_in = _NEVER if plan.eager_refresh is None else plan.eager_refresh * seconds
        self._put_l1(
            plan.full_key,
            value,
            seconds,
            epoch,
            generations,
            capture.fields,
            refresh_in=refresh_in,
            retain=seconds + retain,
        )

    def _put_l1(
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
