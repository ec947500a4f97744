"""Static checks of the sync API (``hybridcache.sync``), run by mypy and pyright like ``decorator_types.py``.

``get_or_create`` returns what its factory returns; the sync ``@cached`` keeps a plain function's signature and
return type (functions, methods, a cache given later); misuse lines carry both checkers' ignore comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from hybridcache import CacheSettings
from hybridcache.metrics import CacheStats
from hybridcache.sync import SyncHybridCache, cached

cache = SyncHybridCache(CacheSettings(service_name="typing"))


@dataclass(frozen=True)
class User:
    id: int
    name: str


def load_user() -> User:
    return User(1, "ann")


@cache.cached(key="User:{user_id}", tags=("users",))
def get_user(user_id: int, *, verbose: bool = False) -> User | None:
    return None


class Repository:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @cache.cached(key="Orders:{self.tenant}:{customer}")
    def orders(self, customer: str, limit: int = 10) -> list[int]:
        return []


def later() -> SyncHybridCache:
    return cache


@cached("Price:{sku}", cache=later)
def price(sku: str) -> float:
    return 1.0


def call_sites() -> None:
    assert_type(cache.get_or_create("User:1", load_user), User)
    assert_type(cache.get_or_create("Count", lambda: 3, ttl=60), int)
    assert_type(cache.stats(), CacheStats)
    assert_type(cache.invalidate(keys=["User:1"]), bool)
    with SyncHybridCache.from_settings(CacheSettings(service_name="typing")) as scoped:
        assert_type(scoped, SyncHybridCache)

    assert_type(get_user(1), User | None)
    assert_type(get_user(1, verbose=True), User | None)
    assert_type(get_user.key_for(1), str)
    assert_type(get_user.uncached(1), User | None)
    assert_type(get_user.invalidate(1), None)

    repository = Repository("acme")
    assert_type(repository.orders("c-1"), list[int])
    assert_type(repository.orders("c-1", limit=5), list[int])
    assert_type(Repository.orders(repository, "c-1"), list[int])
    assert_type(price("sku-1"), float)


def misuses() -> None:
    get_user("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    get_user()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    get_user.invalidate(user="1")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    Repository("acme").orders(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    name: str = price("sku-1")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del name
    cache.get_or_create("User:1", load_user, ttl="soon")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
