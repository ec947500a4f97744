"""Repositories over SQLAlchemy 2 async: an untracked read side and a tracked write side (the seed's
``IReadRepository``/``IWriteRepository``).

Why the read side loads through a *separate, short-lived* session: SQLAlchemy has no ``AsNoTracking``;
every ORM load goes through a session's identity map. Expunging results from the caller's session would be
wrong whenever that session also tracks the same rows for a write (the identity map hands back *the same*
object, and expunging it would silently detach the writer's copy), and ``populate_existing`` still tracks (it
only overwrites). So each read opens a fresh ``AsyncSession`` on the caller's *connection*: same transaction,
same visibility (it reads what this transaction has flushed), a private identity map that is closed — every
object detached — before the results are returned. The caller's session never sees, tracks or flushes them.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.interfaces import ORMOption

__all__ = ["ReadRepository", "WriteRepository"]

T = TypeVar("T")


class ReadRepository(Generic[T]):
    """Query side for ``model``: results come back detached, never tracked by ``session``.

    Detached objects are safe after the session closes, but only what was loaded is there: eager-load the
    relationships you need (``repo.query.options(selectinload(Model.rel))``); touching an unloaded one raises
    ``DetachedInstanceError`` instead of doing hidden I/O. Reads see what the session's transaction has
    *flushed*, not pending unflushed changes (like EF's ``AsNoTracking``).
    """

    __slots__ = ("_model", "_session")

    def __init__(self, session: AsyncSession, model: type[T]) -> None:
        self._session = session
        self._model = model

    @property
    def model(self) -> type[T]:
        """The mapped class this repository reads."""
        return self._model

    @property
    def query(self) -> Select[T]:
        """``select(model)``, to compose with ``where``/``order_by``/``options`` and pass to :meth:`list`."""
        return select(self._model)

    async def get_by_id(self, id: Any, *options: ORMOption) -> T | None:
        """The row with primary key ``id`` (a tuple for composite keys), or ``None``; ``options`` are loader
        options such as ``selectinload(Model.rel)``."""
        async with self._reader() as reader:
            return await reader.get(self._model, id, options=options)

    async def list(self, statement: Select[T] | None = None) -> builtins.list[T]:
        """Every object ``statement`` (default: :attr:`query`) returns, in its order."""
        async with self._reader() as reader:
            result = await reader.execute(self.query if statement is None else statement)
            return builtins.list(result.unique().scalars().all())

    async def first(self, statement: Select[T] | None = None) -> T | None:
        """The first object ``statement`` returns, or ``None``."""
        async with self._reader() as reader:
            result = await reader.execute(self.query if statement is None else statement)
            return result.unique().scalars().first()

    async def count(self, statement: Select[T] | None = None) -> int:
        """How many rows ``statement`` (default: :attr:`query`) returns, ignoring its ordering."""
        base = self.query if statement is None else statement
        counted = select(func.count()).select_from(base.order_by(None).subquery())
        async with self._reader() as reader:
            return int((await reader.execute(counted)).scalar_one())

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[AsyncSession]:
        connection = await self._session.connection()
        # The reader never commits or rolls back; with "rollback_only" its close() leaves the caller's
        # transaction exactly as it was.
        reader = AsyncSession(
            bind=connection,
            join_transaction_mode="rollback_only",
            autoflush=False,
            expire_on_commit=False,
        )
        try:
            yield reader
        finally:
            await reader.close()


class WriteRepository(Generic[T]):
    """Command side for ``model``: objects are tracked by ``session``; the unit of work's ``commit()`` writes
    them. Nothing here commits."""

    __slots__ = ("_model", "_session")

    def __init__(self, session: AsyncSession, model: type[T]) -> None:
        self._session = session
        self._model = model

    @property
    def model(self) -> type[T]:
        """The mapped class this repository writes."""
        return self._model

    async def add(self, entity: T) -> None:
        """Track a new ``entity``: inserted at the next flush/commit, when its generated key appears."""
        self._session.add(entity)

    def update(self, entity: T) -> None:
        """Make sure ``entity``'s changes are written at commit. Objects loaded by :meth:`get_by_id` are
        tracked already; a detached one is re-attached (an error if the session already holds its row)."""
        if entity not in self._session:
            self._session.add(entity)

    async def remove(self, entity: T) -> None:
        """Delete ``entity`` at the next flush/commit (awaitable: cascades may need to load related rows)."""
        await self._session.delete(entity)

    async def get_by_id(self, id: Any, *options: ORMOption) -> T | None:
        """The tracked object with primary key ``id``, or ``None``."""
        return await self._session.get(self._model, id, options=options)
