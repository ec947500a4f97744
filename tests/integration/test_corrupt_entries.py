"""Bytes under a cache key written by someone else: a logged, counted miss; the bad entry is gone; no exception.

"Another client" is a plain redis-py connection writing straight to the entry's Redis key.
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio
from pydantic import BaseModel, ConfigDict

from hybridcache import CacheSettings, HybridCache
from hybridcache._serialization import MAX_BODY_BYTES, decode_entry
from tests.integration.conftest import CacheEnv, Factory, StartCache

KEY = "Dealership:42"
MISSING: Any = object()


class StateDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: str
    name: str


class ZipCodeDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: str
    state_province: StateDto


class DealershipDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    name: str
    unique_key: uuid.UUID
    business_zip_code: ZipCodeDto


FRESH = DealershipDto(
    id=42,
    name="Ford of Springfield",
    unique_key=uuid.UUID(int=42),
    business_zip_code=ZipCodeDto(code="62701", state_province=StateDto(code="IL", name="Illinois")),
)


def envelope(epoch: str, body: bytes, **header: Any) -> bytes:
    """A well-formed envelope around ``body``: what a hostile or buggy writer that knows the format sends."""
    now = time.time()
    fields: dict[str, Any] = {"v": 1, "c": now, "x": now + 3600, "e": epoch, **header}
    return b"hc1" + orjson.dumps(fields) + b"\n" + body


def fresh_json(**changes: Any) -> bytes:
    return orjson.dumps({**FRESH.model_dump(mode="json"), **changes})


# Each case builds the payload from the current generation epoch, so envelopes pass the staleness check and
# reach the body decoder: the corruption, not the epoch, must be what rejects them.
CASES: dict[str, Callable[[str], bytes]] = {
    "garbage": lambda epoch: b"\x00\xff\xfe not an entry \r\n",
    "empty": lambda epoch: b"",
    "pickle-opcode": lambda epoch: b"\x80\x04\x95" + b"\x00" * 16,
    "real-pickle": lambda epoch: pickle.dumps(FRESH, protocol=4),
    "pickle-in-envelope": lambda epoch: envelope(epoch, pickle.dumps(FRESH, protocol=4)),
    "wrong-type-body": lambda epoch: envelope(epoch, b'{"unexpected": ["shape"]}'),
    "list-for-a-model": lambda epoch: envelope(epoch, b"[1, 2, 3]"),
    "null-for-a-model": lambda epoch: envelope(epoch, b"null"),
    "missing-nested-field": lambda epoch: envelope(epoch, fresh_json(business_zip_code={"code": "1"})),
    "huge-number": lambda epoch: envelope(epoch, fresh_json(id=0).replace(b'"id":0', b'"id":' + b"9" * 1_000_000)),
    "infinite-number": lambda epoch: envelope(epoch, fresh_json(id=0).replace(b'"id":0', b'"id":1e999999')),
    "nesting-bomb": lambda epoch: envelope(epoch, b"[" * 200_000 + b"]" * 200_000),
    "truncated-body": lambda epoch: envelope(epoch, fresh_json()[:-10]),
    "header-not-json": lambda epoch: b"hc1{oops\n" + fresh_json(),
    "header-bad-generations": lambda epoch: envelope(epoch, fresh_json(), g={"p:": "one"}),
    "future-format-version": lambda epoch: envelope(epoch, fresh_json(), v=99),
    # Bodies flagged as compressed: not zlib, cut short, followed by junk, an unknown codec, and a zlib bomb
    # that would inflate past MAX_BODY_BYTES (17 MiB of spaces, 17 KB compressed).
    "compressed-not-zlib": lambda epoch: envelope(epoch, fresh_json(), z=1),
    "compressed-truncated": lambda epoch: envelope(epoch, zlib.compress(fresh_json())[:-6], z=1),
    "compressed-trailing-junk": lambda epoch: envelope(epoch, zlib.compress(fresh_json()) + b"junk", z=1),
    "compressed-unknown-codec": lambda epoch: envelope(epoch, zlib.compress(fresh_json()), z="lz4"),
    "compressed-bomb": lambda epoch: envelope(epoch, zlib.compress(b" " * (MAX_BODY_BYTES + 1024 * 1024), 9), z=1),
}


@pytest.fixture(params=["l1+l2", "l2-only"])
async def cache(request: pytest.FixtureRequest, cache_env: CacheEnv, start_cache: StartCache) -> HybridCache:
    memory = {"enabled": request.param == "l1+l2"}
    return await start_cache(cache_env.settings(memory=memory))


async def current_epoch(raw: redis.asyncio.Redis, env: CacheEnv) -> str:
    epoch = await raw.hget(env.generations_key, "__epoch__")
    assert epoch is not None, "a started cache has an epoch in Redis"
    return epoch.decode() if isinstance(epoch, bytes) else str(epoch)


def corrupt_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("hybridcache") and r.levelno >= logging.WARNING and KEY in r.getMessage()
    ]


@pytest.mark.parametrize("case", list(CASES))
async def test_get_or_create_recomputes_over_a_corrupt_entry(
    case: str,
    cache: HybridCache,
    cache_env: CacheEnv,
    raw_redis: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = CASES[case](await current_epoch(raw_redis, cache_env))
    await raw_redis.set(cache_env.redis_key(KEY), bad)
    factory = Factory(FRESH)
    with caplog.at_level(logging.WARNING, logger="hybridcache"):
        value = await cache.get_or_create(KEY, factory, ttl=600, type_=DealershipDto)
    assert value == FRESH
    assert factory.runs == 1
    assert cache.stats().corrupt_entries == 1
    assert corrupt_warnings(caplog), "a corrupt entry must be logged with its key"
    stored = await raw_redis.get(cache_env.redis_key(KEY))
    assert stored != bad, "the corrupt entry is still in Redis"
    if stored is not None:  # replaced by the recomputed value
        assert isinstance(stored, bytes)
        _, body = decode_entry(stored)
        assert body is not None
        assert DealershipDto.model_validate_json(body) == FRESH
    assert await cache.get_or_create(KEY, factory, ttl=600, type_=DealershipDto) == FRESH
    assert factory.runs == 1
    assert cache.stats().corrupt_entries == 1, "the replacement is a good entry"


@pytest.mark.parametrize("case", ["garbage", "real-pickle", "wrong-type-body", "huge-number"])
async def test_get_reports_a_corrupt_entry_as_absent_and_deletes_it(
    case: str,
    cache: HybridCache,
    cache_env: CacheEnv,
    raw_redis: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await raw_redis.set(cache_env.redis_key(KEY), CASES[case](await current_epoch(raw_redis, cache_env)))
    with caplog.at_level(logging.WARNING, logger="hybridcache"):
        assert await cache.get(KEY, type_=DealershipDto, default=MISSING) is MISSING
    assert not await raw_redis.exists(cache_env.redis_key(KEY)), "the corrupt entry was not deleted"
    assert cache.stats().corrupt_entries == 1
    assert corrupt_warnings(caplog)


async def test_a_value_written_for_another_type_is_a_corrupt_entry_for_this_one(
    cache: HybridCache, cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    """A deploy that changed a DTO without bumping CacheVersion: old entries are misses, never errors."""
    old = await start_cache(CacheSettings(**{**cache.settings.model_dump(), "memory_cache": {"enabled": False}}))
    await old.set(KEY, {"id": 42, "title": "old shape"})
    factory = Factory(FRESH)
    assert await cache.get_or_create(KEY, factory, type_=DealershipDto) == FRESH
    assert factory.runs == 1
    assert cache.stats().corrupt_entries == 1


async def test_an_entry_from_an_unknown_epoch_is_never_served(
    cache: HybridCache, cache_env: CacheEnv, raw_redis: redis.asyncio.Redis
) -> None:
    """A well-formed entry stamped with another generation epoch (e.g. from before a Redis restart) is stale."""
    stale = FRESH.model_copy(update={"name": "stale"})
    await raw_redis.set(cache_env.redis_key(KEY), envelope("0000000000000000", stale.model_dump_json().encode()))
    factory = Factory(FRESH)
    assert await cache.get_or_create(KEY, factory, type_=DealershipDto) == FRESH
    assert factory.runs == 1
    stored = await raw_redis.get(cache_env.redis_key(KEY))
    assert isinstance(stored, bytes)
    _, body = decode_entry(stored)
    assert body is not None
    assert DealershipDto.model_validate_json(body) == FRESH, "the stale entry was replaced"


@pytest.mark.parametrize("write", ["hash", "list", "set"])
async def test_a_redis_value_of_another_type_under_the_key_is_a_corrupt_entry(
    write: str,
    cache: HybridCache,
    cache_env: CacheEnv,
    raw_redis: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``GET`` on a hash, list or set answers WRONGTYPE: a miss like any foreign bytes, and no Redis failure.

    Counting it as one would open the circuit breaker after a few reads of one bad key, taking L2 away from
    every other key.
    """
    redis_key = cache_env.redis_key(KEY)

    async def write_foreign_value() -> None:
        if write == "hash":
            await raw_redis.hset(redis_key, "field", "value")
        elif write == "list":
            await raw_redis.rpush(redis_key, "item")
        else:
            await raw_redis.sadd(redis_key, "member")

    factory = Factory(FRESH)
    with caplog.at_level(logging.WARNING, logger="hybridcache"):
        for _ in range(cache.settings.circuit_breaker.failure_threshold + 1):
            await write_foreign_value()
            assert await cache.get(KEY, type_=DealershipDto, default=MISSING) is MISSING
            assert not await raw_redis.exists(redis_key), "the foreign value was not removed"
        await write_foreign_value()
        assert await cache.get_or_create(KEY, factory, ttl=600, type_=DealershipDto) == FRESH
    assert factory.runs == 1
    stats = cache.stats()
    assert stats.corrupt_entries == cache.settings.circuit_breaker.failure_threshold + 2
    assert stats.l2_errors == 0, "a foreign value is no Redis failure"
    assert stats.circuit == "closed"
    assert corrupt_warnings(caplog)
    assert await raw_redis.type(redis_key) in (b"string", "string"), "the foreign value was replaced by an entry"
