"""While the generation table is not trusted, an instance serves less than when it is, never more.

"Not trusted" means the instance cannot prove it saw every invalidation message (its subscription is down), so L1
serves only young entries and L2 entries are checked against Redis. The bumps the table *did* apply are still
facts: the instance's own invalidations, and messages received before trust was lost. An entry they made stale
must never be served (issue 13, item 2: the invalidating instance itself served the old value after
``remove_by_prefix``/``remove_by_tag`` returned, 25 of 25 reads after a tag invalidation).

The fault is real: the cache's Redis user loses the right to subscribe (an ACL change) and its subscriber is
killed, so the backplane cannot come back while every other command still works. RESP2 and RESP3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.support.waiting import wait_until

USER, PASSWORD = "hc-app", "untrusted-table-secret"
KEY, TAG = "Shop:Search:ford", "shops"

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


class Database:
    def __init__(self) -> None:
        self.version = 1

    async def load(self) -> int:
        return self.version


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_server.client()
    await client.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
    try:
        yield client
    finally:
        await client.aclose()


async def cut_the_subscription_for_good(cache: HybridCache, admin: Redis) -> None:
    """The user may no longer subscribe and its subscriber is killed: the table stays untrusted."""
    await admin.execute_command("ACL", "SETUSER", USER, "-subscribe", "-ssubscribe", "-psubscribe")
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_until(
        lambda: cache.stats().backplane == "disconnected", timeout=5.0, message="the backplane stayed trusted"
    )


def settings_as_app_user(server: RedisServer, namespace: str, protocol: int) -> CacheSettings:
    """The cache connects as the ACL user whose subscribe rights the tests take away. DisconnectedExpiration is
    long enough that the age bound cannot be what keeps an old value out."""
    return CacheSettings(
        service_name=namespace,
        configuration=f"redis://{USER}:{PASSWORD}@{server.host}:{server.port}",
        protocol=protocol,
        backplane={"disconnected_expiration_seconds": 30},
    )


def invalidations(cache: HybridCache) -> dict[str, Callable[[], Awaitable[None]]]:
    return {
        "key": lambda: cache.remove(KEY),
        "prefix": lambda: cache.remove_by_prefix("Shop:Search"),
        "tag": lambda: cache.remove_by_tag(TAG),
    }


@pytest.mark.parametrize("kind", ["key", "prefix", "tag"])
async def test_the_invalidating_instance_never_serves_what_it_invalidated_while_untrusted(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, kind: str
) -> None:
    db = Database()
    settings = settings_as_app_user(redis_server, namespace, protocol)
    async with HybridCache(settings) as cache:
        assert await cache.wait_until_connected(5.0)
        await cut_the_subscription_for_good(cache, admin)

        assert await cache.get_or_create(KEY, db.load, tags=(TAG,)) == 1
        hits = cache.counters.l1_hits
        assert await cache.get_or_create(KEY, db.load, tags=(TAG,)) == 1
        assert cache.counters.l1_hits == hits + 1, "the entry is not served from L1 while untrusted"

        db.version = 2
        await invalidations(cache)[kind]()
        assert cache.stats().backplane == "disconnected", "trust came back: the test no longer tests the fault"
        served = [await cache.get_or_create(KEY, db.load, tags=(TAG,)) for _ in range(5)]
        assert served == [2] * 5, f"served {served} after the {kind} invalidation returned"


@pytest.mark.parametrize("kind", ["prefix", "tag"])
async def test_a_bump_received_before_trust_was_lost_still_rejects_l1_entries(
    redis_server: RedisServer, namespace: str, protocol: int, admin: Redis, kind: str
) -> None:
    """Another instance's prefix or tag invalidation reached this one (its table advanced; prefix and tag
    invalidations drop no L1 entry, the generations do the rejecting); then its subscription was cut. The L1
    entry that invalidation made stale must stay rejected although it is young enough for the untrusted bound."""
    db = Database()
    settings = settings_as_app_user(redis_server, namespace, protocol)
    async with HybridCache(settings) as reader, HybridCache(settings) as writer:
        assert await reader.wait_until_connected(5.0)
        assert await writer.wait_until_connected(5.0)
        assert await reader.get_or_create(KEY, db.load, tags=(TAG,)) == 1

        db.version = 2
        received = reader.stats().invalidations_received
        await invalidations(writer)[kind]()
        await wait_until(
            lambda: reader.stats().invalidations_received > received, timeout=5.0, message="message not received"
        )
        await cut_the_subscription_for_good(reader, admin)
        served = [await reader.get_or_create(KEY, db.load, tags=(TAG,)) for _ in range(5)]
        assert served == [2] * 5, f"served {served} after receiving the {kind} invalidation"
