"""Sentinels protected by ``requirepass``: ``sentinelPassword`` reaches them, and a missing or wrong one fails clearly.

One private setup (master, replica, three sentinels with a password; the data nodes have none) for the module. The
right password: a cache stores through the master and a second cache reads it from Redis (L1 off). No password or
a wrong one: with ``abortConnect=true`` start-up raises :class:`CacheConnectionError` within a bound; with
``abortConnect=false`` the cache starts degraded and still answers from the factory. The password appears in no
log record and no exception text.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator

import pytest

from harness.redis_sentinel import RedisSentinelSetup
from hybridcache import CacheConnectionError, CacheSettings, HybridCache

PASSWORD = "s3nt1nel-Secret"
WRONG = "wr0ng-Secret"
START_BOUND = 5.0  # seconds; the three ping attempts with abortConnect=true need about 0.6 s plus the timeouts


@pytest.fixture(scope="module")
def protected_sentinel() -> Iterator[RedisSentinelSetup]:
    with RedisSentinelSetup(sentinel_password=PASSWORD) as setup:
        yield setup


def settings(configuration: str, namespace: str) -> CacheSettings:
    return CacheSettings(
        service_name=namespace,
        instance_name="hc-test:",
        configuration=configuration,
        memory_cache={"enabled": False},
        circuit_breaker={"break_duration_seconds": 0.2},
        connect_timeout_milliseconds=500,
        operation_timeout_milliseconds=500,
    )


def without_password(setup: RedisSentinelSetup) -> str:
    return ",".join(f"{h}:{p}" for h, p in setup.sentinel_addresses) + f",serviceName={setup.service_name}"


def assert_no_secret(caplog: pytest.LogCaptureFixture, *errors: BaseException) -> None:
    """Neither password in any captured log record (tracebacks included) nor in ``errors`` with their causes."""
    texts = [caplog.text, *(record.getMessage() for record in caplog.records)]
    texts += [full_text(error) for error in errors]
    for secret in (PASSWORD, WRONG):
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"a password leaked: {leaks[:1]}"


def full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


async def test_the_sentinel_password_reaches_the_sentinels_and_the_value_goes_through_redis(
    protected_sentinel: RedisSentinelSetup, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    configuration = protected_sentinel.configuration
    assert f"sentinelPassword={PASSWORD}" in configuration
    async with HybridCache(settings(configuration, namespace)) as writer:
        assert writer.internals.clients is not None
        assert writer.internals.clients.topology == "sentinel"
        await writer.set("k", "v")
    with protected_sentinel.client(protected_sentinel.master()) as master:
        assert master.exists(f"hc-test:{namespace}:v1:k") == 1

    async def not_called() -> str:
        raise AssertionError("the value must come from Redis")

    async with HybridCache(settings(configuration, namespace)) as reader:
        assert await reader.get_or_create("k", not_called) == "v"
        assert reader.stats().l2_errors == 0
    assert_no_secret(caplog)


@pytest.mark.parametrize("given", [None, WRONG], ids=["no-password", "wrong-password"])
async def test_without_the_right_sentinel_password_abort_connect_fails_start_up_clearly(
    protected_sentinel: RedisSentinelSetup, namespace: str, caplog: pytest.LogCaptureFixture, given: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    configuration = without_password(protected_sentinel) + (f",sentinelPassword={given}" if given else "")
    cache = HybridCache(settings(configuration + ",abortConnect=true", namespace))
    began = time.monotonic()
    with pytest.raises(CacheConnectionError, match=r"Redis is not reachable .* and abortConnect is true") as raised:
        await cache.start()
    elapsed = time.monotonic() - began
    await cache.close()
    assert elapsed < START_BOUND, f"start-up took {elapsed:.1f} s"
    assert "AuthenticationError" in full_text(raised.value), "the cause should say the sentinels refused us"
    assert_no_secret(caplog, raised.value)


@pytest.mark.parametrize("given", [None, WRONG], ids=["no-password", "wrong-password"])
async def test_without_the_right_sentinel_password_a_lenient_cache_runs_degraded(
    protected_sentinel: RedisSentinelSetup, namespace: str, caplog: pytest.LogCaptureFixture, given: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    configuration = without_password(protected_sentinel) + (f",sentinelPassword={given}" if given else "")
    calls: list[int] = []

    async def load() -> str:
        calls.append(1)
        return "fresh"

    began = time.monotonic()
    async with HybridCache(settings(configuration + ",abortConnect=false", namespace)) as cache:
        elapsed = time.monotonic() - began
        assert await cache.get_or_create("k", load) == "fresh"
        assert calls == [1]
    assert elapsed < START_BOUND, f"start-up took {elapsed:.1f} s"
    assert any("Redis is not reachable" in record.getMessage() for record in caplog.records)
    assert_no_secret(caplog)
