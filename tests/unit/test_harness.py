"""Tests of the test harness itself: if these fail, nothing built on it can be trusted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry

from harness.postgres import postgres_database
from harness.redis_server import RedisServer, find_free_port
from tests.support.waiting import wait_until, wait_until_sync


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_redis_server_answers_on_its_port(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379
    client = redis_server.client()
    try:
        assert await client.ping() is True
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        config = await client.config_get("save")
        assert config["save"] == ""
    finally:
        await client.aclose()


def test_kill_reaps_the_process_and_restart_reuses_the_port(redis_server: RedisServer) -> None:
    port, pid, run_id = redis_server.port, redis_server.pid, redis_server.run_id()
    with redis_server.sync_client() as client:
        client.set("k", "v")

    redis_server.kill()

    assert not redis_server.is_running
    assert not _pid_alive(pid)  # reaped, not a zombie: kill(pid, 0) on a zombie would still succeed
    no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)  # redis-py retries 3x with backoff by default
    with redis_server.sync_client(retry=no_retry) as client, pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.restart()

    assert redis_server.is_running
    assert redis_server.port == port
    assert redis_server.run_id() != run_id
    with redis_server.sync_client() as client:
        assert client.get("k") is None  # no persistence: a restart loses everything


def test_restart_of_a_live_server_keeps_the_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    with redis_server.sync_client() as held:  # an open connection leaves the old socket in TIME_WAIT
        held.ping()
        redis_server.restart()
    assert redis_server.port == port
    with redis_server.sync_client() as client:
        assert client.ping() is True


async def test_paused_server_times_out_and_answers_again_after_resume(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.2, retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0))
    try:
        assert await client.ping() is True
        redis_server.pause()
        assert redis_server.is_paused
        with pytest.raises(redis.TimeoutError):
            await client.ping()
        redis_server.resume()
        assert not redis_server.is_paused
        assert await wait_until(client.ping, timeout=5, message="redis answers PING after SIGCONT")
    finally:
        await client.aclose()


def test_a_paused_server_can_be_killed_and_stopped() -> None:
    with RedisServer() as server:
        pid = server.pid
        server.pause()
        server.kill()
        assert not _pid_alive(pid)
        server.start()
        pid = server.pid
        server.pause()
        server.stop(timeout=5)
        assert not _pid_alive(pid)
        assert not server.is_running


def test_extra_args_reach_the_server(redis_server_factory: object) -> None:
    assert callable(redis_server_factory)
    server = redis_server_factory("--client-output-buffer-limit", "pubsub 64kb 32kb 5")
    with server.sync_client(decode_responses=True) as client:
        limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert "pubsub 65536 32768 5" in limits


def test_two_servers_get_distinct_ports(redis_server: RedisServer, shared_redis_server: RedisServer) -> None:
    assert redis_server.port != shared_redis_server.port
    assert redis_server.run_id() != shared_redis_server.run_id()


def test_redis_url_is_a_fresh_db_and_namespace_is_unique(
    redis_url: str, shared_redis_server: RedisServer, namespace: str
) -> None:
    assert redis_url.startswith(f"redis://127.0.0.1:{shared_redis_server.port}/")
    assert not redis_url.endswith("/0")
    assert namespace.startswith("t-")
    assert len(namespace) == 10
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


async def test_wait_until_returns_the_truthy_value_of_a_sync_or_async_predicate() -> None:
    started = time.monotonic()
    done = await wait_until(lambda: time.monotonic() - started > 0.02 and "done", timeout=2, message="x")
    assert done == "done"

    calls = 0

    async def eventually() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return calls if calls >= 3 else 0

    assert await wait_until(eventually, timeout=2, message="third call") == 3


async def test_wait_until_fails_with_the_message_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="the thing happened"):
        await wait_until(lambda: False, timeout=0.05, message="the thing happened")
    assert 0.05 <= time.monotonic() - started < 1.0


def test_wait_until_sync() -> None:
    values = iter([0, 0, 7])
    assert wait_until_sync(lambda: next(values), timeout=2, message="seven") == 7
    with pytest.raises(AssertionError, match="never"):
        wait_until_sync(lambda: None, timeout=0.02, message="never")


@pytest.mark.postgres
def test_postgres_url_fixture_gives_an_empty_database(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:5432/hc_test_")


@pytest.mark.postgres
async def test_postgres_database_is_created_and_dropped(postgres_url: str) -> None:
    import asyncpg  # only the postgres tests need it

    database = postgres_database()
    async with database as url:
        assert url == database.url
        conn = await asyncpg.connect(database.dsn)
        # Left open on purpose: the drop must force it closed.
        await conn.execute("CREATE TABLE t (id int)")
        assert await database.exists()
    assert not await database.exists()
    assert conn.is_closed() or await _connection_is_dead(conn)


async def _connection_is_dead(conn: object) -> bool:
    try:
        await conn.fetchval("SELECT 1")  # type: ignore[attr-defined]
    except Exception:
        return True
    finally:
        await conn.close()  # type: ignore[attr-defined]
    return False


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_unreachable_postgres_skips_locally_but_fails_in_ci(ci: str, outcome: str) -> None:
    target = f"{__file__}::test_postgres_url_fixture_gives_an_empty_database"
    env = {**os.environ, "CI": ci, "HC_TEST_PG_PORT": str(find_free_port())}  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in result.stdout, result.stdout + result.stderr
    if ci:
        assert result.returncode != 0
        assert "CI=true but PostgreSQL is unavailable" in result.stdout
    else:
        assert result.returncode == 0
