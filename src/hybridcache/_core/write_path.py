"""The write path of :class:`~hybridcache.cache.HybridCache`: invalidations, their queue, and the backplane's calls.

An invalidation is applied here first (L1 entries dropped, the in-process log recorded, in-flight loads of covered
keys detached), then published by one Redis script (keys removed, prefix/tag generations bumped, a numbered
message published), then applied here once more — a read racing the script may have fetched the old value. When
Redis is unreachable the invalidation is queued and retried with backoff; no L2 entry is served here until the
queue is empty. Messages from other instances and (re)subscriptions arrive through the callbacks below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

from hybridcache._core.state import CacheState
from hybridcache._redis.l2 import L2UnavailableError
from hybridcache.keys import SEPARATOR

logger = logging.getLogger("hybridcache")

# How long HybridCache.close() keeps trying to publish invalidations still queued (seconds).
DEFAULT_CLOSE_FLUSH_TIMEOUT = 2.0


def _covers(full_prefix: str, full_key: str) -> bool:
    """Whether ``full_prefix`` covers ``full_key`` at ``:`` boundaries (the namespace itself ends with ``:``)."""
    if full_prefix.endswith(SEPARATOR):
        return full_key.startswith(full_prefix)
    return full_key == full_prefix or full_key.startswith(full_prefix + SEPARATOR)


def _sent_at(message: dict[str, Any]) -> float | None:
    """The sender's wall time in an invalidation message (absent from older senders, or unreadable: None)."""
    try:
        return float(message["t"])
    except (KeyError, TypeError, ValueError):
        return None


class WritePath(CacheState):
    """The invalidation side of the cache (a mixin of :class:`~hybridcache.cache.HybridCache`)."""

    async def _invalidate(
        self, full_keys: list[str], prefix_list: list[str], tag_list: list[str], fields: list[str]
    ) -> None:
        self._apply_locally(full_keys, prefix_list, tag_list, removed_at=self._wall())
        for full_key in full_keys:
            logger.info("Removed key: %s", full_key)
        for prefix in prefix_list:
            logger.info("Removed prefix: %s%s*", self._namespace, prefix)
        for tag in tag_list:
            logger.info("Removed tag: %s", tag)
        if self._l2 is None:
            self._table.bump_locally(fields)
            return
        await self._publish(full_keys, fields)

    async def _publish(self, full_keys: list[str], fields: list[str]) -> bool:
        assert self._l2 is not None
        try:
            message = await self._l2.invalidate(full_keys, fields, sender=self.instance_id, sent_at=self._wall())
        except L2UnavailableError as exc:
            self.counters.invalidation_failures += 1
            self._pending.append((full_keys, fields))
            logger.error(
                "Invalidation event not published (%s); queued for retry (%d pending)", exc, len(self._pending)
            )
            self._drop_l1_by_fields(fields)
            self._schedule_retry()
            return False
        self._after_publish(full_keys, fields, message)
        logger.info("Published invalidation event #%s", message["s"])
        return True

    def _apply_locally(
        self,
        full_keys: Sequence[str],
        prefixes: Sequence[str],
        tags: Sequence[str],
        *,
        removed_at: float | None = None,
    ) -> None:
        """Stop serving what an invalidation covers, here and now.

        Besides dropping L1 entries and recording the invalidation (so in-flight factories do not store their
        results), it detaches in-flight loads of covered keys: a caller arriving after the invalidation must start
        a fresh load rather than share one that began before it. ``removed_at`` (the wall time of the removal at
        its source: this instance's first apply, or a message's ``t``) is remembered for the exact keys, so an L2
        entry written before it is refused if Redis loses the ``DEL`` (``_generations.RecentRemovals``).
        """
        full_prefixes = [self._namespace + p for p in prefixes]
        self._log.record(full_keys, full_prefixes, tags)
        if full_keys and removed_at is not None:
            self._recent_removals.record(full_keys, removed_at)
        if self._l1 is not None:
            for full_key in full_keys:
                self._l1.remove(full_key)
        flights, leads = self._flights, self._leads
        if len(flights) or leads:
            for full_key in full_keys:
                flights.forget(full_key)
                leads.pop(full_key, None)
            if tags:  # in-flight loads do not say their tags: be conservative
                flights.forget_where(lambda _: True)
                leads.clear()
            elif full_prefixes:
                flights.forget_where(lambda key: any(_covers(prefix, key) for prefix in full_prefixes))
                for key in [k for k in leads if any(_covers(prefix, k) for prefix in full_prefixes)]:
                    del leads[key]

    def _drop_l1_by_fields(self, fields: Sequence[str]) -> None:
        """Remove L1 entries under the given prefix/tag fields by scanning (only when generations can't help)."""
        if self._l1 is None or not fields:
            return
        doomed = set(fields)
        self._l1.remove_where(lambda entry: not doomed.isdisjoint(entry.fields))

    def _on_remote_message(self, message: dict[str, Any]) -> None:
        if message["i"] == self.instance_id:
            return
        self.counters.invalidations_received += 1
        full_keys = [str(k) for k in message["k"]]
        generations: dict[str, int] = message["g"]
        prefixes = [f[2:] for f in generations if f.startswith("p:")]
        tags = [f[2:] for f in generations if f.startswith("t:")]
        self._apply_locally(full_keys, prefixes, tags, removed_at=_sent_at(message))
        if message["e"] == self._table.epoch:
            self._table.advance(generations)
        logger.debug("Received invalidation event #%s from %s", message["s"], message["i"])

    def _on_fill(self, full_key: str) -> None:
        if self._dlock is not None:
            self._dlock.notify(full_key)

    def _on_resync(self, epoch_changed: bool) -> None:
        # Anything computed or cached before this point may have missed an invalidation: no in-flight load may
        # store its result, and no caller arriving from now on may join one (as a delivered message detaches the
        # loads it covers, a resync detaches all of them).
        self._log.record((), [self._namespace], ())
        self._flights.forget_where(lambda _: True)
        self._leads.clear()
        if self._l1 is not None:
            self._l1.clear()
        logger.info("Invalidation channel subscribed%s; L1 cleared", " (new generation epoch)" if epoch_changed else "")
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._pending and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.create_task(self._retry_pending(), name="hybridcache-invalidation-retry")

    async def _retry_pending(self) -> None:
        """Publish queued invalidations, backing off while Redis stays unavailable, until none is left.

        The retries do not wait for the circuit breaker (``BreakDurationSeconds``, 60 s by default): every other
        instance serves what they cover until they are published, so they probe Redis on this backoff instead.
        """
        delay = 0.05
        while self._pending:
            if await self._flush_pending(past_breaker=True):
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _flush_pending(self, *, past_breaker: bool = False) -> bool:
        """Publish queued invalidations in order; True when the queue is empty afterwards.

        L2 reads call this first while anything is queued: an entry that was invalidated during an outage must
        not be served (or used as a fail-safe fallback) just because Redis answers again before the retry ran.
        They call it through the breaker (an open circuit answers at once); the retry task calls it past it.
        """
        async with self._flush_lock:
            while self._pending:
                full_keys, fields = self._pending[0]
                try:
                    assert self._l2 is not None
                    message = await self._l2.invalidate(
                        full_keys, fields, sender=self.instance_id, sent_at=self._wall(), past_breaker=past_breaker
                    )
                except L2UnavailableError:
                    return False
                self._pending.popleft()
                self._after_publish(full_keys, fields, message)
                logger.info("Published queued invalidation event #%s", message["s"])
        return True

    async def _flush_before_close(self, flush_timeout: float) -> None:
        """close()'s last attempt at the queue: keep publishing (past the breaker) until empty or the deadline,
        then log at ERROR, with their keys and fields, the invalidations that could not be published."""
        if self._l2 is None or not self._pending:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._pending:
                    if await self._flush_pending(past_breaker=True):
                        break
                    await asyncio.sleep(0.05)
        if self._pending:
            lost = [key for keys, _ in self._pending for key in keys]
            fields = sorted({field for _, queued in self._pending for field in queued})
            logger.error(
                "Closing with %d invalidation(s) not published within %gs; other instances may serve what they "
                "cover until it expires: keys %s, fields %s",
                len(self._pending),
                flush_timeout,
                lost,
                fields,
            )

    def _after_publish(self, full_keys: list[str], fields: list[str], message: dict[str, Any]) -> None:
        self.counters.invalidations_published += 1
        # Again, now that Redis has applied it: a read that began between our first local drop and the script's
        # execution may have fetched the old value and put it in L1 or in a shared load.
        self._apply_locally(
            full_keys, [f[2:] for f in fields if f.startswith("p:")], [f[2:] for f in fields if f.startswith("t:")]
        )
        if message["e"] == self._table.epoch:
            self._table.advance(message["g"])
        else:
            self._drop_l1_by_fields(fields)
