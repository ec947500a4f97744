"""The seed's CQRS flows, step by step, against a real private redis-server and a real database (SQLite file and
PostgreSQL): two service instances (two ``HybridCache``s on one Redis, one database), handlers counted.

Read:  miss → handler runs once → L2 + L1;  L1 hit → handler NEVER runs;  other instance → L2 hit → NEVER runs.
Write: handler commits first → keys and prefixes invalidated on every instance → next read sees the new data.
Fail:  a command whose handler raises → exception propagates, database rolled back, cache untouched.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio
from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import (
    Cacheable,
    CacheInvalidationBehavior,
    CachingBehavior,
    Command,
    InvalidatesCache,
    Mediator,
    Query,
    Request,
    RequestHandler,
)
from hybridcache.keys import CacheKey
from hybridcache.persistence import (
    ReadRepository,
    UnitOfWork,
    WriteRepository,
    create_session_factory,
    in_unit_of_work,
)
from tests.support.waiting import wait_until

R = TypeVar("R")

# -- the data model (the seed's Data.Models) -----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class StateProvinceRow(Base):
    __tablename__ = "state_province"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(2))


class ZipCodeRow(Base):
    __tablename__ = "zip_code"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(10))
    state_province_id: Mapped[int] = mapped_column(ForeignKey("state_province.id"))
    state_province: Mapped[StateProvinceRow] = relationship()


class DealershipRow(Base):
    __tablename__ = "dealership"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    business_address: Mapped[str] = mapped_column(String(200))
    business_zip_code_id: Mapped[int] = mapped_column(ForeignKey("zip_code.id"))
    unique_key: Mapped[str] = mapped_column(String(36))
    business_zip_code: Mapped[ZipCodeRow] = relationship()


# -- DTOs, queries, commands and pure handlers (the seed's Steps 3 and 4) --------------------------------------


@dataclass(frozen=True)
class Dealership:
    id: int
    name: str
    business_address: str
    zip_code: str
    state: str
    unique_key: str


def to_dto(row: DealershipRow) -> Dealership:
    zip_code = row.business_zip_code
    return Dealership(
        row.id, row.name, row.business_address, zip_code.code, zip_code.state_province.code, row.unique_key
    )


@dataclass(frozen=True)
class GetDealershipByIdQuery(Query[Dealership | None], Cacheable):
    id: int
    cache_duration: ClassVar[timedelta] = timedelta(minutes=30)

    @property
    def cache_key(self) -> str:
        return f"Dealership:{self.id}"


@dataclass(frozen=True)
class SearchDealershipsQuery(Query[list[Dealership]], Cacheable):
    term: str
    page_size: int = 10
    cache_duration: ClassVar[timedelta] = timedelta(minutes=5)

    @property
    def cache_key(self) -> str:
        return f"Dealership:Search:{CacheKey.sanitize(self.term)}:{self.page_size}"


@dataclass(frozen=True)
class UpdateDealershipCommand(Command[bool], InvalidatesCache):
    id: int
    name: str
    business_address: str
    cache_prefixes_to_invalidate: ClassVar[Sequence[str]] = ("Dealership:Search", "Dealership:List")

    @property
    def cache_keys_to_invalidate(self) -> Sequence[str]:
        return [f"Dealership:{self.id}"]


@dataclass(frozen=True)
class CreateDealershipCommand(Command[Dealership], InvalidatesCache):
    name: str
    business_address: str
    business_zip_code_id: int
    cache_prefixes_to_invalidate: ClassVar[Sequence[str]] = ("Dealership:List", "Dealership:Search")


class NameTooLongError(ValueError):
    pass


def with_zip_and_state() -> Any:
    return selectinload(DealershipRow.business_zip_code).selectinload(ZipCodeRow.state_province)


class GetDealershipByIdQueryHandler(RequestHandler[GetDealershipByIdQuery, Dealership | None]):
    def __init__(self, repository: ReadRepository[DealershipRow], runs: Counter[str]) -> None:
        self.repository, self.runs = repository, runs

    async def handle(self, request: GetDealershipByIdQuery) -> Dealership | None:
        self.runs["get"] += 1
        row = await self.repository.first(
            self.repository.query.options(with_zip_and_state()).where(DealershipRow.id == request.id)
        )
        return None if row is None else to_dto(row)


class SearchDealershipsQueryHandler(RequestHandler[SearchDealershipsQuery, list[Dealership]]):
    def __init__(self, repository: ReadRepository[DealershipRow], runs: Counter[str]) -> None:
        self.repository, self.runs = repository, runs

    async def handle(self, request: SearchDealershipsQuery) -> list[Dealership]:
        self.runs["search"] += 1
        statement = (
            self.repository.query.options(with_zip_and_state())
            .where(DealershipRow.name.icontains(request.term, autoescape=True))
            .order_by(DealershipRow.name, DealershipRow.id)
            .limit(request.page_size)
        )
        return [to_dto(row) for row in await self.repository.list(statement)]


@dataclass(frozen=True)
class CountDealershipsSlowlyQuery(Query[int], Cacheable):
    cache_key: ClassVar[str] = "Dealership:Count"
    cache_duration: ClassVar[timedelta] = timedelta(minutes=1)


class CountDealershipsSlowlyQueryHandler(RequestHandler[CountDealershipsSlowlyQuery, int]):
    """Waits for ``gate`` before it touches the database, so a test can act while the run is in flight."""

    def __init__(self, repository: ReadRepository[DealershipRow], runs: Counter[str], gate: asyncio.Event) -> None:
        self.repository, self.runs, self.gate = repository, runs, gate

    async def handle(self, request: CountDealershipsSlowlyQuery) -> int:
        self.runs["count"] += 1
        await self.gate.wait()
        return await self.repository.count()


class UpdateDealershipCommandHandler(RequestHandler[UpdateDealershipCommand, bool]):
    def __init__(self, repository: WriteRepository[DealershipRow], uow: UnitOfWork, runs: Counter[str]) -> None:
        self.repository, self.uow, self.runs = repository, uow, runs

    async def handle(self, request: UpdateDealershipCommand) -> bool:
        self.runs["update"] += 1
        entity = await self.repository.get_by_id(request.id)
        if entity is None:
            return False
        entity.name = request.name
        entity.business_address = request.business_address
        self.repository.update(entity)
        await self.uow.flush()  # the change reaches the database inside the transaction...
        if len(request.name) > 40:
            raise NameTooLongError(request.name)  # ...and must be rolled back when the handler fails
        await self.uow.commit()
        return True


class CreateDealershipCommandHandler(RequestHandler[CreateDealershipCommand, Dealership]):
    def __init__(self, uow: UnitOfWork, runs: Counter[str]) -> None:
        self.uow, self.runs = uow, runs

    async def handle(self, request: CreateDealershipCommand) -> Dealership:
        self.runs["create"] += 1
        entity = DealershipRow(
            name=request.name,
            business_address=request.business_address,
            business_zip_code_id=request.business_zip_code_id,
            unique_key=str(uuid.uuid4()),
        )
        await self.uow.writes(DealershipRow).add(entity)
        await self.uow.commit()
        created = await self.uow.reads(DealershipRow).get_by_id(entity.id, with_zip_and_state())
        assert created is not None
        return to_dto(created)


# -- two service instances -----------------------------------------------------------------------------------


@dataclass
class Instance:
    """One service process: its own cache and mediator; one unit of work per request, as in an HTTP request."""

    cache: HybridCache
    mediator: Mediator[UnitOfWork]
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    runs: Counter[str]
    gate: asyncio.Event

    async def send(self, request: Request[R]) -> R:
        async with UnitOfWork(self.sessions) as uow:
            return await self.mediator.send(request, uow)


def build_mediator(
    cache: HybridCache, sessions: async_sessionmaker[AsyncSession], runs: Counter[str], gate: asyncio.Event
) -> Mediator[UnitOfWork]:
    """Queries get a unit of work per handler run (the cache may share one run among many requests, and it
    outlives a cancelled one); commands use the request's unit of work, passed as the scope."""
    mediator = Mediator[UnitOfWork]([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
    mediator.register(
        GetDealershipByIdQuery,
        in_unit_of_work(sessions, lambda uow: GetDealershipByIdQueryHandler(uow.reads(DealershipRow), runs)),
    )
    mediator.register(
        SearchDealershipsQuery,
        in_unit_of_work(sessions, lambda uow: SearchDealershipsQueryHandler(uow.reads(DealershipRow), runs)),
    )
    mediator.register(
        CountDealershipsSlowlyQuery,
        in_unit_of_work(sessions, lambda uow: CountDealershipsSlowlyQueryHandler(uow.reads(DealershipRow), runs, gate)),
    )
    mediator.register(
        UpdateDealershipCommand, lambda uow: UpdateDealershipCommandHandler(uow.writes(DealershipRow), uow, runs)
    )
    mediator.register(CreateDealershipCommand, lambda uow: CreateDealershipCommandHandler(uow, runs))
    return mediator


BRANDS = ("Ford", "Toyota", "Honda")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'dealerships.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = create_session_factory(engine)
    async with sessions() as session, session.begin():
        texas = StateProvinceRow(code="TX")
        austin = ZipCodeRow(code="78701", state_province=texas)
        session.add_all(
            DealershipRow(
                name=f"{BRANDS[i % 3]} Motors {i:02d}",
                business_address=f"{i} Main St",
                business_zip_code=austin,
                unique_key=str(uuid.UUID(int=i)),
            )
            for i in range(1, 46)
        )
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def instances(engine: AsyncEngine, redis_url: str, namespace: str) -> AsyncIterator[tuple[Instance, Instance]]:
    settings = CacheSettings(configuration=redis_url, instance_name="Company:", service_name=namespace)
    sessions = create_session_factory(engine)
    async with HybridCache.from_settings(settings) as cache_a, HybridCache.from_settings(settings) as cache_b:
        assert await cache_a.wait_until_connected(5.0)
        assert await cache_b.wait_until_connected(5.0)
        made = []
        for cache in (cache_a, cache_b):
            runs, gate = Counter[str](), asyncio.Event()
            made.append(Instance(cache, build_mediator(cache, sessions, runs, gate), engine, sessions, runs, gate))
        yield made[0], made[1]


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# -- the flows -----------------------------------------------------------------------------------------------


async def test_read_flow_miss_then_l1_hit_then_l2_hit_on_another_instance(
    instances: tuple[Instance, Instance], raw_redis: redis.asyncio.Redis, namespace: str
) -> None:
    a, b = instances
    l2_key = f"Company:{namespace}:v1:Dealership:42"

    # Steps 4-11: L1 miss, L2 miss → the handler runs once, the answer goes to L2 and L1.
    first = await a.send(GetDealershipByIdQuery(42))
    assert first == Dealership(42, "Ford Motors 42", "42 Main St", "78701", "TX", str(uuid.UUID(int=42)))
    assert a.runs["get"] == 1
    assert await raw_redis.exists(l2_key) == 1
    assert await raw_redis.pttl(l2_key) > timedelta(minutes=29).total_seconds() * 1000

    # Next request, same instance: L1 hit → the handler NEVER runs.
    assert await a.send(GetDealershipByIdQuery(42)) == first
    assert a.runs["get"] == 1
    assert a.cache.stats().l1_hits == 1

    # Next request, different instance: L1 miss → L2 hit → promoted to L1 → the handler NEVER runs.
    assert await b.send(GetDealershipByIdQuery(42)) == first
    assert await b.send(GetDealershipByIdQuery(42)) == first
    assert b.runs["get"] == 0
    stats_b = b.cache.stats()
    assert (stats_b.l2_hits, stats_b.l1_hits, stats_b.handler_runs) == (1, 1, 0)

    # A missing id is cached too: the database is not hammered for it.
    assert await a.send(GetDealershipByIdQuery(404)) is None
    assert await b.send(GetDealershipByIdQuery(404)) is None
    assert (a.runs["get"], b.runs["get"]) == (2, 0)


async def test_concurrent_misses_run_the_handler_once(instances: tuple[Instance, Instance]) -> None:
    a, _ = instances
    results = await asyncio.gather(*(a.send(SearchDealershipsQuery("toyota")) for _ in range(20)))

    assert all(r == results[0] for r in results)
    assert [d.name for d in results[0]][:2] == ["Toyota Motors 01", "Toyota Motors 04"]
    assert a.runs["search"] == 1


async def test_update_flow_invalidates_keys_and_prefixes_on_every_instance(
    instances: tuple[Instance, Instance],
    raw_redis: redis.asyncio.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = instances
    for instance in instances:
        assert (await instance.send(GetDealershipByIdQuery(42))).name == "Ford Motors 42"  # type: ignore[union-attr]
        assert len(await instance.send(SearchDealershipsQuery("ford"))) == 10
    assert (a.runs["get"], a.runs["search"], b.runs["get"], b.runs["search"]) == (1, 1, 0, 0)  # B: L2 hits

    # Steps 3-11: the handler runs first and commits; then keys and prefixes are invalidated and published.
    with caplog.at_level(logging.INFO, logger="hybridcache"):
        assert await a.send(UpdateDealershipCommand(42, "Lincoln Motors 42", "1 New Rd")) is True

    expected_lines = [
        "CacheInvalidationBehavior processing UpdateDealershipCommand",
        f"Removed key: {namespace}:v1:Dealership:42",
        f"Removed prefix: {namespace}:v1:Dealership:Search*",
        f"Removed prefix: {namespace}:v1:Dealership:List*",
    ]
    assert [m for m in caplog.messages if m in expected_lines] == expected_lines
    assert any(m.startswith("Published invalidation event") for m in caplog.messages)
    assert await raw_redis.exists(f"Company:{namespace}:v1:Dealership:42") == 0
    assert a.runs == Counter(get=1, search=1, update=1)  # the command read nothing through the cache

    # Step 14: the next read on this instance misses and sees the committed data.
    updated = await a.send(GetDealershipByIdQuery(42))
    assert updated is not None
    assert (updated.name, updated.business_address) == ("Lincoln Motors 42", "1 New Rd")
    assert a.runs["get"] == 2
    assert "Lincoln Motors 42" not in [d.name for d in await a.send(SearchDealershipsQuery("ford"))]
    assert a.runs["search"] == 2

    # Steps 12-13: the other instance got the event and dropped its L1 copies.
    async def b_sees_the_update() -> bool:
        found = await b.send(GetDealershipByIdQuery(42))
        return found is not None and found.name == "Lincoln Motors 42"

    await wait_until(b_sees_the_update, timeout=5, message="instance B still serves the old dealership 42")
    assert b.cache.stats().invalidations_received >= 1
    assert "Lincoln Motors 42" not in [d.name for d in await b.send(SearchDealershipsQuery("ford"))]
    assert [d.name for d in await b.send(SearchDealershipsQuery("lincoln"))] == ["Lincoln Motors 42"]


async def test_create_flow_invalidates_searches_on_every_instance(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    for instance in instances:
        assert await instance.send(SearchDealershipsQuery("zephyr")) == []

    created = await b.send(CreateDealershipCommand("Zephyr Autos", "9 Elm St", 1))

    assert created.id == 46
    assert (created.zip_code, created.state) == ("78701", "TX")
    assert await b.send(SearchDealershipsQuery("zephyr")) == [created]

    async def a_finds_it() -> bool:
        return await a.send(SearchDealershipsQuery("zephyr")) == [created]

    await wait_until(a_finds_it, timeout=5, message="instance A still serves the search cached before the create")
    assert await a.send(GetDealershipByIdQuery(46)) == created


async def test_a_failing_command_leaves_the_cache_untouched_and_the_database_rolled_back(
    instances: tuple[Instance, Instance], raw_redis: redis.asyncio.Redis, namespace: str
) -> None:
    a, b = instances
    original = await a.send(GetDealershipByIdQuery(7))
    assert original is not None
    assert await b.send(GetDealershipByIdQuery(7)) == original
    published = a.cache.stats().invalidations_published

    with pytest.raises(NameTooLongError):
        await a.send(UpdateDealershipCommand(7, "x" * 41, "nowhere"))

    assert a.runs["update"] == 1
    assert a.cache.stats().invalidations_published == published
    assert await raw_redis.exists(f"Company:{namespace}:v1:Dealership:7") == 1
    # Both instances still answer from their cache (the handler does not run again)...
    assert await a.send(GetDealershipByIdQuery(7)) == original
    assert await b.send(GetDealershipByIdQuery(7)) == original
    assert (a.runs["get"], b.runs["get"]) == (1, 0)
    # ...and the database, read directly, has the original row: the flushed change was rolled back.
    async with UnitOfWork(a.sessions) as uow:
        row = await uow.reads(DealershipRow).get_by_id(7)
    assert row is not None
    assert (row.name, row.business_address) == (original.name, original.business_address)


async def test_a_cancelled_request_does_not_break_the_shared_handler_run(instances: tuple[Instance, Instance]) -> None:
    a, _ = instances
    first = asyncio.create_task(a.send(CountDealershipsSlowlyQuery()))
    await wait_until(lambda: a.runs["count"] == 1, timeout=5, message="the handler run did not start")
    second = asyncio.create_task(a.send(CountDealershipsSlowlyQuery()))
    await asyncio.sleep(0)  # let the second request join the run in flight

    first.cancel()
    await wait_until(first.done, timeout=5, message="the first request was not cancelled")
    a.gate.set()

    assert await asyncio.wait_for(second, timeout=5) == 45
    assert first.cancelled()
    assert a.runs["count"] == 1
    assert await a.send(CountDealershipsSlowlyQuery()) == 45  # cached by the shared run
    # The run's own unit of work closed its session: no connection is left checked out of the pool.
    assert a.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
