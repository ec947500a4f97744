"""Static checks of the CQRS API, run by ``mypy src tests/typing`` and never by pytest (the file name does not
match ``test_*.py``).

``assert_type`` lines prove what mypy infers; ``# type: ignore[code]`` lines prove that a misuse *is* rejected:
with ``warn_unused_ignores`` (part of ``--strict``) mypy fails if such a line ever stops being an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, assert_type

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import (
    Cacheable,
    CacheInvalidationBehavior,
    CachingBehavior,
    Command,
    InvalidatesCache,
    Mediator,
    Notification,
    NotificationHandler,
    Query,
    RequestHandler,
    ScopedMediator,
)
from hybridcache.persistence import ReadRepository, UnitOfWork, WriteRepository, in_unit_of_work


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "row"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


@dataclass(frozen=True)
class Dto:
    id: int
    name: str


@dataclass(frozen=True)
class GetById(Query[Dto | None], Cacheable):
    id: int
    cache_duration: ClassVar[timedelta] = timedelta(minutes=30)

    @property
    def cache_key(self) -> str:
        return f"Row:{self.id}"


@dataclass(frozen=True)
class Search(Query[list[Dto]], Cacheable):
    term: str
    cache_duration = timedelta(minutes=5)
    cache_tags = ("rows",)

    @property
    def cache_key(self) -> str:
        return f"Row:Search:{self.term}"


@dataclass(frozen=True)
class Rename(Command[bool], InvalidatesCache):
    id: int
    name: str
    cache_prefixes_to_invalidate: ClassVar[Sequence[str]] = ("Row:Search",)

    @property
    def cache_keys_to_invalidate(self) -> Sequence[str]:
        return [f"Row:{self.id}"]


class GetByIdHandler(RequestHandler[GetById, Dto | None]):
    def __init__(self, rows: ReadRepository[Row]) -> None:
        self.rows = rows

    async def handle(self, request: GetById) -> Dto | None:
        row = await self.rows.get_by_id(request.id)
        assert_type(row, Row | None)
        return None if row is None else Dto(row.id, row.name)


class SearchHandler(RequestHandler[Search, list[Dto]]):
    def __init__(self, rows: ReadRepository[Row]) -> None:
        self.rows = rows

    async def handle(self, request: Search) -> list[Dto]:
        found = await self.rows.list(self.rows.query.where(Row.name.contains(request.term)))
        assert_type(found, list[Row])
        assert_type(await self.rows.count(), int)
        return [Dto(r.id, r.name) for r in found]


class RenameHandler(RequestHandler[Rename, bool]):
    def __init__(self, rows: WriteRepository[Row], uow: UnitOfWork) -> None:
        self.rows, self.uow = rows, uow

    async def handle(self, request: Rename) -> bool:
        row = await self.rows.get_by_id(request.id)
        if row is None:
            return False
        row.name = request.name
        assert_type(await self.uow.commit(), int)
        return True


class Renamed(Notification):
    pass


class OnRenamed(NotificationHandler[Renamed]):
    async def handle(self, notification: Renamed) -> None:
        return None


async def scoped_mediator(cache: HybridCache, uow: UnitOfWork, sessions: async_sessionmaker[AsyncSession]) -> None:
    mediator = Mediator[UnitOfWork]([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
    mediator.register(GetById, lambda scope: GetByIdHandler(ReadRepository(scope.session, Row)))
    mediator.register(Search, lambda scope: SearchHandler(scope.reads(Row)))
    mediator.register(Rename, lambda scope: RenameHandler(scope.writes(Row), scope))
    mediator.subscribe(Renamed, lambda scope: OnRenamed())
    per_run = Mediator[UnitOfWork]()
    per_run.register(GetById, in_unit_of_work(sessions, lambda run_uow: GetByIdHandler(run_uow.reads(Row))))
    per_run.register(Search, in_unit_of_work(sessions, lambda run_uow: GetByIdHandler(run_uow.reads(Row))))  # type: ignore[arg-type, return-value]

    assert_type(await mediator.send(GetById(1), uow), Dto | None)
    assert_type(await mediator.send(Search("a"), uow), list[Dto])
    assert_type(await mediator.send(Rename(1, "b"), uow), bool)
    assert_type(await mediator.publish(Renamed(), uow), tuple[Exception, ...])

    scoped = mediator.scoped(uow)
    assert_type(scoped, ScopedMediator[UnitOfWork])
    assert_type(await scoped.send(GetById(1)), Dto | None)

    await mediator.send(GetById(1))  # type: ignore[call-arg]  # a scoped mediator needs its scope
    await mediator.send(GetById(1), "not a unit of work")  # type: ignore[arg-type]
    mediator.register(GetById, lambda scope: SearchHandler(scope.reads(Row)))  # type: ignore[arg-type, return-value]
    mediator.register(Rename, lambda scope: RenameHandler(scope.writes(Dto), scope))  # type: ignore[arg-type]


async def unscoped_mediator(rows: ReadRepository[Row]) -> None:
    settings = CacheSettings(service_name="typing")
    async with HybridCache.from_settings(settings) as cache:
        mediator = Mediator([CachingBehavior(cache)])
        assert_type(mediator, Mediator[None])
        mediator.register(Search, lambda _: SearchHandler(rows))
        assert_type(await mediator.send(Search("x")), list[Dto])
        await mediator.send(Search("x"), object())  # type: ignore[call-overload]
        answer: str = await mediator.send(GetById(1))  # type: ignore[arg-type]
        del answer
