"""hybridcache.fastapi: the lifespan owns the cache and the mediator; the dependencies hand them to routes; the
per-request unit of work commits only when asked. An L1-only cache and a SQLite file: no servers needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import Cacheable, CachingBehavior, Mediator, Query, RequestHandler
from hybridcache.fastapi import CacheDep, MediatorDep, UnitOfWorkDep, configure, hybridcache_lifespan
from hybridcache.persistence import create_session_factory


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


@dataclass(frozen=True)
class Square(Query[int], Cacheable):
    n: int
    cache_duration: ClassVar[timedelta] = timedelta(minutes=1)

    @property
    def cache_key(self) -> str:
        return f"Square:{self.n}"


class SquareHandler(RequestHandler[Square, int]):
    runs = 0

    async def handle(self, request: Square) -> int:
        SquareHandler.runs += 1
        return request.n * request.n


def build_mediator(app: FastAPI, cache: HybridCache) -> Mediator[Any]:
    mediator = Mediator([CachingBehavior(cache)])
    mediator.register(Square, lambda _: SquareHandler())
    return mediator


def create_app(tmp_path: Path) -> FastAPI:
    settings_loaded: list[CacheSettings] = []

    def load_settings() -> CacheSettings:
        settings_loaded.append(CacheSettings(service_name="api-test"))
        return settings_loaded[-1]

    app = FastAPI(lifespan=hybridcache_lifespan(load_settings, build_mediator))
    app.state.settings_loaded = settings_loaded
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    app.state.engine = engine
    configure(app, session_factory=create_session_factory(engine))

    @app.get("/square/{n}")
    async def square(n: int, mediator: MediatorDep, cache: CacheDep) -> dict[str, int]:
        return {"value": await mediator.send(Square(n)), "handlerRuns": cache.stats().handler_runs}

    @app.post("/notes/{text}")
    async def add_note(text: str, uow: UnitOfWorkDep, commit: bool = True) -> dict[str, int]:
        note = Note(text=text)
        await uow.writes(Note).add(note)
        await uow.flush()
        if text == "boom":
            raise HTTPException(status_code=409, detail="refused")
        if commit:
            await uow.commit()
        return {"id": note.id}

    @app.get("/notes")
    async def notes(uow: UnitOfWorkDep) -> list[str]:
        return [n.text for n in await uow.reads(Note).list(uow.reads(Note).query.order_by(Note.id))]

    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    SquareHandler.runs = 0
    app = create_app(tmp_path)
    async with app.state.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        ):
            yield app, http
    finally:
        await app.state.engine.dispose()


async def test_lifespan_builds_the_cache_and_mediator_and_routes_read_through_it(
    client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, http = client
    assert len(app.state.settings_loaded) == 1
    assert isinstance(app.state.hybridcache, HybridCache)

    assert (await http.get("/square/12")).json() == {"value": 144, "handlerRuns": 1}
    assert (await http.get("/square/12")).json() == {"value": 144, "handlerRuns": 1}
    assert SquareHandler.runs == 1


async def test_the_lifespan_unpublishes_on_shutdown(tmp_path: Path) -> None:
    app = create_app(tmp_path)
    async with app.router.lifespan_context(app):
        cache = app.state.hybridcache
    assert app.state.hybridcache is None
    assert app.state.mediator is None
    assert cache.health()["redis"] == "disabled"
    await app.state.engine.dispose()


async def test_the_request_unit_of_work_commits_only_when_asked(client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, http = client
    assert (await http.post("/notes/kept")).status_code == 200
    assert (await http.post("/notes/dropped", params={"commit": "false"})).status_code == 200
    assert (await http.post("/notes/boom")).status_code == 409
    assert (await http.get("/notes")).json() == ["kept"]


async def test_dependencies_explain_what_is_missing() -> None:
    app = FastAPI()

    @app.get("/m")
    async def uses_mediator(mediator: MediatorDep) -> None:
        return None

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with pytest.raises(RuntimeError, match=r"app.state.mediator is not set: pass build_mediator"):
            await http.get("/m")
