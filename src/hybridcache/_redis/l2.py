"""L2: the one place that talks to Redis for values, generation counters and invalidations.

Layout in Redis (``I`` = InstanceName, ``N`` = ``{ServiceName}:{CacheVersion}:``, ``K`` = ``I N <key>``):
  ``K``                                the entry (envelope bytes), always with a TTL
  ``{K}:hc-kgen``                      capture token of that exact key (random; deleted when the key is removed)
  ``{K}:hc-lock``                      the distributed single-flight lease for that key
  ``{I hybridcache:N}gens``            hash: ``__epoch__``, ``__server__`` and the prefix/tag generation counters
  ``{I hybridcache:N}seq``             number of the last invalidation message
  ``{I hybridcache:N}invalidation``    the pub/sub channel of invalidation messages (``…:db<n>`` off database 0)
The braces are Redis Cluster hash tags: an entry, its generation and its lock share one slot (so a conditional
set is one single-slot script, and entries spread over the cluster like the keys themselves); the meta keys and
the channel share another, so invalidate-and-publish is one script too. (A key that itself contains a ``{…}``
tag keeps it: its companions take the same tag.) On a standalone server or Sentinel the braces are just
characters, and every check-and-act is a single atomic script; on a cluster the conditional set checks the
exact key's generation atomically and prefix/tag generations are enforced by the stamps every reader verifies.

The generation hash remembers the ``run_id`` of the server that wrote its epoch, and capture tokens the server
that created them. Every script that trusts either checks it against the server running it: another server (a
restart with persistence, a failover to a replica that may lag) means a new epoch and a new token, so counters
that went backwards can never make an old stamp current again.

Each request-path call goes through the circuit breaker: while it is open no socket is touched and
:class:`L2UnavailableError` is raised at once. Driver errors are wrapped in that exception (``from`` the original).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisError, ResponseError
from redis.typing import EncodableT

from hybridcache._generations import EPOCH_FIELD, FLOOR_FIELD, new_epoch
from hybridcache._redis import scripts
from hybridcache._redis.direct_get import GetConnections, get_on_cluster, get_pooled
from hybridcache._resilience import CircuitBreaker, RequestSlots
from hybridcache._serialization import CorruptEntryError
from hybridcache.errors import HybridCacheError

T = TypeVar("T")
# What ``RedisL2._fetch`` returns when GET answered WRONGTYPE: a hash, list or set sits under the entry's key.
_WRONG_TYPE: Final = object()
logger = logging.getLogger("hybridcache.redis")
SERVER_FIELD = "__server__"
# How long a capture token outlives the capture that created it: a load (factory run) that takes longer than this
# has its store refused, as if the key had been removed meanwhile. Removals delete the token at once.
CAPTURE_TOKEN_TTL_MS: Final = 3_600_000
# How many fields of the generation hash one resync reads per round trip (HSCAN COUNT).
SYNC_PAGE: Final = 2_000
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# One call of a registered script in a pipeline: the script, its keys, its arguments.
_ScriptCall = tuple[AsyncScript, list[str], list[EncodableT]]


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the first non-empty ``{…}``, or the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class L2UnavailableError(HybridCacheError):
    """Redis could not be used for this call (circuit open, timeout, connection error)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """The generations a value is about to be computed under (read before the factory runs)."""

    epoch: str
    key_token: str  # the exact key's capture token: a store is refused once it was removed or vanished
    generations: dict[str, int]


@dataclass(frozen=True, slots=True)
class GenerationState:
    """The authoritative generation table and the number of the last invalidation message."""

    sequence: int
    epoch: str
    counters: dict[str, int]


class RedisL2:
    """Entries, generations and invalidations for one cache namespace, on a server, Sentinel or a cluster."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        instance_name: str,
        namespace: str,
        breaker: CircuitBreaker,
        background_client: Redis | RedisCluster | None = None,
        meta_ttl_ms: int = 7 * 24 * 3600 * 1000,
        retention_ms: int = 7 * 24 * 3600 * 1000,
        max_concurrency: int = 64,
        queue_timeout: float = 0.25,
        cluster: bool | None = None,
    ) -> None:
        """``client`` serves the request path; ``background_client`` (its own small pool) serves the backplane —
        subscription, heartbeat, resync — so a burst of requests can never starve the invalidation channel."""
        self.client = client
        self.background = background_client or client
        # At most this many request-path calls at once: a burst of misses then queues here (cheaply) instead of
        # opening hundreds of connections whose socket timeouts would fire on event-loop congestion, not on Redis.
        self._slots = RequestSlots(max_concurrency)
        self._queue_timeout = queue_timeout
        # How an L2 hit's GET is sent (see hybridcache.direct_get): on connections of its own for a standalone
        # server, from the pool for Sentinel (the pool follows the master), straight to the slot's master on a
        # cluster; through the client itself for a client pinned to a single connection.
        pool = client.connection_pool if isinstance(client, Redis) and client.connection is None else None
        self._get_connections = GetConnections(pool) if type(pool) is ConnectionPool else None
        self._get_pool = pool if self._get_connections is None else None
        self.breaker = breaker
        self._instance_name = instance_name
        self._namespace_length = len(namespace)
        self.cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        meta = f"{{{instance_name}hybridcache:{namespace}}}"
        self.generations_key = f"{meta}gens"
        self.sweep_key = f"{meta}gens-sweep"
        self.sequence_key = f"{meta}seq"
        # Pub/sub ignores database numbers while keys do not: caches of one name on two databases of one server
        # must not hear each other's invalidations (their message numbers are per database).
        database = (
            0 if isinstance(client, RedisCluster) else int(client.connection_pool.connection_kwargs.get("db") or 0)
        )
        self.channel = f"{meta}invalidation" if database == 0 else f"{meta}invalidation:db{database}"
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._meta_ttl_ms = meta_ttl_ms
        # Generations last bumped longer ago are forgotten, and no entry outlives its capture by more (see
        # _generations.py): a stamp's floor is the capture's server time minus this.
        self.retention_ms = retention_ms
        self._capture = client.register_script(scripts.CAPTURE)
        self._capture_fields = client.register_script(scripts.CAPTURE_FIELDS)
        self._capture_key = client.register_script(scripts.CAPTURE_KEY)
        self._set_if_current = client.register_script(scripts.SET_IF_CURRENT)
        self._remove_key = client.register_script(scripts.REMOVE_KEY)
        self._invalidate = client.register_script(scripts.INVALIDATE)
        self._sync = self.background.register_script(scripts.SYNC)

    def redis_key(self, full_key: str) -> str:
        return self._instance_name + full_key

    def _companion(self, full_key: str, suffix: str) -> str:
        redis_key = self._instance_name + full_key
        tag = hash_tag(redis_key)
        if tag != redis_key:
            return f"{{{tag}}}:{suffix}:{redis_key}"
        if "}" in redis_key and self.cluster:
            raise ValueError(
                f"cache key {full_key!r} has an unmatched '}}': it cannot be placed on a Redis Cluster slot"
            )
        return f"{{{redis_key}}}:{suffix}"

    def key_token_key(self, full_key: str) -> str:
        """Where the exact key's capture token lives (``scripts.CAPTURE_TOKEN_FUNCTION``): always in the
        entry's own slot."""
        return self._companion(full_key, "hc-kgen")

    def lock_key(self, full_key: str) -> str:
        """The distributed single-flight lease of the key, in the entry's own slot."""
        return self._companion(full_key, "hc-lock")

    async def _call(self, operation: Callable[[], Awaitable[T]], *, guarded: bool = True) -> T:
        """Run one Redis operation, wrapping driver errors.

        ``guarded`` calls (the request path) go through the circuit breaker and take one of the request slots;
        background work (the backplane's resync and heartbeat) is not guarded, so it neither waits for nor
        consumes the breaker's probe.
        """
        if not guarded:
            try:
                return await operation()
            except Exception as exc:
                if not is_redis_failure(exc):
                    raise
                raise L2UnavailableError(f"Redis call failed: {exc.__class__.__name__}: {exc}") from exc
        if not self.breaker.allow_request():
            raise L2UnavailableError("Redis circuit is open")
        result = await self._in_a_slot(operation)
        self.breaker.record_success()
        return result

    async def _call_past_breaker(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a request-path call that an open circuit may not refuse: publishing queued invalidations.

        Other instances serve what a queued invalidation covers until it is published, so its retries probe
        Redis on their own backoff (50 ms doubling to 1 s) instead of waiting out ``BreakDurationSeconds``.
        The outcome still reaches the breaker: a failure counts like any other, and a success that began while
        the circuit was open closes it (Redis answered; see :meth:`CircuitBreaker.record_success_past_gate`).
        """
        openings = self.breaker.openings
        result = await self._in_a_slot(operation)
        self.breaker.record_success_past_gate(openings)
        return result

    async def _in_a_slot(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` holding a request slot; a failure is reported to the breaker and wrapped in
        :class:`L2UnavailableError` when it is Redis's (the caller reports a success its own way)."""
        if not self._slots.try_take():
            await self._wait_for_slot()
        try:
            return await operation()
        except BaseException as exc:
            unavailable = self._failure(exc)
            if unavailable is None:
                raise
            raise unavailable from exc
        finally:
            self._slots.give_back()

    async def aclose(self) -> None:
        """Close the connections this adapter made itself (the clients' pools are their owner's to close)."""
        if self._get_connections is not None:
            await self._get_connections.aclose()

    async def request(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run another module's request-path call (the distributed lock's) as the L2 calls run: through the
        circuit breaker and a request slot, driver errors wrapped in :class:`L2UnavailableError`."""
        return await self._call(operation)

    async def _wait_for_slot(self) -> None:
        """Queue for a request slot (the breaker already let this call through), at most the queue timeout."""
        try:
            await self._slots.take(self._queue_timeout)
        except TimeoutError as exc:
            self.breaker.release_probe()  # a local queue, not a Redis failure
            raise L2UnavailableError("too many concurrent Redis calls; waited for a slot") from exc
        except BaseException:
            self.breaker.release_probe()
            raise

    def _failure(self, exc: BaseException) -> L2UnavailableError | None:
        """Report a failed request-path call to the breaker: the :class:`L2UnavailableError` to raise in place of
        ``exc``, or None to re-raise ``exc`` itself. Only a Redis failure counts against the breaker."""
        breaker = self.breaker
        if isinstance(exc, MaxConnectionsError):
            # Our own pool is exhausted: Redis is fine, so this is no reason to open the breaker.
            breaker.release_probe()
            return L2UnavailableError("Redis connection pool exhausted")
        if isinstance(exc, Exception) and is_redis_failure(exc):
            breaker.record_failure()
            return L2UnavailableError(f"Redis call failed: {exc.__class__.__name__}: {exc}")
        breaker.release_probe()  # cancelled, or not Redis's fault: no outcome to report
        return None

    async def get(self, full_key: str) -> bytes | None:
        """The stored bytes of an entry, or None. The one call of an L2 hit, so it takes the shortest path.

        Raises :class:`CorruptEntryError` when the key holds a hash, list or other non-string value (Redis answers
        ``WRONGTYPE``): that is a foreign value under our key, not a Redis failure, so the breaker counts a success.

        Sent the shortest way for the topology (:mod:`hybridcache.direct_get`), skipping redis-py's per-command
        and pool-checkout wrappers, which cost about as much as decoding the value; the reply is still read and
        parsed by redis-py's connection, which drops itself when an exchange fails or is cancelled midway.
        """
        raw = await self._call(functools.partial(self._fetch, self._instance_name + full_key))
        if raw is _WRONG_TYPE:
            raise CorruptEntryError("the key holds a Redis value of another type (WRONGTYPE)")
        return raw.encode() if type(raw) is str else raw

    async def _fetch(self, redis_key: str) -> Any:
        """The raw reply to ``GET redis_key``; :data:`_WRONG_TYPE` when the key holds a non-string value (Redis
        answered, so it is no failure of Redis's)."""
        try:
            connections = self._get_connections
            if connections is not None:
                return await connections.get(redis_key)
            if self._get_pool is not None:
                return await get_pooled(self._get_pool, redis_key)
            if isinstance(self.client, RedisCluster):
                return await get_on_cluster(self.client, redis_key)
            return await self.client.get(redis_key)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return _WRONG_TYPE
            raise

    async def delete(self, full_key: str) -> None:
        await self._call(lambda: self.client.delete(self.redis_key(full_key)))

    async def set(self, full_key: str, payload: bytes, ttl_ms: int) -> None:
        await self._call(lambda: self.client.set(self.redis_key(full_key), payload, px=ttl_ms))

    async def capture(
        self, full_key: str, fields: Sequence[str], mirror: tuple[str, dict[str, int]] | None = None
    ) -> Capture:
        """Read the generations ``full_key`` depends on and its capture token, creating the epoch and the token
        if Redis has none.

        On a cluster the token is read (or created) in the entry's slot, and the prefix/tag generations are taken
        from ``mirror`` (the trusted local table: epoch and snapshot) when given, so a miss never touches the meta
        slot; a lagging mirror only makes the stamp older (an extra miss), never newer.
        """
        if not self.cluster:
            keys = [self.generations_key, self.key_token_key(full_key)]
            args: list[EncodableT] = [new_epoch(), self._meta_ttl_ms, new_epoch(), CAPTURE_TOKEN_TTL_MS, *fields]
            reply = await self._call(lambda: self._capture(keys=keys, args=args))
            epoch, key_token, now_ms, *counters = (_text(item) for item in reply)
            return Capture(epoch, key_token, self._stamp(fields, counters, int(now_ms)))
        if mirror is None:
            keys = [self.generations_key]
            args = [new_epoch(), self._meta_ttl_ms, *fields]
            reply = await self._call(lambda: self._capture_fields(keys=keys, args=args))
            epoch, now_ms, *counters = (_text(item) for item in reply)
            mirror = epoch, self._stamp(fields, counters, int(now_ms))
        token_keys = [self.key_token_key(full_key)]
        token_args: list[EncodableT] = [new_epoch(), CAPTURE_TOKEN_TTL_MS]
        raw = await self._call(lambda: self._capture_key(keys=token_keys, args=token_args))
        return Capture(epoch=mirror[0], key_token=_text(raw), generations=mirror[1])

    def _stamp(self, fields: Sequence[str], counters: Sequence[str], now_ms: int) -> dict[str, int]:
        """The generations a capture records: its floor, and the fields whose counters are above it."""
        floor = now_ms - self.retention_ms
        stamp = {f: n for f, g in zip(fields, counters, strict=True) if (n := int(g)) > floor}
        if floor > 0:
            stamp[FLOOR_FIELD] = floor
        return stamp

    async def set_if_current(self, full_key: str, payload: bytes, ttl_ms: int, capture: Capture) -> bool:
        """Store the entry only if no generation it depends on moved since ``capture`` (atomically)."""
        keys, args = self._conditional_set(full_key, payload, ttl_ms, capture)
        stored = await self._call(lambda: self._set_if_current(keys=keys, args=args))
        return bool(stored)

    def _conditional_set(
        self, full_key: str, payload: bytes, ttl_ms: int, capture: Capture
    ) -> tuple[list[str], list[EncodableT]]:
        """The keys and arguments of ``SET_IF_CURRENT`` for one entry."""
        keys = [self.redis_key(full_key), self.key_token_key(full_key)]
        args: list[EncodableT] = [payload, ttl_ms, capture.key_token]
        if not self.cluster:
            keys.append(self.generations_key)
            args.append(capture.epoch)
            for field, generation in capture.generations.items():
                if field != FLOOR_FIELD:
                    args += (field, generation)
        return keys, args

    # -- many keys at once: one round trip per server. On a cluster redis-py sends the commands of a pipeline to
    # each node in one write and reads the node's replies together, so a call costs one round trip per node touched.

    async def get_many(self, full_keys: Sequence[str]) -> list[bytes | None]:
        """The stored bytes of each entry, in order: None where there is none, or where the key holds a value of
        another Redis type (``MGET`` answers nil for it; :meth:`get` raises instead).

        One ``MGET`` on a server or behind Sentinel; on a cluster one ``MGET`` per hash slot, sent to each master
        in one round trip (redis-py's ``mget_nonatomic``).
        """
        redis_keys = [self._instance_name + k for k in full_keys]
        client = self.client
        replies: list[Any]
        if isinstance(client, RedisCluster):
            replies = await self._call(functools.partial(client.mget_nonatomic, redis_keys))
        else:
            replies = await self._call(functools.partial(client.mget, redis_keys))
        return [reply.encode() if type(reply) is str else reply for reply in replies]

    async def capture_many(
        self,
        requests: Sequence[tuple[str, Sequence[str]]],
        mirror: tuple[str, Sequence[dict[str, int]]] | None = None,
    ) -> list[Capture]:
        """:meth:`capture` for several keys, each given as ``(full_key, fields)``: one round trip per server.

        On a cluster ``mirror`` is the trusted table's epoch and each key's snapshot, taken as :meth:`capture`
        takes it; without one, the fields of every key are read by one call in the meta slot, beside the tokens.
        """
        calls: list[_ScriptCall]
        if not self.cluster:
            calls = [
                (
                    self._capture,
                    [self.generations_key, self.key_token_key(full_key)],
                    [new_epoch(), self._meta_ttl_ms, new_epoch(), CAPTURE_TOKEN_TTL_MS, *fields],
                )
                for full_key, fields in requests
            ]
            replies = await self._call(functools.partial(self._run_scripts, calls))
            captures = []
            for (_, fields), reply in zip(requests, replies, strict=True):
                epoch, key_token, now_ms, *counters = (_text(item) for item in reply)
                captures.append(Capture(epoch, key_token, self._stamp(fields, counters, int(now_ms))))
            return captures
        calls = [
            (self._capture_key, [self.key_token_key(full_key)], [new_epoch(), CAPTURE_TOKEN_TTL_MS])
            for full_key, _ in requests
        ]
        union = list(dict.fromkeys(field for _, fields in requests for field in fields)) if mirror is None else []
        if mirror is None:
            calls.append((self._capture_fields, [self.generations_key], [new_epoch(), self._meta_ttl_ms, *union]))
        replies = await self._call(functools.partial(self._run_scripts, calls))
        if mirror is None:
            epoch, now_ms, *counters = (_text(item) for item in replies.pop())
            read = dict(zip(union, counters, strict=True))
            stamps = [self._stamp(fields, [read[f] for f in fields], int(now_ms)) for _, fields in requests]
        else:
            epoch, stamps = mirror[0], list(mirror[1])
        return [Capture(epoch, _text(token), stamp) for token, stamp in zip(replies, stamps, strict=True)]

    async def set_many_if_current(self, entries: Sequence[tuple[str, bytes, int, Capture]]) -> list[bool]:
        """:meth:`set_if_current` for several entries (``(full_key, payload, ttl_ms, capture)`` each), each
        checked and stored atomically on its own, all in one round trip per server; whether each was stored."""
        calls: list[_ScriptCall] = [(self._set_if_current, *self._conditional_set(*entry)) for entry in entries]
        replies = await self._call(functools.partial(self._run_scripts, calls))
        return [bool(reply) for reply in replies]

    async def set_many(self, entries: Sequence[tuple[str, bytes, int]]) -> None:
        """Plain ``SET``s of several entries in one round trip per server, no generation checked (the store of a
        cache built with ``stale_set_protection=False``)."""

        async def send() -> None:
            pipe = self.client.pipeline(transaction=False)
            for full_key, payload, ttl_ms in entries:
                pipe.set(self.redis_key(full_key), payload, px=ttl_ms)
            await pipe.execute()

        await self._call(send)

    async def _run_scripts(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        """Run script calls as one pipeline of ``EVALSHA`` and return their replies in order.

        A server that does not have a script (restarted, ``SCRIPT FLUSH``) answers ``NOSCRIPT``: the script is
        loaded and only the calls it refused are sent again. Any other error reply is raised, the first one.
        Not guarded: callers run it through :meth:`_call`.
        """
        replies = await self._pipelined(calls)
        refused = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            for script in {calls[index][0].sha: calls[index][0] for index in refused}.values():
                await self.client.script_load(script.script)
            again = await self._pipelined([calls[index] for index in refused])
            for index, reply in zip(refused, again, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipelined(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def invalidate(
        self,
        full_keys: Sequence[str],
        fields: Sequence[str],
        *,
        sender: str,
        sent_at: float = 0.0,
        past_breaker: bool = False,
    ) -> dict[str, Any]:
        """Remove exact keys, bump prefix/tag generations and publish one message; returns that message.

        Standalone: one atomic script. Cluster: each key is removed in its own slot first (all of them in one
        pipeline: one round trip per node), then the generations are bumped and the message published
        (``SPUBLISH``) in the meta slot — so when the message arrives, the keys are already gone.
        ``past_breaker`` (the retry of a queued invalidation) is not refused by an open circuit
        (:meth:`_call_past_breaker`). ``sent_at`` (the sender's wall time) travels as the message's ``t``.
        """
        # Two statements, not a conditional expression: mypy 1.11 (our floor) cannot type the join of two generic
        # methods and reports it as "function of unknown type".
        call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
        if past_breaker:  # noqa: SIM108  (see above)
            call = self._call_past_breaker
        else:
            call = self._call
        keys = [self.generations_key, self.sequence_key, self.sweep_key]
        if self.cluster:
            if full_keys:  # every key in its own slot, all in one round trip per node
                removals: list[_ScriptCall] = [
                    (self._remove_key, [self.redis_key(k), self.key_token_key(k)], []) for k in full_keys
                ]
                await call(functools.partial(self._run_scripts, removals))
        else:
            for full_key in full_keys:
                keys += (self.redis_key(full_key), self.key_token_key(full_key))
        args: list[EncodableT] = [
            new_epoch(),
            self._meta_ttl_ms,
            self.publish_command,
            self.channel,
            sender,
            orjson.dumps(list(full_keys)),
            repr(sent_at),
            self.retention_ms,
            *fields,
        ]
        reply = await call(lambda: self._invalidate(keys=keys, args=args))
        return parse_message(reply)

    async def publish(self, payload: bytes) -> None:
        """Publish a notice on the invalidation channel (not numbered: not an invalidation)."""
        if self.cluster:
            await self._call(lambda: self.client.spublish(self.channel, payload))
        else:
            await self._call(lambda: self.client.publish(self.channel, payload))

    async def generation_state(self, *, guarded: bool = True, page_timeout: float | None = None) -> GenerationState:
        """The whole generation table and the last message number (new epoch on a new server).

        The message number and the epoch are read first, atomically; the hash follows in pages of
        :data:`SYNC_PAGE` fields (each within ``page_timeout``), so a large hash never holds the server for long. A
        field may be seen twice (the higher value is kept) and a bump made while the pages are read may be missed:
        its message is numbered after the one read first, so the caller receives it next and applies it.
        """
        keys = [self.generations_key, self.sequence_key]
        args: list[EncodableT] = [new_epoch(), self._meta_ttl_ms]
        async with asyncio.timeout(page_timeout):
            sequence, epoch = await self._call(lambda: self._sync(keys=keys, args=args), guarded=guarded)
        counters: dict[str, int] = {}
        cursor = 0
        while True:
            scan = functools.partial(self.client.hscan, self.generations_key, cursor, count=SYNC_PAGE)
            async with asyncio.timeout(page_timeout):
                cursor, page = await self._call(scan, guarded=guarded)
            assert isinstance(page, dict), "redis-py parses HSCAN into a dict (RESP2 and RESP3)"
            _merge_counters(counters, ((_text(f), _text(g)) for f, g in page.items()))
            if not cursor:
                return GenerationState(int(sequence), _text(epoch), counters)

    async def sequence(self, *, guarded: bool = True) -> int:
        raw = await self._call(lambda: self.background.get(self.sequence_key), guarded=guarded)
        return int(raw or 0)

    async def current_generations(self, fields: Sequence[str]) -> tuple[str, dict[str, int]]:
        """Epoch and counters read straight from Redis (used while the local mirror is not trusted).

        A script rather than an HMGET: the epoch is drawn anew when the hash was written by another server (a
        restored snapshot, a promoted replica), so a stamp made before can never match counters that went back.
        """
        keys = [self.generations_key]
        args: list[EncodableT] = [new_epoch(), self._meta_ttl_ms, *fields]
        reply = await self._call(lambda: self._capture_fields(keys=keys, args=args))
        epoch, _now_ms, *counters = (_text(item) for item in reply)
        return epoch, {f: int(g) for f, g in zip(fields, counters, strict=True) if g != "0"}

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))


def is_redis_failure(exc: BaseException) -> bool:
    """True for a failed Redis call: a driver or socket error, or a driver-internal AttributeError/TypeError.

    The latter happen in redis-py's asyncio clients around a failover: the cluster client can tear down a pooled
    connection while another task is still connecting or writing on it (seen in tests/integration/test_cluster.py
    as ``'NoneType' object has no attribute 'writelines'``; the error handler disconnects the free connections
    without taking them out of the free list), and a write on a connection the peer reset can leak transport
    internals on some Python versions (redis/redis-py#4287). Raised in our own code (the innermost frame is in
    this package) they are bugs and are not counted as Redis failures.
    """
    if isinstance(exc, RedisError | OSError | TimeoutError):
        return True
    if not isinstance(exc, AttributeError | TypeError):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and not frame.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def parse_message(raw: bytes | str) -> dict[str, Any]:
    """Decode an invalidation message; raises ValueError when it is not one of ours."""
    message = orjson.loads(raw)
    if not isinstance(message, dict) or not {"i", "s", "e"} <= message.keys():
        raise ValueError("not an invalidation message")
    keys = message.get("k") or []
    generations = message.get("g") or {}
    if not isinstance(keys, list) or not isinstance(generations, dict):
        raise ValueError("malformed invalidation message")
    message["k"], message["g"] = keys, generations
    return message


def _merge_counters(counters: dict[str, int], pairs: Iterable[tuple[str, str]]) -> None:
    for field, value in pairs:
        if field not in (EPOCH_FIELD, SERVER_FIELD):
            generation = int(value)
            if generation > counters.get(field, 0):
                counters[field] = generation


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
