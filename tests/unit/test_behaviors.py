"""The caching and invalidation behaviors, first against fakes (subclasses of our own cache protocols and of
``AbstractUnitOfWork``), then against a real ``HybridCache`` in L1-only mode (no Redis needed)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

import pytest

from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import (
    Cacheable,
    CacheInvalidationBehavior,
    CachingBehavior,
    Command,
    InvalidatesCache,
    InvalidatingCache,
    Mediator,
    Query,
    ReadThroughCache,
    RequestHandler,
)
from hybridcache.persistence import AbstractUnitOfWork

T = TypeVar("T")


# -- fakes ----------------------------------------------------------------------------------------------------


class FakeCache(ReadThroughCache, InvalidatingCache):
    """A dict with the two methods the behaviors use, recording every call."""

    def __init__(self, *, fail_invalidation: bool = False) -> None:
        self.values: dict[str, Any] = {}
        self.reads: list[tuple[str, timedelta, Any, tuple[str, ...]]] = []
        self.invalidations: list[tuple[list[str], list[str], list[str]]] = []
        self.fail_invalidation = fail_invalidation

    async def get_or_create(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        ttl: timedelta,
        type_: Any,
        tags: Sequence[str],
    ) -> T:
        self.reads.append((key, ttl, type_, tuple(tags)))
        if key not in self.values:
            self.values[key] = await factory()
        value: T = self.values[key]
        return value

    async def invalidate(self, *, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> None:
        if self.fail_invalidation:
            raise ConnectionError("redis is down")
        self.invalidations.append((list(keys), list(prefixes), list(tags)))
        for key in list(self.values):
            if key in keys or any(key == p or key.startswith(p + ":") for p in prefixes):
                del self.values[key]


@dataclass
class FakeDatabase:
    names: dict[int, str] = field(default_factory=dict)


class FakeUnitOfWork(AbstractUnitOfWork):
    """Stages writes and applies them to the fake database only on commit."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self.staged: dict[int, str] = {}
        self.events: list[str] = []

    async def _begin(self) -> None:
        self.events.append("begin")

    async def _commit(self) -> int:
        written = len(self.staged)
        self.db.names.update(self.staged)
        self.staged.clear()
        self.events.append("commit")
        return written

    async def _rollback(self) -> None:
        self.staged.clear()
        self.events.append("rollback")

    async def _close(self) -> None:
        self.events.append("close")


# -- requests and pure handlers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThingDto:
    id: int
    name: str


@dataclass(frozen=True)
class GetThing(Query[ThingDto | None], Cacheable):
    id: int
    cache_duration: ClassVar[timedelta] = timedelta(minutes=30)
    cache_tags: ClassVar[Sequence[str]] = ("things",)

    @property
    def cache_key(self) -> str:
        return f"Thing:{self.id}"


@dataclass(frozen=True)
class CountThings(Query[int]):
    """Not cacheable: the caching behavior must not wrap it."""


@dataclass(frozen=True)
class RenameThing(Command[bool], InvalidatesCache):
    id: int
    name: str
    fail: bool = False
    cache_prefixes_to_invalidate: ClassVar[Sequence[str]] = ("Thing:Search", "Thing:List")
    cache_tags_to_invalidate: ClassVar[Sequence[str]] = ("summaries",)

    @property
    def cache_keys_to_invalidate(self) -> Sequence[str]:
        return [f"Thing:{self.id}"]


@dataclass(frozen=True)
class TouchNothing(Command[None], InvalidatesCache):
    """Declares nothing to invalidate."""


class GetThingHandler(RequestHandler[GetThing, ThingDto | None]):
    def __init__(self, db: FakeDatabase, runs: list[str]) -> None:
        self.db, self.runs = db, runs

    async def handle(self, request: GetThing) -> ThingDto | None:
        self.runs.append(f"get {request.id}")
        name = self.db.names.get(request.id)
        return None if name is None else ThingDto(request.id, name)


class RenameThingHandler(RequestHandler[RenameThing, bool]):
    def __init__(self, uow: FakeUnitOfWork, runs: list[str]) -> None:
        self.uow, self.runs = uow, runs

    async def handle(self, request: RenameThing) -> bool:
        self.runs.append(f"rename {request.id}")
        if request.id not in self.uow.db.names:
            return False
        self.uow.staged[request.id] = request.name
        if request.fail:
            raise RuntimeError("constraint violated")
        await self.uow.commit()
        return True


@dataclass
class World:
    db: FakeDatabase
    runs: list[str]
    mediator: Mediator[FakeUnitOfWork]

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db)


def make_world(cache: FakeCache | HybridCache) -> World:
    db = FakeDatabase({1: "one", 2: "two"})
    runs: list[str] = []
    caching, invalidation = CachingBehavior(cache), CacheInvalidationBehavior(cache)
    mediator = Mediator[FakeUnitOfWork]([caching, invalidation])
    mediator.register(GetThing, lambda uow: GetThingHandler(uow.db, runs))
    mediator.register(RenameThing, lambda uow: RenameThingHandler(uow, runs))
    mediator.register(CountThings, lambda uow: CountHandler(uow.db))
    mediator.register(TouchNothing, lambda uow: NothingHandler())
    return World(db, runs, mediator)


class CountHandler(RequestHandler[CountThings, int]):
    def __init__(self, db: FakeDatabase) -> None:
        self.db = db

    async def handle(self, request: CountThings) -> int:
        return len(self.db.names)


class NothingHandler(RequestHandler[TouchNothing, None]):
    async def handle(self, request: TouchNothing) -> None:
        return None


async def send(world: World, request: Any) -> Any:
    async with world.uow() as uow:
        return await world.mediator.send(request, uow)


# -- with fakes ---------------------------------------------------------------------------------------------


async def test_caching_reads_through_with_the_querys_key_duration_type_and_tags() -> None:
    cache = FakeCache()
    world = make_world(cache)

    first = await send(world, GetThing(1))
    second = await send(world, GetThing(1))

    assert first == second == ThingDto(1, "one")
    assert world.runs == ["get 1"]
    assert cache.reads == [("Thing:1", timedelta(minutes=30), ThingDto | None, ("things",))] * 2


def test_each_behavior_applies_only_to_its_marker() -> None:
    cache = FakeCache()
    caching, invalidation = CachingBehavior(cache), CacheInvalidationBehavior(cache)
    mediator = Mediator([caching, invalidation])

    assert mediator.behaviors_for(GetThing) == (caching,)
    assert mediator.behaviors_for(RenameThing) == (invalidation,)
    assert mediator.behaviors_for(CountThings) == ()


def test_markers_on_the_wrong_kind_of_request_are_refused() -> None:
    @dataclass(frozen=True)
    class CachedCommand(Command[int], Cacheable):
        cache_key: ClassVar[str] = "x"
        cache_duration: ClassVar[timedelta] = timedelta(seconds=1)

    @dataclass(frozen=True)
    class InvalidatingQuery(Query[int], InvalidatesCache):
        pass

    cache = FakeCache()
    with pytest.raises(TypeError, match="CachedCommand is Cacheable but not a Query"):
        CachingBehavior(cache).applies_to(CachedCommand)
    with pytest.raises(TypeError, match="InvalidatingQuery is InvalidatesCache but not a Command"):
        CacheInvalidationBehavior(cache).applies_to(InvalidatingQuery)


def test_a_cacheable_query_must_declare_key_and_duration() -> None:
    @dataclass(frozen=True)
    class Forgetful(Query[int], Cacheable):
        @property
        def cache_key(self) -> str:
            return "k"

    with pytest.raises(TypeError, match="abstract"):
        Forgetful()  # type: ignore[abstract]


async def test_invalidation_runs_after_a_successful_command(caplog: pytest.LogCaptureFixture) -> None:
    cache = FakeCache()
    world = make_world(cache)
    await send(world, GetThing(1))

    with caplog.at_level(logging.INFO, logger="hybridcache"):
        assert await send(world, RenameThing(1, "uno")) is True

    assert cache.invalidations == [(["Thing:1"], ["Thing:Search", "Thing:List"], ["summaries"])]
    assert "CacheInvalidationBehavior processing RenameThing" in caplog.messages
    assert await send(world, GetThing(1)) == ThingDto(1, "uno")
    assert world.runs == ["get 1", "rename 1", "get 1"]


async def test_a_failing_command_propagates_invalidates_nothing_and_rolls_back() -> None:
    cache = FakeCache()
    world = make_world(cache)
    await send(world, GetThing(1))
    uow = world.uow()

    async def rename_and_fail() -> None:
        async with uow:
            await world.mediator.send(RenameThing(1, "uno", fail=True), uow)

    with pytest.raises(RuntimeError, match="constraint violated"):
        await rename_and_fail()

    assert uow.events == ["begin", "rollback", "close"]
    assert cache.invalidations == []
    assert world.db.names[1] == "one"
    assert await send(world, GetThing(1)) == ThingDto(1, "one")
    assert world.runs == ["get 1", "rename 1"]  # still cached: no second "get 1"


async def test_an_invalidation_failure_never_fails_a_committed_write(caplog: pytest.LogCaptureFixture) -> None:
    cache = FakeCache(fail_invalidation=True)
    world = make_world(cache)
    invalidation = world.mediator.behaviors[1]
    assert isinstance(invalidation, CacheInvalidationBehavior)

    with caplog.at_level(logging.ERROR, logger="hybridcache.cqrs"):
        assert await send(world, RenameThing(2, "dos")) is True

    assert world.db.names[2] == "dos"
    assert invalidation.failures == 1
    assert "Cache invalidation failed after RenameThing committed" in caplog.text
    assert "redis is down" in caplog.text


async def test_a_command_that_declares_nothing_does_not_call_the_cache() -> None:
    cache = FakeCache()
    world = make_world(cache)
    assert await send(world, TouchNothing()) is None
    assert cache.invalidations == []


async def test_a_plain_query_never_touches_the_cache() -> None:
    cache = FakeCache()
    world = make_world(cache)
    assert await send(world, CountThings()) == 2
    assert cache.reads == []


async def test_unit_of_work_template_rolls_back_unless_committed() -> None:
    db = FakeDatabase()
    async with FakeUnitOfWork(db) as uow:
        uow.staged[1] = "kept"
        uow.staged[3] = "also kept"
        assert await uow.commit() == 2
    assert uow.events == ["begin", "commit", "close"]
    assert uow.committed

    async with FakeUnitOfWork(db) as uow:
        uow.staged[2] = "dropped"
    assert uow.events == ["begin", "rollback", "close"]
    assert not uow.committed
    assert db.names == {1: "kept", 3: "also kept"}


# -- with a real HybridCache, L1 only ------------------------------------------------------------------------


@pytest.fixture
async def l1_cache() -> AsyncIterator[HybridCache]:
    async with HybridCache.from_settings(CacheSettings(service_name="svc", cache_version="v1")) as cache:
        yield cache


async def test_l1_only_read_through_runs_the_handler_once(l1_cache: HybridCache) -> None:
    world = make_world(l1_cache)

    assert await send(world, GetThing(1)) == ThingDto(1, "one")
    assert await send(world, GetThing(1)) == ThingDto(1, "one")
    assert await send(world, GetThing(99)) is None
    assert await send(world, GetThing(99)) is None  # a cached None is a hit

    assert world.runs == ["get 1", "get 99"]
    stats = l1_cache.stats()
    assert (stats.handler_runs, stats.l1_hits) == (2, 2)


async def test_l1_only_update_then_read_sees_the_new_data(
    l1_cache: HybridCache, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(l1_cache)
    await send(world, GetThing(1))

    with caplog.at_level(logging.INFO, logger="hybridcache"):
        assert await send(world, RenameThing(1, "uno")) is True

    assert await send(world, GetThing(1)) == ThingDto(1, "uno")
    assert world.runs == ["get 1", "rename 1", "get 1"]
    messages = caplog.messages
    expected = [
        "CacheInvalidationBehavior processing RenameThing",
        "Removed key: svc:v1:Thing:1",
        "Removed prefix: svc:v1:Thing:Search*",
    ]
    assert [m for m in messages if m in expected] == expected


async def test_l1_only_handler_error_caches_nothing(l1_cache: HybridCache) -> None:
    world = make_world(l1_cache)
    failures = 0

    class Flaky(RequestHandler[GetThing, ThingDto | None]):
        async def handle(self, request: GetThing) -> ThingDto | None:
            nonlocal failures
            failures += 1
            if failures == 1:
                raise TimeoutError("database timeout")
            return ThingDto(request.id, "late")

    mediator = Mediator([CachingBehavior(l1_cache)])
    mediator.register(GetThing, lambda _: Flaky())

    with pytest.raises(TimeoutError):
        await mediator.send(GetThing(7))
    assert await mediator.send(GetThing(7)) == ThingDto(7, "late")
    assert await mediator.send(GetThing(7)) == ThingDto(7, "late")
    assert failures == 2
    assert world.runs == []
