"""The invalidation channel: one pub/sub subscriber per cache, and the rules for when L1 may be trusted.

Redis pub/sub is at-most-once, and redis-py reconnects and resubscribes by itself without telling anyone, so the
backplane never assumes it saw every message. Three mechanisms close the gaps:

* **Resync on every subscribe acknowledgement.** Whether we subscribed or redis-py silently resubscribed after a
  reconnect, the ``subscribe`` reply triggers a resync: the generation table is reloaded from Redis and L1 is
  emptied, since anything in it may have missed an invalidation.
* **Numbered messages.** Each invalidation message carries a number from one Redis counter (assigned inside the
  same script that publishes it, so numbers follow publication order). A jump in the numbers means messages were
  lost: resync.
* **Heartbeat.** Every ``heartbeat_interval`` the loop reads the counter, then sends ``PING <nonce>`` on the
  subscriber connection. Replies and messages on one connection arrive in order, so when the nonce comes back
  every message numbered up to what we read has been delivered — if we have not seen it, resync. If the nonce
  does not come back within ``heartbeat_timeout`` (a frozen or partitioned server, which redis-py's own health
  check does not notice), the connection is dropped and rebuilt.

While the subscription is not confirmed the :class:`GenerationTable` is marked untrusted, and the cache bounds L1
and validates L2 reads against Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from hybridcache._generations import GenerationTable
from hybridcache._redis.clients import follow_sentinel_master
from hybridcache._redis.l2 import RedisL2, parse_message
from hybridcache._resilience import cancel_and_wait

logger = logging.getLogger("hybridcache.backplane")

MessageHandler = Callable[[dict[str, Any]], None]
ResyncHandler = Callable[[bool], None]
FillHandler = Callable[[str], None]
SubscriberFactory = Callable[[], Awaitable[Redis]]


class HeartbeatTimeoutError(Exception):
    """The subscriber connection did not answer a PING in time."""


class SubscriptionDroppedError(Exception):
    """The server ended our subscription while keeping the connection open."""


class MasterChangedError(Exception):
    """The sentinels name another master than the server our subscription is on."""


class Backplane:
    """Receives invalidation messages for one namespace and keeps the generation table in step with Redis."""

    def __init__(
        self,
        l2: RedisL2,
        table: GenerationTable,
        *,
        on_message: MessageHandler,
        on_resync: ResyncHandler,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 2.0,
        on_fill: FillHandler | None = None,
        subscriber: SubscriberFactory | None = None,
    ) -> None:
        """``subscriber`` opens a fresh client on the server carrying the channel (default: the background client)."""
        self._l2 = l2
        self._subscriber = subscriber
        self._on_fill = on_fill
        self._table = table
        self._on_message = on_message
        self._on_resync = on_resync
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._task: asyncio.Task[None] | None = None
        self._trusted_event = asyncio.Event()
        self.last_sequence = 0
        self.messages_received = 0
        self.gaps_detected = 0
        self.resyncs = 0
        self.connected = False
        # Set by the cache when Redis answers with another generation epoch than the table's (the hash was flushed
        # or evicted and recreated): the loop resyncs at its next turn, at most once per heartbeat interval.
        self._resync_requested = False
        self._resync_forced = False
        self._last_requested_resync = -float("inf")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hybridcache-backplane")

    async def close(self) -> None:
        """Stop the subscriber loop and wait until it has ended.

        One cancel is not always enough (see :func:`~hybridcache._resilience.cancel_and_wait`).
        """
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def request_resync(self) -> None:
        """Ask the subscriber loop to reload the table from Redis soon (safe to call on every request)."""
        self._resync_requested = True

    def epoch_moved(self) -> None:
        """This instance's own publication showed Redis in another epoch than the table: the bump it made lives
        only in Redis, so stop trusting the table now (reads check stamps against Redis meanwhile) and resync at
        once, without waiting for the message to come back or for the rate limit of :meth:`request_resync`."""
        if self._table.trusted:
            self._lose_trust()
            self._resync_forced = True

    async def wait_trusted(self, timeout: float) -> bool:
        """Wait until the subscription is confirmed; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._trusted_event.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        backoff = 0.05
        outage_logged = False
        while True:
            connection: Redis | None = None
            pubsub: PubSub | None = None
            try:
                connection = await self._open()
                pubsub = connection.pubsub()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: not trusted, rebuild the connection
                if not outage_logged:
                    logger.warning(
                        "Invalidation channel lost (%s: %s); L1 is bounded until it is back",
                        exc.__class__.__name__,
                        exc,
                    )
                    outage_logged = True
            else:
                outage_logged = False
            finally:
                # Both at once: health() must not report Redis up while the table is already distrusted (closing
                # the old connection below can take up to a heartbeat timeout on a frozen server).
                had_subscription, self.connected = self.connected, False
                self._lose_trust()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._heartbeat_timeout):
                        if pubsub is not None:
                            await pubsub.aclose()
                        if connection is not None and self._subscriber is not None:
                            await connection.aclose()
            if had_subscription:  # we had a working subscription: retry quickly
                backoff = 0.05
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    async def _open(self) -> Redis:
        if self._subscriber is not None:
            return await self._subscriber()
        background = self._l2.background
        assert isinstance(background, Redis), "a cluster needs a subscriber factory"
        return background

    async def _listen(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self._heartbeat_timeout):
            if self._l2.cluster:
                await pubsub.ssubscribe(self._l2.channel)  # sharded: the channel lives in the meta keys' slot
            else:
                await pubsub.subscribe(self._l2.channel)
        subscribe_deadline = time.monotonic() + self._heartbeat_timeout
        next_heartbeat = time.monotonic() + self._heartbeat_interval
        pending: tuple[bytes, int, float] | None = None  # nonce, sequence read before the ping, deadline
        while True:
            message = await pubsub.get_message(timeout=min(0.05, self._heartbeat_interval))
            if message is not None:
                pending = await self._handle(message, pending, pubsub)
            now = time.monotonic()
            if self._resync_forced:
                self._resync_forced = False
                self.gaps_detected += 1
                logger.warning("Redis drew a new generation epoch under our own invalidation; resynchronising")
                await self._resync(pubsub)
                continue
            if self._resync_requested and self._table.trusted:
                self._resync_requested = False
                if now - self._last_requested_resync >= self._heartbeat_interval:
                    self._last_requested_resync = now
                    self.gaps_detected += 1
                    logger.warning(
                        "Redis holds another generation epoch than this instance (its generations were flushed or "
                        "evicted); resynchronising"
                    )
                    await self._resync(pubsub)
                    continue
            if not self._table.trusted and now > subscribe_deadline:
                raise HeartbeatTimeoutError("subscription was not acknowledged in time")
            if pending is not None:
                if now > pending[2]:
                    raise HeartbeatTimeoutError(f"no reply to PING within {self._heartbeat_timeout}s")
            elif now >= next_heartbeat and self._table.trusted:
                await self._follow_master(pubsub)
                seen = self.last_sequence
                async with asyncio.timeout(self._heartbeat_timeout):
                    published = await self._l2.sequence(guarded=False)
                if published < seen:
                    # Redis numbers a message before publishing it, so its counter is never below one we received:
                    # it went back (expired, evicted, flushed) or we took a forged number. Gap detection counts
                    # from Redis's number again, and the table is reloaded from Redis.
                    self.gaps_detected += 1
                    logger.warning(
                        "Invalidation message counter went back (message %d received, Redis is at %d); resynchronising",
                        seen,
                        published,
                    )
                    await self._resync(pubsub)
                    next_heartbeat = now + self._heartbeat_interval
                    continue
                nonce = secrets.token_hex(8).encode()
                await pubsub.ping(nonce)
                pending = (nonce, published, time.monotonic() + self._heartbeat_timeout)
                next_heartbeat = now + self._heartbeat_interval

    async def _follow_master(self, pubsub: PubSub) -> None:
        """Sentinel: move the pools to the master the sentinels name now, and resubscribe there if ours is not it.

        Without this a cache keeps using an old master that is still up after a failover (until the sentinels
        demote it and its clients are killed), while caches that connected since use the new one.
        """
        try:
            async with asyncio.timeout(self._heartbeat_timeout):
                master = await follow_sentinel_master(self._l2.client, self._l2.background)
        except (RedisError, OSError, TimeoutError) as exc:  # the sentinels are not the data path: carry on
            logger.debug("Could not ask the sentinels for the master: %s", exc)
            return
        connection = pubsub.connection
        if master is not None and connection is not None:
            host, port = getattr(connection, "host", None), getattr(connection, "port", None)
            if (host, None if port is None else int(port)) != master:
                raise MasterChangedError(f"the sentinels name {master[0]}:{master[1]} the master, not {host}:{port}")

    async def _handle(
        self, message: dict[str, Any], pending: tuple[bytes, int, float] | None, pubsub: PubSub
    ) -> tuple[bytes, int, float] | None:
        kind = message["type"]
        if kind in ("message", "smessage"):
            if message["data"][:5] == b'{"f":':
                # A distributed-lock fill notice (see lock.py): not numbered, never part of gap detection.
                if self._on_fill is not None:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._on_fill(str(orjson.loads(message["data"])["f"]))
                return pending
            try:
                payload = parse_message(message["data"])
            except ValueError:
                logger.warning("Ignored a foreign message on the invalidation channel")
                return pending
            self.messages_received += 1
            sequence = int(payload["s"])
            if payload["e"] != self._table.epoch or sequence > self.last_sequence + 1:
                self.gaps_detected += 1
                logger.warning(
                    "Invalidation messages %d..%d were missed; resynchronising", self.last_sequence + 1, sequence - 1
                )
                await self._resync(pubsub)
                # The counters just loaded already hold this message's bumps (it was published after them): its
                # own counters are not adopted, so a forged one cannot outlive the resync that it caused.
                payload = {**payload, "g": dict.fromkeys(payload["g"], 0)}
            else:
                self.last_sequence = max(self.last_sequence, sequence)
            self._on_message(payload)
        elif kind in ("subscribe", "ssubscribe"):
            await self._resync(pubsub)
        elif kind in ("unsubscribe", "sunsubscribe"):
            # We never unsubscribe, so the server did: on a cluster a node that loses the channel's slot (a
            # failover, a slot migration) drops its shard subscribers but keeps the connection, and redis-py
            # reports it as a mere message. Reconnect to whichever node owns the slot now.
            raise SubscriptionDroppedError(f"the server ended the subscription to {self._l2.channel}")
        elif kind == "pong" and pending is not None and message["data"] == pending[0]:
            if self.last_sequence < pending[1]:
                self.gaps_detected += 1
                logger.warning("Heartbeat found invalidation %d unseen; resynchronising", pending[1])
                await self._resync(pubsub)
            return None
        return pending

    async def _resync(self, pubsub: PubSub) -> None:
        """Reload the generation table and the message counter from Redis, then trust the table again.

        Trust is dropped first: between noticing a gap and the reply (one round trip, or a timeout) the table is
        known to have missed something, so L1 is held to the untrusted bound meanwhile. On Sentinel the
        subscription must be on the master the sentinels name before the table is trusted: a resync is what a
        failover causes (a new epoch seen by a capture, a gap), and the state read from the new master while
        subscribed on the old one would be trusted without ever hearing the new master's messages.
        """
        self._lose_trust()
        await self._follow_master(pubsub)
        self._table.begin_resync()
        state = await self._l2.generation_state(guarded=False, page_timeout=self._heartbeat_timeout)
        epoch_changed = self._table.replace(state.epoch, state.counters)
        self.last_sequence = state.sequence
        self.resyncs += 1
        self._on_resync(epoch_changed)
        self._table.set_trusted(True)
        self.connected = True
        self._trusted_event.set()

    def _lose_trust(self) -> None:
        self._table.set_trusted(False)
        self._trusted_event.clear()
