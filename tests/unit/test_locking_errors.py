"""How the distributed lease lock classifies errors: a failed Redis call becomes L2UnavailableError (taking the
lease) or is swallowed (releasing it), as :func:`hybridcache._redis.l2.is_redis_failure` decides for every L2 call,
and counts towards the circuit breaker like any request-path call; anything else is a bug and propagates.
Against a real redis-server, killed mid-test."""

from __future__ import annotations

import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._redis.l2 import L2UnavailableError


async def test_a_killed_server_is_a_redis_failure_and_a_bug_of_ours_is_not(
    redis_server: RedisServer, namespace: str
) -> None:
    settings = CacheSettings(
        service_name=namespace,
        configuration=redis_server.url,
        distributed_lock={"enabled": True},
        operation_timeout_milliseconds=500,
    )
    async with HybridCache(settings) as cache:
        lock = cache.internals.dlock
        assert lock is not None
        token = await lock.try_acquire("k")
        assert token is not None
        assert await lock.try_acquire("k") is None, "the lease is held"
        with pytest.raises(TypeError):  # raised in our own key building, not by the driver
            await lock.try_acquire(None)  # type: ignore[arg-type]

        redis_server.kill()
        assert cache.internals.l2 is not None
        failures = cache.internals.l2.breaker.consecutive_failures
        with pytest.raises(L2UnavailableError, match="Redis call failed: ConnectionError"):
            await lock.try_acquire("k")
        assert cache.internals.l2.breaker.consecutive_failures == failures + 1, "the breaker did not see the failure"
        await lock.release("k", token)  # the lease would expire by itself: nothing to raise
        with pytest.raises(TypeError):
            await lock.release(None, token)  # type: ignore[arg-type]

        async def load() -> str:
            return "from the factory"

        assert await cache.get_or_create("other", load) == "from the factory"
