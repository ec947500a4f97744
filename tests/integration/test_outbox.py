"""Issue 15: the transactional outbox on a real Redis and a real database (SQLite, and PostgreSQL where marked).

* A command's invalidations are written in its own transaction: committed with the business rows, absent when it
  rolls back; the writer publishes them at once and marks the row published afterwards (off the request path).
* A row its writer never published (a crash after the commit) is published by another instance's relay after the
  grace period; while Redis refuses, the relay retries on its own backoff, past an open circuit breaker.
* Relays on one database publish each row once: PostgreSQL's ``SKIP LOCKED``, SQLite's write lock.
* Depth and lag reach ``stats()``, with a WARNING past the threshold; published rows are pruned after the
  retention; the plain API (``record``/``publish``) works on a caller's own session or connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache, OutboxSettings
from hybridcache.cqrs import CacheInvalidationBehavior, Command, InvalidatesCache, Mediator, RequestHandler
from hybridcache.persistence import (
    Outbox,
    UnitOfWork,
    create_outbox_table,
    create_session_factory,
    in_unit_of_work,
    outbox_table,
)
from tests.integration.conftest import CacheEnv, StartCache
from tests.support.waiting import wait_until

KEY = "Note:1"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


@dataclass(frozen=True)
class RenameNote(Command[None], InvalidatesCache):
    """Rename note 1; ``fail_after_flush`` raises once the change reached the database (so it must roll back)."""

    text: str
    fail_after_flush: bool = False

    @property
    def cache_keys_to_invalidate(self) -> list[str]:
        return [KEY]

    @property
    def cache_tags_to_invalidate(self) -> list[str]:
        return ["notes"]


class RenameNoteHandler(RequestHandler[RenameNote, None]):
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def handle(self, request: RenameNote) -> None:
        note = await self._uow.writes(Note).get_by_id(1)
        assert note is not None
        note.text = request.text
        await self._uow.flush()
        if request.fail_after_flush:
            raise RuntimeError("the handler failed after writing")
        await self._uow.commit()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database holding ``note`` (one row) and the outbox table."""
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}", connect_args={"timeout": 30})
    else:
        engine = create_async_engine(request.getfixturevalue("postgres_url"))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await create_outbox_table(connection)
        await connection.execute(insert(Note).values(id=1, text="first"))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def fault_env(namespace: str, redis_server: RedisServer) -> CacheEnv:
    """Caches on this test's own redis-server, which the test may pause."""
    return CacheEnv(service_name=namespace, redis_url=redis_server.url)


def quick(**overrides: Any) -> OutboxSettings:
    """Outbox settings for tests: a short grace period and poll interval."""
    fields: dict[str, Any] = {"enabled": True, "grace_period_seconds": 0.2, "poll_interval_seconds": 0.1}
    return OutboxSettings(**(fields | overrides))


async def rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(outbox_table).order_by(outbox_table.c.id))).all())


async def cache_pair(env: CacheEnv, start_cache: StartCache, **overrides: Any) -> tuple[HybridCache, HybridCache]:
    """A writer and a reader instance of one namespace; the reader holds ``KEY`` in L1 (value "first")."""
    writer = await start_cache(env.settings(outbox=quick(), **overrides))
    reader = await start_cache(env.settings(outbox=quick(), **overrides))
    await reader.set(KEY, "first")
    assert await reader.get(KEY) == "first"
    return writer, reader


def in_l1(cache: HybridCache) -> Callable[[], bool]:
    l1 = cache.internals.l1
    assert l1 is not None
    full_key = f"{cache.settings.service_name}:v1:{KEY}"
    return lambda: full_key in l1


async def write_unpublished_row(outbox: Outbox, engine: AsyncEngine, *, age: float = 0.0) -> int:
    """What a writer that crashed right after its commit leaves: a committed row nobody published."""
    async with AsyncSession(engine) as session, session.begin():
        record = await outbox.record(session, keys=[KEY], tags=["notes"])
        if age:
            await session.execute(
                update(outbox_table).where(outbox_table.c.id == record.id).values(created_at=time.time() - age)
            )
    return record.id


def mediator_for(cache: HybridCache, engine: AsyncEngine, outbox: Outbox | None) -> Mediator[None]:
    mediator: Mediator[None] = Mediator([CacheInvalidationBehavior(cache, outbox=outbox)])
    mediator.register(RenameNote, in_unit_of_work(create_session_factory(engine), RenameNoteHandler))
    return mediator


# ------------------------------------------------------------------------------------------ the write path


async def test_a_committed_command_writes_its_row_in_the_transaction_and_marks_it_published(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer, reader = await cache_pair(cache_env, start_cache)
    outbox = Outbox(writer, engine)
    await mediator_for(writer, engine, outbox).send(RenameNote("second"))

    [row] = await rows(engine)
    assert (row.cache_keys, row.cache_prefixes, row.cache_tags) == ([KEY], [], ["notes"])
    assert row.namespace == f"hc-test:{cache_env.service_name}:v1:"
    # Published by the writer at once (the reader drops its copy), marked afterwards, never by a relay.
    await wait_until(lambda: reader.stats().invalidations_received == 1, timeout=5, message="reader not told")
    assert await reader.get(KEY) is None

    async def marked() -> bool:
        [current] = await rows(engine)
        return current.published_at is not None

    await wait_until(marked, timeout=5, message="the row was never marked published")
    [row] = await rows(engine)
    assert row.attempts == 0
    await outbox.close()


async def test_a_command_that_rolls_back_leaves_no_row_and_invalidates_nothing(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer, reader = await cache_pair(cache_env, start_cache)
    outbox = Outbox(writer, engine)
    with pytest.raises(RuntimeError, match="failed after writing"):
        await mediator_for(writer, engine, outbox).send(RenameNote("second", fail_after_flush=True))

    assert await rows(engine) == []
    async with engine.connect() as connection:
        assert (await connection.execute(select(Note.text))).scalar_one() == "first"
    assert writer.stats().invalidations_published == 0
    assert in_l1(reader)()
    await outbox.close()


async def test_the_plain_api_records_on_a_callers_session_or_connection(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer, reader = await cache_pair(cache_env, start_cache)
    outbox = Outbox(writer, engine)
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(update(Note).values(text="by session"))
        by_session = await outbox.record(session, keys=[KEY])
    async with engine.begin() as connection:
        by_connection = await outbox.record(connection, prefixes=["Note:"], tags=["notes"])
    assert by_connection.prefixes == ("Note",)  # normalized as the cache would

    assert await outbox.publish(by_session)
    await wait_until(lambda: not in_l1(reader)(), timeout=5, message="the reader kept its copy")
    assert await outbox.publish(by_connection)

    async def both_marked() -> bool:
        return all(row.published_at is not None for row in await rows(engine))

    await wait_until(both_marked, timeout=5, message="rows not marked published")
    with pytest.raises(ValueError, match="glob"):
        async with engine.begin() as connection:
            await outbox.record(connection, prefixes=["Note*"])
    assert len(await rows(engine)) == 2  # the bad one rolled back with its transaction
    await outbox.close()


# ------------------------------------------------------------------------------------------ the relay


async def test_a_row_its_writer_never_published_is_relayed_by_another_instance(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer, reader = await cache_pair(cache_env, start_cache)
    row_id = await write_unpublished_row(Outbox(writer, engine), engine)
    committed = time.monotonic()
    settings = quick()
    async with Outbox(reader, engine, settings) as relay:
        await wait_until(lambda: not in_l1(reader)(), timeout=5, message="the relay never published the row")
        took = time.monotonic() - committed
        assert took <= settings.grace_period_seconds + settings.poll_interval_seconds + 1.0, took
        assert took >= settings.grace_period_seconds  # not before the writer's grace period
        [row] = await rows(engine)
        assert (row.id, row.attempts) == (row_id, 1)
        assert row.published_at is not None
        assert relay.relayed == 1


async def test_the_relay_publishes_as_soon_as_redis_answers_even_with_the_breaker_open(
    engine: AsyncEngine, fault_env: CacheEnv, start_cache: StartCache, redis_server: RedisServer
) -> None:
    breaker = {"circuit_breaker": {"failure_threshold": 1, "break_duration_seconds": 600}}
    writer, reader = await cache_pair(fault_env, start_cache, **breaker)
    relay = Outbox(reader, engine, quick())
    await write_unpublished_row(relay, engine, age=10)

    redis_server.pause()
    try:
        assert await relay.relay_once() is None  # Redis refused: the row stays
        assert str(reader.breaker.state) == "open"
    finally:
        redis_server.resume()
    [row] = await rows(engine)
    assert (row.attempts, row.published_at) == (1, None)

    resumed = time.monotonic()
    async with relay:

        async def published() -> bool:
            [current] = await rows(engine)
            return current.published_at is not None

        await wait_until(published, timeout=5, message="the relay waited for the breaker")
    assert time.monotonic() - resumed < 2.0
    await wait_until(lambda: writer.stats().invalidations_received >= 1, timeout=5, message="writer not told")


class HeldCache(HybridCache):
    """A real cache whose ``invalidate`` waits for ``release``: its relay holds the rows it took meanwhile."""

    def __init__(self, settings: CacheSettings) -> None:
        super().__init__(settings)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def invalidate(self, **kwargs: Any) -> bool:
        self.entered.set()
        await self.release.wait()
        return await super().invalidate(**kwargs)


async def test_relays_sharing_a_database_publish_each_row_once(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    held = HeldCache(cache_env.settings())
    await held.start()
    try:
        other = await start_cache(cache_env.settings())
        first, second = Outbox(held, engine, quick(batch_size=1000)), Outbox(other, engine, quick(batch_size=1000))
        for _ in range(20):
            await write_unpublished_row(first, engine, age=10)

        # The first relay has taken the rows and is publishing them when the second one runs.
        publishing = asyncio.create_task(first.relay_once())
        await asyncio.wait_for(held.entered.wait(), timeout=5)
        meanwhile = asyncio.create_task(second.relay_once())
        await asyncio.wait({meanwhile}, timeout=0.5)  # PostgreSQL: skips the rows at once; SQLite: waits for the lock
        held.release.set()
        outcomes = await asyncio.gather(publishing, meanwhile)
    finally:
        await held.close()

    assert outcomes == [20, 0], outcomes  # the second relay found nothing it could take
    assert [row.attempts for row in await rows(engine)] == [1] * 20


# ------------------------------------------------------------------------------------------ visibility


async def test_depth_and_lag_are_reported_and_a_lagging_outbox_warns(
    engine: AsyncEngine,
    fault_env: CacheEnv,
    start_cache: StartCache,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, reader = await cache_pair(fault_env, start_cache)
    relay = Outbox(reader, engine, quick(lag_warning_seconds=5))
    reader.attach_outbox(relay)
    for _ in range(3):
        await write_unpublished_row(relay, engine, age=30)

    caplog.set_level(logging.INFO, logger="hybridcache.outbox")
    redis_server.pause()
    try:
        assert await relay.relay_once() is None
    finally:
        redis_server.resume()
    stats = reader.stats()
    assert stats.outbox_depth == 3
    assert 30 <= stats.outbox_lag_seconds < 60
    assert stats.as_dict()["outboxLagSeconds"] == stats.outbox_lag_seconds
    assert any(r.levelno == logging.WARNING and "Outbox lag" in r.getMessage() for r in caplog.records)

    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 0  # measures again: nothing left
    assert (reader.stats().outbox_depth, reader.stats().outbox_lag_seconds) == (0, 0.0)
    assert any("Outbox lag back" in r.getMessage() for r in caplog.records)
    reader.attach_outbox(None)


async def test_published_rows_are_pruned_after_the_retention(
    engine: AsyncEngine, cache_env: CacheEnv, start_cache: StartCache
) -> None:
    writer, _ = await cache_pair(cache_env, start_cache)
    outbox = Outbox(writer, engine, quick(retention_hours=1))
    old, recent, unpublished = [await write_unpublished_row(outbox, engine) for _ in range(3)]
    now = time.time()
    async with engine.begin() as connection:
        for row_id, published_at in ((old, now - 7200), (recent, now - 60)):
            await connection.execute(
                update(outbox_table).where(outbox_table.c.id == row_id).values(published_at=published_at)
            )
    await outbox.relay_once()  # the unpublished row is within its grace period: left alone
    assert [row.id for row in await rows(engine)] == [recent, unpublished]
