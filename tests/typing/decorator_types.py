"""Static checks of ``@cache.cached``, run by both mypy (``mypy src tests/typing harness``) and pyright (``pyright
tests/typing/decorator_types.py``), never by pytest.

``assert_type`` lines prove the decorated function keeps its signature and return type, for functions, methods and
``X | None`` returns. Each misuse line carries both checkers' ignore comment: mypy's ``warn_unused_ignores`` and
pyright's ``reportUnnecessaryTypeIgnoreComment`` (with ``enableTypeIgnoreComments`` off, pyproject.toml) fail the
check if that line ever stops being an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from hybridcache import CacheSettings, HybridCache
from hybridcache.decorators import cached

cache = HybridCache(CacheSettings(service_name="typing"))


@dataclass(frozen=True)
class User:
    id: int
    name: str


@cache.cached(key="User:{user_id}", tags=("users",))
async def get_user(user_id: int, *, verbose: bool = False) -> User | None:
    return None


class Repository:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @cache.cached(key="Orders:{self.tenant}:{customer}")
    async def orders(self, customer: str, limit: int = 10) -> list[int]:
        return []


def later() -> HybridCache:
    return cache


@cached("Price:{sku}", cache=later)
async def price(sku: str) -> float:
    return 1.0


async def call_sites() -> None:
    assert_type(await get_user(1), User | None)
    assert_type(await get_user(1, verbose=True), User | None)
    assert_type(get_user.key_for(1), str)
    assert_type(await get_user.uncached(1), User | None)
    await get_user.invalidate(1)

    repository = Repository("acme")
    assert_type(await repository.orders("c-1"), list[int])
    assert_type(await repository.orders("c-1", limit=5), list[int])
    assert_type(repository.orders.key_for("c-1"), str)
    await repository.orders.invalidate("c-1")
    assert_type(await Repository.orders(repository, "c-1"), list[int])

    assert_type(await price("sku-1"), float)


async def misuses() -> None:
    await get_user("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await get_user(1, verbose="yes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await get_user()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    get_user.key_for()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    await get_user.invalidate(user="1")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    repository = Repository("acme")
    await repository.orders(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await repository.orders("c-1", limit="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    name: str = await price("sku-1")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del name
