"""Fixtures for cache integration tests: caches on a real private redis-server, in each deployment shape.

``cache_mode`` parametrises a test over the three shapes the contract must hold in (L1-only, L2-only, L1+L2);
``make_cache`` builds started caches of that shape; ``start_cache`` starts a cache from any settings. Every cache
is closed at teardown. Redis is the session's shared private server, a fresh db per test, and a unique service
name per test (pub/sub channels are server-wide; the service name is part of the channel).

Topologies: a test marked ``@pytest.mark.all_topologies`` runs once per Redis deployment in
:data:`~tests.support.redis_topology.TOPOLOGIES`: ``standalone``, ``cluster`` (the session's ``redis_cluster``) and
``sentinel`` (the session's ``redis_sentinel``); ``pytest_generate_tests`` below parametrises its ``topology``, and
with it ``cache_mode`` (L1-only has no Redis, so it runs on standalone only). The fixtures that say where Redis is
follow ``topology``: ``cache_env`` and ``raw_redis``, and ``redis_endpoint``, the test's Redis as a
:class:`~tests.support.redis_topology.RedisEndpoint` (on standalone, the root ``redis_server``: a private server of
the test's own). A session setup starts only when a selected test runs on it. Every other test runs on standalone
alone, and ``redis_server`` is always a standalone server (kill it, pause it): a topology-parametrised test must
not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from harness.process import HOST
from harness.redis_cluster import RedisClusterProcess
from harness.redis_sentinel import RedisSentinelSetup
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import MemoryCacheSettings
from tests.support.redis_topology import (
    CLUSTER,
    SENTINEL,
    STANDALONE,
    TOPOLOGIES,
    RedisEndpoint,
    cluster_endpoint,
    sentinel_endpoint,
)

L1_ONLY = "l1-only"
L2_ONLY = "l2-only"
L1_L2 = "l1+l2"
MODES = (L1_ONLY, L2_ONLY, L1_L2)
# The modes each topology runs in: without Redis (L1-only) there is nothing that depends on the topology.
MODES_ON = {STANDALONE: MODES, CLUSTER: (L2_ONLY, L1_L2), SENTINEL: (L2_ONLY, L1_L2)}
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


# ---------------------------------------------------------------------------------------------- topologies

# Fixtures that are a standalone server whatever the topology: a test that runs on every topology must not use them.
STANDALONE_ONLY = frozenset({"redis_server", "redis_url", "shared_redis_server", "redis_db", "admin"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``cache_mode`` over :data:`MODES`; for a test marked ``all_topologies``, ``topology`` over every topology
    too, each with the modes it runs in (``[standalone-l1-only]`` … ``[cluster-l2-only]`` …, or
    ``[standalone]``, ``[cluster]``, ``[sentinel]`` for a test without a mode)."""
    wants_mode = "cache_mode" in metafunc.fixturenames
    if metafunc.definition.get_closest_marker("all_topologies") is None:
        if wants_mode:
            metafunc.parametrize("cache_mode", MODES, indirect=True)
        return
    standalone_only = STANDALONE_ONLY.intersection(metafunc.fixturenames)
    if standalone_only:
        pytest.fail(
            f"{metafunc.definition.nodeid} is marked all_topologies but uses {sorted(standalone_only)}, which are"
            " standalone servers on every topology: ask for redis_endpoint (or cache_env) instead",
            pytrace=False,
        )
    if wants_mode:
        pairs = [(topology, mode) for topology in TOPOLOGIES for mode in MODES_ON[topology]]
        ids = [f"{topology}-{mode}" for topology, mode in pairs]
        metafunc.parametrize(("topology", "cache_mode"), pairs, indirect=True, ids=ids)
    else:
        metafunc.parametrize("topology", TOPOLOGIES, indirect=True)


@pytest.fixture(autouse=True)
def topology(request: pytest.FixtureRequest) -> str:
    """The Redis deployment under the test: ``standalone`` unless ``all_topologies`` parametrises it. Autouse, so
    that it is parametrised even when the test reaches Redis only through ``request.getfixturevalue`` (a cache
    fixture that starts no server in L1-only mode)."""
    name: str = getattr(request, "param", STANDALONE)
    return name


@pytest.fixture
def redis_endpoint(topology: str, request: pytest.FixtureRequest) -> RedisEndpoint:
    """The test's Redis: on standalone a private server of its own (the root ``redis_server``), else the session's
    cluster or Sentinel setup, started by the first test that asks for it."""
    if topology == CLUSTER:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        return cluster_endpoint(cluster)
    if topology == SENTINEL:
        setup: RedisSentinelSetup = request.getfixturevalue("redis_sentinel")
        return sentinel_endpoint(setup)
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
def cache_env(namespace: str, topology: str, request: pytest.FixtureRequest) -> CacheEnv:
    """On standalone a fresh db of the session's shared server (``redis_url``), else ``redis_endpoint``."""
    if topology == STANDALONE:
        redis_url: str = request.getfixturevalue("redis_url")
        return CacheEnv(service_name=namespace, redis_url=redis_url)
    endpoint: RedisEndpoint = request.getfixturevalue("redis_endpoint")
    return CacheEnv(service_name=namespace, redis_url=endpoint.url)


# ---------------------------------------------------------------------------------------------- caches


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


@pytest.fixture
def cache_mode(request: pytest.FixtureRequest) -> str:
    """The cache's shape, one of :data:`MODES` (parametrised by ``pytest_generate_tests``)."""
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


# What ``raw_redis`` is: a cluster client on a cluster (it follows redirections), a plain client elsewhere.
RawRedis = redis.asyncio.Redis | RedisCluster


@pytest.fixture
async def raw_redis(topology: str, cache_env: CacheEnv, request: pytest.FixtureRequest) -> AsyncIterator[RawRedis]:
    """A plain redis-py client where ``cache_env`` keeps its entries: "another client" that inspects or tampers
    with them (on standalone the test's db, on a cluster a cluster client, on Sentinel the current master)."""
    client: RawRedis
    if topology == CLUSTER:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        host, port = cluster.seeds[0]
        client = RedisCluster(host=host, port=port, socket_timeout=5)
    elif topology == SENTINEL:
        setup: RedisSentinelSetup = request.getfixturevalue("redis_sentinel")
        client = redis.asyncio.Redis(host=HOST, port=setup.master(), socket_timeout=5)
    else:
        client = redis.asyncio.Redis.from_url(cache_env.redis_url, socket_timeout=5)
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
