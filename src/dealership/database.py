"""Engine construction and first-start preparation (schema + seed) for SQLite and PostgreSQL.

Several service instances may start at once against one database (the multi-instance demo), so preparation
is serialised across processes: PostgreSQL takes a transaction-scoped advisory lock, SQLite opens the
transaction with ``BEGIN IMMEDIATE`` (the database write lock). Whoever comes second finds the tables seeded
and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from dealership.models import Base
from dealership.seed import DEFAULT_RANDOM_SEED, DEFAULT_SEED_COUNT, seed_database
from hybridcache.persistence import create_outbox_table

__all__ = ["DEFAULT_DATABASE_URL", "create_engine", "prepare_database", "redact"]

logger = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/dealership.db"

# Seconds a SQLite connection waits for another process's write lock before failing with "database is locked".
_SQLITE_BUSY_TIMEOUT = 30.0
# Any constant shared by every instance: the PostgreSQL advisory lock guarding schema creation and seeding.
_PG_PREPARE_LOCK = 0x6465616C  # "deal"


def redact(url: str) -> str:
    """The URL with any password hidden, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(database_url: str, *, begin_immediate: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``database_url`` (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``).

    For a SQLite file the parent folder is created, foreign keys are enforced and a busy timeout lets several
    processes share the file. ``begin_immediate`` makes every transaction take the write lock at ``BEGIN``
    (used for preparation only). Nothing connects until the engine is first used.
    """
    url = make_url(database_url)
    if not _is_sqlite(url):
        return create_async_engine(url, pool_pre_ping=True, **kwargs)

    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT}, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if begin_immediate:
            # The driver's own implicit BEGIN would be deferred; take control of BEGIN instead.
            dbapi_connection.isolation_level = None

    if begin_immediate:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _lock_for_preparation(connection: AsyncConnection) -> None:
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_PREPARE_LOCK})


async def _enable_wal(database_url: str) -> None:
    # WAL lets readers in one process proceed while another writes; the mode persists in the file. It cannot
    # change inside a transaction, hence a plain engine (whose driver does not BEGIN before a PRAGMA). Switching
    # needs the file to itself, and SQLite answers "database is locked" at once (its busy timeout does not apply)
    # while another process is switching or seeding: retry, within the busy timeout, until the file is in WAL.
    engine = create_engine(database_url)
    deadline = asyncio.get_running_loop().time() + _SQLITE_BUSY_TIMEOUT
    delay = 0.01
    try:
        async with engine.connect() as connection:
            while True:
                try:
                    mode = (await connection.exec_driver_sql("PRAGMA journal_mode=WAL")).scalar()
                except OperationalError as exc:
                    if "locked" not in str(exc) or asyncio.get_running_loop().time() + delay > deadline:
                        raise
                    mode = None
                if mode is not None and str(mode).lower() == "wal":
                    return
                if asyncio.get_running_loop().time() + delay > deadline:
                    logger.warning("SQLite kept journal mode %s (WAL could not be enabled); continuing", mode)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
    finally:
        await engine.dispose()


async def prepare_database(
    database_url: str, seed_count: int = DEFAULT_SEED_COUNT, random_seed: int = DEFAULT_RANDOM_SEED
) -> bool:
    """Create missing tables (the service's and the cache's outbox) and seed them when empty; return whether
    this call seeded.

    Safe to call from several processes at once. Uses its own short-lived engine so the service's pool never
    carries the preparation's connection settings.
    """
    url = make_url(database_url)
    if _is_sqlite(url) and _sqlite_file(url) is not None:
        await _enable_wal(database_url)
    engine = create_engine(database_url, begin_immediate=_is_sqlite(url))
    try:
        async with engine.begin() as connection:
            await _lock_for_preparation(connection)
            await connection.run_sync(Base.metadata.create_all)
            await create_outbox_table(connection)  # created whether or not Outbox:Enabled, so it can be turned on
            seeded = await seed_database(connection, seed_count, random_seed)
    finally:
        await engine.dispose()
    if seeded:
        logger.info("Seeded %s with %d dealerships", redact(database_url), seed_count)
    return seeded
