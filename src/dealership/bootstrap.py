"""Composition root: builds the engine, the cache and the mediator from configuration. Nothing connects at
import; :func:`bootstrap` is the one place that opens (and, on exit, closes) every resource.

Query and command handlers each run in their own :class:`UnitOfWork` (``in_unit_of_work``), opened when the
pipeline reaches the handler and closed when it returns. The session belongs to the *handler run*, not to an HTTP
request: the cache's single-flight shares one run among every concurrent request for the same key, and a session
owned by one of those requests could be closed under the others. On a cache hit no session is opened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dealership.commands import CreateDealership, DeleteDealership, UpdateDealership
from dealership.database import DEFAULT_DATABASE_URL, create_engine, prepare_database, redact
from dealership.handlers import (
    CreateDealershipHandler,
    DeleteDealershipHandler,
    GetDealershipByIdHandler,
    GetDealershipsListHandler,
    SearchDealershipsHandler,
    UpdateDealershipHandler,
)
from dealership.models import Dealership, ZipCode
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from dealership.seed import DEFAULT_SEED_COUNT
from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import CacheInvalidationBehavior, CachingBehavior, Mediator, Request, RequestHandler
from hybridcache.persistence import Outbox, UnitOfWork, create_session_factory, in_unit_of_work

__all__ = [
    "APPSETTINGS_PATH",
    "ServiceConfig",
    "Services",
    "bootstrap",
    "build_mediator",
    "load_cache_settings",
]

logger = logging.getLogger("dealership")

#: The service's cache configuration file (section ``TheTechLoopCache``), shipped beside the package modules.
APPSETTINGS_PATH = Path(__file__).with_name("appsettings.json")

ReqT = TypeVar("ReqT", bound=Request[Any])


def load_cache_settings(path: str | Path = APPSETTINGS_PATH, environ: Mapping[str, str] | None = None) -> CacheSettings:
    """``TheTechLoopCache`` from ``path`` with ``TheTechLoopCache__…`` environment overrides
    (``environ`` defaults to ``os.environ``). A missing file means defaults plus environment."""
    return CacheSettings.from_json(path, environ=environ, missing_ok=True)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service is configured with. ``cache_settings`` ``None`` means :func:`load_cache_settings`
    at start-up (not at construction, so building a config never reads files)."""

    database_url: str = DEFAULT_DATABASE_URL
    seed_count: int = DEFAULT_SEED_COUNT
    cache_settings: CacheSettings | None = None
    appsettings_path: Path = APPSETTINGS_PATH


@dataclass(frozen=True)
class Services:
    """The live resources of one running service, owned by :func:`bootstrap`."""

    config: ServiceConfig
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    cache: HybridCache
    mediator: Mediator[None]
    outbox: Outbox | None = None


def build_mediator(
    cache: HybridCache, session_factory: Callable[[], AsyncSession], outbox: Outbox | None = None
) -> Mediator[None]:
    """The mediator with the caching and invalidation behaviors and every dealership handler registered; with an
    ``outbox``, each command's invalidations are written in its transaction."""
    mediator: Mediator[None] = Mediator([CachingBehavior(cache), CacheInvalidationBehavior(cache, outbox=outbox)])

    def register(request_type: type[ReqT], build: Callable[[UnitOfWork], RequestHandler[ReqT, Any]]) -> None:
        mediator.register(request_type, in_unit_of_work(session_factory, build))

    register(GetDealershipById, lambda uow: GetDealershipByIdHandler(uow.reads(Dealership)))
    register(GetDealershipsList, lambda uow: GetDealershipsListHandler(uow.reads(Dealership)))
    register(SearchDealerships, lambda uow: SearchDealershipsHandler(uow.reads(Dealership)))
    register(
        CreateDealership,
        lambda uow: CreateDealershipHandler(uow.writes(Dealership), uow.reads(ZipCode), uow.reads(Dealership), uow),
    )
    register(UpdateDealership, lambda uow: UpdateDealershipHandler(uow.writes(Dealership), uow))
    register(DeleteDealership, lambda uow: DeleteDealershipHandler(uow.writes(Dealership), uow))
    return mediator


@asynccontextmanager
async def bootstrap(config: ServiceConfig) -> AsyncIterator[Services]:
    """Prepare the database (schema, first-start seed), start the cache (and, when ``Outbox:Enabled``, the
    outbox relay), build the mediator; yield them all, then close them and dispose of the engine.

    An unreachable Redis does not stop the start-up (unless its configuration says ``abortConnect=true``): the
    cache logs it once and serves from L1 and the database until Redis answers.
    """
    settings = config.cache_settings or load_cache_settings(config.appsettings_path)
    await prepare_database(config.database_url, config.seed_count)
    engine = create_engine(config.database_url)
    try:
        session_factory = create_session_factory(engine)
        async with HybridCache.from_settings(settings) as cache, contextlib.AsyncExitStack() as stack:
            outbox = None
            if settings.outbox.enabled:
                outbox = await stack.enter_async_context(Outbox(cache, engine))
            health = cache.health()
            logger.info(
                "dealership ready: database %s, cache %s (redis %s, circuit %s, outbox %s)",
                redact(config.database_url),
                settings.service_name,
                health["redis"],
                health["circuit"],
                "on" if outbox is not None else "off",
            )
            yield Services(
                config=config,
                engine=engine,
                session_factory=session_factory,
                cache=cache,
                mediator=build_mediator(cache, session_factory, outbox),
                outbox=outbox,
            )
    finally:
        await engine.dispose()
