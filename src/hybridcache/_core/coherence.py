"""Coherence: what this instance knows about invalidations, and acting on them (the cache's write path).

:class:`Coherence` owns the generation table (lent to the backplane, which keeps it in step with Redis), the
invalidation log, the recent removals and the queue of unpublished invalidations; the read and fill paths ask it,
they do not change it. An invalidation is applied here first (L1 entries dropped, the in-process log recorded,
in-flight loads of covered keys detached), then published by one Redis script (keys removed, prefix/tag
generations bumped, a numbered message published), then applied here once more — a read racing the script may
have fetched the old value. When Redis is unreachable the invalidation is queued and retried with backoff; no L2
entry is served here until the queue is empty. Messages from other instances and (re)subscriptions arrive through
:meth:`Coherence.on_message` and :meth:`Coherence.on_resync`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from hybridcache._core.loads import InFlightLoads
from hybridcache._core.pending import PendingInvalidations
from hybridcache._generations import GenerationTable, InvalidationLog, RecentRemovals
from hybridcache._memory import MemoryStore
from hybridcache._redis.l2 import L2UnavailableError, RedisL2
from hybridcache.metrics import Counters

logger = logging.getLogger("hybridcache")


def _sent_at(message: dict[str, Any]) -> float | None:
    """The sender's wall time in an invalidation message (absent from older senders, or unreadable: None)."""
    try:
        return float(message["t"])
    except (KeyError, TypeError, ValueError):
        return None


class Coherence:
    """The invalidation side of one cache: applies, publishes, queues and receives invalidations."""

    def __init__(
        self,
        *,
        table: GenerationTable,
        namespace: str,
        instance_id: str,
        counters: Counters,
        l1: MemoryStore | None,
        loads: InFlightLoads,
        wall_clock: Callable[[], float],
    ) -> None:
        self.table = table
        self.log = InvalidationLog()
        self.removals = RecentRemovals()
        self.pending = PendingInvalidations(self._publish_queued, self._after_publish)
        self._namespace = namespace
        self.instance_id = instance_id
        self.counters = counters
        self._l1 = l1
        self._loads = loads
        self._wall = wall_clock
        self._l2: RedisL2 | None = None
        self._epoch_moved: Callable[[], None] | None = None

    def connect(self, l2: RedisL2) -> None:
        """Publish through ``l2`` from now on (set when the cache starts; without it invalidations stay local)."""
        self._l2 = l2

    def on_epoch_moved(self, epoch_moved: Callable[[], None]) -> None:
        """What to call when a publication shows Redis in another epoch than the table (the backplane's
        :meth:`~hybridcache._redis.backplane.Backplane.epoch_moved`: distrust the table now, resync)."""
        self._epoch_moved = epoch_moved

    async def invalidate(
        self,
        full_keys: list[str],
        prefix_list: list[str],
        tag_list: list[str],
        fields: list[str],
        *,
        queue: bool = True,
    ) -> bool:
        """Stop serving what the invalidation covers here, then publish it for every instance.

        True when it was published (or there is no Redis to publish to). When Redis does not take it, it is queued
        and retried (``queue``), or, with ``queue=False``, left to the caller (the outbox relay, which retries it
        itself and must not pile copies into the queue): that attempt goes past an open circuit breaker.
        """
        self.apply_locally(full_keys, prefix_list, tag_list, removed_at=self._wall())
        for full_key in full_keys:
            logger.info("Removed key: %s", full_key)
        for prefix in prefix_list:
            logger.info("Removed prefix: %s%s*", self._namespace, prefix)
        for tag in tag_list:
            logger.info("Removed tag: %s", tag)
        if self._l2 is None:
            self.table.bump_locally(fields)
            return True
        return await self._publish(full_keys, fields, queue=queue)

    async def _publish(self, full_keys: list[str], fields: list[str], *, queue: bool) -> bool:
        assert self._l2 is not None
        try:
            message = await self._l2.invalidate(
                full_keys, fields, sender=self.instance_id, sent_at=self._wall(), past_breaker=not queue
            )
        except L2UnavailableError as exc:
            self.counters.invalidation_failures += 1
            self._drop_l1_by_fields(fields)
            if queue:
                self.pending.add(full_keys, fields)
                logger.error(
                    "Invalidation event not published (%s); queued for retry (%d pending)", exc, len(self.pending)
                )
            else:
                logger.warning("Invalidation event not published (%s); its outbox row stays for the relay", exc)
            return False
        self._after_publish(full_keys, fields, message)
        logger.info("Published invalidation event #%s", message["s"])
        return True

    def apply_locally(
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
        self.log.record(full_keys, full_prefixes, tags)
        if full_keys and removed_at is not None:
            self.removals.record(full_keys, removed_at)
        if self._l1 is not None:
            for full_key in full_keys:
                self._l1.remove(full_key)
        self._loads.detach(full_keys, full_prefixes, tags)

    def _drop_l1_by_fields(self, fields: Sequence[str]) -> None:
        """Remove L1 entries under the given prefix/tag fields by scanning (only when generations can't help)."""
        if self._l1 is None or not fields:
            return
        doomed = set(fields)
        self._l1.remove_where(lambda entry: not doomed.isdisjoint(entry.fields))

    def on_message(self, message: dict[str, Any]) -> None:
        """An invalidation published by another instance (the backplane's callback)."""
        if message["i"] == self.instance_id:
            return
        self.counters.invalidations_received += 1
        full_keys = [str(k) for k in message["k"]]
        generations: dict[str, int] = message["g"]
        prefixes = [f[2:] for f in generations if f.startswith("p:")]
        tags = [f[2:] for f in generations if f.startswith("t:")]
        self.apply_locally(full_keys, prefixes, tags, removed_at=_sent_at(message))
        if message["e"] == self.table.epoch:
            self.table.advance(generations)
        logger.debug("Received invalidation event #%s from %s", message["s"], message["i"])

    def on_resync(self, epoch_changed: bool) -> None:
        """The table was reloaded from Redis (the backplane's callback)."""
        # Anything computed or cached before this point may have missed an invalidation: no in-flight load may
        # store its result, and no caller arriving from now on may join one (as a delivered message detaches the
        # loads it covers, a resync detaches all of them).
        self.log.record((), [self._namespace], ())
        self._loads.detach_all()
        if self._l1 is not None:
            self._l1.clear()
        logger.info("Invalidation channel subscribed%s; L1 cleared", " (new generation epoch)" if epoch_changed else "")
        self.pending.schedule_retry()

    async def _publish_queued(self, full_keys: list[str], fields: list[str], past_breaker: bool) -> dict[str, Any]:
        """How the queue of unpublished invalidations (:class:`PendingInvalidations`) publishes one."""
        assert self._l2 is not None
        return await self._l2.invalidate(
            full_keys, fields, sender=self.instance_id, sent_at=self._wall(), past_breaker=past_breaker
        )

    def _after_publish(self, full_keys: list[str], fields: list[str], message: dict[str, Any]) -> None:
        self.counters.invalidations_published += 1
        # Again, now that Redis has applied it: a read that began between our first local drop and the script's
        # execution may have fetched the old value and put it in L1 or in a shared load.
        self.apply_locally(
            full_keys, [f[2:] for f in fields if f.startswith("p:")], [f[2:] for f in fields if f.startswith("t:")]
        )
        if message["e"] == self.table.epoch:
            self.table.advance(message["g"])
        else:
            # Redis drew a new epoch (its generation hash was evicted or flushed) and this bump lives only there.
            # Until the table has reloaded, an L2 entry stamped in the old epoch would still look current to it, and
            # this writer would read back what it just invalidated: distrust the table now (reads then check stamps
            # against Redis) rather than when our own message comes back through the backplane.
            self._drop_l1_by_fields(fields)
            if self._epoch_moved is not None:
                self._epoch_moved()
