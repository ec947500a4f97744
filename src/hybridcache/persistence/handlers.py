"""Handlers that own their unit of work for exactly one run.

Why a query handler should not borrow the HTTP request's unit of work: the cache runs a query's handler at most
once per key however many requests want it (single-flight), as a task that outlives any one caller — when the
request that started it is cancelled (client gone, timeout) the run goes on for the others, and a session owned
by that request would be closed under it. A handler built by :func:`in_unit_of_work` opens its own unit of work
when the run starts and closes it when the run ends, whoever is waiting; on a cache hit it opens nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from hybridcache.cqrs.requests import Request, RequestHandler
from hybridcache.persistence.unit_of_work import UnitOfWork

__all__ = ["InUnitOfWork", "in_unit_of_work"]

ReqT = TypeVar("ReqT", bound=Request[Any])
R = TypeVar("R")


class InUnitOfWork(RequestHandler[ReqT, R]):
    """Runs ``build(uow).handle(request)`` inside a fresh :class:`UnitOfWork` that lives exactly as long as the
    run. Whatever the built handler did not commit is rolled back."""

    __slots__ = ("_build", "_session_factory")

    def __init__(
        self, session_factory: Callable[[], AsyncSession], build: Callable[[UnitOfWork], RequestHandler[ReqT, R]]
    ) -> None:
        self._session_factory = session_factory
        self._build = build

    async def handle(self, request: ReqT) -> R:
        async with UnitOfWork(self._session_factory) as uow:
            return await self._build(uow).handle(request)


def in_unit_of_work(
    session_factory: Callable[[], AsyncSession], build: Callable[[UnitOfWork], RequestHandler[ReqT, R]]
) -> Callable[[object], RequestHandler[ReqT, R]]:
    """A handler factory for ``Mediator.register`` that ignores the send's scope and gives each handler run its
    own unit of work::

        mediator.register(GetById, in_unit_of_work(sessions, lambda uow: GetByIdHandler(uow.reads(Row))))
    """
    handler = InUnitOfWork(session_factory, build)  # stateless: one instance serves every run
    return lambda _scope: handler
