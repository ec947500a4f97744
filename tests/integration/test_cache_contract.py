"""The cache contract, run unchanged on L1-only, L2-only and L1+L2 against a real private redis-server.

Where the shapes legitimately differ (which level served a hit, whether Redis holds the entry) the expectation is
stated per mode; everything else is one assertion for all three.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from hybridcache import HybridCache
from hybridcache._serialization import decode_entry
from tests.integration.conftest import L1_L2, L1_ONLY, L2_ONLY, CacheEnv, Factory, MakeCache, RawRedis
from tests.support.waiting import wait_until

MISSING: Any = object()


class StateDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    code: str
    name: str


class ZipCodeDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    code: str
    city: str
    state_province: StateDto


class DealershipDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    name: str
    unique_key: uuid.UUID
    business_zip_code: ZipCodeDto


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def dealership(id_: int = 42, name: str = "Ford of Springfield") -> DealershipDto:
    state = StateDto(id=1, code="IL", name="Illinois")
    return DealershipDto(
        id=id_,
        name=name,
        unique_key=uuid.UUID(int=id_),
        business_zip_code=ZipCodeDto(id=7, code="62701", city="Springfield", state_province=state),
    )


@pytest.fixture
async def cache(make_cache: MakeCache) -> HybridCache:
    return await make_cache()


@pytest.fixture
async def reader(cache_mode: str, cache: HybridCache, make_cache: MakeCache) -> HybridCache:
    """Who reads back what ``cache`` stored: a second instance when Redis is shared (so the value must come
    through L2), else the same instance (L1-only has nothing to share)."""
    return cache if cache_mode == L1_ONLY else await make_cache()


def has_l2(mode: str) -> bool:
    return mode != L1_ONLY


async def in_redis(raw: RawRedis, env: CacheEnv, key: str) -> bool:
    return bool(await raw.exists(env.redis_key(key)))


# ---------------------------------------------------------------------------------------------- reads


@pytest.mark.all_topologies
async def test_miss_then_hit(cache_mode: str, cache: HybridCache) -> None:
    factory = Factory("v1")
    assert await cache.get_or_create("Dealership:42", factory) == "v1"
    assert await cache.get_or_create("Dealership:42", Factory("other")) == "v1"
    assert factory.runs == 1
    stats = cache.stats()
    assert (stats.handler_runs, stats.misses) == (1, 1)
    if cache_mode == L2_ONLY:
        assert (stats.l1_hits, stats.l2_hits) == (0, 1)
    else:
        assert (stats.l1_hits, stats.l2_hits) == (1, 0)
    as_dict = stats.as_dict()
    assert (as_dict["handlerRuns"], as_dict["misses"]) == (1, 1)


async def test_the_factory_runs_once_for_many_reads(cache: HybridCache) -> None:
    factory = Factory(7)
    for _ in range(20):
        assert await cache.get_or_create("k", factory) == 7
    assert factory.runs == 1


@pytest.mark.all_topologies
async def test_a_cached_none_is_a_hit_not_a_miss(cache: HybridCache, reader: HybridCache) -> None:
    factory = Factory(None)
    assert await cache.get_or_create("Dealership:404", factory, type_=DealershipDto | None) is None
    assert await cache.get_or_create("Dealership:404", factory, type_=DealershipDto | None) is None
    assert factory.runs == 1
    assert await cache.get("Dealership:404", default=MISSING) is None
    assert await reader.get("Dealership:404", type_=DealershipDto | None, default=MISSING) is None
    assert await cache.get("Dealership:405", default=MISSING) is MISSING


async def test_a_cached_none_under_a_non_optional_type_reads_back_as_none(
    cache: HybridCache, reader: HybridCache
) -> None:
    await cache.get_or_create("Dealership:404", Factory(None), type_=DealershipDto)
    factory = Factory(dealership())
    assert await reader.get_or_create("Dealership:404", factory, type_=DealershipDto) is None
    assert factory.runs == 0


@pytest.mark.all_topologies
@pytest.mark.parametrize(
    ("type_", "value"),
    [
        (DealershipDto, dealership()),
        (list[DealershipDto], [dealership(1), dealership(2, "Chevy")]),
        (dict[str, DealershipDto], {"a": dealership()}),
        (Point, Point(1, 2)),
        (tuple[int, str], (1, "x")),
        (dict[str, int], {"a": 1}),
        (str, ""),
        (int, 0),
        (bool, False),
    ],
    ids=lambda v: getattr(v, "__name__", None) or repr(v)[:30],
)
async def test_typed_round_trip(cache: HybridCache, reader: HybridCache, type_: Any, value: Any) -> None:
    await cache.get_or_create("typed", Factory(value), type_=type_)
    factory = Factory(MISSING)
    got = await reader.get_or_create("typed", factory, type_=type_)
    assert factory.runs == 0
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, list):
        assert all(isinstance(item, DealershipDto) for item in got)
    if isinstance(value, DealershipDto):
        assert isinstance(got.business_zip_code.state_province, StateDto)


@pytest.mark.all_topologies
async def test_an_l2_read_comes_back_as_the_declared_model(
    cache_mode: str, cache: HybridCache, reader: HybridCache
) -> None:
    await cache.set("Dealership:42", dealership(), type_=DealershipDto)
    got = await reader.get("Dealership:42", type_=DealershipDto)
    assert isinstance(got, DealershipDto)
    assert got == dealership()
    if has_l2(cache_mode):
        assert reader.stats().l2_hits == 1, "the read must have come from Redis"


@pytest.mark.all_topologies
async def test_get_and_set(cache: HybridCache, reader: HybridCache) -> None:
    assert await cache.get("k", default=MISSING) is MISSING
    assert await cache.get("k") is None, "the default default is None"
    await cache.set("k", dealership(1), type_=DealershipDto)
    assert await cache.get("k", type_=DealershipDto) == dealership(1)
    await cache.set("k", dealership(2), type_=DealershipDto)
    assert await cache.get("k", type_=DealershipDto) == dealership(2)
    assert await reader.get("k", type_=DealershipDto) == dealership(2)
    factory = Factory(dealership(3))
    assert await cache.get_or_create("k", factory, type_=DealershipDto) == dealership(2)
    assert factory.runs == 0


@pytest.mark.all_topologies
async def test_concurrent_reads_of_a_cold_key_run_the_factory_once(cache: HybridCache) -> None:
    release = asyncio.Event()
    runs = 0

    async def slow() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return "shared"

    readers = [asyncio.create_task(cache.get_or_create("cold", slow)) for _ in range(50)]
    # Every caller joins the flight synchronously before yielding, so once the factory runs all 50 are waiting.
    await wait_until(lambda: runs == 1, timeout=5, message="the factory never started")
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=10)
    assert results == ["shared"] * 50
    assert runs == 1
    assert cache.stats().handler_runs == 1


class Boom(Exception):
    pass


@pytest.mark.all_topologies
async def test_a_factory_exception_propagates_and_caches_nothing(
    cache_mode: str, cache: HybridCache, cache_env: CacheEnv, raw_redis: RawRedis
) -> None:
    failing = Factory(error=Boom("database down"))
    with pytest.raises(Boom, match="database down"):
        await cache.get_or_create("k", failing)
    assert await cache.get("k", default=MISSING) is MISSING
    if has_l2(cache_mode):
        assert not await in_redis(raw_redis, cache_env, "k")
    good = Factory("recovered")
    assert await cache.get_or_create("k", good) == "recovered"
    assert good.runs == 1
    assert cache.stats().factory_errors == 1


async def test_concurrent_callers_all_see_the_factory_exception(cache: HybridCache) -> None:
    release = asyncio.Event()
    runs = 0

    async def failing() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        raise Boom("shared failure")

    readers = [asyncio.create_task(cache.get_or_create("k", failing)) for _ in range(10)]
    await wait_until(lambda: runs == 1, timeout=5, message="the factory never started")
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), timeout=10)
    assert all(isinstance(o, Boom) for o in outcomes), outcomes
    assert runs == 1, "callers that arrived before the factory ran must share its failure, not retry it"
    assert cache.stats().factory_errors == 1
    assert await cache.get("k", default=MISSING) is MISSING


async def test_callers_overlapping_a_fast_failing_run_share_it(cache: HybridCache) -> None:
    """No gate this time: the factory fails at once. Every caller that called before the run ended must get
    that run's exception; none may start a run of its own (a failing database would get N calls, not one)."""
    for trial in range(20):
        runs = 0

        async def failing() -> str:
            nonlocal runs
            runs += 1
            raise Boom("fails fast")

        outcomes = await asyncio.wait_for(
            asyncio.gather(*(cache.get_or_create(f"fast:{trial}", failing) for _ in range(20)), return_exceptions=True),
            timeout=10,
        )
        assert all(isinstance(o, Boom) for o in outcomes), outcomes
        assert runs == 1, f"trial {trial}: {runs} factory runs for 20 callers started together"


# ---------------------------------------------------------------------------------------------- invalidation


@pytest.mark.all_topologies
async def test_remove(cache_mode: str, cache: HybridCache, cache_env: CacheEnv, raw_redis: RawRedis) -> None:
    factory = Factory("v")
    await cache.get_or_create("Dealership:42", factory)
    other = Factory("o")
    await cache.get_or_create("Dealership:43", other)
    if has_l2(cache_mode):
        assert await in_redis(raw_redis, cache_env, "Dealership:42")
    await cache.remove("Dealership:42")
    assert await cache.get("Dealership:42", default=MISSING) is MISSING
    if has_l2(cache_mode):
        assert not await in_redis(raw_redis, cache_env, "Dealership:42")
    await cache.get_or_create("Dealership:42", factory)
    await cache.get_or_create("Dealership:43", other)
    assert (factory.runs, other.runs) == (2, 1)
    await cache.remove("never-cached")  # not an error


KEYS = ("A:B", "A:B:c", "A:B:c:d", "A:BX", "A", "A:C", "X:A:B")


async def _fill(cache: HybridCache) -> dict[str, Factory]:
    factories = {key: Factory(key) for key in KEYS}
    for key, factory in factories.items():
        await cache.get_or_create(key, factory)
    return factories


async def _rerun(cache: HybridCache, factories: dict[str, Factory]) -> set[str]:
    """Read every key again; the keys whose factory had to run a second time."""
    for key, factory in factories.items():
        assert await cache.get_or_create(key, factory) == key
    return {key for key, factory in factories.items() if factory.runs > 1}


@pytest.mark.all_topologies
async def test_remove_by_prefix_matches_whole_segments(cache: HybridCache, reader: HybridCache) -> None:
    factories = await _fill(cache)
    await cache.remove_by_prefix("A:B")
    assert await _rerun(cache, factories) == {"A:B", "A:B:c", "A:B:c:d"}
    assert await reader.get("A:BX") == "A:BX"


@pytest.mark.all_topologies
async def test_remove_by_prefix_is_not_served_through_l2_either(
    cache_mode: str, cache: HybridCache, make_cache: MakeCache
) -> None:
    if not has_l2(cache_mode):
        pytest.skip("no shared level to read through")
    await _fill(cache)
    await cache.remove_by_prefix("A:B")
    fresh = await make_cache()  # an instance with an empty L1: anything it serves comes from L2
    assert await fresh.get("A:B:c", default=MISSING) is MISSING
    assert await fresh.get("A:BX", default=MISSING) == "A:BX"


async def test_a_prefix_with_a_trailing_separator_means_the_same(cache: HybridCache) -> None:
    factories = await _fill(cache)
    await cache.remove_by_prefix("A:B:")
    assert await _rerun(cache, factories) == {"A:B", "A:B:c", "A:B:c:d"}


@pytest.mark.parametrize("prefix", ["A:B*", "A:?", "A:[B]"])
async def test_remove_by_prefix_rejects_globs(cache: HybridCache, prefix: str) -> None:
    with pytest.raises(ValueError, match="glob"):
        await cache.remove_by_prefix(prefix)


@pytest.mark.all_topologies
async def test_remove_by_tag(cache: HybridCache, reader: HybridCache) -> None:
    ford, chevy, untagged = Factory("ford"), Factory("chevy"), Factory("plain")
    await cache.get_or_create("Dealership:1", ford, tags=("dealerships", "ford"))
    await cache.get_or_create("Dealership:2", chevy, tags=("dealerships",))
    await cache.get_or_create("Dealership:3", untagged)
    await cache.remove_by_tag("ford")
    for key, factory in (("Dealership:1", ford), ("Dealership:2", chevy), ("Dealership:3", untagged)):
        await cache.get_or_create(key, factory, tags=("dealerships",) if factory is not untagged else ())
    assert (ford.runs, chevy.runs, untagged.runs) == (2, 1, 1)
    await cache.remove_by_tag("dealerships")
    assert await cache.get("Dealership:1", default=MISSING) is MISSING
    assert await cache.get("Dealership:2", default=MISSING) is MISSING
    assert await reader.get("Dealership:2", default=MISSING) is MISSING
    assert await cache.get("Dealership:3") == "plain"


@pytest.mark.all_topologies
async def test_invalidate_keys_prefixes_and_tags_at_once(cache: HybridCache) -> None:
    factories = await _fill(cache)
    await cache.get_or_create("T:1", Factory("t"), tags=("t",))
    await cache.invalidate(keys=["A"], prefixes=["A:C"], tags=["t"])
    assert await _rerun(cache, factories) == {"A", "A:C"}
    assert await cache.get("T:1", default=MISSING) is MISSING


@pytest.mark.all_topologies
async def test_clear(cache: HybridCache, reader: HybridCache) -> None:
    factories = await _fill(cache)
    await cache.clear()
    assert await cache.get("A:BX", default=MISSING) is MISSING  # the writer: at once

    async def gone_for_the_reader() -> bool:
        return await reader.get("A:BX", default=MISSING) is MISSING

    # Another instance: within the propagation bound (on a cluster its stamp check uses its mirror, which moves when
    # the message arrives; docs/invalidation.md §1).
    await wait_until(gone_for_the_reader, timeout=1.0, message="the reader still serves after clear()")
    assert await _rerun(cache, factories) == set(KEYS)


@pytest.mark.all_topologies
async def test_clear_leaves_other_services_alone(
    cache_mode: str, cache: HybridCache, cache_env: CacheEnv, start_cache: Any
) -> None:
    mode_settings: dict[str, Any] = {"redis": has_l2(cache_mode)}
    if cache_mode == L2_ONLY:
        mode_settings["memory"] = {"enabled": False}
    neighbour = await start_cache(cache_env.settings(service_name=cache_env.service_name + "-b", **mode_settings))
    await neighbour.set("k", "theirs")
    await cache.set("k", "ours")
    await cache.clear()
    assert await cache.get("k", default=MISSING) is MISSING
    assert await neighbour.get("k") == "theirs"


# ---------------------------------------------------------------------------------------------- expiry


@pytest.mark.all_topologies
async def test_entries_expire_after_their_ttl(
    cache_mode: str, cache: HybridCache, cache_env: CacheEnv, raw_redis: RawRedis
) -> None:
    ttl = 0.6
    factory = Factory("v")
    created = time.monotonic()
    await cache.get_or_create("k", factory, ttl=ttl)
    if has_l2(cache_mode):
        pttl = await raw_redis.pttl(cache_env.redis_key("k"))
        assert 0 < pttl <= ttl * 1000, "every L2 entry carries the entry's TTL"
    if time.monotonic() - created < ttl / 2:
        assert await cache.get("k", default=MISSING) == "v"

    async def gone() -> bool:
        return await cache.get("k", default=MISSING) is MISSING

    await wait_until(gone, timeout=ttl + 5, message="entry did not expire")
    assert time.monotonic() - created >= ttl - 0.02, "expired early"
    await cache.get_or_create("k", factory, ttl=ttl)
    assert factory.runs == 2


async def test_a_cached_none_expires_after_null_expiration_seconds(cache: HybridCache, make_cache: MakeCache) -> None:
    short = await make_cache(null_expiration_seconds=0.3)
    factory = Factory(None)
    created = time.monotonic()  # before the call: the entry is no older than this, however slow the call
    await short.get_or_create("k", factory, ttl=60)

    async def gone() -> bool:
        return await short.get("k", default=MISSING) is MISSING

    await wait_until(gone, timeout=5, message="cached None did not expire")
    assert time.monotonic() - created >= 0.3 - 0.05
    assert await cache.get("never", default=MISSING) is MISSING


async def test_l1_keeps_an_entry_at_most_memory_default_expiration_seconds(
    cache_mode: str, make_cache: MakeCache
) -> None:
    """L1 TTL = min(entry TTL, MemoryCache.DefaultExpirationSeconds); after it, L2 (if any) serves the value."""
    cache = await make_cache(memory={"default_expiration_seconds": 0.3})
    factory = Factory("v")
    created = time.monotonic()
    await cache.get_or_create("k", factory, ttl=60)

    async def not_an_l1_hit() -> bool:
        before = cache.counters.l1_hits
        await cache.get_or_create("k", factory, ttl=60)
        return cache.counters.l1_hits == before

    await wait_until(not_an_l1_hit, timeout=5, message="the entry never left L1")
    if cache_mode != L2_ONLY:
        assert time.monotonic() - created >= 0.3 - 0.02, "left L1 early"
    if cache_mode == L1_ONLY:
        assert factory.runs == 2
    else:
        assert factory.runs == 1
        assert cache.stats().l2_hits >= 1
    if cache_mode == L1_L2:
        before = cache.counters.l1_hits
        await cache.get_or_create("k", factory, ttl=60)
        assert cache.counters.l1_hits == before + 1, "the L2 hit was promoted to L1"


# ---------------------------------------------------------------------------------------------- disabled


async def test_enabled_false_is_a_pass_through(
    cache_mode: str, make_cache: MakeCache, cache_env: CacheEnv, raw_redis: RawRedis
) -> None:
    cache = await make_cache(enabled=False)
    factory = Factory("v")
    for _ in range(3):
        assert await cache.get_or_create("k", factory) == "v"
    assert factory.runs == 3
    await cache.set("k", "stored?")
    assert await cache.get("k", default=MISSING) is MISSING
    await cache.remove("k")
    await cache.remove_by_prefix("k")
    await cache.remove_by_tag("t")
    await cache.clear()
    stats = cache.stats()
    assert (stats.l1_hits, stats.l2_hits, stats.handler_runs) == (0, 0, 3)
    if has_l2(cache_mode):
        assert await raw_redis.dbsize() == 0, "a disabled cache must not touch Redis"


# ---------------------------------------------------------------------------------------------- layout


@pytest.mark.all_topologies
async def test_the_redis_entry_is_an_envelope_under_the_documented_key(
    cache_mode: str, cache: HybridCache, cache_env: CacheEnv, raw_redis: RawRedis
) -> None:
    if not has_l2(cache_mode):
        pytest.skip("no Redis in this mode")
    await cache.set("Dealership:42", dealership(), ttl=120, type_=DealershipDto, tags=("dealerships",))
    raw = await raw_redis.get(cache_env.redis_key("Dealership:42"))
    assert isinstance(raw, bytes)
    header, body = decode_entry(raw)
    assert body is not None
    assert DealershipDto.model_validate_json(body) == dealership()
    assert header.tags == ("dealerships",)
    assert 119 <= header.expires - header.created <= 120
