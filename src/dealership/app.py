"""The FastAPI application: routes, error bodies, metrics, and a lifespan that runs :func:`bootstrap`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dealership.api import dealership_router, operations_router
from dealership.bootstrap import ServiceConfig, Services, bootstrap
from dealership.metrics import CacheStatsCollector, HttpMetrics, PrometheusMiddleware
from dealership.routing import CaseInsensitivePaths
from hybridcache.fastapi import configure
from hybridcache.prometheus import CacheLatency

__all__ = ["AsciiJSONResponse", "create_app"]

logger = logging.getLogger("dealership")

_DESCRIPTION = """The reference service of **hybridcache**: the .NET seed's Dealership API, answered through a
two-level cache (L1 memory, L2 Redis) that a CQRS pipeline reads through and invalidates after writes.
Several instances may share one database and one Redis."""


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a 422 body echoes client input, which may hold lone surrogates that cannot
    be encoded as UTF-8 (Starlette's default rendering would fail on them with a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def _validation_failed(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})


async def _database_failed(_request: Request, exc: Exception) -> Response:
    # Connection-level failures (server down, database gone, pool exhausted) are the database being unavailable:
    # 503, worth retrying. Anything else the driver reports is a bug here: 500, with the traceback logged.
    unavailable = isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError) or type(exc) is DBAPIError
    if unavailable:
        logger.error("Database unavailable: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "The database is unavailable; try again shortly"})
    logger.error("Database operation failed", exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "Internal Server Error"})


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The dealership application for ``config`` (default: :class:`ServiceConfig`'s defaults). Its routes match
    paths case-insensitively, as ASP.NET Core's do (:class:`~dealership.routing.CaseInsensitivePaths`).

    Building the app opens nothing; its lifespan prepares the database, starts the cache and closes both at
    shutdown. Under ``httpx.ASGITransport`` (which does not run lifespans) enter
    ``app.router.lifespan_context(app)`` yourself.
    """
    config = config or ServiceConfig()
    registry = CollectorRegistry()
    latency = CacheLatency(registry)
    live: dict[str, Services] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with bootstrap(config) as services:
            configure(app, cache=services.cache, mediator=services.mediator, session_factory=services.session_factory)
            latency.attach(services.cache)
            app.state.services = live["services"] = services
            try:
                yield
            finally:
                live.clear()

    app = FastAPI(title="Dealership", version="1.0.0", description=_DESCRIPTION, lifespan=lifespan)
    app.state.metrics_registry = registry
    registry.register(CacheStatsCollector(lambda: live["services"].cache.stats() if live else None))
    app.add_middleware(PrometheusMiddleware, metrics=HttpMetrics(registry))
    # Added last, so outermost: paths match routes whatever their letter case (as in ASP.NET Core), and the
    # metrics middleware inside sees the scope the router fills in (its route template label).
    app.add_middleware(CaseInsensitivePaths, routes=app.router.routes)
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(DBAPIError, _database_failed)
    app.add_exception_handler(PoolTimeoutError, _database_failed)
    app.include_router(dealership_router)
    app.include_router(operations_router)
    return app
