"""Two caches with the same names on different Redis databases of one server must not disturb each other.

Found by benchmarks/bench_peers.py: Redis pub/sub channels are global to the server (the database number does not
apply to them), while the invalidation sequence counter lives in each database. So a cache on ``/2`` receives the
invalidation messages of a same-named cache on ``/1``, takes their (foreign) numbering for a gap in its own, and
resynchronises: its whole L1 is cleared on every write to the other database.
"""

from __future__ import annotations

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from tests.support.waiting import wait_until


def _settings(server: RedisServer, db: int, service: str) -> CacheSettings:
    return CacheSettings(service_name=service, instance_name="Iso:", configuration=server.url_for_db(db))


async def test_invalidations_on_another_database_leave_this_l1_alone(redis_server: RedisServer, namespace: str) -> None:
    other_db = HybridCache(_settings(redis_server, 1, namespace))
    this_db = HybridCache(_settings(redis_server, 2, namespace))
    this_db_peer = HybridCache(_settings(redis_server, 2, namespace))

    async def load() -> str:
        return "value"

    async with other_db, this_db, this_db_peer:
        for cache in (other_db, this_db, this_db_peer):
            assert await cache.wait_until_connected(5.0)
        assert await this_db.get_or_create("Kept", load, ttl=60) == "value"

        await other_db.remove("Unrelated")  # a write on database 1
        # A write on this database afterwards: once this_db has received it, it has also seen (and handled) the
        # earlier message from database 1, because one subscriber connection delivers messages in order.
        await this_db_peer.remove("AlsoUnrelated")
        await wait_until(
            lambda: this_db.stats().invalidations_received >= 1,
            timeout=5.0,
            message="the same-database invalidation never arrived",
        )

        l1_hits = this_db.stats().l1_hits
        assert await this_db.get_or_create("Kept", load, ttl=60) == "value"
        assert this_db.stats().l1_hits == l1_hits + 1, "this L1 was cleared by a write to another database"
        assert this_db.stats().invalidations_received == 1, "a message from another database was applied here"
