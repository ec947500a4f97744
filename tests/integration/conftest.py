"""Fixtures for cache integration tests: caches on a real private redis-server, in each deployment shape.

``cache_mode`` parametrises a test over the three shapes the contract must hold in (L1-only, L2-only, L1+L2);
``make_cache`` builds started caches of that shape; ``start_cache`` starts a cache from any settings. Every cache
is closed at teardown. Redis is the session's shared private server, a fresh db per test, and a unique service
name per test (pub/sub channels are server-wide; the service name is part of the channel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import redis.asyncio

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import MemoryCacheSettings

L1_ONLY = "l1-only"
L2_ONLY = "l2-only"
L1_L2 = "l1+l2"
MODES = (L1_ONLY, L2_ONLY, L1_L2)
INSTANCE_NAME = "hc-test:"
CACHE_VERSION = "v1"


@dataclass(frozen=True)
class CacheEnv:
    """Where this test's caches live: a unique service name and (for Redis modes) a fresh db."""

    service_name: str
    redis_url: str

    def settings(self, *, redis: bool = True, memory: dict[str, Any] | None = None, **overrides: Any) -> CacheSettings:
        """Settings for this test's namespace; ``redis=False`` leaves ``Configuration`` unset (L1-only)."""
        fields: dict[str, Any] = {
            "service_name": self.service_name,
            "cache_version": CACHE_VERSION,
            "instance_name": INSTANCE_NAME,
            "configuration": self.redis_url if redis else None,
        }
        if memory is not None:
            fields["memory_cache"] = MemoryCacheSettings(**memory)
        fields.update(overrides)
        return CacheSettings(**fields)

    def redis_key(self, key: str) -> str:
        """The documented Redis layout of an entry: ``{InstanceName}{ServiceName}:{CacheVersion}:{key}``."""
        return f"{INSTANCE_NAME}{self.service_name}:{CACHE_VERSION}:{key}"

    @property
    def generations_key(self) -> str:
        return f"{{{INSTANCE_NAME}hybridcache:{self.service_name}:{CACHE_VERSION}:}}gens"


class StartCache(Protocol):
    def __call__(self, settings: CacheSettings) -> Awaitable[HybridCache]: ...


class MakeCache(Protocol):
    def __call__(self, *, memory: dict[str, Any] | None = None, **overrides: Any) -> Awaitable[HybridCache]: ...


@pytest.fixture
def cache_env(namespace: str, redis_url: str) -> CacheEnv:
    return CacheEnv(service_name=namespace, redis_url=redis_url)


@pytest.fixture
async def start_cache() -> AsyncIterator[StartCache]:
    """``await start_cache(settings)``: a started cache (subscription confirmed when it has Redis)."""
    caches: list[HybridCache] = []

    async def start(settings: CacheSettings) -> HybridCache:
        cache = HybridCache.from_settings(settings)
        caches.append(cache)
        await cache.start()
        if settings.enabled:
            assert await cache.wait_until_connected(timeout=5.0), "invalidation channel not confirmed"
        return cache

    try:
        yield start
    finally:
        for cache in caches:
            await cache.close()


@pytest.fixture(params=MODES)
def cache_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def make_cache(cache_mode: str, cache_env: CacheEnv, start_cache: StartCache) -> MakeCache:
    """``await make_cache(memory={...}, **overrides)``: a started cache of this test's mode.

    Each call is a separate instance (its own L1 and instance id) sharing the mode's Redis, if any.
    """

    def make(*, memory: dict[str, Any] | None = None, **overrides: Any) -> Awaitable[HybridCache]:
        memory = dict(memory or {})
        if cache_mode == L2_ONLY:
            memory["enabled"] = False
        settings = cache_env.settings(redis=cache_mode != L1_ONLY, memory=memory, **overrides)
        return start_cache(settings)

    return make


@pytest.fixture
async def raw_redis(cache_env: CacheEnv) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on the test's db: "another client" that inspects or tampers with entries."""
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(cache_env.redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test's private ``redis_server``: what an operator (or a fault) does to Redis."""
    client = redis_server.client()
    try:
        yield client
    finally:
        await client.aclose()


class Factory:
    """A counting factory: ``await factory()`` returns ``value`` (or raises ``error``) and counts its runs."""

    def __init__(self, value: Any = "value", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.runs = 0

    async def __call__(self) -> Any:
        self.runs += 1
        if self.error is not None:
            raise self.error
        return self.value
