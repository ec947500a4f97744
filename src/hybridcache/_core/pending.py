"""Invalidations this instance could not publish yet: the queue, its retry, and close()'s last attempt.

While anything is queued, other instances may still serve what it covers, so the queue is published as soon as
Redis answers: the retry probes Redis on its own backoff (50 ms doubling to 1 s), past an open circuit breaker,
and every L2 read flushes it first (through the breaker). Order is kept: an invalidation is published only after
the ones queued before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from hybridcache._redis.l2 import L2UnavailableError
from hybridcache._resilience import cancel_and_wait

__all__ = ["DEFAULT_CLOSE_FLUSH_TIMEOUT", "PendingInvalidations"]

logger = logging.getLogger("hybridcache")

# How long HybridCache.close() keeps trying to publish invalidations still queued (seconds).
DEFAULT_CLOSE_FLUSH_TIMEOUT = 2.0

# Publish (keys, fields), past the breaker or not; returns the message Redis published.
Publisher = Callable[[list[str], list[str], bool], Awaitable[dict[str, Any]]]
# Called with (keys, fields, message) after each queued invalidation was published.
Published = Callable[[list[str], list[str], dict[str, Any]], None]


class PendingInvalidations:
    """The owner of the queue of unpublished invalidations (exact keys, generation fields), oldest first."""

    __slots__ = ("_lock", "_on_published", "_publish", "_queue", "_retry_task")

    def __init__(self, publish: Publisher, on_published: Published) -> None:
        self._queue: deque[tuple[list[str], list[str]]] = deque()
        self._publish = publish
        self._on_published = on_published
        self._retry_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, full_keys: list[str], fields: list[str]) -> None:
        """Queue an invalidation Redis did not take, and make sure a retry is running."""
        self._queue.append((full_keys, fields))
        self.schedule_retry()

    def schedule_retry(self) -> None:
        """Start the retry if anything is queued and none is running (also after a resync: Redis is back)."""
        if self._queue and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.create_task(self._retry(), name="hybridcache-invalidation-retry")

    async def _retry(self) -> None:
        """Publish the queue, backing off while Redis stays unavailable, until none is left.

        The retries do not wait for the circuit breaker (``BreakDurationSeconds``, 60 s by default): every other
        instance serves what they cover until they are published, so they probe Redis on this backoff instead.
        """
        delay = 0.05
        while self._queue:
            if await self.flush(past_breaker=True):
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def flush(self, *, past_breaker: bool = False) -> bool:
        """Publish the queue in order; True when it is empty afterwards.

        L2 reads call this first while anything is queued: an entry that was invalidated during an outage must
        not be served (or used as a fail-safe fallback) just because Redis answers again before the retry ran.
        They call it through the breaker (an open circuit answers at once); the retry calls it past it.
        """
        async with self._lock:
            while self._queue:
                full_keys, fields = self._queue[0]
                try:
                    message = await self._publish(full_keys, fields, past_breaker)
                except L2UnavailableError:
                    return False
                self._queue.popleft()
                self._on_published(full_keys, fields, message)
                logger.info("Published queued invalidation event #%s", message["s"])
        return True

    async def close(self, flush_timeout: float) -> None:
        """Stop the retry, then keep publishing (past the breaker) until the queue is empty or ``flush_timeout``
        passed; log at ERROR, with their keys and fields, the invalidations that could not be published."""
        if self._retry_task is not None:
            await cancel_and_wait(self._retry_task)
            self._retry_task = None
        if not self._queue:
            return
        deadline = asyncio.get_running_loop().time() + flush_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._queue:
                    if await self.flush(past_breaker=True):
                        break
                    await asyncio.sleep(0.05)
        if self._queue:
            lost = [key for keys, _ in self._queue for key in keys]
            fields = sorted({field for _, queued in self._queue for field in queued})
            logger.error(
                "Closing with %d invalidation(s) not published within %gs; other instances may serve what they "
                "cover until it expires: keys %s, fields %s",
                len(self._queue),
                flush_timeout,
                lost,
                fields,
            )
