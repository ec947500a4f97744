"""HybridCache: the read and write flows, composed from L1, L2, generations, the backplane and resilience.

Read (``get_or_create``): L1 → L2 (promoted to L1) → the factory, run once per key per process however many
callers wait for it, stored in L2 and then L1. Write (``invalidate`` and friends): drop exact keys, bump prefix and
tag generations and publish, in one atomic Redis script; other instances apply it from the backplane.

Many keys (``get_or_create_many``, ``get_many``, ``set_many``, ``remove_many``): the same rules key by key, with
one L1 pass, one L2 round trip per step (one per node on a cluster) instead of one per key, one factory call for
every key still missing, and one invalidation message (``_core/batch.py``).

Guarantees (see docs/invalidation.md for the argument):
* **No stale set.** The generations a value depends on are read *before* its factory runs; L2 stores it only if
  none moved (atomically, in Redis) and L1 only if no invalidation touching it was applied here meanwhile.
* **Prefix and tag invalidation in O(1).** Nothing is scanned; stale entries stay in Redis until their TTL but are
  never served, because their recorded generations are behind.
* **Bounded staleness across instances.** While the backplane is confirmed, L1 entries are dropped within one
  message delivery of an invalidation; while it is not, L1 entries older than
  ``Backplane.DisconnectedExpirationSeconds`` are not served and L2 reads are checked against Redis directly.
* **Failures never reach the caller** unless the factory itself fails: Redis errors are misses, corrupt entries
  are misses (logged, deleted), and invalidations that cannot be published are applied locally, logged, counted
  and retried when Redis is back.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Self, TypeVar

from hybridcache._generations import (
    GenerationTable,
    new_epoch,
    prefix_field,
    tag_field,
)
from hybridcache._memory import MemoryStore
from hybridcache._redis.backplane import Backplane
from hybridcache._redis.clients import AnyRedis, Redis, RedisClients, connect, wrap_client
from hybridcache._redis.l2 import L2UnavailableError, RedisL2
from hybridcache._redis.lock import DistributedSingleFlight
from hybridcache._redis.registry import InstanceKeys, InstanceRegistry
from hybridcache._resilience import CircuitBreaker
from hybridcache._serialization import codec_for
from hybridcache.decorators import L1_MISS, CachedFunction, cached
from hybridcache.errors import HybridCacheError
from hybridcache.keys import namespace, normalize_prefix, validate_key
from hybridcache.metrics import CacheStats, Counters, OutboxGauge, count_value
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from hybridcache._core.tracing import CacheTracer

from hybridcache._core.batch import BatchPath, one_of
from hybridcache._core.coherence import Coherence
from hybridcache._core.fill_path import _NEVER, FillPath, TtlLike, _Found, _no_factory, _Plan
from hybridcache._core.loads import InFlightLoads
from hybridcache._core.pending import DEFAULT_CLOSE_FLUSH_TIMEOUT
from hybridcache._core.read_path import ReadPath, _LeaderGone
from hybridcache.errors import FactoryTimeoutError

__all__ = ["CacheConnectionError", "FactoryTimeoutError", "HybridCache", "TtlLike"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
_FROM_ANNOTATION: Any = object()
logger = logging.getLogger("hybridcache")

# Concurrent request-path calls to Redis, and so the size of its connection pool (see RedisL2's slots).
_REQUEST_POOL_SIZE: Final = 64


class CacheConnectionError(HybridCacheError):
    """Redis was unreachable at start-up and the configuration says ``abortConnect=true``."""


@dataclass(frozen=True, slots=True)
class CacheInternals:
    """What :attr:`HybridCache.internals` shows: the cache's parts (``None`` where not configured or started)."""

    l1: MemoryStore | None
    l2: RedisL2 | None
    table: GenerationTable
    backplane: Backplane | None
    dlock: DistributedSingleFlight | None
    loads: InFlightLoads
    coherence: Coherence
    reader: ReadPath
    filler: FillPath
    batch: BatchPath
    clients: RedisClients | None
    client: AnyRedis | None


class HybridCache:
    """A two-level cache for one service namespace (``{ServiceName}:{CacheVersion}:``).

    Build it with :meth:`from_settings` and use it as an async context manager (or call :meth:`start` and
    :meth:`close`). Without a ``Configuration`` it runs L1-only; with ``Enabled: false`` every read runs the
    factory and every write is a no-op.
    """

    def __init__(
        self,
        settings: CacheSettings,
        *,
        redis: AnyRedis | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stale_set_protection: bool = True,
        register_instance: bool = True,
    ) -> None:
        """Prefer :meth:`from_settings`. ``redis`` injects a client (not closed by the cache).

        With Redis, the cache reports its counters there every few seconds (``hybridcache._redis.registry``) so
        ``hybridcache stats`` lists it; ``register_instance=False`` turns that off (the CLI's own short-lived cache).

        ``stale_set_protection=False`` turns off the generation checks on store (plain ``SET``, no L1 check): it
        exists only so tests and benchmarks can show what the protection prevents. Never use it in a service.
        """
        self.settings = settings
        self._stale_set_protection = stale_set_protection
        self.instance_id = instance_id or secrets.token_hex(6)
        self._clock = clock
        self._wall = wall_clock
        self._namespace = namespace(settings.service_name, settings.cache_version)
        self._namespace_length = len(self._namespace)
        self._enabled = settings.enabled
        self._outbox: OutboxGauge | None = None
        memory = settings.memory_cache
        self._l1 = MemoryStore(memory.size_limit, clock=clock) if memory.enabled else None
        breaker = settings.circuit_breaker
        self.breaker = CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            break_duration=float(breaker.break_duration_seconds),
            enabled=breaker.enabled,
            name="redis",
        )
        self._client: AnyRedis | None = redis
        self._clients: RedisClients | None = None
        self._l2: RedisL2 | None = None
        self._backplane: Backplane | None = None
        remote = redis is not None or settings.redis_endpoint is not None
        # Without Redis this process is the only authority on generations, so its table is always trusted.
        self._retention_ms = int(settings.generation_retention_hours * 3600 * 1000)
        self._table = GenerationTable(
            epoch=None if remote else new_epoch(),
            trusted=not remote,
            retention_ms=self._retention_ms,
            wall_clock=wall_clock,
        )
        # Per key, the load in flight and the caller reading L2 for everyone before it (see ReadPath.lead).
        self.counters = Counters()
        # L1 hits served to other threads (_l1_hit_in_thread): next() on an itertools.count is atomic under the GIL.
        self._thread_l1_hits = itertools.count()
        self._loads = InFlightLoads()
        self._coherence = Coherence(
            table=self._table,
            namespace=self._namespace,
            instance_id=self.instance_id,
            counters=self.counters,
            l1=self._l1,
            loads=self._loads,
            wall_clock=wall_clock,
        )
        # Factory runs and stores (_core/fill_path.py), and the misses that lead to them (_core/read_path.py).
        self._filler = FillPath(
            settings,
            l1=self._l1,
            table=self._table,
            coherence=self._coherence,
            loads=self._loads,
            counters=self.counters,
            namespace_length=self._namespace_length,
            clock=clock,
            wall_clock=wall_clock,
            stale_set_protection=stale_set_protection,
        )
        self._reader = ReadPath(
            settings,
            filler=self._filler,
            l1=self._l1,
            table=self._table,
            coherence=self._coherence,
            loads=self._loads,
            counters=self.counters,
            namespace_length=self._namespace_length,
            clock=clock,
            wall_clock=wall_clock,
        )
        # Many keys per call (_core/batch.py): one L1 pass, one L2 read, one factory call, over the same parts.
        self._batch = BatchPath(
            reader=self._reader,
            filler=self._filler,
            l1=self._l1,
            table=self._table,
            loads=self._loads,
            counters=self.counters,
            namespace_length=self._namespace_length,
            clock=clock,
        )
        self._dlock: DistributedSingleFlight | None = None
        self._started = False
        self._register_instance = register_instance
        self.instance_registry: InstanceRegistry | None = None  # set by start() when reporting to Redis

    @property
    def tracer(self) -> CacheTracer | None:
        """Tracing hooks on the slow paths (L2 reads, factory runs, invalidations), set by hybridcache.telemetry."""
        return self._reader.tracer

    @tracer.setter
    def tracer(self, tracer: CacheTracer | None) -> None:
        self._reader.tracer = self._filler.tracer = self._batch.tracer = tracer

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def from_settings(cls, settings: CacheSettings, *, redis: AnyRedis | None = None) -> Self:
        """A cache configured by ``settings``; nothing connects until :meth:`start` (or ``async with``)."""
        return cls(settings, redis=redis)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to Redis (if configured) and subscribe to invalidations.

        With ``abortConnect=false`` an unreachable Redis is logged once and the cache serves from L1 until it
        comes back; with ``abortConnect=true`` (StackExchange's default) :class:`CacheConnectionError` is raised.
        """
        if self._started or not self._enabled:
            self._started = True
            return
        endpoint = self.settings.redis_endpoint
        if self._client is None and endpoint is not None:
            self._clients = await connect(
                endpoint,
                operation_timeout=endpoint.operation_timeout or self.settings.operation_timeout_milliseconds / 1000,
                connect_timeout=endpoint.connect_timeout or self.settings.connect_timeout_milliseconds / 1000,
                request_pool_size=_REQUEST_POOL_SIZE + 16,  # headroom over the request slots
                protocol=self.settings.protocol,
            )
            self._client = self._clients.request
        elif self._client is not None:
            self._clients = wrap_client(self._client, connect_timeout=self.settings.connect_timeout_milliseconds / 1000)
        if self._clients is not None and self._client is not None:
            clients = self._clients
            self._l2 = RedisL2(
                self._client,
                instance_name=self.settings.instance_name,
                namespace=self._namespace,
                breaker=self.breaker,
                background_client=clients.background,
                max_concurrency=_REQUEST_POOL_SIZE,
                queue_timeout=self.settings.operation_timeout_milliseconds / 1000,
                cluster=clients.is_cluster,
                retention_ms=self._retention_ms,
            )
            logger.info("Redis %s (%s) as L2 for %s", endpoint or "client", clients.topology, self._namespace)
            self._coherence.connect(self._l2)
            await self._check_reachable(abort=endpoint.abort_connect if endpoint is not None else False)
            lock = self.settings.distributed_lock
            if lock.enabled:
                self._dlock = DistributedSingleFlight(
                    self._l2,
                    self._client,
                    instance_id=self.instance_id,
                    lease_ms=lock.lease_milliseconds,
                    wait_timeout=lock.wait_timeout_milliseconds / 1000,
                )
            if self.settings.backplane.enabled:
                backplane = self.settings.backplane
                self._backplane = Backplane(
                    self._l2,
                    self._table,
                    on_message=self._coherence.on_message,
                    on_resync=self._coherence.on_resync,
                    heartbeat_interval=float(backplane.heartbeat_interval_seconds),
                    heartbeat_timeout=float(backplane.heartbeat_timeout_seconds),
                    on_fill=self._on_fill,
                    subscriber=self._open_subscriber,
                )
                self._coherence.on_epoch_moved(self._backplane.epoch_moved)
            self._filler.connect(self._l2, self._dlock, self._backplane)
            self._reader.connect(self._l2, self._dlock)
            self._batch.connect(self._l2)
            if self._backplane is not None:
                await self._backplane.start()
                await self._backplane.wait_trusted(timeout=self.settings.connect_timeout_milliseconds / 1000)
            if self._register_instance:
                keys = InstanceKeys(self.settings.instance_name, self._namespace)
                self.instance_registry = InstanceRegistry(
                    clients.background, keys=keys, instance_id=self.instance_id, stats=self.stats
                )
                self.instance_registry.start()
        self._started = True

    def _on_fill(self, full_key: str) -> None:
        if self._dlock is not None:
            self._dlock.notify(full_key)

    async def _open_subscriber(self) -> Redis:
        assert self._clients is not None
        assert self._l2 is not None
        return await self._clients.subscriber(self._l2.channel)

    async def _check_reachable(self, *, abort: bool) -> None:
        assert self._l2 is not None
        attempts = 3 if abort else 1
        for attempt in range(attempts):
            try:
                await self._l2.ping()
                return
            except L2UnavailableError as exc:
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if abort:
                    raise CacheConnectionError(
                        f"Redis is not reachable ({self.settings.redis_endpoint}) and abortConnect is true"
                    ) from exc
        logger.warning(
            "Redis is not reachable (%s); serving from L1 and the factory until it is", self.settings.redis_endpoint
        )

    async def close(self, *, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> None:
        """Publish what is still queued, stop the backplane and close the Redis connections this cache opened.

        Invalidations queued while Redis was unreachable are what keeps every other instance from serving the
        old values, so they are not dropped with the process: for up to ``flush_timeout`` seconds close() keeps
        trying to publish them (past an open circuit, 50 ms apart). Any it still could not publish are logged at
        ERROR with their keys and fields; other instances may serve what they cover until it expires.
        """
        await self._coherence.pending.close(flush_timeout)
        if self.instance_registry is not None:
            await self.instance_registry.close(timeout=self.settings.operation_timeout_milliseconds / 1000)
            self.instance_registry = None
        if self._backplane is not None:
            await self._backplane.close()
            self._backplane = None
        background = self._filler.background
        if background:
            # Let background refreshes and timed-out factories finish storing, within a bound.
            await asyncio.wait(list(background), timeout=self.settings.operation_timeout_milliseconds / 1000)
            for task in list(background):
                task.cancel()
        if self._l2 is not None:
            await self._l2.aclose()
        if self._clients is not None:
            await self._clients.aclose()
            if self._clients.owned:
                self._client = None
            self._clients = None
        self._started = False

    async def wait_until_connected(self, timeout: float = 5.0) -> bool:
        """Wait for a confirmed invalidation subscription (True at once when there is no Redis)."""
        if self._backplane is None:
            return self._table.trusted
        return await self._backplane.wait_trusted(timeout)

    # ------------------------------------------------------------------ reads

    async def get_or_create(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> T:
        """The cached value of ``key``, computing it with ``factory`` on a miss.

        ``ttl`` is the L2 lifetime (default ``DefaultExpirationMinutes``); L1 keeps the value for at most
        ``MemoryCache.DefaultExpirationSeconds`` of it. ``type_`` is the declared type, used to decode values read
        back from Redis (pydantic models, dataclasses, containers, ``X | None``...). A ``None`` result is cached
        (for at most ``NullExpirationSeconds``). Concurrent callers of one key in this process share a single
        factory run (across instances too with ``DistributedLock.Enabled``); its exception reaches all of them and
        nothing is cached.

        The other options default to the ``FailSafe`` and ``EagerRefreshThreshold`` settings:
        ``fail_safe`` keeps entries up to ``FailSafe.MaxDurationMinutes`` past their TTL and returns such a stale
        (but never invalidated) value when the factory raises or passes ``soft_timeout``; ``hard_timeout`` raises
        :class:`FactoryTimeoutError` (or serves stale, with fail-safe). A timed-out factory keeps running in the
        background and its result is stored. ``eager_refresh`` (a fraction of the TTL, e.g. 0.8) makes the first
        hit after that point start one background refresh; callers never wait for it.
        """
        if not self._enabled:
            self.counters.handler_runs += 1
            return await factory()
        full_key = self._namespace + key
        l1 = self._l1
        if l1 is not None:
            now = self._clock()
            entry = l1.get(full_key, now)
            if entry is not None and (entry.checked == self._table.version or self._reader.revalidate(entry)):
                self.counters.l1_hits += 1
                if now >= entry.refresh_at:
                    entry.refresh_at = _NEVER
                    self._filler.refresh_later(
                        self._reader.plan(
                            key,
                            full_key,
                            factory,
                            ttl,
                            type_,
                            tags,
                            fail_safe,
                            soft_timeout,
                            hard_timeout,
                            eager_refresh,
                        )
                    )
                value: T = entry.value
                return value
        validate_key(key)

        # A partial, not a closure: a closure would turn these ten arguments into cells for every call, L1 hits too.
        plan = functools.partial(
            self._reader.plan,
            key,
            full_key,
            factory,
            ttl,
            type_,
            tags,
            fail_safe,
            soft_timeout,
            hard_timeout,
            eager_refresh,
        )

        if self._l2 is None:
            planned = plan()
            result: T = await self._loads.run(full_key, lambda: self._reader.load(planned, None))
            return result
        for _ in range(3):  # a follower whose leader was cancelled tries again, as leader or follower
            lead = self._loads.lead_of(full_key)
            if lead is None:
                eager = eager_refresh if eager_refresh is not None else self.settings.eager_refresh_threshold
                led: T = await self._reader.lead(full_key, codec_for(type_), eager, plan)
                return led
            try:
                outcome = await asyncio.shield(lead)
            except _LeaderGone:
                continue
            if isinstance(outcome, _Found):
                self.counters.l2_hits += 1
                shared: T = outcome.value
                return shared
            joined: T = await asyncio.shield(outcome)
            return joined
        planned = plan()
        fallback: T = await self._loads.run(full_key, lambda: self._reader.load(planned, None))
        return fallback

    def _l1_hit_value(self, key: str) -> Any:
        """The decorator's fast path (:mod:`hybridcache.decorators`): ``key``'s value when L1 holds a current entry
        not yet due for an eager refresh (counted as an L1 hit), else ``L1_MISS`` and the caller takes
        ``get_or_create``, which handles the rest (misses, refreshes, a disabled cache) exactly as for any call."""
        l1 = self._l1
        if l1 is None:
            return L1_MISS
        now = self._clock()
        entry = l1.get(self._namespace + key, now)
        if (
            entry is not None
            and now < entry.refresh_at
            and (entry.checked == self._table.version or self._reader.revalidate(entry))
        ):
            self.counters.l1_hits += 1
            return entry.value
        return L1_MISS

    def _l1_hit_in_thread(self, key: str) -> Any:
        """The fast path of threads other than the loop's (:mod:`hybridcache.sync`): ``key``'s value when L1 holds
        an entry that this cache's loop validated against the current generation-table version and that is
        neither expired nor due for an eager refresh (counted as an L1 hit), else ``L1_MISS``: the caller then
        hands the call to the loop, which handles everything else (revalidation, expiry, refreshes, misses).

        Read-only (:meth:`MemoryStore.find`): it may run while the loop's thread changes L1 and the table. Why
        it never serves a value older than an invalidation that was applied before it started: applying one
        (``Coherence.apply_locally`` and ``GenerationTable.advance``, or a resync, or losing trust) removes the
        exact keys' entries from the map and bumps ``table.version`` before the invalidation call returns (or
        the message counts as handled), and only the loop's thread sets an entry's ``checked``, to a version it
        validated the entry under. So an entry found with ``checked == version`` after that bump was validated
        after it; one validated before it has an older ``checked``, and goes to the loop.
        """
        l1 = self._l1
        if l1 is None:
            return L1_MISS
        now = self._clock()
        entry = l1.find(self._namespace + key, now)
        if entry is None or now >= entry.refresh_at or entry.checked != self._table.version:
            return L1_MISS
        next(self._thread_l1_hits)
        return entry.value

    def cached(
        self,
        key: str,
        *,
        ttl: TtlLike | None = None,
        type_: Any = _FROM_ANNOTATION,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], CachedFunction[P, R]]:
        """Decorate an ``async def`` function so its results are cached in this cache under ``key``, a template
        over its parameters (``"User:{user_id}"``); ``tags`` may be templates too. The options are
        :meth:`get_or_create`'s; ``type_`` defaults to the return annotation. The cache need not be started when
        decorating. Contracts (key formatting, sanitizing, errors at decoration time): :mod:`hybridcache.decorators`.
        """
        options: dict[str, Any] = {} if type_ is _FROM_ANNOTATION else {"type_": type_}
        return cached(
            key,
            cache=self,
            ttl=ttl,
            tags=tags,
            fail_safe=fail_safe,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            eager_refresh=eager_refresh,
            **options,
        )

    async def get(self, key: str, *, type_: Any = None, default: Any = None) -> Any:
        """The cached value of ``key`` (L1, then L2), or ``default`` when neither has a current entry."""
        if not self._enabled:
            return default
        full_key = self._namespace + key
        if self._l1 is not None:
            entry = self._l1.get(full_key, self._clock())
            if entry is not None and (entry.checked == self._table.version or self._reader.revalidate(entry)):
                self.counters.l1_hits += 1
                return entry.value
        if self._l2 is not None:
            found = await self._reader.read_l2(full_key, codec_for(type_))
            if found is not None and found.fresh:
                self.counters.l2_hits += 1
                return found.value
        self.counters.misses += 1
        return default

    async def set(
        self, key: str, value: Any, *, ttl: TtlLike | None = None, type_: Any = None, tags: Sequence[str] = ()
    ) -> None:
        """Store ``value`` under ``key`` in L2 and L1 (other instances drop their L1 copy of it first)."""
        if not self._enabled:
            return
        full_key = self._namespace + validate_key(key)
        await self.invalidate(keys=[key])  # other instances must drop their L1 copy of the old value
        plan = self._reader.plan(key, full_key, _no_factory, ttl, type_, tags, False, None, None, None)
        await self._filler.store(plan, value, await self._filler.capture(plan))

    # ------------------------------------------------------------------ many keys at once

    async def get_or_create_many(
        self,
        keys: Iterable[str],
        factory_many: Callable[[list[str]], Awaitable[Mapping[str, T]]],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] | Callable[[str], Sequence[str]] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> dict[str, T | None]:
        """The cached values of ``keys``, computing those that miss with one call of ``factory_many``.

        Returns a dict with every key of ``keys`` (duplicates once), in their order. The keys go through L1 in one
        pass, the L1 misses through L2 in one round trip (one ``MGET``; on Redis Cluster one round trip per node
        holding some of them; while the invalidation channel is down, one more checks their stamps against Redis),
        and the keys still missing reach ``factory_many`` in **one** call, as a list in ``keys``' order; it returns
        a mapping of those keys to their values.

        **A key ``factory_many`` leaves out is a ``None`` result**: ``None`` in the answer, and cached as ``None``
        for at most ``NullExpirationSeconds``, as when :meth:`get_or_create`'s factory returns ``None`` (an id that
        no longer exists does not reach the database on every call; declare ``type_`` as ``X | None``). Keys it
        returns that were not asked for are ignored (not cached).

        Each key follows the rules of :meth:`get_or_create`: its generations are captured before the factory runs
        (for all keys in one round trip), its result is stored in L2 only if no invalidation overtook it (each key
        checked atomically in Redis; all stores in one round trip) and in L1 only if none was applied here
        meanwhile. A key already being read or loaded in this process (by :meth:`get_or_create` or another batch)
        is joined, not loaded again, and a single-key caller of a key this batch is loading joins the batch.
        Single flight is per process: the distributed lock does not cover batches.

        ``ttl``, ``type_`` and ``tags`` apply to every key (``tags`` may also be a function of the key, for per-key
        tags such as ``f"dealership:{id}"``). If ``factory_many`` raises, every key it was loading gets the
        exception (the call raises it) and nothing is cached, unless ``fail_safe`` holds a stale value for a key:
        that key gets it, and the call still raises if another key has none. ``hard_timeout`` bounds the one call
        (it keeps running and its results are stored); ``soft_timeout`` applies only when every key it loads has a
        fail-safe value. ``eager_refresh``: keys hit past that fraction of their TTL are refreshed together, by one
        background call of ``factory_many``. Counters count per key, as single-key calls would (``handlerRuns``
        grows by the number of keys loaded); telemetry sees one L2 read and one factory run per batch, named by
        their first key.
        """
        logical = list(dict.fromkeys(keys))
        if not logical:
            return {}
        if not self._enabled:
            self.counters.handler_runs += len(logical)
            computed = await factory_many(list(logical))
            return {key: computed.get(key) for key in logical}
        namespace_length = self._namespace_length
        full_keys = [self._namespace + key for key in logical]

        def plan_for(full_key: str) -> _Plan:
            key = validate_key(full_key[namespace_length:])
            return self._reader.plan(
                key,
                full_key,
                functools.partial(one_of, factory_many, key),
                ttl,
                type_,
                tags(key) if callable(tags) else tags,
                fail_safe,
                soft_timeout,
                hard_timeout,
                eager_refresh,
            )

        values = await self._batch.get_or_create_many(full_keys, factory_many, plan_for)
        return {key: values[full_key] for key, full_key in zip(logical, full_keys, strict=True)}

    async def get_many(self, keys: Iterable[str], *, type_: Any = None, default: Any = None) -> dict[str, Any]:
        """The cached value of each key (L1, then one L2 round trip for the L1 misses), ``default`` where neither
        has a current entry: a dict with every key of ``keys`` (duplicates once), in their order. Counted per key,
        as :meth:`get` counts."""
        logical = list(dict.fromkeys(keys))
        if not self._enabled or not logical:
            return dict.fromkeys(logical, default)
        full_keys = [self._namespace + key for key in logical]
        values = await self._batch.get_many(full_keys, codec_for(type_))
        return {key: values.get(full_key, default) for key, full_key in zip(logical, full_keys, strict=True)}

    async def set_many(
        self,
        values: Mapping[str, Any],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] | Callable[[str], Sequence[str]] = (),
    ) -> None:
        """Store every key → value of ``values`` in L2 and L1, as :meth:`set` does, with one invalidation message
        for all of them (other instances drop their L1 copies first), their captures in one round trip and their
        stores in one more. ``tags`` may be a function of the key."""
        if not self._enabled or not values:
            return
        keys = [validate_key(key) for key in values]
        await self.invalidate(keys=keys)
        plans = [
            self._reader.plan(
                key,
                self._namespace + key,
                _no_factory,
                ttl,
                type_,
                tags(key) if callable(tags) else tags,
                False,
                None,
                None,
                None,
            )
            for key in keys
        ]
        captures = await self._filler.capture_many(plans)
        await self._filler.store_many(
            [(plan, values[key], capture) for plan, key, capture in zip(plans, keys, captures, strict=True)]
        )

    async def remove_many(self, keys: Iterable[str]) -> None:
        """Drop every key of ``keys`` everywhere, as :meth:`remove` does, with one invalidation message for all of
        them (on Redis Cluster their entries are deleted in one round trip per node first)."""
        await self.invalidate(keys=keys)

    # ------------------------------------------------------------------ writes

    async def remove(self, key: str) -> None:
        """Drop ``key`` everywhere: this L1, L2, and (via the backplane) every other instance's L1."""
        await self.invalidate(keys=[key])

    async def remove_by_prefix(self, prefix: str) -> None:
        """Invalidate every key under ``prefix`` at ``:`` boundaries (``A:B`` covers ``A:B`` and ``A:B:…``)."""
        await self.invalidate(prefixes=[prefix])

    async def remove_by_tag(self, tag: str) -> None:
        """Invalidate every entry created with ``tag``."""
        await self.invalidate(tags=[tag])

    async def clear(self) -> None:
        """Invalidate the whole namespace of this service version."""
        await self.invalidate(prefixes=[""])

    async def invalidate(
        self,
        *,
        keys: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        tags: Iterable[str] = (),
        queue: bool = True,
    ) -> bool:
        """Invalidate exact keys, prefixes and tags at once, as one backplane message.

        This instance stops serving them before the call returns. Never raises for Redis trouble: an invalidation
        that cannot be published is applied here, logged, counted and (``queue``, the default) retried once Redis
        answers again. Returns True when it was published to every instance (or there is no Redis), False when it
        was not (yet). ``queue=False`` is for a caller that keeps the invalidation durably and retries it itself
        (the outbox relay, :class:`hybridcache.persistence.Outbox`): the attempt goes past an open circuit breaker
        and nothing is queued.
        """
        if not self._enabled:
            return True
        full_keys = [self._namespace + validate_key(k) for k in keys]
        prefix_list = [normalize_prefix(p) for p in prefixes]
        tag_list = list(tags)
        if not (full_keys or prefix_list or tag_list):
            return True
        fields = [prefix_field(p) for p in prefix_list] + [tag_field(t) for t in tag_list]
        if self.tracer is None:
            return await self._coherence.invalidate(full_keys, prefix_list, tag_list, fields, queue=queue)
        logical = [k[self._namespace_length :] for k in full_keys]
        with self.tracer.invalidation(logical, prefix_list, tag_list):
            return await self._coherence.invalidate(full_keys, prefix_list, tag_list, fields, queue=queue)

    # ------------------------------------------------------------------ observation

    @property
    def internals(self) -> CacheInternals:
        """The parts this cache is composed of, for tests and diagnostics: not a stable API, and nothing to
        change through (each part owns its own state; see ``_core/``)."""
        return CacheInternals(
            l1=self._l1,
            l2=self._l2,
            table=self._table,
            backplane=self._backplane,
            dlock=self._dlock,
            loads=self._loads,
            coherence=self._coherence,
            reader=self._reader,
            filler=self._filler,
            batch=self._batch,
            clients=self._clients,
            client=self._client,
        )

    def stats(self) -> CacheStats:
        c = self.counters
        return CacheStats(
            l1_hits=c.l1_hits + count_value(self._thread_l1_hits),
            l2_hits=c.l2_hits,
            misses=c.misses,
            handler_runs=c.handler_runs,
            invalidations_published=c.invalidations_published,
            invalidations_received=c.invalidations_received,
            invalidation_failures=c.invalidation_failures,
            pending_invalidations=len(self._coherence.pending),
            stale_sets_prevented=c.stale_sets_prevented,
            stale_reads_rejected=c.stale_reads_rejected,
            corrupt_entries=c.corrupt_entries,
            l2_errors=c.l2_errors,
            factory_errors=c.factory_errors,
            factory_timeouts=c.factory_timeouts,
            fail_safe_activations=c.fail_safe_activations,
            eager_refreshes=c.eager_refreshes,
            backplane_gaps=self._backplane.gaps_detected if self._backplane is not None else 0,
            backplane_resyncs=self._backplane.resyncs if self._backplane is not None else 0,
            l1_entries=len(self._l1) if self._l1 is not None else 0,
            l1_evictions=self._l1.evictions if self._l1 is not None else 0,
            circuit=str(self.breaker.state),
            redis=self._redis_state(),
            backplane=self._backplane_state(),
            outbox_depth=self._outbox.depth if self._outbox is not None else 0,
            outbox_lag_seconds=self._outbox.lag_seconds if self._outbox is not None else 0.0,
        )

    def attach_outbox(self, outbox: OutboxGauge | None) -> None:
        """Report ``outbox``'s depth and lag in :meth:`stats` (and so in every exporter); ``None`` detaches.
        :class:`hybridcache.persistence.Outbox` attaches itself when it starts."""
        self._outbox = outbox

    def health(self) -> dict[str, str]:
        """``{"redis": "up"|"down"|"disabled", "circuit": "closed"|"open"|"half-open"}``."""
        return {"redis": self._redis_state(), "circuit": str(self.breaker.state)}

    def _redis_state(self) -> str:
        if self._l2 is None:
            return "disabled"
        if str(self.breaker.state) != "closed":
            return "down"
        if self._backplane is not None and not self._backplane.connected:
            return "down"
        return "up"

    def _backplane_state(self) -> str:
        if self._backplane is None:
            return "disabled"
        return "connected" if self._table.trusted else "disconnected"
