"""FastAPI wiring (the ``[fastapi]`` extra): a lifespan that owns the cache, and ``Annotated`` dependencies.

::

    def build_mediator(app: FastAPI, cache: HybridCache) -> Mediator[Any]:
        mediator = Mediator([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
        ...  # register handlers
        return mediator

    app = FastAPI(lifespan=hybridcache_lifespan(lambda: CacheSettings.from_json("appsettings.json"), build_mediator))
    app.state.session_factory = create_session_factory(engine)   # or configure(app, session_factory=...)

    @app.get("/things/{id}")
    async def get_thing(id: int, mediator: MediatorDep) -> ThingDto | None:
        return await mediator.send(GetThing(id))

Everything lives on ``app.state`` (``hybridcache``, ``mediator``, ``session_factory``), so an application with
its own lifespan can call :func:`configure` instead, and tests can enter ``app.router.lifespan_context(app)``.

:data:`UnitOfWorkDep` gives a route one unit of work for the HTTP request (rolled back unless committed). Pass it
as the scope of *commands* only: a cacheable query's handler may run in a single-flight task shared with other
requests and outliving this one, so query handlers should own their unit of work
(:func:`hybridcache.persistence.in_unit_of_work`). It lives in :mod:`hybridcache.persistence.fastapi` and is
re-exported here on first use, so this module (and the ``[fastapi]`` extra) works without SQLAlchemy installed.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request

from hybridcache.cache import HybridCache
from hybridcache.cqrs import Mediator
from hybridcache.settings import CacheSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from hybridcache.persistence.fastapi import UnitOfWorkDep, get_unit_of_work

__all__ = [
    "CacheDep",
    "MediatorDep",
    "UnitOfWorkDep",
    "configure",
    "get_cache",
    "get_mediator",
    "get_unit_of_work",
    "hybridcache_lifespan",
]

MediatorBuilder = Callable[[FastAPI, HybridCache], Mediator[Any]]


def hybridcache_lifespan(
    settings: CacheSettings | Callable[[], CacheSettings], build_mediator: MediatorBuilder | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)``: builds the :class:`HybridCache` from ``settings`` (a callable is
    called at start-up, so importing the app reads no file), starts it, then ``build_mediator(app, cache)`` if
    given; publishes both on ``app.state``; closes the cache at shutdown.

    Start-up fails as the cache does (bad configuration, unreachable Redis with ``abortConnect=true``).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings() if callable(settings) else settings
        async with HybridCache.from_settings(resolved) as cache:
            configure(app, cache=cache)
            if build_mediator is not None:
                configure(app, mediator=build_mediator(app, cache))
            try:
                yield
            finally:
                app.state.hybridcache = None
                app.state.mediator = None

    return lifespan


def configure(
    app: FastAPI,
    *,
    cache: HybridCache | None = None,
    mediator: Mediator[Any] | None = None,
    session_factory: Callable[[], AsyncSession] | None = None,
) -> None:
    """Publish resources for the dependencies below; arguments left ``None`` are not changed."""
    if cache is not None:
        app.state.hybridcache = cache
    if mediator is not None:
        app.state.mediator = mediator
    if session_factory is not None:
        app.state.session_factory = session_factory


def _state(request: Request, name: str, hint: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise RuntimeError(f"app.state.{name} is not set: {hint}")
    return value


def get_cache(request: Request) -> HybridCache:
    """The application's cache (set by :func:`hybridcache_lifespan` or :func:`configure`)."""
    cache: HybridCache = _state(request, "hybridcache", "use hybridcache_lifespan() or configure(app, cache=...)")
    return cache


def get_mediator(request: Request) -> Mediator[Any]:
    """The application's mediator (set by :func:`hybridcache_lifespan` or :func:`configure`)."""
    mediator: Mediator[Any] = _state(
        request, "mediator", "pass build_mediator to hybridcache_lifespan() or call configure(app, mediator=...)"
    )
    return mediator


CacheDep = Annotated[HybridCache, Depends(get_cache)]
MediatorDep = Annotated[Mediator[Any], Depends(get_mediator)]

_PERSISTENCE_NAMES = frozenset({"UnitOfWorkDep", "get_unit_of_work"})


def __getattr__(name: str) -> Any:
    """``UnitOfWorkDep`` and ``get_unit_of_work``, imported with SQLAlchemy only when first asked for."""
    if name in _PERSISTENCE_NAMES:
        return getattr(importlib.import_module("hybridcache.persistence.fastapi"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
