"""HybridCache: the read and write flows, composed from L1, L2, generations, the backplane and resilience.

Read (``get_or_create``): L1 → L2 (promoted to L1) → the factory, run once per key per process however many
callers wait for it, stored in L2 and then L1. Write (``invalidate`` and friends): drop exact keys, bump prefix and
tag generations and publish, in one atomic Redis script; other instances apply it from the backplane.

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
import dataclasses
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from hybridcache.backplane import Backplane
from hybridcache.clients import RedisClients, connect
from hybridcache.errors import HybridCacheError
from hybridcache.generations import GenerationTable, InvalidationLog, fields_for, new_epoch, prefix_field, tag_field
from hybridcache.instances import InstanceKeys, InstanceRegistry
from hybridcache.keys import SEPARATOR, namespace, normalize_prefix, validate_key
from hybridcache.locking import DistributedSingleFlight
from hybridcache.memory import L1Entry, MemoryStore
from hybridcache.metrics import CacheStats, Counters
from hybridcache.redis import Capture, L2UnavailableError, RedisL2
from hybridcache.resilience import CircuitBreaker, SingleFlight
from hybridcache.serialization import CorruptEntryError, EntryHeader, ValueCodec, codec_for, decode_entry, encode_entry
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from hybridcache.telemetry import CacheTracer

T = TypeVar("T")
logger = logging.getLogger("hybridcache")

_NEVER: Final = float("inf")
# Concurrent request-path calls to Redis, and so the size of its connection pool (see RedisL2's slots).
_REQUEST_POOL_SIZE: Final = 64
TtlLike = timedelta | float | int


class CacheConnectionError(HybridCacheError):
    """Redis was unreachable at start-up and the configuration says ``abortConnect=true``."""


class FactoryTimeoutError(HybridCacheError, TimeoutError):
    """The factory did not finish within its hard timeout (or its soft timeout, when a stale value was served).

    The factory is not cancelled: it finishes in the background and its result is stored.
    """


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Found:
    """A current value read from L2 (or kept in L1): fresh, or a fail-safe fallback past its TTL."""

    value: Any
    fresh: bool
    epoch: str
    generations: dict[str, int]
    fields: tuple[str, ...]
    retain: float  # seconds from now it may still serve as a fail-safe fallback


@dataclasses.dataclass(frozen=True, slots=True)
class _Capture:
    """Generations read before a factory runs: from Redis (None when unreachable), our mirror, our log position."""

    remote: Capture | None
    snapshot: dict[str, int]
    mark: int
    fields: tuple[str, ...]


def _covers(full_prefix: str, full_key: str) -> bool:
    """Whether ``full_prefix`` covers ``full_key`` at ``:`` boundaries (the namespace itself ends with ``:``)."""
    if full_prefix.endswith(SEPARATOR):
        return full_key.startswith(full_prefix)
    return full_key == full_prefix or full_key.startswith(full_prefix + SEPARATOR)


def _seconds(ttl: TtlLike) -> float:
    return ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)


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
        redis: Redis | RedisCluster | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stale_set_protection: bool = True,
        register_instance: bool = True,
    ) -> None:
        """Prefer :meth:`from_settings`. ``redis`` injects a client (not closed by the cache).

        With Redis, the cache reports its counters there every few seconds (``hybridcache.instances``) so
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
        memory = settings.memory_cache
        self._l1 = MemoryStore(memory.size_limit, clock=clock) if memory.enabled else None
        self._l1_max_ttl = float(memory.default_expiration_seconds)
        self._default_ttl = settings.default_expiration_minutes * 60.0
        self._null_ttl = float(settings.null_expiration_seconds)
        self._disconnected_ttl = float(settings.backplane.disconnected_expiration_seconds)
        breaker = settings.circuit_breaker
        self.breaker = CircuitBreaker(
            failure_threshold=breaker.failure_threshold,
            break_duration=float(breaker.break_duration_seconds),
            enabled=breaker.enabled,
            name="redis",
        )
        self._client: Redis | RedisCluster | None = redis
        self._clients: RedisClients | None = None
        self._l2: RedisL2 | None = None
        self._backplane: Backplane | None = None
        remote = redis is not None or settings.redis_endpoint is not None
        # Without Redis this process is the only authority on generations, so its table is always trusted.
        self._table = GenerationTable(epoch=None if remote else new_epoch(), trusted=not remote)
        self._log = InvalidationLog()
        self._flights: SingleFlight[str, Any] = SingleFlight()
        # Callers reading L2 before they would join a flight, per key, and the outcome of a run that ended while
        # they read (kept only while someone of that key is still reading): see get_or_create.
        self._reading: dict[str, int] = {}
        self._ended: dict[str, tuple[float, Any, Exception | None, int]] = {}
        self._pending: deque[tuple[list[str], list[str]]] = deque()
        self._retry_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()
        self._dlock: DistributedSingleFlight | None = None
        self._jitter = float(settings.jitter_max_duration_seconds)
        self._fail_safe_duration = settings.fail_safe.max_duration_minutes * 60.0
        self.counters = Counters()
        self._started = False
        self._register_instance = register_instance
        self.instance_registry: InstanceRegistry | None = None  # set by start() when reporting to Redis
        # Tracing hooks on the slow paths (L2 reads, factory runs, invalidations), set by hybridcache.telemetry.
        self.tracer: CacheTracer | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def from_settings(cls, settings: CacheSettings, *, redis: Redis | RedisCluster | None = None) -> Self:
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
                request_pool_size=_REQUEST_POOL_SIZE + 16,  # headroom for lock calls outside the L2 slots
                protocol=self.settings.protocol,
            )
            self._client = self._clients.request
        elif self._client is not None:
            self._clients = self._clients_for(self._client)
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
            )
            logger.info("Redis %s (%s) as L2 for %s", endpoint or "client", clients.topology, self._namespace)
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
                    on_message=self._on_remote_message,
                    on_resync=self._on_resync,
                    heartbeat_interval=float(backplane.heartbeat_interval_seconds),
                    heartbeat_timeout=float(backplane.heartbeat_timeout_seconds),
                    on_fill=self._on_fill,
                    subscriber=self._open_subscriber,
                )
                await self._backplane.start()
                await self._backplane.wait_trusted(timeout=self.settings.connect_timeout_milliseconds / 1000)
            if self._register_instance:
                keys = InstanceKeys(self.settings.instance_name, self._namespace)
                self.instance_registry = InstanceRegistry(
                    clients.background, keys=keys, instance_id=self.instance_id, stats=self.stats
                )
                self.instance_registry.start()
        self._started = True

    def _clients_for(self, client: Redis | RedisCluster) -> RedisClients:
        """Clients around an injected one: it serves requests; the backplane gets its own small pool."""
        if isinstance(client, RedisCluster):
            options = dict(client.nodes_manager.connection_kwargs)
            return RedisClients(client, client, "cluster", options, owned=False)
        pool = client.connection_pool
        options = dict(pool.connection_kwargs)
        options["socket_connect_timeout"] = self.settings.connect_timeout_milliseconds / 1000
        background = Redis(
            connection_pool=ConnectionPool(connection_class=pool.connection_class, max_connections=8, **options)
        )
        return RedisClients(client, background, "standalone", options, owned=False)

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

    async def close(self) -> None:
        """Stop the backplane and close the Redis connections this cache opened."""
        if self.instance_registry is not None:
            await self.instance_registry.close(timeout=self.settings.operation_timeout_milliseconds / 1000)
            self.instance_registry = None
        if self._backplane is not None:
            await self._backplane.close()
            self._backplane = None
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None
        if self._background:
            # Let background refreshes and timed-out factories finish storing, within a bound.
            await asyncio.wait(list(self._background), timeout=self.settings.operation_timeout_milliseconds / 1000)
            for task in list(self._background):
                task.cancel()
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
            if entry is not None and (entry.checked == self._table.version or self._revalidate(entry)):
                self.counters.l1_hits += 1
                if now >= entry.refresh_at:
                    entry.refresh_at = _NEVER
                    self._refresh_later(
                        self._plan(
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

        def plan() -> _Plan:
            return self._plan(
                key, full_key, factory, ttl, type_, tags, fail_safe, soft_timeout, hard_timeout, eager_refresh
            )

        stale: _Found | None = None
        if self._l2 is not None:
            # L2 is read outside the single flight: a hit then costs one GET and no task; concurrent misses of one
            # key each pay a GET, but only one of them runs the factory. The plan is built only when needed.
            eager = eager_refresh if eager_refresh is not None else self.settings.eager_refresh_threshold
            reading = self._reading
            reading[full_key] = reading.get(full_key, 0) + 1
            started = self._clock()
            try:
                found = await self._read_l2(full_key, codec_for(type_), eager, plan)
                if found is not None and found.fresh:
                    self.counters.l2_hits += 1
                    hit: T = found.value
                    return hit
                stale = found
                ended = self._ended.get(full_key)
                if (
                    ended is not None
                    and ended[0] >= started
                    and not self._log.covers_since(ended[3], full_key, self._namespace_length, tuple(tags))
                ):
                    # A run for this key ended while we were reading: share its outcome instead of starting another.
                    if ended[2] is not None:
                        raise ended[2]
                    shared: T = ended[1]
                    return shared
            finally:
                left = reading[full_key] - 1
                if left:
                    reading[full_key] = left
                else:
                    del reading[full_key]
                    self._ended.pop(full_key, None)
        planned = plan()
        result: T = await self._flights.run(full_key, lambda: self._load(planned, stale))
        return result

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
            seconds=self._default_ttl if ttl is None else _seconds(ttl),
            tags=tuple(tags),
            fail_safe=defaults.enabled if fail_safe is None else fail_safe,
            soft_timeout=None if soft is None else _seconds(soft),
            hard_timeout=None if hard is None else _seconds(hard),
            eager_refresh=eager,
        )

    async def get(self, key: str, *, type_: Any = None, default: Any = None) -> Any:
        """The cached value of ``key`` (L1, then L2), or ``default`` when neither has a current entry."""
        if not self._enabled:
            return default
        full_key = self._namespace + key
        if self._l1 is not None:
            entry = self._l1.get(full_key, self._clock())
            if entry is not None and (entry.checked == self._table.version or self._revalidate(entry)):
                self.counters.l1_hits += 1
                return entry.value
        if self._l2 is not None:
            found = await self._read_l2(full_key, codec_for(type_))
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
        plan = self._plan(key, full_key, _no_factory, ttl, type_, tags, False, None, None, None)
        await self._store(plan, value, await self._capture(plan))

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
        mark = self._log.sequence  # an outcome is shared only if no invalidation of the key came after this
        try:
            value = await self._load_missing(plan, stale)
        except Exception as exc:
            if plan.full_key in self._reading:
                self._ended[plan.full_key] = (self._clock(), None, exc, mark)
            raise
        if plan.full_key in self._reading:
            self._ended[plan.full_key] = (self._clock(), value, None, mark)
        return value

    async def _load_missing(self, plan: _Plan, stale: _Found | None) -> Any:
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
            return await self._compute(plan, stale)
        if token is not None:
            try:
                return await self._compute(plan, stale)
            finally:
                await self._dlock.release(plan.full_key, token)
        notice = self._dlock.register(plan.full_key)
        try:
            for attempt in range(2):  # once right after registering (it may be filled already), once after notice
                found = await self._read_l2(plan.full_key, plan.codec, plan.eager_refresh, lambda: plan)
                if found is not None and found.fresh:
                    self.counters.l2_hits += 1
                    self.counters.misses -= 1  # it was not a miss after all: someone else computed it
                    return found.value
                if attempt == 0 and not await self._dlock.wait(notice):
                    break
        finally:
            self._dlock.unregister(plan.full_key, notice)
        return await self._compute(plan, stale)

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
        generations = dict(header.generations)
        if remaining <= 0:
            retain = header.retain - wall
            return _Found(value, False, header.epoch, generations, fields, retain) if retain > 0 else None
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
                generations,
                fields,
                refresh_in=refresh_in,
                retain=header.retain - wall,
            )
        return _Found(value, True, header.epoch, generations, fields, header.retain - wall)

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
        generations: dict[str, int],
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
        self, *, keys: Iterable[str] = (), prefixes: Iterable[str] = (), tags: Iterable[str] = ()
    ) -> None:
        """Invalidate exact keys, prefixes and tags at once, as one backplane message.

        This instance stops serving them before the call returns. Never raises for Redis trouble: an invalidation
        that cannot be published is applied here, logged, counted and retried once Redis answers again.
        """
        if not self._enabled:
            return
        full_keys = [self._namespace + validate_key(k) for k in keys]
        prefix_list = [normalize_prefix(p) for p in prefixes]
        tag_list = list(tags)
        if not (full_keys or prefix_list or tag_list):
            return
        fields = [prefix_field(p) for p in prefix_list] + [tag_field(t) for t in tag_list]
        if self.tracer is None:
            await self._invalidate(full_keys, prefix_list, tag_list, fields)
        else:
            logical = [k[self._namespace_length :] for k in full_keys]
            with self.tracer.invalidation(logical, prefix_list, tag_list):
                await self._invalidate(full_keys, prefix_list, tag_list, fields)

    async def _invalidate(
        self, full_keys: list[str], prefix_list: list[str], tag_list: list[str], fields: list[str]
    ) -> None:
        self._apply_locally(full_keys, prefix_list, tag_list)
        for full_key in full_keys:
            logger.info("Removed key: %s", full_key)
        for prefix in prefix_list:
            logger.info("Removed prefix: %s%s*", self._namespace, prefix)
        for tag in tag_list:
            logger.info("Removed tag: %s", tag)
        if self._l2 is None:
            self._table.bump_locally(fields)
            return
        await self._publish(full_keys, fields)

    async def _publish(self, full_keys: list[str], fields: list[str]) -> bool:
        assert self._l2 is not None
        try:
            message = await self._l2.invalidate(full_keys, fields, sender=self.instance_id)
        except L2UnavailableError as exc:
            self.counters.invalidation_failures += 1
            self._pending.append((full_keys, fields))
            logger.error(
                "Invalidation event not published (%s); queued for retry (%d pending)", exc, len(self._pending)
            )
            self._drop_l1_by_fields(fields)
            self._schedule_retry()
            return False
        self._after_publish(full_keys, fields, message)
        logger.info("Published invalidation event #%s", message["s"])
        return True

    def _apply_locally(self, full_keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> None:
        """Stop serving what an invalidation covers, here and now.

        Besides dropping L1 entries and recording the invalidation (so in-flight factories do not store their
        results), it detaches in-flight loads of covered keys: a caller arriving after the invalidation must start
        a fresh load rather than share one that began before it.
        """
        full_prefixes = [self._namespace + p for p in prefixes]
        self._log.record(full_keys, full_prefixes, tags)
        if self._l1 is not None:
            for full_key in full_keys:
                self._l1.remove(full_key)
        flights, ended = self._flights, self._ended
        if len(flights) or ended:
            for full_key in full_keys:
                flights.forget(full_key)
                ended.pop(full_key, None)
            if tags:  # in-flight loads do not say their tags: be conservative
                flights.forget_where(lambda _: True)
                ended.clear()
            elif full_prefixes:
                flights.forget_where(lambda key: any(_covers(prefix, key) for prefix in full_prefixes))
                for key in [k for k in ended if any(_covers(prefix, k) for prefix in full_prefixes)]:
                    del ended[key]

    def _drop_l1_by_fields(self, fields: Sequence[str]) -> None:
        """Remove L1 entries under the given prefix/tag fields by scanning (only when generations can't help)."""
        if self._l1 is None or not fields:
            return
        doomed = set(fields)
        self._l1.remove_where(lambda entry: not doomed.isdisjoint(entry.fields))

    def _on_remote_message(self, message: dict[str, Any]) -> None:
        if message["i"] == self.instance_id:
            return
        self.counters.invalidations_received += 1
        full_keys = [str(k) for k in message["k"]]
        generations: dict[str, int] = message["g"]
        prefixes = [f[2:] for f in generations if f.startswith("p:")]
        tags = [f[2:] for f in generations if f.startswith("t:")]
        self._apply_locally(full_keys, prefixes, tags)
        if message["e"] == self._table.epoch:
            self._table.advance(generations)
        logger.debug("Received invalidation event #%s from %s", message["s"], message["i"])

    def _on_fill(self, full_key: str) -> None:
        if self._dlock is not None:
            self._dlock.notify(full_key)

    def _on_resync(self, epoch_changed: bool) -> None:
        # Anything computed or cached before this point may have missed an invalidation.
        self._log.record((), [self._namespace], ())
        if self._l1 is not None:
            self._l1.clear()
        logger.info("Invalidation channel subscribed%s; L1 cleared", " (new generation epoch)" if epoch_changed else "")
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._pending and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.create_task(self._retry_pending(), name="hybridcache-invalidation-retry")

    async def _retry_pending(self) -> None:
        """Publish queued invalidations, backing off while Redis stays unavailable, until none is left."""
        delay = 0.05
        while self._pending:
            if await self._flush_pending():
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _flush_pending(self) -> bool:
        """Publish queued invalidations in order; True when the queue is empty afterwards.

        L2 reads call this first while anything is queued: an entry that was invalidated during an outage must
        not be served (or used as a fail-safe fallback) just because Redis answers again before the retry ran.
        """
        async with self._flush_lock:
            while self._pending:
                full_keys, fields = self._pending[0]
                try:
                    assert self._l2 is not None
                    message = await self._l2.invalidate(full_keys, fields, sender=self.instance_id)
                except L2UnavailableError:
                    return False
                self._pending.popleft()
                self._after_publish(full_keys, fields, message)
                logger.info("Published queued invalidation event #%s", message["s"])
        return True

    def _after_publish(self, full_keys: list[str], fields: list[str], message: dict[str, Any]) -> None:
        self.counters.invalidations_published += 1
        # Again, now that Redis has applied it: a read that began between our first local drop and the script's
        # execution may have fetched the old value and put it in L1 or in a shared load.
        self._apply_locally(
            full_keys, [f[2:] for f in fields if f.startswith("p:")], [f[2:] for f in fields if f.startswith("t:")]
        )
        if message["e"] == self._table.epoch:
            self._table.advance(message["g"])
        else:
            self._drop_l1_by_fields(fields)

    # ------------------------------------------------------------------ observation

    def stats(self) -> CacheStats:
        c = self.counters
        return CacheStats(
            l1_hits=c.l1_hits,
            l2_hits=c.l2_hits,
            misses=c.misses,
            handler_runs=c.handler_runs,
            invalidations_published=c.invalidations_published,
            invalidations_received=c.invalidations_received,
            invalidation_failures=c.invalidation_failures,
            pending_invalidations=len(self._pending),
            stale_sets_prevented=c.stale_sets_prevented,
            stale_reads_rejected=c.stale_reads_rejected,
            corrupt_entries=c.corrupt_entries,
            l2_errors=c.l2_errors,
            factory_errors=c.factory_errors,
            factory_timeouts=c.factory_timeouts,
            fail_safe_activations=c.fail_safe_activations,
            eager_refreshes=c.eager_refreshes,
            l1_entries=len(self._l1) if self._l1 is not None else 0,
            l1_evictions=self._l1.evictions if self._l1 is not None else 0,
            circuit=str(self.breaker.state),
            redis=self._redis_state(),
            backplane=self._backplane_state(),
        )

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
