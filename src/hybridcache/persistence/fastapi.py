"""The unit of work as a FastAPI dependency (needs the ``[sqlalchemy]`` and ``[fastapi]`` extras).

Kept apart from :mod:`hybridcache.fastapi` so that module imports without SQLAlchemy; it re-exports both names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from hybridcache.persistence.unit_of_work import UnitOfWork

__all__ = ["UnitOfWorkDep", "get_unit_of_work"]


async def get_unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    """A unit of work for this HTTP request, over ``app.state.session_factory``: commit it explicitly (command
    handlers do); anything uncommitted is rolled back when the request is done."""
    session_factory: Callable[[], AsyncSession] | None = getattr(request.app.state, "session_factory", None)
    if session_factory is None:
        raise RuntimeError(
            "app.state.session_factory is not set: call configure(app, session_factory=create_session_factory(engine))"
        )
    async with UnitOfWork(session_factory) as uow:
        yield uow


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work)]
