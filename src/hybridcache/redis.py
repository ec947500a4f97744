"""L2: the one place that talks to Redis for values, generation counters and invalidations.

Layout in Redis (``I`` = InstanceName, ``N`` = ``{ServiceName}:{CacheVersion}:``):
  ``I N <key>``                        the entry (envelope bytes), always with a TTL
  ``I hybridcache:N gens``             hash: ``__epoch__`` and the prefix/tag generation counters
  ``I hybridcache:N kgen:<key>``       generation of one exact key (bumped when the key is removed)
  ``I hybridcache:N seq``              number of the last invalidation message
  ``I hybridcache:N invalidation``     the pub/sub channel of invalidation messages
Every check-and-act (capture generations, set only if they have not moved, invalidate-and-publish) is one Lua
script, so it is atomic against every other instance. Meta keys carry a long TTL refreshed on use.

Each call goes through the circuit breaker: while it is open no socket is touched and :class:`L2UnavailableError`
is raised at once. Driver errors are wrapped in that exception as well (``from`` the original).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import MaxConnectionsError, RedisError
from redis.typing import EncodableT

from hybridcache.errors import HybridCacheError
from hybridcache.generations import EPOCH_FIELD, new_epoch
from hybridcache.resilience import CircuitBreaker

T = TypeVar("T")
logger = logging.getLogger("hybridcache.redis")

_CAPTURE = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
if not epoch then epoch = ARGV[2]; redis.call('HSET', KEYS[1], ARGV[1], epoch) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local result = {epoch, redis.call('GET', KEYS[2]) or '0'}
for i = 4, #ARGV do result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0' end
return result
"""

_SET_IF_CURRENT = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[3], ARGV[4]) ~= ARGV[5] then return 0 end
for i = 6, #ARGV, 2 do
  if tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0') > tonumber(ARGV[i + 1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: gens, seq, then (value key, key generation) per removed key. ARGV: epoch field, candidate epoch, meta TTL,
# channel, sender, JSON list of full keys, then the fields to bump.
_INVALIDATE = """
local epoch = redis.call('HGET', KEYS[1], ARGV[1])
if not epoch then epoch = ARGV[2]; redis.call('HSET', KEYS[1], ARGV[1], epoch) end
for i = 3, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
end
local gens = {}
for i = 7, #ARGV do gens[ARGV[i]] = redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local message = cjson.encode({i = ARGV[5], s = seq, e = epoch, k = cjson.decode(ARGV[6]), g = gens})
redis.call('PUBLISH', ARGV[4], message)
return message
"""

_SYNC = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""


class L2UnavailableError(HybridCacheError):
    """Redis could not be used for this call (circuit open, timeout, connection error)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """The generations a value is about to be computed under (read before the factory runs)."""

    epoch: str
    key_generation: str
    generations: dict[str, int]


@dataclass(frozen=True, slots=True)
class GenerationState:
    """The authoritative generation table and the number of the last invalidation message."""

    sequence: int
    epoch: str
    counters: dict[str, int]


class RedisL2:
    """Entries, generations and invalidations in one Redis (standalone) for one cache namespace."""

    def __init__(
        self,
        client: Redis,
        *,
        instance_name: str,
        namespace: str,
        breaker: CircuitBreaker,
        background_client: Redis | None = None,
        meta_ttl_ms: int = 7 * 24 * 3600 * 1000,
        max_concurrency: int = 64,
        queue_timeout: float = 0.25,
    ) -> None:
        """``client`` serves the request path; ``background_client`` (its own small pool) serves the backplane —
        subscription, heartbeat, resync — so a burst of requests can never starve the invalidation channel."""
        self.client = client
        self.background = background_client or client
        # At most this many request-path calls at once: a burst of misses then queues here (cheaply) instead of
        # opening hundreds of connections whose socket timeouts would fire on event-loop congestion, not on Redis.
        self._slots = asyncio.Semaphore(max_concurrency)
        self._queue_timeout = queue_timeout
        self.breaker = breaker
        self._instance_name = instance_name
        self._namespace_length = len(namespace)
        meta = f"{instance_name}hybridcache:{namespace}"
        self._meta = meta
        self.generations_key = f"{meta}gens"
        self.sequence_key = f"{meta}seq"
        self.channel = f"{meta}invalidation"
        self._meta_ttl_ms = meta_ttl_ms
        self._capture = client.register_script(_CAPTURE)
        self._set_if_current = client.register_script(_SET_IF_CURRENT)
        self._invalidate = client.register_script(_INVALIDATE)
        self._sync = self.background.register_script(_SYNC)

    def redis_key(self, full_key: str) -> str:
        return self._instance_name + full_key

    def key_generation_key(self, full_key: str) -> str:
        return f"{self._meta}kgen:{full_key[self._namespace_length :]}"

    async def _call(self, operation: Callable[[], Awaitable[T]], *, guarded: bool = True) -> T:
        """Run one Redis operation, wrapping driver errors.

        ``guarded`` calls (the request path) go through the circuit breaker; background work (the backplane's
        resync and heartbeat) is not guarded, so it neither waits for nor consumes the breaker's probe.
        """
        if not guarded:
            try:
                return await operation()
            except (RedisError, OSError, TimeoutError) as exc:
                raise L2UnavailableError(f"Redis call failed: {exc.__class__.__name__}: {exc}") from exc
        breaker = self.breaker
        if not breaker.allow_request():
            raise L2UnavailableError("Redis circuit is open")
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await slots.acquire()
            except TimeoutError as exc:
                breaker.release_probe()  # a local queue, not a Redis failure
                raise L2UnavailableError("too many concurrent Redis calls; waited for a slot") from exc
        else:
            await slots.acquire()
        try:
            result = await operation()
        except MaxConnectionsError as exc:
            # Our own pool is exhausted: Redis is fine, so this is no reason to open the breaker.
            breaker.release_probe()
            raise L2UnavailableError("Redis connection pool exhausted") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            breaker.record_failure()
            raise L2UnavailableError(f"Redis call failed: {exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            breaker.release_probe()
            raise
        finally:
            slots.release()
        breaker.record_success()
        return result

    async def get(self, full_key: str) -> bytes | None:
        raw = await self._call(lambda: self.client.get(self.redis_key(full_key)))
        return raw.encode() if isinstance(raw, str) else raw

    async def delete(self, full_key: str) -> None:
        await self._call(lambda: self.client.delete(self.redis_key(full_key)))

    async def set(self, full_key: str, payload: bytes, ttl_ms: int) -> None:
        await self._call(lambda: self.client.set(self.redis_key(full_key), payload, px=ttl_ms))

    async def capture(self, full_key: str, fields: Sequence[str]) -> Capture:
        """Read the generations ``full_key`` depends on, creating the epoch if Redis has none."""
        keys = [self.generations_key, self.key_generation_key(full_key)]
        args: list[EncodableT] = [EPOCH_FIELD, new_epoch(), self._meta_ttl_ms, *fields]
        reply = await self._call(lambda: self._capture(keys=keys, args=args))
        epoch, key_generation, *counters = (_text(item) for item in reply)
        generations = {f: int(g) for f, g in zip(fields, counters, strict=True) if g != "0"}
        return Capture(epoch=epoch, key_generation=key_generation, generations=generations)

    async def set_if_current(self, full_key: str, payload: bytes, ttl_ms: int, capture: Capture) -> bool:
        """Store the entry only if no generation it depends on moved since ``capture`` (atomically)."""
        keys = [self.redis_key(full_key), self.key_generation_key(full_key), self.generations_key]
        args: list[EncodableT] = [payload, ttl_ms, capture.key_generation, EPOCH_FIELD, capture.epoch]
        for field, generation in capture.generations.items():
            args += (field, generation)
        stored = await self._call(lambda: self._set_if_current(keys=keys, args=args))
        return bool(stored)

    async def invalidate(self, full_keys: Sequence[str], fields: Sequence[str], *, sender: str) -> dict[str, Any]:
        """Remove exact keys, bump prefix/tag generations and publish one message; returns that message."""
        keys = [self.generations_key, self.sequence_key]
        for full_key in full_keys:
            keys += (self.redis_key(full_key), self.key_generation_key(full_key))
        args: list[EncodableT] = [
            EPOCH_FIELD,
            new_epoch(),
            self._meta_ttl_ms,
            self.channel,
            sender,
            orjson.dumps(list(full_keys)),
            *fields,
        ]
        reply = await self._call(lambda: self._invalidate(keys=keys, args=args))
        return parse_message(reply)

    async def generation_state(self, *, guarded: bool = True) -> GenerationState:
        """The whole generation table and the last message number, read atomically."""
        keys = [self.generations_key, self.sequence_key]
        args: list[EncodableT] = [EPOCH_FIELD, new_epoch(), self._meta_ttl_ms]
        sequence, flat = await self._call(lambda: self._sync(keys=keys, args=args), guarded=guarded)
        pairs = [_text(item) for item in flat] if isinstance(flat, list) else _flatten(flat)
        table = dict(zip(pairs[::2], pairs[1::2], strict=True))
        epoch = table.pop(EPOCH_FIELD)
        return GenerationState(int(sequence), epoch, {f: int(g) for f, g in table.items()})

    async def sequence(self, *, guarded: bool = True) -> int:
        raw = await self._call(lambda: self.background.get(self.sequence_key), guarded=guarded)
        return int(raw or 0)

    async def current_generations(self, fields: Sequence[str]) -> tuple[str | None, dict[str, int]]:
        """Epoch and counters read straight from Redis (used while the local mirror is not trusted)."""
        reply = await self._call(lambda: self.client.hmget(self.generations_key, [EPOCH_FIELD, *fields]))
        epoch, *counters = reply
        generations = {f: int(g) for f, g in zip(fields, counters, strict=True) if g is not None}
        return (None if epoch is None else _text(epoch)), generations

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flatten(mapping: Any) -> list[str]:
    # Under RESP3 redis-py may hand HGETALL's reply from Lua back as a map.
    flat: list[str] = []
    for field, value in dict(mapping).items():
        flat += (_text(field), _text(value))
    return flat
