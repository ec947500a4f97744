"""Many keys in one call: one L1 pass, one L2 read, one factory call for the keys still missing.

:meth:`HybridCache.get_or_create_many <hybridcache.HybridCache.get_or_create_many>` and ``get_many`` hand their
keys here. Each key keeps the rules of a single key (docs/invalidation.md §4); only the I/O is shared:

1. **L1**, key by key, judged exactly as the single-key fast path judges an entry.
2. **Who loads what.** A key whose L2 read or load is already under way in this process (a ``get_or_create`` or
   another batch leads it, see ``loads.py``) is *joined*: its outcome is awaited, it is never loaded twice. The
   batch opens the lead of every other key itself, so a single-key caller arriving meanwhile waits for the batch
   instead of reading and loading on its own.
3. **L2**: the keys the batch leads are read in one round trip (:meth:`ReadPath.read_l2_many`: one ``MGET``, one
   per node on a cluster); a hit is promoted to L1 and answers the key's followers.
4. **The load.** The keys still missing become loads in flight at once (a future per key, published as the key's
   load, so single-key callers and other batches join it); then one task captures their generations (one round
   trip), calls ``factory_many`` once with all of them, and stores the results (one round trip): each store is
   checked against its own capture, atomically in Redis, and kept out of L1 when an invalidation applied here
   since covers it. An invalidation detaches a key's batch load as it detaches any load, so nobody arriving after
   it joins the older result.

A key the factory does not return is a ``None`` result: cached as ``None`` (for at most ``NullExpirationSeconds``)
and ``None`` in the answer, as when a single key's factory returns ``None`` — an id that no longer exists does not
reach the database on every call. Keys it returns that were not asked for are ignored: no capture covers them.

Not shared across instances: the distributed lock (``DistributedLock.Enabled``) leases single keys, and a batch
takes no lease, so another instance may load a key a batch is loading (each store is still checked).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from hybridcache._core.fill_path import _NEVER, REFRESHING, FillPath, _Capture, _Found, _Plan
from hybridcache._core.read_path import ReadPath, _LeaderGone
from hybridcache.errors import FactoryTimeoutError
from hybridcache.metrics import Counters

if TYPE_CHECKING:
    from hybridcache._core.loads import InFlightLoads
    from hybridcache._core.tracing import CacheTracer
    from hybridcache._generations import GenerationTable
    from hybridcache._memory import MemoryStore
    from hybridcache._redis.l2 import RedisL2
    from hybridcache._serialization import ValueCodec

__all__ = ["BatchPath", "FactoryMany", "one_of"]

logger = logging.getLogger("hybridcache")

FactoryMany = Callable[[list[str]], Awaitable[Mapping[str, Any]]]
# Rounds over the keys whose leader gave up (was cancelled) before loading them; the last round joins only loads.
_ROUNDS: Final = 3


class BatchPath:
    """The many-key read path of one cache, over the same parts as the single-key one: the read path (L2 reads),
    the fill path (captures, stores), L1, the table and the loads in flight. Its own state is the batch loads it
    started (kept referenced until they end); the Redis side is given by :meth:`connect` at start."""

    def __init__(
        self,
        *,
        reader: ReadPath,
        filler: FillPath,
        l1: MemoryStore | None,
        table: GenerationTable,
        loads: InFlightLoads,
        counters: Counters,
        namespace_length: int,
        clock: Callable[[], float],
    ) -> None:
        self.counters = counters
        self.tracer: CacheTracer | None = None
        self._reader = reader
        self._filler = filler
        self._l1 = l1
        self._table = table
        self._loads = loads
        self._namespace_length = namespace_length
        self._clock = clock
        self._l2: RedisL2 | None = None
        self._running: set[asyncio.Future[None]] = set()

    def connect(self, l2: RedisL2) -> None:
        """Read from ``l2`` from now on (without it a batch goes from L1 straight to its factory)."""
        self._l2 = l2

    # ------------------------------------------------------------------ reads

    async def get_many(self, full_keys: Sequence[str], codec: ValueCodec) -> dict[str, Any]:
        """The current value of each key that has one (L1, then one L2 read for the rest); absent keys are left
        out. Counted per key as ``get`` counts."""
        values: dict[str, Any] = {}
        missing = self._from_l1(full_keys, values, None)
        if missing and self._l2 is not None:
            for full_key, found in zip(missing, await self._reader.read_l2_many(missing, codec), strict=True):
                if found is not None and found.fresh:
                    values[full_key] = found.value
                    self.counters.l2_hits += 1
        self.counters.misses += len(full_keys) - len(values)
        return values

    async def get_or_create_many(
        self, full_keys: Sequence[str], factory_many: FactoryMany, plan_for: Callable[[str], _Plan]
    ) -> dict[str, Any]:
        """The value of every key (distinct), computing the missing ones with one call of ``factory_many``.

        ``plan_for(full_key)`` builds a key's plan (its TTL, tags, codec and resilience options); it is called
        only for keys that miss L1 or are due an eager refresh.
        """
        values: dict[str, Any] = {}
        due: list[str] = []
        missing = self._from_l1(full_keys, values, due)
        if due:
            self._refresh_later([plan_for(full_key) for full_key in due], factory_many)
        if not missing:
            return values
        plans = {full_key: plan_for(full_key) for full_key in missing}
        for round_ in range(_ROUNDS):
            lead = self._l2 is not None and round_ < _ROUNDS - 1
            missing = await self._round(missing, plans, factory_many, values, lead=lead)
            if not missing:
                break
        return values

    def _from_l1(self, full_keys: Sequence[str], values: dict[str, Any], due: list[str] | None) -> list[str]:
        """Put every current L1 value in ``values`` and return the keys it misses; with ``due``, note there the keys
        whose entry passed its eager-refresh point (each noted once, as the single-key fast path does)."""
        l1 = self._l1
        if l1 is None:
            return list(full_keys)
        missing = []
        now = self._clock()
        version = self._table.version
        revalidate = self._reader.revalidate
        for full_key in full_keys:
            entry = l1.get(full_key, now)
            if entry is not None and (entry.checked == version or revalidate(entry)):
                values[full_key] = entry.value
                if due is not None and now >= entry.refresh_at:
                    entry.refresh_at = _NEVER
                    due.append(full_key)
            else:
                missing.append(full_key)
        self.counters.l1_hits += len(full_keys) - len(missing)
        return missing

    async def _round(
        self,
        full_keys: list[str],
        plans: dict[str, _Plan],
        factory_many: FactoryMany,
        values: dict[str, Any],
        *,
        lead: bool,
    ) -> list[str]:
        """One round over ``full_keys``: join what is under way, read L2 for the rest (``lead``), load what is still
        missing; every value found goes into ``values``. Returns the keys to go round again: those whose leader
        gave up before it read L2 or started their load."""
        loads = self._loads
        joined: list[tuple[str, asyncio.Future[Any], bool]] = []  # key, what it waits on, whether that is a lead
        leads: dict[str, asyncio.Future[Any]] = {}
        ours: list[tuple[_Plan, _Found | None, asyncio.Future[Any]]] = []
        for full_key in full_keys:
            under_way = loads.lead_of(full_key) if lead else None
            if under_way is not None:
                joined.append((full_key, under_way, True))
            elif (flight := loads.flight_of(full_key)) is not None:
                joined.append((full_key, flight, False))
            elif lead:
                leads[full_key] = loads.open_lead(full_key)
            else:
                load = asyncio.get_running_loop().create_future()
                ours.append((plans[full_key], None, load))
                loads.adopt(full_key, load)  # no await since flight_of: nothing else can be in flight
        try:
            if leads:
                await self._read_for(leads, plans, factory_many, values, joined, ours)
        finally:
            if ours:  # published as the keys' loads: they must be settled whatever happens to this caller
                task = asyncio.ensure_future(self._load(ours, factory_many))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        for plan, _, load in ours:
            values[plan.full_key] = await asyncio.shield(load)
        again = []
        for full_key, under_way, is_lead in joined:
            try:
                outcome = await asyncio.shield(under_way)
            except _LeaderGone:
                again.append(full_key)
                continue
            if not is_lead:
                values[full_key] = outcome
            elif isinstance(outcome, _Found):  # the leader's L2 hit, counted as a single-key follower counts it
                self.counters.l2_hits += 1
                values[full_key] = outcome.value
            else:  # the load the leader started
                values[full_key] = await asyncio.shield(outcome)
        return again

    async def _read_for(
        self,
        leads: dict[str, asyncio.Future[Any]],
        plans: dict[str, _Plan],
        factory_many: FactoryMany,
        values: dict[str, Any],
        joined: list[tuple[str, asyncio.Future[Any], bool]],
        ours: list[tuple[_Plan, _Found | None, asyncio.Future[Any]]],
    ) -> None:
        """Read L2 for the keys the batch leads and settle each lead: with the hit, or with the key's load."""
        loads = self._loads
        led = list(leads)
        handed_over: set[str] = set()
        due: list[_Plan] = []
        try:
            codec = plans[led[0]].codec
            found = await self._reader.read_l2_many(led, codec, [plans[k] for k in led], due.append)
            for full_key, hit in zip(led, found, strict=True):
                if hit is not None and hit.fresh:
                    self.counters.l2_hits += 1
                    leads[full_key].set_result(hit)
                    values[full_key] = hit.value
                    continue
                load = asyncio.get_running_loop().create_future()
                flight = loads.hand_over(full_key, leads[full_key], _given(load))
                handed_over.add(full_key)
                if flight is load:
                    ours.append((plans[full_key], hit, load))
                else:  # a load started meanwhile (after an invalidation detached our lead): newer than ours
                    joined.append((full_key, flight, False))
        finally:
            for full_key, lead in leads.items():
                if not lead.done():
                    lead.set_exception(_LeaderGone())
                    lead.exception()  # followers may all be gone: never report it as unretrieved
                if full_key not in handed_over:
                    loads.close_lead(full_key, lead)
        if due:
            self._refresh_later(due, factory_many)

    # ------------------------------------------------------------------ loads

    async def _load(
        self, items: list[tuple[_Plan, _Found | None, asyncio.Future[Any]]], factory_many: FactoryMany
    ) -> None:
        """Load the keys of ``items`` with one factory call and settle each key's load (its value, its fail-safe
        fallback, or the factory's exception). Runs as a task of its own: a cancelled caller stops nobody."""
        plans = [plan for plan, _, _ in items]
        try:
            self.counters.misses += len(items)
            stale = [
                found if found is not None or not plan.fail_safe else self._filler.stale_from_l1(plan.full_key)
                for plan, found, _ in items
            ]
            try:
                values = await self._fill(plans, stale, factory_many)
            except Exception as exc:
                self._fail(items, stale, exc)
                return
            for (_, _, load), value in zip(items, values, strict=True):
                if not load.done():
                    load.set_result(value)
        finally:
            for _, _, load in items:
                if not load.done():
                    load.cancel()

    async def _fill(self, plans: list[_Plan], stale: Sequence[_Found | None], factory_many: FactoryMany) -> list[Any]:
        """Capture, run ``factory_many`` once, store: the values in ``plans``' order (None for a key the factory
        left out). Raises what the factory raised (then nothing is stored)."""
        keys = [plan.full_key[self._namespace_length :] for plan in plans]
        fallback = all(found is not None for found in stale)
        captures = await self._filler.capture_many(plans)
        self.counters.handler_runs += len(plans)
        mapping = await self._factory(plans, keys, captures, factory_many, fallback)
        values = [mapping.get(key) for key in keys]
        await self._filler.store_many(list(zip(plans, values, captures, strict=True)))
        return values

    async def _factory(
        self,
        plans: list[_Plan],
        keys: list[str],
        captures: list[_Capture],
        factory_many: FactoryMany,
        fallback: bool,
    ) -> Mapping[str, Any]:
        """``factory_many(keys)``, traced as one factory run named by the first key."""
        if self.tracer is None:
            return await self._timed(plans, keys, captures, factory_many, fallback)
        with self.tracer.factory(keys[0]):
            return await self._timed(plans, keys, captures, factory_many, fallback)

    async def _timed(
        self,
        plans: list[_Plan],
        keys: list[str],
        captures: list[_Capture],
        factory_many: FactoryMany,
        fallback: bool,
    ) -> Mapping[str, Any]:
        """The factory call under the batch's timeouts: the soft one only when every key has a fail-safe fallback
        (else some caller would get an error where waiting gave a value). A call past its timeout keeps running
        and what it returns is stored, under the same checks."""
        options = plans[0]  # every plan of a batch carries the batch's options
        soft = options.soft_timeout if options.fail_safe and fallback else None
        hard = options.hard_timeout
        if soft is None and hard is None:
            return _mapping(await factory_many(list(keys)))
        task = asyncio.ensure_future(factory_many(list(keys)))
        limit = min(t for t in (soft, hard) if t is not None)
        done, _ = await asyncio.wait((task,), timeout=limit)
        if done:
            return _mapping(task.result())

        async def store(result: Any) -> None:
            try:
                mapping = _mapping(result)
            except TypeError as exc:
                logger.warning("factory_many for %s, … finished after its timeout: %s", keys[0], exc)
                return
            await self._filler.store_many(
                [(plan, mapping.get(key), capture) for plan, key, capture in zip(plans, keys, captures, strict=True)]
            )

        self._filler.finish_in_background(task, store)
        kind = "soft" if limit == soft else "hard"
        raise FactoryTimeoutError(
            f"factory_many for {len(keys)} keys ({keys[0]}, …) exceeded its {kind} timeout of {limit}s"
        )

    def _fail(
        self,
        items: list[tuple[_Plan, _Found | None, asyncio.Future[Any]]],
        stale: Sequence[_Found | None],
        exc: Exception,
    ) -> None:
        """The factory failed: each key gets its fail-safe fallback if it has one, else the exception."""
        if isinstance(exc, FactoryTimeoutError):
            self.counters.factory_timeouts += len(items)
        else:
            self.counters.factory_errors += len(items)
        served = 0
        for (plan, _, load), fallback in zip(items, stale, strict=True):
            if load.done():
                continue
            if fallback is not None and plan.fail_safe:
                load.set_result(self._filler.serve_stale(plan, fallback, exc, log=False))
                served += 1
            else:
                load.set_exception(exc)
        if served:
            logger.warning(
                "Factory for %d keys (%s, …) failed (%s: %s); serving %d stale values (fail-safe)",
                len(items),
                items[0][0].full_key,
                exc.__class__.__name__,
                exc,
                served,
            )

    # ------------------------------------------------------------------ eager refresh

    def _refresh_later(self, plans: list[_Plan], factory_many: FactoryMany) -> None:
        """Refresh the keys of ``plans`` in the background with one factory call, skipping those already being
        refreshed (by a batch or a single key); callers never wait for it, and its errors are logged."""
        loads = self._loads
        fresh = [plan for plan in plans if plan.full_key + REFRESHING not in loads]
        if not fresh:
            return
        task = asyncio.ensure_future(self._refresh(fresh, factory_many))
        for plan in fresh:
            loads.adopt(plan.full_key + REFRESHING, task)
        self._filler.keep_in_background(task)

    async def _refresh(self, plans: list[_Plan], factory_many: FactoryMany) -> None:
        self.counters.eager_refreshes += len(plans)
        try:
            await self._fill(plans, [None] * len(plans), factory_many)
        except Exception as exc:  # the entries in hand stay valid until they expire
            logger.warning(
                "Eager refresh of %d keys (%s, …) failed: %s: %s",
                len(plans),
                plans[0].full_key,
                exc.__class__.__name__,
                exc,
            )


async def one_of(factory_many: FactoryMany, key: str) -> Any:
    """One key's value by way of ``factory_many`` (what a batch key's plan names as its factory)."""
    return _mapping(await factory_many([key])).get(key)


def _mapping(result: Any) -> Mapping[str, Any]:
    if not isinstance(result, Mapping):
        raise TypeError(f"factory_many must return a mapping of keys to values, not {type(result).__name__}")
    return result


def _given(load: asyncio.Future[Any]) -> Callable[[], asyncio.Future[Any]]:
    return lambda: load
