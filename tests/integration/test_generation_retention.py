"""The generation hash stays bounded without ever making a stale entry current (issue 13, item 8).

Every prefix and tag ever invalidated used to keep a field in Redis and in every process's mirror for good. Now a
field last bumped longer than ``GenerationRetentionHours`` ago is swept by later invalidations, which is safe
because of three protections, each with a test here that fails without it:

* **Bumps are times** (``max(old + 1, now)``): a field swept and bumped again comes back above every stamp made
  before, so an entry made stale by the new bump is not served (a counter would restart at 1, below them).
* **No entry outlives its capture by more than the retention**: its L2 TTL is cut, so no entry that a swept bump
  made stale is left to be judged without it.
* **Stamps carry a floor** (the capture time minus the retention): an entry stored after Redis forgot a field is
  still current for a process whose mirror remembers the old bump (mirrors forget later than Redis), instead of
  looking stale there until the mirror catches up.

Runs on a real Redis with a 2 s retention; each test waits for the server's clock, never a fixed sleep.
"""

from __future__ import annotations

import logging

import pytest
import redis.asyncio

from hybridcache import HybridCache
from hybridcache._redis.l2 import SYNC_PAGE
from tests.integration.conftest import CacheEnv, Factory, StartCache
from tests.support.waiting import wait_until

RETENTION = 2.0
SETTINGS = {"generation_retention_hours": RETENTION / 3600}


async def server_ms(client: redis.asyncio.Redis) -> int:
    seconds, microseconds = await client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


async def wait_for_server_time(client: redis.asyncio.Redis, at_ms: int) -> None:
    async def reached() -> bool:
        return await server_ms(client) >= at_ms

    await wait_until(reached, timeout=RETENTION + 5, interval=0.02, message=f"server clock never reached {at_ms}")


async def sweep_until_gone(writer: HybridCache, client: redis.asyncio.Redis, gens_key: str, field: str) -> None:
    """Invalidate unrelated tags (each invalidation sweeps a few fields) until Redis has forgotten ``field``."""
    rounds = 0

    async def gone() -> bool:
        nonlocal rounds
        rounds += 1
        await writer.remove_by_tag(f"unrelated-{rounds}")
        return not await client.hexists(gens_key, field)

    await wait_until(gone, timeout=RETENTION + 5, interval=0.02, message=f"{field} was never swept")


async def test_a_field_not_bumped_within_the_retention_is_swept_from_redis(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    writer = await start_cache(cache_env.settings(**SETTINGS))
    gens = cache_env.generations_key
    for i in range(200):  # per-entity tags: the kind of field that made the hash grow with the data
        await writer.remove_by_tag(f"order:{i}")
    assert await raw_redis.hlen(gens) >= 200
    await wait_for_server_time(raw_redis, await server_ms(raw_redis) + int(RETENTION * 1000) + 50)
    await sweep_until_gone(writer, raw_redis, gens, "t:order:0")
    remaining = [f.decode() for f in await raw_redis.hkeys(gens)]
    assert not [f for f in remaining if f.startswith("t:order:")], remaining
    assert {"__epoch__", "__server__"} <= set(remaining)


async def test_a_field_swept_and_bumped_again_makes_entries_stamped_before_stale(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    """An entry stamped after the first bump (so it records that bump) is still alive when the field is swept; the
    second bump must land above what it recorded, or the reader keeps serving the old value from L2."""
    writer = await start_cache(cache_env.settings(**SETTINGS))
    reader = await start_cache(cache_env.settings(memory={"enabled": False}, **SETTINGS))
    source, gens = Factory(1), cache_env.generations_key
    await writer.remove_by_tag("x")
    first_bump = int(await raw_redis.hget(gens, "t:x") or 0)
    # Stamped late in the retention window, so the entry (TTL cut to the retention) outlives the field.
    await wait_for_server_time(raw_redis, first_bump + int(RETENTION * 1000) - 400)
    assert await reader.get_or_create("Order:1", source, tags=("x",)) == 1
    await sweep_until_gone(writer, raw_redis, gens, "t:x")
    assert await raw_redis.exists(cache_env.redis_key("Order:1")), "the entry expired before the test could run"

    source.value = 2
    await writer.remove_by_tag("x")
    assert int(await raw_redis.hget(gens, "t:x") or 0) > first_bump
    await wait_until(
        lambda: reader.stats().invalidations_received >= 2, timeout=2.0, message="the reader missed the bump"
    )
    assert await reader.get_or_create("Order:1", source, tags=("x",)) == 2


async def test_no_entry_outlives_its_capture_by_more_than_the_retention(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await start_cache(cache_env.settings(**SETTINGS))
    caplog.set_level(logging.WARNING, logger="hybridcache")
    for key in ("Order:1", "Order:2"):
        await cache.get_or_create(key, Factory(1), ttl=3600.0)
        ttl_ms = await raw_redis.pttl(cache_env.redis_key(key))
        assert 0 < ttl_ms <= RETENTION * 1000, f"{key}: a 1 h TTL was stored as {ttl_ms} ms"
    cuts = [r for r in caplog.records if "GenerationRetentionHours" in r.getMessage()]
    assert len(cuts) == 1, "the cut is logged once per cache"


async def test_an_entry_made_stale_by_a_forgotten_bump_has_expired_before_the_bump_is_forgotten(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    """An entry stored before a bump, and not read since, must be gone from L2 by the time the bump is swept: an
    instance that starts afterwards loads a mirror without the field and would judge the entry current."""
    writer = await start_cache(cache_env.settings(**SETTINGS))
    source, gens = Factory(1), cache_env.generations_key
    assert await writer.get_or_create("Order:1", source, tags=("x",), ttl=3600.0) == 1
    source.value = 2
    await writer.remove_by_tag("x")
    bump = int(await raw_redis.hget(gens, "t:x") or 0)
    await wait_for_server_time(raw_redis, bump + int(RETENTION * 1000) + 50)
    await sweep_until_gone(writer, raw_redis, gens, "t:x")

    late = await start_cache(cache_env.settings(**SETTINGS))
    assert late.internals.table.current("t:x") == 0
    assert await late.get_or_create("Order:1", source, tags=("x",)) == 2


async def test_an_entry_stored_after_redis_forgot_a_field_is_current_where_the_mirror_still_has_it(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    """The reader heard the old bump and keeps it (mirrors forget later than Redis). An entry stored after Redis
    swept the field records no counter for it; its floor says the field was at most the retention's horizon then,
    above the old bump, so the reader serves it instead of loading it again on every read."""
    writer = await start_cache(cache_env.settings(**SETTINGS))
    reader = await start_cache(cache_env.settings(memory={"enabled": False}, **SETTINGS))
    source, gens = Factory(1), cache_env.generations_key
    await writer.remove_by_tag("x")
    await wait_until(lambda: reader.stats().invalidations_received >= 1, timeout=2.0, message="bump not heard")
    first_bump = int(await raw_redis.hget(gens, "t:x") or 0)
    await wait_for_server_time(raw_redis, first_bump + int(RETENTION * 1000) + 50)
    await sweep_until_gone(writer, raw_redis, gens, "t:x")
    assert reader.internals.table.current("t:x") == first_bump  # the reader's mirror still remembers it

    for _ in range(3):
        assert await reader.get_or_create("Order:1", source, tags=("x",)) == 1
    assert source.runs == 1, f"loaded {source.runs} times: the stored entry looked stale to the reader"


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
async def test_a_resync_reads_a_hash_larger_than_a_page_in_full(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis, protocol: int
) -> None:
    cache = await start_cache(cache_env.settings(protocol=protocol))
    count = SYNC_PAGE * 2 + 500
    now = await server_ms(raw_redis)
    fields = {f"t:order:{i}": now + i for i in range(count)}
    for start in range(0, count, 5000):
        chunk = dict(list(fields.items())[start : start + 5000])
        await raw_redis.hset(cache_env.generations_key, mapping=chunk)  # type: ignore[arg-type]
    assert cache.internals.backplane is not None
    resyncs = cache.internals.backplane.resyncs
    await raw_redis.client_kill_filter(_type="pubsub")
    await wait_until(
        lambda: (
            cache.internals.backplane is not None
            and cache.internals.backplane.resyncs > resyncs
            and cache.internals.table.trusted
        ),
        timeout=5.0,
        message="no resync after the subscriber was killed",
    )
    table = cache.internals.table
    missing = [f for f, g in fields.items() if table.current(f) != g]
    assert not missing, f"{len(missing)} of {count} fields not loaded, e.g. {missing[:3]}"
