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
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hybridcache.backplane import Backplane
from hybridcache.errors import HybridCacheError
from hybridcache.generations import GenerationTable, InvalidationLog, fields_for, new_epoch, prefix_field, tag_field
from hybridcache.keys import namespace, normalize_prefix, validate_key
from hybridcache.memory import L1Entry, MemoryStore
from hybridcache.metrics import CacheStats, Counters
from hybridcache.redis import Capture, L2UnavailableError, RedisL2
from hybridcache.resilience import CircuitBreaker, SingleFlight
from hybridcache.serialization import CorruptEntryError, EntryHeader, ValueCodec, codec_for, decode_entry, encode_entry
from hybridcache.settings import CacheSettings

T = TypeVar("T")
logger = logging.getLogger("hybridcache")

_MISSING: Final[Any] = object()
TtlLike = timedelta | float | int


class CacheConnectionError(HybridCacheError):
    """Redis was unreachable at start-up and the configuration says ``abortConnect=true``."""


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
        redis: Redis | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stale_set_protection: bool = True,
    ) -> None:
        """Prefer :meth:`from_settings`. ``redis`` injects a client (not closed by the cache).

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
        self._client = redis
        self._owns_client = False
        self._l2: RedisL2 | None = None
        self._backplane: Backplane | None = None
        remote = redis is not None or settings.redis_endpoint is not None
        # Without Redis this process is the only authority on generations, so its table is always trusted.
        self._table = GenerationTable(epoch=None if remote else new_epoch(), trusted=not remote)
        self._log = InvalidationLog()
        self._flights: SingleFlight[str, Any] = SingleFlight()
        self._pending: deque[tuple[list[str], list[str]]] = deque()
        self._retry_task: asyncio.Task[None] | None = None
        self.counters = Counters()
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def from_settings(cls, settings: CacheSettings, *, redis: Redis | None = None) -> Self:
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
            kwargs = endpoint.to_redis_kwargs()
            kwargs.setdefault("socket_timeout", self.settings.operation_timeout_milliseconds / 1000)
            kwargs.setdefault("socket_connect_timeout", self.settings.connect_timeout_milliseconds / 1000)
            if self.settings.protocol is not None:
                kwargs.setdefault("protocol", self.settings.protocol)
            # Our own breaker and timeouts decide about retrying; driver retries would multiply every wait.
            kwargs["retry"] = Retry(NoBackoff(), 0)
            self._client = Redis(**kwargs)
            self._owns_client = True
        if self._client is not None:
            self._l2 = RedisL2(
                self._client, instance_name=self.settings.instance_name, namespace=self._namespace, breaker=self.breaker
            )
            await self._check_reachable(abort=endpoint.abort_connect if endpoint is not None else False)
            if self.settings.backplane.enabled:
                backplane = self.settings.backplane
                self._backplane = Backplane(
                    self._l2,
                    self._table,
                    on_message=self._on_remote_message,
                    on_resync=self._on_resync,
                    heartbeat_interval=float(backplane.heartbeat_interval_seconds),
                    heartbeat_timeout=float(backplane.heartbeat_timeout_seconds),
                )
                await self._backplane.start()
                await self._backplane.wait_trusted(timeout=self.settings.connect_timeout_milliseconds / 1000)
        self._started = True

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
        if self._backplane is not None:
            await self._backplane.close()
            self._backplane = None
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
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
    ) -> T:
        """The cached value of ``key``, computing it with ``factory`` on a miss.

        ``ttl`` is the L2 lifetime (default ``DefaultExpirationMinutes``); L1 keeps the value for at most
        ``MemoryCache.DefaultExpirationSeconds`` of it. ``type_`` is the declared type, used to decode values read
        back from Redis (pydantic models, dataclasses, containers, ``X | None``...). A ``None`` result is cached
        (for at most ``NullExpirationSeconds``). Concurrent callers of one key in this process share a single
        factory run; its exception, if any, reaches all of them and nothing is cached.
        """
        if not self._enabled:
            self.counters.handler_runs += 1
            return await factory()
        full_key = self._namespace + key
        l1 = self._l1
        if l1 is not None:
            entry = l1.get(full_key, self._clock())
            if entry is not None and (entry.checked == self._table.version or self._revalidate(entry)):
                self.counters.l1_hits += 1
                value: T = entry.value
                return value
        validate_key(key)
        result: T = await self._flights.run(full_key, lambda: self._load(full_key, factory, ttl, type_, tuple(tags)))
        return result

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
        value = await self._read_l2(full_key, codec_for(type_)) if self._l2 is not None else _MISSING
        if value is _MISSING:
            self.counters.misses += 1
            return default
        self.counters.l2_hits += 1
        return value

    async def set(
        self, key: str, value: Any, *, ttl: TtlLike | None = None, type_: Any = None, tags: Sequence[str] = ()
    ) -> None:
        """Store ``value`` under ``key`` in L2 and L1 (other instances drop their L1 copy of it first)."""
        if not self._enabled:
            return
        full_key = self._namespace + validate_key(key)
        await self.invalidate(keys=[key])  # other instances must drop their L1 copy of the old value
        capture, snapshot, mark = await self._capture(full_key, tuple(tags))
        await self._store(full_key, value, codec_for(type_), ttl, tuple(tags), capture, snapshot, mark)

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

    async def _load(
        self,
        full_key: str,
        factory: Callable[[], Awaitable[T]],
        ttl: TtlLike | None,
        type_: Any,
        tags: tuple[str, ...],
    ) -> T:
        codec = codec_for(type_)
        if self._l2 is not None:
            found = await self._read_l2(full_key, codec)
            if found is not _MISSING:
                self.counters.l2_hits += 1
                value: T = found
                return value
        self.counters.misses += 1
        capture, snapshot, mark = await self._capture(full_key, tags)
        self.counters.handler_runs += 1
        try:
            value = await factory()
        except Exception:
            self.counters.factory_errors += 1
            raise
        await self._store(full_key, value, codec, ttl, tags, capture, snapshot, mark)
        return value

    async def _read_l2(self, full_key: str, codec: ValueCodec) -> Any:
        """The current value stored in L2 (promoted to L1), or _MISSING."""
        assert self._l2 is not None
        mark = self._log.sequence
        try:
            raw = await self._l2.get(full_key)
        except L2UnavailableError:
            self.counters.l2_errors += 1
            return _MISSING
        if raw is None:
            return _MISSING
        try:
            header, body = decode_entry(raw)
            fields = fields_for(full_key, self._namespace_length, header.tags)
            if not await self._is_current(header, fields):
                self.counters.stale_reads_rejected += 1
                return _MISSING
            value = None if body is None else codec.decode(body)
        except CorruptEntryError as exc:
            await self._discard_corrupt(full_key, exc)
            return _MISSING
        remaining = header.expires - self._wall()
        if remaining <= 0:
            return _MISSING
        if self._l1 is not None and not self._log.covers_since(mark, full_key, self._namespace_length, header.tags):
            self._put_l1(full_key, value, remaining, header.epoch, dict(header.generations), fields)
        return value

    async def _is_current(self, header: EntryHeader, fields: tuple[str, ...]) -> bool:
        table = self._table
        if table.trusted:
            return table.is_current(header.epoch, header.generations, fields)
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

    async def _capture(self, full_key: str, tags: tuple[str, ...]) -> tuple[Capture | None, dict[str, int], int]:
        """What a value about to be computed depends on: Redis's generations, ours, and our log position."""
        mark = self._log.sequence
        fields = fields_for(full_key, self._namespace_length, tags)
        snapshot = self._table.snapshot(fields)
        capture = None
        if self._l2 is not None:
            try:
                capture = await self._l2.capture(full_key, fields)
            except L2UnavailableError:
                self.counters.l2_errors += 1
        return capture, snapshot, mark

    async def _store(
        self,
        full_key: str,
        value: Any,
        codec: ValueCodec,
        ttl: TtlLike | None,
        tags: tuple[str, ...],
        capture: Capture | None,
        snapshot: dict[str, int],
        mark: int,
    ) -> None:
        seconds = self._default_ttl if ttl is None else _seconds(ttl)
        if value is None:
            seconds = min(seconds, self._null_ttl)
        if seconds <= 0:
            return
        fields = fields_for(full_key, self._namespace_length, tags)
        if capture is not None:
            assert self._l2 is not None
            now = self._wall()
            header = EntryHeader(now, now + seconds, capture.epoch, capture.generations, tags, value is None)
            payload = encode_entry(None if value is None else codec.encode(value), header)
            ttl_ms = max(1, int(seconds * 1000))
            try:
                if self._stale_set_protection:
                    stored = await self._l2.set_if_current(full_key, payload, ttl_ms, capture)
                else:
                    await self._l2.set(full_key, payload, ttl_ms)
                    stored = True
            except L2UnavailableError:
                self.counters.l2_errors += 1
            else:
                if not stored:
                    self.counters.stale_sets_prevented += 1
                    return
        if self._l1 is None:
            return
        if self._stale_set_protection and self._log.covers_since(mark, full_key, self._namespace_length, tags):
            self.counters.stale_sets_prevented += 1
            return
        if not self._stale_set_protection:
            capture = None  # pretend the value was computed now: the unprotected cache-aside race
            snapshot = self._table.snapshot(fields)
        epoch, generations = (capture.epoch, capture.generations) if capture else (self._table.epoch, snapshot)
        self._put_l1(full_key, value, seconds, epoch, generations, fields)

    def _put_l1(
        self,
        full_key: str,
        value: Any,
        seconds: float,
        epoch: str | None,
        generations: dict[str, int],
        fields: tuple[str, ...],
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
            checked = 0
        now = self._clock()
        self._l1.put(L1Entry(full_key, value, now + seconds, now, epoch or "", generations, fields, checked))

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
            return False
        if message["e"] == self._table.epoch:
            self._table.advance(message["g"])
        else:
            self._drop_l1_by_fields(fields)
        self.counters.invalidations_published += 1
        logger.info("Published invalidation event #%s", message["s"])
        return True

    def _apply_locally(self, full_keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> None:
        self._log.record(full_keys, [self._namespace + p for p in prefixes], tags)
        if self._l1 is not None:
            for full_key in full_keys:
                self._l1.remove(full_key)

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

    def _on_resync(self, epoch_changed: bool) -> None:
        # Anything computed or cached before this point may have missed an invalidation.
        self._log.record((), [self._namespace], ())
        if self._l1 is not None:
            self._l1.clear()
        logger.info("Invalidation channel subscribed%s; L1 cleared", " (new generation epoch)" if epoch_changed else "")
        if self._pending and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.create_task(self._retry_pending(), name="hybridcache-invalidation-retry")

    async def _retry_pending(self) -> None:
        while self._pending:
            full_keys, fields = self._pending[0]
            try:
                assert self._l2 is not None
                message = await self._l2.invalidate(full_keys, fields, sender=self.instance_id)
            except L2UnavailableError:
                return  # still down; the next resync tries again
            self._pending.popleft()
            self.counters.invalidations_published += 1
            if message["e"] == self._table.epoch:
                self._table.advance(message["g"])
            logger.info("Published queued invalidation event #%s", message["s"])

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
