"""Issue 16: ``@cache.cached`` on real Redis — keys from the bound arguments, the return annotation as the L2 type,
invalidation by arguments and by tag templates, methods, a cache given later, options passed through, and errors
raised when decorating rather than when calling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel

from hybridcache import CacheKey, FactoryTimeoutError, HybridCache
from hybridcache.decorators import cached
from tests.integration.conftest import CacheEnv, MakeCache, StartCache
from tests.support.waiting import wait_until


class User(BaseModel):
    id: int
    name: str


def counting() -> tuple[list[Any], Callable[[Any], None]]:
    calls: list[Any] = []
    return calls, calls.append


async def test_a_decorated_function_is_computed_once_then_served_from_the_cache(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls, record = counting()

    @cache.cached(key="User:{user_id}", tags=("users",))
    async def get_user(user_id: int, verbose: bool = False) -> User | None:
        record(user_id)
        return User(id=user_id, name=f"user {user_id}")

    first = await get_user(7)
    assert first == User(id=7, name="user 7")
    assert await get_user(7) == first
    assert await get_user(user_id=7, verbose=False) == first  # same bound arguments, same key
    assert calls == [7]
    assert get_user.key_for(7) == "User:7"
    assert await get_user.uncached(7) == first
    assert calls == [7, 7]
    assert get_user.__name__ == "get_user"


async def test_concurrent_calls_with_the_same_arguments_share_one_run(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls, record = counting()
    release = asyncio.Event()

    @cache.cached(key="Slow:{n}")
    async def slow(n: int) -> int:
        record(n)
        await release.wait()
        return n * 2

    waiting = [asyncio.create_task(slow(3)) for _ in range(20)]
    await wait_until(lambda: calls == [3], timeout=5, message="the function never started")
    release.set()
    assert await asyncio.gather(*waiting) == [6] * 20
    assert calls == [3]


async def test_an_l2_hit_on_another_instance_is_decoded_as_the_return_annotation(
    cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer = await start_cache(cache_env.settings())
    reader = await start_cache(cache_env.settings())
    calls, record = counting()

    def define(cache: HybridCache) -> Any:
        @cache.cached(key="User:{user_id}")
        async def get_user(user_id: int) -> User | None:
            record(user_id)
            return User(id=user_id, name="from the database")

        return get_user

    await define(writer)(5)
    served = await define(reader)(5)
    assert isinstance(served, User)
    assert served == User(id=5, name="from the database")
    assert calls == [5]
    assert reader.stats().l2_hits == 1


async def test_invalidate_by_arguments_and_by_tag_templates_reaches_every_instance(
    cache_env: CacheEnv, start_cache: StartCache
) -> None:
    first = await start_cache(cache_env.settings())
    second = await start_cache(cache_env.settings())
    calls, record = counting()

    def define(cache: HybridCache) -> Any:
        @cache.cached(key="Order:{customer}:{order_id}", tags=("orders", "customer:{customer}"))
        async def get_order(customer: str, order_id: int) -> dict[str, Any]:
            record((customer, order_id))
            return {"customer": customer, "id": order_id, "version": len(calls)}

        return get_order

    on_first, on_second = define(first), define(second)
    assert (await on_second("acme", 1))["version"] == 1
    assert (await on_second("acme", 1))["version"] == 1  # now in the second instance's L1

    await on_first.invalidate("acme", order_id=1)
    await wait_until(lambda: second.stats().invalidations_received == 1, timeout=5, message="not propagated")
    assert (await on_second("acme", 1))["version"] == 2

    await on_second("acme", 2)
    await first.remove_by_tag("customer:acme")
    await wait_until(lambda: second.stats().invalidations_received == 2, timeout=5, message="not propagated")
    assert (await on_second("acme", 1))["version"] == 4
    assert (await on_second("acme", 2))["version"] == 5


async def test_keys_apply_defaults_attributes_format_specs_and_sanitize_user_text(make_cache: MakeCache) -> None:
    cache = await make_cache()

    class Tenant:
        def __init__(self, slug: str) -> None:
            self.slug = slug

    @cache.cached(key="Report:{tenant.slug}:{day:%Y-%m-%d}:{term}:{page}")
    async def report(tenant: Tenant, day: date, term: str, page: int = 1) -> list[str]:
        return [term]

    acme = Tenant("acme")
    assert report.key_for(acme, date(2026, 12, 5), "ford") == "Report:acme:2026-12-05:ford:1"
    assert report.key_for(acme, date(2026, 12, 5), "a:b*c", page=2) == "Report:acme:2026-12-05:a%3Ab%2Ac:2"
    long_term = "x" * 200
    assert report.key_for(acme, date(2026, 12, 5), long_term).split(":")[3] == CacheKey.sanitize(long_term)
    assert report.key_for(Tenant("a b"), date(2026, 12, 5), "") == "Report:a%20b:2026-12-05::1"
    assert await report(acme, date(2026, 12, 5), "a:b*c") == ["a:b*c"]


async def test_a_method_binds_its_instance_for_calls_keys_and_invalidation(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls, record = counting()

    class Repository:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant

        @cache.cached(key="Orders:{self.tenant}:{customer}")
        async def orders(self, customer: str) -> list[int]:
            record((self.tenant, customer))
            return [len(calls)]

    acme, globex = Repository("acme"), Repository("globex")
    assert await acme.orders("c1") == [1]
    assert await acme.orders("c1") == [1]
    assert await globex.orders("c1") == [2]
    assert acme.orders.key_for("c1") == "Orders:acme:c1"
    await acme.orders.invalidate("c1")
    assert await acme.orders("c1") == [3]
    assert await globex.orders("c1") == [2]
    assert await acme.orders.uncached("c2") == [4]


async def test_a_cache_given_later_is_resolved_at_call_time(cache_env: CacheEnv, start_cache: StartCache) -> None:
    holder: dict[str, HybridCache] = {}

    @cached("Price:{sku}", cache=lambda: holder["cache"])
    async def price(sku: str) -> float:
        return 9.5

    with pytest.raises(KeyError):  # no cache yet: the resolver's own error
        await price("a")
    holder["cache"] = await start_cache(cache_env.settings())
    assert await price("a") == 9.5
    assert await price("a") == 9.5
    assert holder["cache"].stats().l1_hits == 1


async def test_get_or_create_options_pass_through(make_cache: MakeCache) -> None:
    cache = await make_cache()
    calls, record = counting()

    @cache.cached(key="Slow", hard_timeout=0.05)
    async def slow() -> int:
        await asyncio.sleep(5)
        return 1

    with pytest.raises(FactoryTimeoutError):
        await slow()

    @cache.cached(key="Refreshed", ttl=1.0, eager_refresh=0.2)
    async def refreshed() -> int:
        record(None)
        return len(calls)

    assert await refreshed() == 1
    await asyncio.sleep(0.25)  # let 20% of the TTL pass (time itself is the condition): the next hit refreshes
    assert await refreshed() == 1  # served at once, not waiting for the refresh
    await wait_until(lambda: len(calls) == 2, timeout=5, message="no eager refresh started")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("User:{nope}", "names 'nope', which is not a parameter"),
        ("User:{user_id[0]}", "must be a parameter name"),
        ("User:{}", "must be a parameter name"),
        ("User:{user_id!r}", "conversions"),
        ("User:\n{user_id}", "control characters"),
    ],
)
def test_a_bad_template_is_an_error_when_decorating(template: str, message: str) -> None:
    cache = HybridCache.from_settings(CacheEnv("never-started", "").settings(redis=False))
    with pytest.raises(ValueError, match=message):

        @cache.cached(key=template)
        async def get_user(user_id: int) -> int:
            return user_id


def test_tag_templates_are_checked_too_and_only_async_functions_are_accepted() -> None:
    cache = HybridCache.from_settings(CacheEnv("never-started", "").settings(redis=False))
    with pytest.raises(ValueError, match=r"tag template 'user:\{id\}'.*names 'id'"):

        @cache.cached(key="User:{user_id}", tags=("user:{id}",))
        async def get_user(user_id: int) -> int:
            return user_id

    with pytest.raises(TypeError, match="needs an async def function"):
        cache.cached(key="Sync")(lambda: 1)  # type: ignore[arg-type]
