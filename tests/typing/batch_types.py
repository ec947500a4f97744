"""Static checks of the batch calls of :class:`~hybridcache.HybridCache`, run by ``mypy src tests/typing`` and never
by pytest (the file name does not match ``test_*.py``).

``assert_type`` lines prove what mypy infers; ``# type: ignore[code]`` lines prove that a misuse *is* rejected:
with ``warn_unused_ignores`` (part of ``--strict``) mypy fails if such a line ever stops being an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, assert_type

from hybridcache import HybridCache


@dataclass(frozen=True)
class Dealer:
    id: int


async def load_dealers(keys: list[str]) -> dict[str, Dealer]:
    return {key: Dealer(int(key.rsplit(":", 1)[1])) for key in keys}


async def load_names(keys: list[str]) -> Mapping[str, str]:
    return dict.fromkeys(keys, "name")


async def load_list(keys: list[str]) -> list[Dealer]:
    return [Dealer(1) for _ in keys]


async def load_one() -> Dealer:
    return Dealer(1)


async def check(cache: HybridCache) -> None:
    dealers = await cache.get_or_create_many(["Dealer:1", "Dealer:2"], load_dealers, type_=Dealer | None)
    # A key the factory leaves out comes back as None: the values are optional.
    assert_type(dealers, dict[str, Dealer | None])
    names = await cache.get_or_create_many(
        (f"Name:{n}" for n in range(3)), load_names, tags=lambda key: (key.split(":")[0],)
    )
    assert_type(names, dict[str, str | None])
    assert_type(await cache.get_many(["Dealer:1"], type_=Dealer), dict[str, Any])
    await cache.set_many({"Dealer:1": Dealer(1)}, ttl=60, tags=("dealers",))
    await cache.remove_many(["Dealer:1", "Dealer:2"])

    await cache.get_or_create_many(["Dealer:1"], load_one)  # type: ignore[arg-type]  # a single-key factory
    await cache.get_or_create_many(["Dealer:1"], load_list)  # type: ignore[arg-type]  # not a mapping
