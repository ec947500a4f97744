"""Shared fixtures: private redis-server processes, unique namespaces, throwaway PostgreSQL databases.

Tests never touch the system Redis (6379) or the system databases: every server here is started by the
harness on a free loopback port and killed at teardown.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from harness.postgres import PostgresUnavailableError, check_postgres_sync, postgres_database
from harness.redis_cluster import ClusterError, RedisClusterProcess
from harness.redis_sentinel import RedisSentinelSetup, SentinelError
from harness.redis_server import RedisServer, RedisServerError

# Databases on the shared server: each test gets its own db number, so FLUSHDB-style tests cannot collide.
_SHARED_DATABASES = 1024


def _start(extra_args: Sequence[str] = ()) -> RedisServer:
    server = RedisServer(extra_args=extra_args)
    try:
        server.start()
    except RedisServerError as exc:
        server.close()
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh private redis-server for this test alone: kill it, pause it, restart it as you like."""
    server = _start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(*extra_args)`` starts another private server (e.g. with ``--client-output-buffer-limit``);
    all are killed at teardown."""
    servers: list[RedisServer] = []

    def make(*extra_args: str) -> RedisServer:
        server = _start(extra_args)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def shared_redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole run. Never kill or pause it: use ``redis_server`` for faults."""
    server = _start(("--databases", str(_SHARED_DATABASES)))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def _db_numbers() -> Iterator[int]:
    return itertools.cycle(range(1, _SHARED_DATABASES))


@pytest.fixture
def redis_db(shared_redis_server: RedisServer, _db_numbers: Iterator[int]) -> int:
    """A db number on the shared server that no other test in this run is using (emptied before use)."""
    db = next(_db_numbers)
    with shared_redis_server.sync_client(db=db, socket_timeout=5) as client:
        client.flushdb()
    return db


@pytest.fixture
def redis_url(shared_redis_server: RedisServer, redis_db: int) -> str:
    """URL of the shared server with a fresh db number, e.g. ``redis://127.0.0.1:40123/7``.

    Pub/sub channels are server-wide, not per db: combine with ``namespace`` (as the service name) to isolate
    them.
    """
    return shared_redis_server.url_for_db(redis_db)


@pytest.fixture
def namespace() -> str:
    """A unique key namespace / service name for this test, e.g. ``t-1a2b3c4d``."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_protocol(request: pytest.FixtureRequest) -> int:
    """RESP version for clients under test: 2 unless parametrised indirectly with 3."""
    protocol: int = getattr(request, "param", 2)
    return protocol


@pytest.fixture(scope="session")
def _postgres_reachable() -> str | None:
    try:
        check_postgres_sync()
    except PostgresUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture
def postgres_url(_postgres_reachable: str | None) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database ``hc_test_<random>``, dropped after the test.

    Skips when PostgreSQL is unreachable, except with ``CI=true``, where that is a failure: CI must run these.
    """
    if _postgres_reachable is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is unavailable: {_postgres_reachable}", pytrace=False)
        pytest.skip(_postgres_reachable)
    with postgres_database() as url:
        yield url


# ---------------------------------------------------------------------------------- Redis Cluster and Sentinel


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    """One private Redis Cluster (3 masters, 3 replicas) for the whole run. Tests share it, so isolate by
    ``namespace``; never fail it over or kill a node: start a private ``RedisClusterProcess`` for that."""
    try:
        cluster = RedisClusterProcess().start()
    except (ClusterError, RedisServerError) as exc:
        pytest.fail(f"could not start a Redis Cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSetup]:
    """One private Sentinel setup (master, replica, 3 sentinels) for the whole run; shared like
    ``redis_cluster``: start a private ``RedisSentinelSetup`` to fail it over."""
    try:
        setup = RedisSentinelSetup().start()
    except (SentinelError, RedisServerError) as exc:
        pytest.fail(f"could not start a Sentinel setup: {exc}", pytrace=False)
    try:
        yield setup
    finally:
        setup.close()
