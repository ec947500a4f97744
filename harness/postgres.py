"""Throwaway PostgreSQL databases on the local server (127.0.0.1:5432, user ``postgres``, trust auth).

Each :func:`postgres_database` creates ``hc_test_<random>``, yields its SQLAlchemy URL, and drops it
afterwards (``WITH (FORCE)``, so connections a test leaked cannot keep it alive). The system server itself is
never touched beyond creating and dropping these databases.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

__all__ = [
    "PG_HOST",
    "PG_PORT",
    "PG_USER",
    "PostgresUnavailableError",
    "ThrowawayDatabase",
    "check_postgres",
    "check_postgres_sync",
    "postgres_database",
]

PG_HOST = os.environ.get("HC_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("HC_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("HC_TEST_PG_USER", "postgres")
_CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server for tests is not reachable (or refused our user)."""


async def _admin_connection() -> Any:
    try:
        return await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=_CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresUnavailableError(
            f"PostgreSQL at {PG_USER}@{PG_HOST}:{PG_PORT} is not reachable: {exc!r}"
        ) from exc


async def check_postgres() -> None:
    """Raise :class:`PostgresUnavailableError` unless the test server accepts a connection and a query."""
    conn = await _admin_connection()
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def _run_in_fresh_loop(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on its own loop in its own thread (safe even inside a running loop)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        async def main() -> T:
            return await factory()

        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # handed back to the calling thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="hc-test-postgres", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def check_postgres_sync() -> None:
    """Blocking twin of :func:`check_postgres`."""
    _run_in_fresh_loop(check_postgres)


class ThrowawayDatabase:
    """A database that exists only inside ``async with`` / ``with``; the target is its SQLAlchemy URL."""

    def __init__(self, *, prefix: str = "hc_test_") -> None:
        self.name = f"{prefix}{secrets.token_hex(6)}"
        self.url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"
        self.dsn = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"  # for asyncpg.connect

    async def create(self) -> str:
        conn = await _admin_connection()
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        return self.url

    async def drop(self) -> None:
        conn = await _admin_connection()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def exists(self) -> bool:
        conn = await _admin_connection()
        try:
            found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.name)
        finally:
            await conn.close()
        return bool(found == 1)

    async def __aenter__(self) -> str:
        return await self.create()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drop()

    def __enter__(self) -> str:
        return _run_in_fresh_loop(self.create)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _run_in_fresh_loop(self.drop)


def postgres_database(*, prefix: str = "hc_test_") -> ThrowawayDatabase:
    """``async with postgres_database() as url:`` (or plain ``with``) — a fresh, empty database named
    ``hc_test_<random>``; ``url`` is ``postgresql+asyncpg://postgres@127.0.0.1:5432/hc_test_<random>``.
    Raises :class:`PostgresUnavailableError` if the server is not reachable."""
    return ThrowawayDatabase(prefix=prefix)
