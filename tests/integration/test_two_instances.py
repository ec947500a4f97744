"""Two HybridCache objects on one Redis behave as two service instances (under RESP2 and RESP3)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio
from pydantic import BaseModel, ConfigDict

from hybridcache import HybridCache
from tests.integration.conftest import CacheEnv, Factory, StartCache
from tests.support.waiting import wait_until

MISSING: Any = object()
PROPAGATION_TIMEOUT = 5.0


class ZipCodeDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: str
    state: str


class DealershipDto(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    name: str
    unique_key: uuid.UUID
    zip_code: ZipCodeDto


FORD = DealershipDto(id=42, name="Ford", unique_key=uuid.UUID(int=42), zip_code=ZipCodeDto(code="62701", state="IL"))


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def pair(
    request: pytest.FixtureRequest, cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> list[HybridCache]:
    # A client name singles out the caches' connections on a server that other tests' clients may share.
    name = f"pair-{cache_env.service_name}"
    settings = cache_env.settings(protocol=request.param, configuration=f"{cache_env.redis_url}?client_name={name}")
    first, second = await start_cache(settings), await start_cache(settings)
    assert first.instance_id != second.instance_id
    theirs = [c for c in await raw_redis.client_list() if c.get("name") == name]
    assert len(theirs) >= 4, "each cache has a pool connection and a subscriber connection"
    assert {c.get("resp") for c in theirs} == {str(request.param)}, "the caches speak another protocol"
    return [first, second]


async def test_a_value_created_by_one_is_an_l2_hit_then_an_l1_hit_for_the_other(pair: list[HybridCache]) -> None:
    a, b = pair
    factory = Factory(FORD)
    assert await a.get_or_create("Dealership:42", factory, type_=DealershipDto) == FORD
    got = await b.get_or_create("Dealership:42", factory, type_=DealershipDto)
    assert got == FORD
    assert isinstance(got, DealershipDto)
    b_stats = b.stats()
    assert (b_stats.l2_hits, b_stats.l1_hits, b_stats.misses, b_stats.handler_runs) == (1, 0, 0, 0)
    assert await b.get_or_create("Dealership:42", factory, type_=DealershipDto) == FORD
    b_stats = b.stats()
    assert (b_stats.l2_hits, b_stats.l1_hits, b_stats.handler_runs) == (1, 1, 0)
    a_stats = a.stats()
    assert (a_stats.misses, a_stats.handler_runs) == (1, 1)
    assert factory.runs == 1
    assert a_stats.handler_runs + b_stats.handler_runs == 1


async def test_a_remove_on_one_reaches_the_other_l1(pair: list[HybridCache]) -> None:
    a, b = pair
    await a.get_or_create("Dealership:42", Factory("old"))
    await b.get_or_create("Dealership:42", Factory("unused"))
    assert await b.get("Dealership:42") == "old"
    assert b.stats().l1_hits == 1, "b holds its own L1 copy"
    await a.remove("Dealership:42")

    async def dropped() -> bool:
        return await b.get("Dealership:42", default=MISSING) is MISSING

    await wait_until(dropped, timeout=PROPAGATION_TIMEOUT, message="b still serves the removed key")
    assert b.stats().invalidations_received >= 1


async def test_a_prefix_invalidation_on_one_reaches_the_other_l1(pair: list[HybridCache]) -> None:
    a, b = pair
    for key in ("Dealership:Search:ford", "Dealership:Search", "Dealership:SearchX"):
        await b.get_or_create(key, Factory(key))
    await a.remove_by_prefix("Dealership:Search")

    async def dropped() -> bool:
        return await b.get("Dealership:Search:ford", default=MISSING) is MISSING

    await wait_until(dropped, timeout=PROPAGATION_TIMEOUT, message="b still serves an invalidated prefix")
    assert await b.get("Dealership:Search", default=MISSING) is MISSING
    assert await b.get("Dealership:SearchX") == "Dealership:SearchX"


async def test_a_set_on_one_replaces_the_value_the_other_serves(pair: list[HybridCache]) -> None:
    a, b = pair
    await a.set("Dealership:42", FORD, type_=DealershipDto)
    assert await b.get("Dealership:42", type_=DealershipDto) == FORD
    renamed = FORD.model_copy(update={"name": "Ford Lincoln"})
    await a.set("Dealership:42", renamed, type_=DealershipDto)

    async def updated() -> bool:
        return bool(await b.get("Dealership:42", type_=DealershipDto) == renamed)

    await wait_until(updated, timeout=PROPAGATION_TIMEOUT, message="b still serves the old value")


async def test_an_instance_does_not_count_its_own_invalidations_as_received(pair: list[HybridCache]) -> None:
    a, b = pair
    await a.remove("k")
    await wait_until(
        lambda: b.stats().invalidations_received == 1, timeout=PROPAGATION_TIMEOUT, message="b never heard of it"
    )
    assert a.stats().invalidations_published == 1
    assert a.stats().invalidations_received == 0
