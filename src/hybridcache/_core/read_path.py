"""The read path of :class:`~hybridcache.cache.HybridCache` on an L1 miss: read L2, then decide who loads.

Everything here runs only on an L1 miss. The order: read L2 (outside the single flight, so a hit costs no task)
→ join or start the key's single flight (optionally a distributed one, see ``_redis/lock.py``) → hand the load to
``fill_path.py``, which runs the factory and stores its result. L2 entries are decoded and checked against the
current generations here, and promoted to L1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hybridcache._core.fill_path import _NEVER, FillPath, TtlLike, _Found, _Plan, seconds_of
from hybridcache._core.tracing import report_error
from hybridcache._generations import fields_for, is_behind
from hybridcache._memory import L1Entry
from hybridcache._redis.l2 import L2UnavailableError
from hybridcache._serialization import CorruptEntryError, EntryHeader, ValueCodec, codec_for, decode_entry
from hybridcache.metrics import Counters
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from hybridcache._core.coherence import Coherence
    from hybridcache._core.loads import InFlightLoads
    from hybridcache._core.tracing import CacheTracer, SpanHandle
    from hybridcache._generations import GenerationTable
    from hybridcache._memory import MemoryStore
    from hybridcache._redis.l2 import RedisL2
    from hybridcache._redis.lock import DistributedSingleFlight

logger = logging.getLogger("hybridcache")


class _LeaderGone(Exception):
    """The caller reading L2 for a key was cancelled or failed before telling its followers anything."""


class ReadPath:
    """The miss path of one cache: the collaborator :class:`~hybridcache.cache.HybridCache` hands every L1 miss
    to (``plan``, ``lead``, ``load``, ``read_l2``, ``revalidate``). Loads go to its ``filler``
    (:class:`~hybridcache._core.fill_path.FillPath`); the Redis side is given by :meth:`connect` at start."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        filler: FillPath,
        l1: MemoryStore | None,
        table: GenerationTable,
        coherence: Coherence,
        loads: InFlightLoads,
        counters: Counters,
        namespace_length: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.tracer: CacheTracer | None = None
        self._filler = filler
        self._l1 = l1
        self._table = table
        self._coherence = coherence
        self._loads = loads
        self._namespace_length = namespace_length
        self._clock = clock
        self._wall = wall_clock
        self._default_ttl = settings.default_expiration_minutes * 60.0
        self._disconnected_ttl = float(settings.backplane.disconnected_expiration_seconds)
        self._l2: RedisL2 | None = None
        self._dlock: DistributedSingleFlight | None = None

    def connect(self, l2: RedisL2, dlock: DistributedSingleFlight | None) -> None:
        """Read from ``l2`` from now on, and load under ``dlock``'s leases when the distributed lock is on."""
        self._l2, self._dlock = l2, dlock

    async def lead(self, full_key: str, codec: ValueCodec, eager: float | None, plan: Callable[[], _Plan]) -> Any:
        """Read L2 for ``full_key`` on behalf of every caller that arrives meanwhile, then run or share the load.

        One caller per key (the leader) reads L2, without creating a task — the common L2 hit costs one GET.
        Callers arriving while it reads or while the load it started is in flight wait on its *lead*: they get
        its L2 hit, or join its load. The lead is kept until that load completes, so every caller overlapping a
        load shares it (one GET and one factory run per key per process, however many callers). An invalidation
        of the key drops the lead (see ``Coherence.apply_locally``): later callers never share an older read.
        """
        loads = self._loads
        lead = loads.open_lead(full_key)
        handed_over = False
        try:
            found = await self.read_l2(full_key, codec, eager, plan)
            if found is not None and found.fresh:
                self.counters.l2_hits += 1
                lead.set_result(found)
                return found.value
            planned = plan()
            flight = loads.hand_over(full_key, lead, lambda: self.load(planned, found))
            handed_over = True
            return await asyncio.shield(flight)
        finally:
            if not lead.done():
                lead.set_exception(_LeaderGone())
                lead.exception()  # followers may all be gone: never report it as unretrieved
            if not handed_over:
                loads.close_lead(full_key, lead)

    def plan(
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

    def revalidate(self, entry: L1Entry) -> bool:
        table = self._table
        if not table.trusted:
            # Invalidations may be passing us by: serve only what is young enough to be within the bound, and
            # never what the bumps the table did apply already made stale (untrusted serves less, never more).
            if table.known_stale(entry.epoch, entry.generations, entry.fields):
                assert self._l1 is not None
                self._l1.remove(entry.key)
                return False
            return entry.created >= self._clock() - self._disconnected_ttl
        if table.is_current(entry.epoch, entry.generations, entry.fields):
            entry.checked = table.version
            return True
        assert self._l1 is not None
        self._l1.remove(entry.key)
        return False

    async def load(self, plan: _Plan, stale: _Found | None) -> Any:
        """The miss path, run once per key however many callers share it (L2 was already read by the caller)."""
        if stale is None and plan.fail_safe:
            stale = self._filler.stale_from_l1(plan.full_key)
        if self._dlock is not None:
            return await self._load_with_lock(plan, stale)
        return await self._miss(plan, stale)

    async def _miss(self, plan: _Plan, stale: _Found | None) -> Any:
        """Count the miss, then run the factory: counted only now that it is one, never counted and taken back.

        The counters are exported as monotonic counters (Prometheus, OpenTelemetry) and read at any moment; with
        the distributed lock a load can still turn out to be an L2 hit (another instance filled the key while
        this one waited), and a miss counted before that and taken back after reads as a counter reset.
        """
        self.counters.misses += 1
        return await self._filler.compute(plan, stale)

    async def _load_with_lock(self, plan: _Plan, stale: _Found | None) -> Any:
        """Load under the distributed lease: hold it and compute, or wait for its holder's fill notice.

        A notice that finds nothing in L2 (one from an earlier round, or a holder whose store an invalidation
        refused) sends the waiter back for the lease instead of straight to the factory, so it cannot run beside
        a holder still computing. All waiting fits in one ``WaitTimeoutMilliseconds``; after it, or when Redis
        cannot be asked, the factory runs without the lease (the lease bounds duplication, never progress).
        """
        dlock = self._dlock
        assert dlock is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + dlock.wait_timeout
        while True:
            try:
                token = await dlock.try_acquire(plan.full_key)
            except L2UnavailableError:
                self.counters.l2_errors += 1
                return await self._miss(plan, stale)
            if token is not None:
                try:
                    # Double-checked: another instance may have filled the key and released its lease between our
                    # L2 miss and this lease. Without the second read its whole run fits in that gap and we repeat it.
                    filled = await self._filled_by_another(plan)
                    if filled is not None:
                        return filled.value
                    return await self._miss(plan, stale)
                finally:
                    await dlock.release(plan.full_key, token)
            notice = dlock.register(plan.full_key)
            try:
                # Registered before reading, so a fill between this read and the wait still wakes us.
                filled = await self._filled_by_another(plan)
                if filled is not None:
                    return filled.value
                if not await dlock.wait(notice, deadline - loop.time()):
                    break
                filled = await self._filled_by_another(plan)
                if filled is not None:
                    return filled.value
                if loop.time() >= deadline:
                    # Woken for nothing with the wait used up: a notice landing during each read (the key
                    # invalidated again and again) must not keep this loop going past its one deadline.
                    break
            finally:
                dlock.unregister(plan.full_key, notice)
        return await self._miss(plan, stale)

    async def _filled_by_another(self, plan: _Plan) -> _Found | None:
        """A fresh L2 entry for ``plan``'s key, counted as the L2 hit it turned out to be (the miss is counted only
        when no such entry is found and the factory runs, see :meth:`_miss`)."""
        found = await self.read_l2(plan.full_key, plan.codec, plan.eager_refresh, lambda: plan)
        if found is None or not found.fresh:
            return None
        self.counters.l2_hits += 1
        return found

    def read_l2(
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
            found = await self._read_l2_untraced(full_key, codec, eager_refresh, plan, span)
            span.set_hit(found is not None and found.fresh)
            return found

    async def _read_l2_untraced(
        self,
        full_key: str,
        codec: ValueCodec,
        eager_refresh: float | None,
        plan: Callable[[], _Plan] | None,
        span: SpanHandle | None = None,
    ) -> _Found | None:
        assert self._l2 is not None
        if self._coherence.pending and not await self._coherence.pending.flush():
            self.counters.l2_errors += 1
            report_error(span, "L2UnavailableError")
            return None
        mark = self._coherence.log.sequence
        try:
            raw = await self._l2.get(full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1
            report_error(span, "L2UnavailableError")
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
            return self._admit(full_key, header, body, fields, current, codec, mark, eager_refresh, plan)
        except CorruptEntryError as exc:
            await self._discard_corrupt(full_key, exc)
            return None

    def _admit(
        self,
        full_key: str,
        header: EntryHeader,
        body: bytes | None,
        fields: tuple[str, ...],
        current: bool,
        codec: ValueCodec,
        mark: int,
        eager_refresh: float | None,
        plan: Callable[[], _Plan] | None,
        refresh: Callable[[_Plan], None] | None = None,
    ) -> _Found | None:
        """What an L2 entry read after log position ``mark`` gives, now that its stamp was judged (``current``):
        the value (decoded; :class:`CorruptEntryError` when it cannot be), promoted to L1 unless an invalidation
        applied here since ``mark`` covers it, or a fail-safe candidate, or None. An entry past its eager-refresh
        point hands ``plan()`` to ``refresh`` (default: one refresh of the key, ``FillPath.refresh_later``)."""
        wall = self._wall()
        removals = self._coherence.removals
        if current and removals and removals.refuses(full_key, header.created, wall):
            current = False  # removed here after it was written: Redis lost the DEL (see RecentRemovals)
        if not current:
            self.counters.stale_reads_rejected += 1
            return None
        value = None if body is None else codec.decode(body)
        remaining = header.expires - wall
        if remaining <= 0:
            retain = header.retain - wall
            return _Found(value, False, header.epoch, header.generations, fields, retain) if retain > 0 else None
        refresh_in = _NEVER
        if plan is not None and eager_refresh is not None:
            refresh_in = header.created + eager_refresh * (header.expires - header.created) - wall
            if refresh_in <= 0:
                (refresh or self._filler.refresh_later)(plan())
                refresh_in = _NEVER
        if self._l1 is not None and not self._coherence.log.covers_since(
            mark, full_key, self._namespace_length, header.tags
        ):
            self._filler.put_l1(
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

    def read_l2_many(
        self,
        full_keys: Sequence[str],
        codec: ValueCodec,
        plans: Sequence[_Plan] | None = None,
        refresh: Callable[[_Plan], None] | None = None,
    ) -> Awaitable[list[_Found | None]]:
        """:meth:`read_l2` for several keys (and, with ``plans``, each key's plan: its eager refresh), judged and
        promoted to L1 entry by entry exactly as there: the entries come in one L2 round trip (one per node on a
        cluster); while the table is not trusted, their stamps are checked against Redis in one more.

        Traced as one ``l2_read`` named by the first key, a hit when every key was; ``refresh`` receives the plan of
        each entry past its eager-refresh point.
        """
        if self.tracer is None:
            return self._read_l2_many(full_keys, codec, plans, refresh)
        return self._read_l2_many_traced(self.tracer, full_keys, codec, plans, refresh)

    async def _read_l2_many_traced(
        self,
        tracer: CacheTracer,
        full_keys: Sequence[str],
        codec: ValueCodec,
        plans: Sequence[_Plan] | None,
        refresh: Callable[[_Plan], None] | None,
    ) -> list[_Found | None]:
        with tracer.l2_read(full_keys[0][self._namespace_length :] if full_keys else "") as span:
            found = await self._read_l2_many(full_keys, codec, plans, refresh, span)
            span.set_hit(all(each is not None and each.fresh for each in found))
            return found

    async def _read_l2_many(
        self,
        full_keys: Sequence[str],
        codec: ValueCodec,
        plans: Sequence[_Plan] | None,
        refresh: Callable[[_Plan], None] | None,
        span: SpanHandle | None = None,
    ) -> list[_Found | None]:
        assert self._l2 is not None
        found: list[_Found | None] = [None] * len(full_keys)
        if not full_keys:
            return found
        pending = self._coherence.pending
        if pending and not await pending.flush():  # as in read_l2: the writer never serves what it invalidated
            self.counters.l2_errors += 1
            report_error(span, "L2UnavailableError")
            return found
        mark = self._coherence.log.sequence
        try:
            raws = await self._l2.get_many(full_keys)
        except L2UnavailableError:
            self.counters.l2_errors += 1
            report_error(span, "L2UnavailableError")
            return found
        entries: list[tuple[int, EntryHeader, bytes | None, tuple[str, ...]]] = []
        for index, raw in enumerate(raws):
            if raw is None:
                continue
            try:
                header, body = decode_entry(raw)
            except CorruptEntryError as exc:
                await self._discard_corrupt(full_keys[index], exc)
                continue
            entries.append((index, header, body, fields_for(full_keys[index], self._namespace_length, header.tags)))
        table = self._table
        if table.trusted:
            verdicts = [table.is_current(header.epoch, header.generations, fields) for _, header, _, fields in entries]
        else:
            verdicts = await self._are_current_remotely([(header, fields) for _, header, _, fields in entries])
        for (index, header, body, fields), current in zip(entries, verdicts, strict=True):
            plan = None if plans is None else plans[index]
            eager, planned = (None, None) if plan is None else (plan.eager_refresh, _given(plan))
            try:
                found[index] = self._admit(
                    full_keys[index], header, body, fields, current, codec, mark, eager, planned, refresh
                )
            except CorruptEntryError as exc:
                await self._discard_corrupt(full_keys[index], exc)
        return found

    async def _are_current_remotely(self, entries: Sequence[tuple[EntryHeader, tuple[str, ...]]]) -> list[bool]:
        """:meth:`_is_current_remotely` for several entries: the fields of them all read in one call."""
        if not entries:
            return []
        assert self._l2 is not None
        union = list(dict.fromkeys(field for _, fields in entries for field in fields))
        try:
            epoch, counters = await self._l2.current_generations(union)
        except L2UnavailableError:
            return [False] * len(entries)
        return [
            epoch == header.epoch
            and not is_behind(header.generations, {f: counters[f] for f in fields if f in counters})
            for header, fields in entries
        ]

    async def _is_current_remotely(self, header: EntryHeader, fields: tuple[str, ...]) -> bool:
        """Check an entry's stamp against Redis itself (while the local mirror is not trusted)."""
        assert self._l2 is not None
        try:
            epoch, counters = await self._l2.current_generations(fields)
        except L2UnavailableError:
            return False
        return epoch == header.epoch and not is_behind(header.generations, counters)

    async def _discard_corrupt(self, full_key: str, exc: CorruptEntryError) -> None:
        self.counters.corrupt_entries += 1
        logger.warning("Removed undecodable entry %s: %s", full_key, exc)
        assert self._l2 is not None
        try:
            await self._l2.delete(full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1


def _given(plan: _Plan) -> Callable[[], _Plan]:
    return lambda: plan
