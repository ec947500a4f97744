"""Unit of work: one transaction per business operation, committed explicitly, rolled back otherwise
(cosmicpython's ``AbstractUnitOfWork``, over SQLAlchemy 2 async)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hybridcache.persistence.outbox import staged_invalidation
from hybridcache.persistence.repositories import ReadRepository, WriteRepository

__all__ = ["AbstractUnitOfWork", "UnitOfWork", "create_session_factory"]

T = TypeVar("T")


class AbstractUnitOfWork(ABC):
    """``async with uow: ...; written = await uow.commit()``.

    Template methods: subclasses implement ``_commit`` and ``_rollback`` (and may hook ``_begin``/``_close``);
    the public protocol — explicit commit, roll back on leaving the block unless committed or on an exception,
    always close — lives here once, so fakes for unit tests get it for free.
    """

    committed: bool = False
    """Whether ``commit()`` succeeded since the block was entered."""

    async def __aenter__(self) -> Self:
        self.committed = False
        await self._begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is not None or not self.committed:
                await self.rollback()
        finally:
            await self._close()

    async def commit(self) -> int:
        """Make everything done in this unit of work durable. Call it once the operation succeeded.

        Returns the number of rows (state entries) the commit wrote — inserted, updated or deleted — as the
        seed's ``SaveChangesAsync`` does; what counts as a row is up to ``_commit``.
        """
        written = await self._commit()
        self.committed = True
        return written

    async def rollback(self) -> None:
        """Discard everything not yet committed."""
        await self._rollback()

    async def _begin(self) -> None:
        """Hook: acquire resources on entry."""

    async def _close(self) -> None:
        """Hook: release resources on exit (runs after any rollback, even when it failed)."""

    @abstractmethod
    async def _commit(self) -> int:
        """Make the changes durable; return how many rows (entries) that wrote."""

    @abstractmethod
    async def _rollback(self) -> None: ...


class UnitOfWork(AbstractUnitOfWork):
    """A unit of work over one ``AsyncSession`` from ``session_factory``, created on entry, closed on exit.

    Inside a command whose invalidations an :class:`~hybridcache.persistence.Outbox` stages (the mediator's
    ``CacheInvalidationBehavior`` with an outbox), :meth:`commit` inserts them in the same transaction.

    The session connects lazily, so a request answered from the cache never touches the database. One instance
    per operation (per HTTP request); not reentrant. Use a factory with ``expire_on_commit=False``
    (:func:`create_session_factory`) so objects stay readable after ``commit()`` without implicit I/O.
    """

    def __init__(self, session_factory: Callable[[], AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """This unit of work's session; ``RuntimeError`` outside ``async with``."""
        if self._session is None:
            raise RuntimeError("UnitOfWork.session is only available inside `async with uow:`")
        return self._session

    def reads(self, model: type[T]) -> ReadRepository[T]:
        """An untracked :class:`ReadRepository` for ``model`` on this unit of work's transaction."""
        return ReadRepository(self.session, model)

    def writes(self, model: type[T]) -> WriteRepository[T]:
        """A tracked :class:`WriteRepository` for ``model`` on this unit of work's session."""
        return WriteRepository(self.session, model)

    async def flush(self) -> None:
        """Send pending changes to the database without committing (e.g. to obtain generated keys)."""
        await self.session.flush()

    async def _begin(self) -> None:
        if self._session is not None:
            raise RuntimeError("UnitOfWork is not reentrant; create one per operation")
        self._session = self._session_factory()

    async def _commit(self) -> int:
        written = _pending_writes(self.session)
        # Inside a command staged by an Outbox: its invalidations commit (or roll back) with the business rows.
        staged = staged_invalidation()
        record = await staged.write(self.session) if staged is not None else None
        await self.session.commit()
        if staged is not None and record is not None:
            staged.record = record
        return written

    async def _rollback(self) -> None:
        await self.session.rollback()

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _pending_writes(session: AsyncSession) -> int:
    """The rows ``session``'s next flush will write: objects pending insert (``session.new``, including those
    a cascade added), objects marked for deletion (``session.deleted``), and the objects in ``session.dirty``
    whose column values really changed (``session.is_modified``: an attribute set to its current value, or an
    object re-attached unchanged, writes nothing).

    Counted before that flush, so rows already flushed earlier in the transaction (``flush()``, or autoflush
    before a query) and rows a database-side cascade touches are not included.
    """
    modified = sum(1 for entity in session.dirty if session.is_modified(entity))
    return len(session.new) + modified + len(session.deleted)


def create_session_factory(engine: AsyncEngine, **options: Any) -> async_sessionmaker[AsyncSession]:
    """A session factory for :class:`UnitOfWork`: ``expire_on_commit=False`` unless overridden, because after
    a commit an expired attribute could only be reloaded with implicit I/O, which asyncio sessions forbid."""
    options.setdefault("expire_on_commit", False)
    return async_sessionmaker(engine, **options)
