"""Repositories and unit of work against real databases: SQLite (aiosqlite, a temp file) and PostgreSQL
(asyncpg, a throwaway database). The read side must never track; the unit of work must roll back whatever
was not committed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, String, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from sqlalchemy.orm.exc import DetachedInstanceError

from hybridcache.persistence import ReadRepository, UnitOfWork, WriteRepository, create_session_factory

Sessions = async_sessionmaker[AsyncSession]


class Base(DeclarativeBase):
    pass


class State(Base):
    __tablename__ = "state"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(2))


class Shop(Base):
    __tablename__ = "shop"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    state_id: Mapped[int] = mapped_column(ForeignKey("state.id"))
    state: Mapped[State] = relationship()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'persistence.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(engine: AsyncEngine) -> Sessions:
    factory = create_session_factory(engine)
    async with UnitOfWork(factory) as uow:
        texas, ohio = State(code="TX"), State(code="OH")
        writes = uow.writes(Shop)
        for name, state in [("Alpha", texas), ("Bravo", ohio), ("Charlie", texas)]:
            await writes.add(Shop(name=name, state=state))
        await uow.commit()
    return factory


async def test_reads_come_back_detached_and_untracked(sessions: Sessions) -> None:
    async with UnitOfWork(sessions) as uow:
        reads = uow.reads(Shop)
        shops = await reads.list(reads.query.order_by(Shop.name))
        one = await reads.get_by_id(shops[0].id)
        first = await reads.first(reads.query.where(Shop.name == "Bravo"))

        assert [s.name for s in shops] == ["Alpha", "Bravo", "Charlie"]
        assert one is not None
        assert first is not None
        for obj in [*shops, one, first]:
            assert inspect(obj).detached
            assert obj not in uow.session
        assert len(uow.session.identity_map) == 0


async def test_eager_loaded_relationships_survive_the_session_and_lazy_ones_fail_loudly(
    sessions: Sessions,
) -> None:
    async with UnitOfWork(sessions) as uow:
        reads = uow.reads(Shop)
        eager = await reads.first(reads.query.options(selectinload(Shop.state)).where(Shop.name == "Alpha"))
        plain = await reads.get_by_id(eager.id if eager else -1)
        by_id_eager = await reads.get_by_id(eager.id if eager else -1, selectinload(Shop.state))

    assert eager is not None
    assert plain is not None
    assert by_id_eager is not None
    assert eager.state.code == "TX"
    assert by_id_eager.state.code == "TX"
    with pytest.raises(DetachedInstanceError):
        _ = plain.state


async def test_count_ignores_ordering_and_honours_filters(sessions: Sessions) -> None:
    async with UnitOfWork(sessions) as uow:
        reads = uow.reads(Shop)
        assert await reads.count() == 3
        texas = reads.query.join(Shop.state).where(State.code == "TX").order_by(Shop.name)
        assert await reads.count(texas) == 2
        assert await reads.get_by_id(10_000) is None
        assert await reads.first(reads.query.where(Shop.name == "nope")) is None


async def test_a_read_does_not_disturb_the_writer_tracking_the_same_row(
    sessions: Sessions,
) -> None:
    async with UnitOfWork(sessions) as uow:
        writes, reads = uow.writes(Shop), uow.reads(Shop)
        tracked = await writes.get_by_id(1)
        assert tracked is not None
        tracked.name = "Alpha Prime"

        read_copy = await reads.get_by_id(1)

        assert read_copy is not None
        assert read_copy is not tracked
        assert read_copy.name == "Alpha"  # the pending change was not flushed by the read
        assert tracked in uow.session
        writes.update(tracked)
        await uow.commit()

    async with UnitOfWork(sessions) as uow:
        assert (await uow.reads(Shop).get_by_id(1)) is not None
        assert (await uow.session.scalar(select(Shop.name).where(Shop.id == 1))) == "Alpha Prime"


async def test_reads_see_what_this_transaction_flushed(sessions: Sessions) -> None:
    async with UnitOfWork(sessions) as uow:
        await uow.writes(Shop).add(Shop(name="Delta", state_id=1))
        await uow.flush()
        assert await uow.reads(Shop).count() == 4
        # leaving without commit() rolls the insert back

    async with UnitOfWork(sessions) as uow:
        assert await uow.reads(Shop).count() == 3


async def test_commit_makes_changes_durable_and_generated_keys_readable(
    sessions: Sessions,
) -> None:
    async with UnitOfWork(sessions) as uow:
        shop = Shop(name="Echo", state_id=2)
        await uow.writes(Shop).add(shop)
        await uow.commit()
    assert shop.id is not None  # readable after the session closed: expire_on_commit=False

    async with UnitOfWork(sessions) as uow:
        loaded = await uow.reads(Shop).get_by_id(shop.id)
        assert loaded is not None
        assert loaded.name == "Echo"


async def test_an_exception_rolls_back_and_propagates(sessions: Sessions) -> None:
    class Boom(Exception):
        pass

    uow = UnitOfWork(sessions)

    async def change_then_fail() -> None:
        async with uow:
            shop = await uow.writes(Shop).get_by_id(2)
            assert shop is not None
            shop.name = "Bravo Changed"
            await uow.flush()
            raise Boom

    with pytest.raises(Boom):
        await change_then_fail()

    assert not uow.committed
    async with UnitOfWork(sessions) as uow:
        shop = await uow.reads(Shop).get_by_id(2)
        assert shop is not None
        assert shop.name == "Bravo"


async def test_update_reattaches_a_detached_object_and_remove_deletes(
    sessions: Sessions,
) -> None:
    async with UnitOfWork(sessions) as uow:
        detached = await uow.reads(Shop).get_by_id(3)
    assert detached is not None
    detached.name = "Charlie Renamed"

    async with UnitOfWork(sessions) as uow:
        uow.writes(Shop).update(detached)
        await uow.commit()

    async with UnitOfWork(sessions) as uow:
        writes = uow.writes(Shop)
        renamed = await writes.get_by_id(3)
        assert renamed is not None
        assert renamed.name == "Charlie Renamed"
        await writes.remove(renamed)
        await uow.commit()

    async with UnitOfWork(sessions) as uow:
        assert await uow.reads(Shop).get_by_id(3) is None
        assert await uow.reads(Shop).count() == 2


async def test_repositories_can_be_built_directly_on_a_session(
    sessions: Sessions,
) -> None:
    async with sessions() as session:
        reads = ReadRepository(session, Shop)
        writes = WriteRepository(session, Shop)
        assert reads.model is Shop
        assert writes.model is Shop
        assert [s.name for s in await reads.list(reads.query.order_by(Shop.id))] == ["Alpha", "Bravo", "Charlie"]


async def test_unit_of_work_guards_its_session(sessions: Sessions) -> None:
    uow = UnitOfWork(sessions)
    with pytest.raises(RuntimeError, match="only available inside"):
        _ = uow.session
    async with uow:
        with pytest.raises(RuntimeError, match="not reentrant"):
            await uow.__aenter__()
    with pytest.raises(RuntimeError, match="only available inside"):
        _ = uow.session


async def test_commit_returns_the_number_of_rows_it_wrote(sessions: Sessions) -> None:
    async with UnitOfWork(sessions) as uow:
        writes = uow.writes(Shop)
        await writes.add(Shop(name="Foxtrot", state_id=1))
        await writes.add(Shop(name="Golf", state_id=2))
        inserted = await uow.commit()

    async with UnitOfWork(sessions) as uow:
        writes = uow.writes(Shop)
        changed, untouched = await writes.get_by_id(1), await writes.get_by_id(2)
        assert changed is not None
        assert untouched is not None
        changed.name = "Alpha Changed"
        untouched.name = untouched.name  # set to its own value: in session.dirty, but nothing to write
        assert untouched in uow.session.dirty
        updated = await uow.commit()

    async with UnitOfWork(sessions) as uow:
        loaded = await uow.writes(Shop).get_by_id(3)
        assert loaded is not None
        nothing = await uow.commit()

    async with UnitOfWork(sessions) as uow:
        writes = uow.writes(Shop)
        doomed = await writes.get_by_id(3)
        assert doomed is not None
        await writes.remove(doomed)
        deleted = await uow.commit()

    assert (inserted, updated, nothing, deleted) == (2, 1, 0, 1)
    async with UnitOfWork(sessions) as uow:
        reads = uow.reads(Shop)
        assert await reads.count() == 4
        assert [s.name for s in await reads.list(reads.query.order_by(Shop.id))][:2] == ["Alpha Changed", "Bravo"]


async def test_commit_counts_rows_a_cascade_adds_and_a_reattached_object_only_if_changed(sessions: Sessions) -> None:
    async with UnitOfWork(sessions) as uow:
        await uow.writes(Shop).add(Shop(name="Hotel", state=State(code="NM")))
        assert await uow.commit() == 2  # the shop and, by save-update cascade, its new state

    async with UnitOfWork(sessions) as uow:
        same, renamed = await uow.reads(Shop).get_by_id(1), await uow.reads(Shop).get_by_id(2)
    assert same is not None
    assert renamed is not None
    renamed.name = "Bravo Renamed"
    async with UnitOfWork(sessions) as uow:
        uow.writes(Shop).update(same)
        uow.writes(Shop).update(renamed)
        assert await uow.commit() == 1
