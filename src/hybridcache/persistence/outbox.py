"""The transactional outbox: a command's invalidations written in its own transaction, relayed by any instance.

An invalidation published after a commit is lost if the writer dies first, or cannot reach Redis before it stops
(its retry queue lives in memory). With the outbox, the invalidation is also a row of ``hybridcache_outbox``,
inserted in the transaction that changes the data, so the two commit or roll back together:

* **Fast path** (nothing changes for readers): after the commit the writer applies and publishes the invalidation
  at once, as without the outbox, then marks the row published. The marks are batched by a background task (one
  ``UPDATE`` per 100 ms window): a write costs one insert inside its transaction and at most one statement after
  it, off the request path.
* **Relay**: every instance polls for rows older than ``GracePeriodSeconds`` and still unpublished (a writer that
  crashed, was stopped, or could not reach Redis) and publishes them: PostgreSQL locks the rows it takes with
  ``FOR UPDATE SKIP LOCKED`` so instances share the work, SQLite takes the database write lock (``BEGIN
  IMMEDIATE``) so one relay runs at a time. While Redis refuses, the relay retries on its own backoff (50 ms
  doubling to ``PollIntervalSeconds``), past an open circuit breaker, so it publishes as soon as Redis answers.
  Publishing twice is harmless (an invalidation is idempotent), so a row may be published by its writer and a relay.
* **Visible**: each relay pass measures the unpublished rows (depth) and the oldest one's age (lag); they appear in
  ``cache.stats()`` and every exporter, and a WARNING is logged when the lag passes ``LagWarningSeconds``. Published
  rows are pruned after ``RetentionHours``.

Use it with the mediator (``CacheInvalidationBehavior(cache, outbox=outbox)``; a :class:`UnitOfWork` committing
inside the command's handler writes the row), or on your own session with :meth:`Outbox.record` and
:meth:`Outbox.publish`. Times are Unix seconds from the writing host's clock. docs/invalidation.md, "The outbox",
has the DDL and the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hybridcache._resilience import cancel_and_wait
from hybridcache.keys import namespace, normalize_prefix, validate_key
from hybridcache.settings import OutboxSettings

if TYPE_CHECKING:
    from hybridcache.cache import HybridCache
    from hybridcache.cqrs.markers import InvalidatesCache

__all__ = [
    "OUTBOX_TABLE",
    "Outbox",
    "OutboxRecord",
    "StagedInvalidation",
    "create_outbox_table",
    "outbox_metadata",
    "outbox_table",
    "staged_invalidation",
]

logger = logging.getLogger("hybridcache.outbox")

OUTBOX_TABLE = "hybridcache_outbox"

outbox_metadata = MetaData()
"""The metadata holding only :data:`outbox_table`: ``outbox_metadata.create_all`` (or :func:`create_outbox_table`)."""

outbox_table = Table(
    OUTBOX_TABLE,
    outbox_metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("namespace", String(255), nullable=False),  # {InstanceName}{ServiceName}:{CacheVersion}:
    Column("cache_keys", JSON, nullable=False),  # logical keys, a JSON array of strings
    Column("cache_prefixes", JSON, nullable=False),
    Column("cache_tags", JSON, nullable=False),
    Column("created_at", Double, nullable=False),  # Unix seconds, the writer's clock
    Column("attempts", Integer, nullable=False, server_default=text("0")),  # relay attempts
    Column("published_at", Double, nullable=True),  # Unix seconds; NULL until published
    Index(
        "ix_hybridcache_outbox_unpublished",
        "namespace",
        "created_at",
        postgresql_where=text("published_at IS NULL"),
        sqlite_where=text("published_at IS NULL"),
    ),
    Index("ix_hybridcache_outbox_published_at", "published_at"),
)

# The relay's backoff while Redis (or the database) refuses: from this, doubling up to the poll interval.
_FIRST_BACKOFF = 0.05
# Published rows are pruned at most this often (seconds).
_PRUNE_EVERY = 60.0
# Marks wait this long (seconds) so one UPDATE covers every write of the window, and so the statement runs after
# the invalidation's propagation rather than competing with it. Far below any sensible grace period.
_MARK_WINDOW = 0.1


async def create_outbox_table(connection: AsyncConnection) -> None:
    """Create ``hybridcache_outbox`` and its indexes if missing (for a service's schema preparation step)."""
    await connection.run_sync(outbox_metadata.create_all)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One row written by :meth:`Outbox.record`: what it invalidates, and its id once inserted."""

    id: int
    keys: tuple[str, ...]
    prefixes: tuple[str, ...]
    tags: tuple[str, ...]


Declarations = Callable[[], tuple[Sequence[str], Sequence[str], Sequence[str]]]


class StagedInvalidation:
    """A command's invalidations waiting for its unit of work to commit (see :meth:`Outbox.staging`).

    ``declarations`` is read when the transaction commits, so a handler may declare what it changed up to its
    commit. ``record`` is set once the row is committed; ``None`` means no unit of work wrote one.
    """

    __slots__ = ("_declarations", "_outbox", "record")

    def __init__(self, outbox: Outbox, declarations: Declarations) -> None:
        self._outbox = outbox
        self._declarations = declarations
        self.record: OutboxRecord | None = None

    async def write(self, session: AsyncSession | AsyncConnection) -> OutboxRecord | None:
        """Insert the row in ``session``'s transaction (nothing when already written or nothing is declared)."""
        if self.record is not None:
            return None
        keys, prefixes, tags = self._declarations()
        if not (keys or prefixes or tags):
            return None
        return await self._outbox.record(session, keys=keys, prefixes=prefixes, tags=tags)


_staged: ContextVar[StagedInvalidation | None] = ContextVar("hybridcache_outbox_staged", default=None)


def staged_invalidation() -> StagedInvalidation | None:
    """The invalidation staged by the command running in this context, if any (read by ``UnitOfWork.commit``)."""
    return _staged.get()


class Outbox:
    """The outbox of one cache namespace on one database: writes rows, publishes them, relays what is left.

    ``engine`` is the service's engine (the one its units of work use). ``settings`` defaults to the cache's
    ``Outbox`` section. :meth:`start` (or ``async with``) runs the relay and attaches the outbox's depth and lag
    to ``cache.stats()``; :meth:`close` stops it and writes the marks still pending. The table must exist
    (:func:`create_outbox_table`).
    """

    def __init__(self, cache: HybridCache, engine: AsyncEngine, settings: OutboxSettings | None = None) -> None:
        self._cache = cache
        self._engine = engine
        self.settings = settings or cache.settings.outbox
        cache_settings = cache.settings
        self.namespace = cache_settings.instance_name + namespace(
            cache_settings.service_name, cache_settings.cache_version
        )
        self._postgres = engine.dialect.name == "postgresql"
        self._to_mark: list[int] = []
        self._marker: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._lagging = False
        self._depth = 0
        self._lag_seconds = 0.0
        self.relayed = 0
        """Rows this instance's relay published (not counting its own fast path)."""

    # ------------------------------------------------------------------ writing and the fast path

    async def record(
        self,
        session: AsyncSession | AsyncConnection,
        *,
        keys: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> OutboxRecord:
        """Insert a row for these invalidations in ``session``'s (or the connection's) open transaction.

        Call it before committing the business rows; after the commit, :meth:`publish` the record (if you do
        not, or cannot, a relay publishes it after the grace period). Keys and prefixes are validated here, as
        the cache would, so a bad one fails the transaction instead of poisoning the outbox.
        """
        key_list = tuple(validate_key(k) for k in keys)
        prefix_list = tuple(normalize_prefix(p) for p in prefixes)
        tag_list = tuple(tags)
        inserted = await session.execute(
            insert(outbox_table).values(
                namespace=self.namespace,
                cache_keys=list(key_list),
                cache_prefixes=list(prefix_list),
                cache_tags=list(tag_list),
                created_at=time.time(),
                attempts=0,
            )
        )
        result = cast(CursorResult[Any], inserted)  # an INSERT's result is a cursor result
        row_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        if row_id is None:
            raise RuntimeError(f"the database returned no id for the {OUTBOX_TABLE} row")
        return OutboxRecord(int(row_id), key_list, prefix_list, tag_list)

    async def publish(self, record: OutboxRecord) -> bool:
        """Invalidate what ``record`` covers now (as ``cache.invalidate``) and, once Redis took it, mark the row
        published. False when Redis did not: the cache retries it, and the relay publishes the row anyway."""
        published = await self._cache.invalidate(keys=record.keys, prefixes=record.prefixes, tags=record.tags)
        if published:
            self._mark_published(record.id)
        return published

    @contextlib.contextmanager
    def staging(self, command: InvalidatesCache) -> Iterator[StagedInvalidation]:
        """While the block runs, a :class:`UnitOfWork` committing in this context writes ``command``'s
        invalidations (as declared at that commit) in its transaction. Used by ``CacheInvalidationBehavior``."""
        staged = StagedInvalidation(
            self,
            lambda: (
                command.cache_keys_to_invalidate,
                command.cache_prefixes_to_invalidate,
                command.cache_tags_to_invalidate,
            ),
        )
        token = _staged.set(staged)
        try:
            yield staged
        finally:
            _staged.reset(token)

    async def publish_staged(
        self, staged: StagedInvalidation, *, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]
    ) -> bool:
        """After the command returned: invalidate what it declared, and mark its row published if one was
        committed. A command whose handler committed no unit of work is invalidated as without the outbox."""
        published = await self._cache.invalidate(keys=keys, prefixes=prefixes, tags=tags)
        if staged.record is None:
            logger.debug("No outbox row was committed for this command; its invalidation is not durable")
        elif published:
            self._mark_published(staged.record.id)
        return published

    def _mark_published(self, row_id: int) -> None:
        self._to_mark.append(row_id)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._write_marks(), name="hybridcache-outbox-marks")

    async def _write_marks(self) -> None:
        """Mark the queued rows published, one ``UPDATE`` per window for all that queued up, until none is left."""
        while self._to_mark:
            await asyncio.sleep(_MARK_WINDOW)
            ids, self._to_mark = self._to_mark, []
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(
                        update(outbox_table).where(outbox_table.c.id.in_(ids)).values(published_at=time.time())
                    )
            except (SQLAlchemyError, OSError) as exc:
                logger.warning(
                    "Could not mark %d outbox row(s) published (%s); the relay will publish them again",
                    len(ids),
                    exc,
                )

    # ------------------------------------------------------------------ the relay

    @property
    def depth(self) -> int:
        """Rows of this namespace not yet published, as the relay last measured them."""
        return self._depth

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest row not yet published (0 when none), as the relay last measured it."""
        return self._lag_seconds

    async def relay_once(self) -> int | None:
        """One relay pass: measure, publish up to ``BatchSize`` rows past the grace period, prune now and then.

        Returns how many rows it published, or ``None`` when Redis did not take them (they stay for the next pass).
        """
        now = time.time()
        oldest = await self._measure(now)
        published = 0
        if oldest is not None and oldest <= now - self.settings.grace_period_seconds:
            outcome = await self._publish_due(now - self.settings.grace_period_seconds)
            if outcome is None:
                return None
            published = outcome
            self.relayed += published
        if now - self._last_prune >= _PRUNE_EVERY:
            await self._prune(now)
        return published

    async def _measure(self, now: float) -> float | None:
        """Update depth and lag (and the lag warning); the oldest unpublished row's creation time, if any."""
        c = outbox_table.c
        async with self._engine.connect() as connection:
            depth, oldest = (
                await connection.execute(
                    select(func.count(), func.min(c.created_at)).where(
                        c.namespace == self.namespace, c.published_at.is_(None)
                    )
                )
            ).one()
        self._depth = int(depth)
        self._lag_seconds = max(0.0, now - float(oldest)) if oldest is not None else 0.0
        threshold = self.settings.lag_warning_seconds
        if self._lag_seconds > threshold and not self._lagging:
            self._lagging = True
            logger.warning(
                "Outbox lag %.1fs exceeds %gs: %d invalidation(s) not published yet (is Redis reachable?)",
                self._lag_seconds,
                threshold,
                self._depth,
            )
        elif self._lagging and self._lag_seconds <= threshold:
            self._lagging = False
            logger.info("Outbox lag back to %.1fs (%d unpublished)", self._lag_seconds, self._depth)
        return None if oldest is None else float(oldest)

    async def _publish_due(self, cutoff: float) -> int | None:
        """Take up to ``BatchSize`` due rows (rows others hold are skipped), publish them as one invalidation,
        and record the outcome, all in one transaction."""
        c = outbox_table.c
        due = (
            select(c.id, c.cache_keys, c.cache_prefixes, c.cache_tags)
            .where(c.namespace == self.namespace, c.published_at.is_(None), c.created_at <= cutoff)
            .order_by(c.id)
            .limit(self.settings.batch_size)
        )
        async with self._engine.connect() as connection:
            if self._postgres:
                due = due.with_for_update(skip_locked=True)
            else:
                # SQLite has no row locks: the write lock, taken now, makes this relay the only one until commit.
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            rows = (await connection.execute(due)).all()
            if not rows:
                await connection.commit()
                return 0
            published = await self._cache.invalidate(
                keys=_union(row.cache_keys for row in rows),
                prefixes=_union(row.cache_prefixes for row in rows),
                tags=_union(row.cache_tags for row in rows),
                queue=False,
            )
            ids = [row.id for row in rows]
            await connection.execute(
                update(outbox_table)
                .where(c.id.in_(ids))
                .values(attempts=c.attempts + 1, published_at=time.time() if published else None)
            )
            await connection.commit()
        if not published:
            return None
        logger.info(
            "Outbox relay published %d row(s) left unpublished for %gs", len(ids), self.settings.grace_period_seconds
        )
        return len(ids)

    async def _prune(self, now: float) -> None:
        c = outbox_table.c
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(outbox_table).where(
                    c.namespace == self.namespace, c.published_at < now - self.settings.retention_hours * 3600
                )
            )
        self._last_prune = now

    async def _run_relay(self) -> None:
        poll = self.settings.poll_interval_seconds
        backoff = _FIRST_BACKOFF
        while True:
            try:
                outcome = await self.relay_once()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("Outbox relay pass failed (%s: %s); retrying", exc.__class__.__name__, exc)
                outcome = None
            if outcome is None:
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, poll)
                continue
            backoff = _FIRST_BACKOFF
            if outcome < self.settings.batch_size:
                await asyncio.sleep(poll * (0.9 + 0.2 * random.random()))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the relay and report depth and lag in ``cache.stats()``. Idempotent."""
        if self._relay is None:
            self._cache.attach_outbox(self)
            self._relay = asyncio.create_task(self._run_relay(), name="hybridcache-outbox-relay")

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the relay, then write the marks still queued (within ``timeout`` seconds; rows left unmarked
        are published again by a relay, which is harmless)."""
        if self._relay is not None:
            await cancel_and_wait(self._relay)
            self._relay = None
            self._cache.attach_outbox(None)
        if self._marker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._marker), timeout)
            await cancel_and_wait(self._marker)
            self._marker = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _union(lists: Iterable[Sequence[str]]) -> list[str]:
    """Every string of ``lists`` once, in first-seen order."""
    return list(dict.fromkeys(item for items in lists for item in items))
