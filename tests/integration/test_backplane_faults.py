"""Issue 3, acceptance 4 (and 5): the invalidation channel under faults never leaves an instance serving stale data.

Each test drives real faults against a private redis-server — subscriber connections killed, the process
restarted (generations reset, new epoch), frozen with SIGSTOP past the heartbeat timeout, messages dropped by an
output-buffer overflow or lost silently — and checks that once the instance is back, everything invalidated
meanwhile is served fresh. A small heartbeat keeps them fast. Every test runs under RESP2 and RESP3.

These tests read the backplane's own counters (``resyncs``, ``gaps_detected``, ``last_sequence``) to prove the
recovery path they target actually ran; ``stats()`` reports the first two as ``backplane_resyncs`` and
``backplane_gaps``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import pytest

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._redis.backplane import Backplane
from hybridcache._redis.l2 import RedisL2
from hybridcache.settings import BackplaneSettings
from tests.support.waiting import wait_until

HEARTBEAT = BackplaneSettings(
    heartbeat_interval_seconds=0.1, heartbeat_timeout_seconds=0.3, disconnected_expiration_seconds=0.3
)
# How long a lost connection or message may go unnoticed: one heartbeat interval plus its timeout, plus slack
# for the event loop and the reconnect backoff.
NOTICE = HEARTBEAT.heartbeat_interval_seconds + HEARTBEAT.heartbeat_timeout_seconds + 0.7
RECOVERY = 5.0  # upper bound for reconnecting after a fault (backoff grows to 2 s while Redis is away)

pytestmark = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


def settings_for(server: RedisServer, service: str, protocol: int, **overrides: Any) -> CacheSettings:
    options: dict[str, Any] = {
        "service_name": service,
        "configuration": server.url,
        "protocol": protocol,
        "backplane": HEARTBEAT,
        "operation_timeout_milliseconds": 150,
        "circuit_breaker": {"break_duration_seconds": 0.2},
    }
    options.update(overrides)
    return CacheSettings(**options)


@asynccontextmanager
async def running_caches(settings: CacheSettings, count: int = 2) -> AsyncIterator[list[HybridCache]]:
    async with AsyncExitStack() as stack:
        caches = [await stack.enter_async_context(HybridCache(settings)) for _ in range(count)]
        for cache in caches:
            assert await cache.wait_until_connected(5.0), "backplane subscription not confirmed"
        yield caches


def l2_of(cache: HybridCache) -> RedisL2:
    """The cache's Redis layer, whose attributes name the keys and channel (the layout is its business)."""
    l2 = cache.internals.l2
    assert l2 is not None
    return l2


def backplane_of(cache: HybridCache) -> Backplane:
    backplane = cache.internals.backplane
    assert backplane is not None
    return backplane


class Database:
    """Versioned values; ``loads`` counts factory runs per key."""

    def __init__(self, *keys: str) -> None:
        self.versions = dict.fromkeys(keys, 1)
        self.loads = dict.fromkeys(keys, 0)

    def bump(self, *keys: str) -> None:
        for key in keys:
            self.versions[key] += 1

    def loader(self, key: str) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            self.loads[key] += 1
            return self.versions[key]

        return load


# The three ways of invalidating, each with its own key: the exact key, a prefix above it, a tag on it.
BY_KEY, BY_PREFIX, BY_TAG = "Car:1", "Truck:Search:ford", "Bike:7"
PREFIX, TAG = "Truck:Search", "bikes"
KEYS = (BY_KEY, BY_PREFIX, BY_TAG)


async def read(cache: HybridCache, db: Database, key: str) -> int:
    tags = (TAG,) if key == BY_TAG else ()
    value: int = await cache.get_or_create(key, db.loader(key), tags=tags)
    return value


async def invalidate_all_three(cache: HybridCache) -> None:
    await cache.remove(BY_KEY)
    await cache.remove_by_prefix(PREFIX)
    await cache.remove_by_tag(TAG)


async def warm_l1(cache: HybridCache, db: Database, *keys: str) -> None:
    """Load ``keys`` and prove they are now L1 hits (so a fresh value later is the invalidation's doing)."""
    for key in keys:
        await read(cache, db, key)
    hits = cache.counters.l1_hits
    for key in keys:
        assert await read(cache, db, key) == db.versions[key]
    assert cache.counters.l1_hits == hits + len(keys), "not served from L1"


async def versions_seen(cache: HybridCache, db: Database, *keys: str) -> dict[str, int]:
    return {key: await read(cache, db, key) for key in keys}


async def kill_subscribers(server: RedisServer) -> int:
    admin = server.client()
    try:
        killed: int = await admin.client_kill_filter(_type="pubsub")
    finally:
        await admin.aclose()
    return killed


async def wait_recovered(caches: list[HybridCache], resyncs_before: list[int]) -> None:
    """Every cache has resynchronised since the fault, is connected and has nothing left to publish."""

    def done() -> bool:
        return all(
            backplane_of(c).resyncs > n and c.stats().backplane == "connected" and c.stats().pending_invalidations == 0
            for c, n in zip(caches, resyncs_before, strict=True)
        )

    try:
        await wait_until(done, timeout=RECOVERY, message="recovery")
    except AssertionError:
        states = [
            (c.stats().backplane, c.stats().pending_invalidations, c.stats().circuit, backplane_of(c).resyncs)
            for c in caches
        ]
        raise AssertionError(
            f"not recovered within {RECOVERY}s (backplane, pending, circuit, resyncs): {states}"
        ) from None


# ------------------------------------------------------------------------------------- (a) subscribers killed


async def test_invalidations_sent_while_cut_off_are_not_served_after_reconnect(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
        for round_ in range(3):
            await warm_l1(reader, db, *KEYS)
            resyncs = [backplane_of(c).resyncs for c in (writer, reader)]
            received = reader.stats().invalidations_received

            assert await kill_subscribers(redis_server) == 2
            # Published at once, while the reader's subscription is gone (it backs off >= 25 ms before
            # resubscribing): these three messages never reach it.
            db.bump(*KEYS)
            await invalidate_all_three(writer)

            await wait_recovered([writer, reader], resyncs)
            assert reader.stats().invalidations_received == received, (
                f"round {round_}: the reader got the messages anyway; the fault was not exercised"
            )
            # No waiting: the resync alone must have made every key fresh.
            assert await versions_seen(reader, db, *KEYS) == db.versions, f"round {round_}"
            assert await versions_seen(writer, db, *KEYS) == db.versions, f"round {round_}"


async def test_invalidations_after_a_reconnect_propagate_again(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
        resyncs = [backplane_of(c).resyncs for c in (writer, reader)]
        await kill_subscribers(redis_server)
        await wait_recovered([writer, reader], resyncs)

        await warm_l1(reader, db, *KEYS)
        db.bump(*KEYS)
        await invalidate_all_three(writer)
        await wait_until(
            lambda: reader.stats().invalidations_received == 3,
            timeout=0.05,
            interval=0.001,
            message="invalidations did not propagate on the new subscription",
        )
        assert await versions_seen(reader, db, *KEYS) == db.versions


# ------------------------------------------------------------------------------------- (b) Redis restarted


async def test_a_restart_changes_the_epoch_and_old_stamps_never_become_current(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """Generations reset to 0 on a restart without persistence: a value stamped with a high old generation would
    look current against the new, lower counters, unless the epoch tells them apart."""
    db = Database(BY_PREFIX)
    admin = redis_server.client()
    try:
        async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
            gens_key = l2_of(writer).generations_key
            for _ in range(5):
                await writer.remove_by_prefix(PREFIX)  # the prefix's generation is now 5
            await wait_until(
                lambda: reader.stats().invalidations_received == 5, timeout=1.0, message="bumps not received"
            )
            old_epoch = await admin.hget(gens_key, "__epoch__")
            assert old_epoch is not None

            # A load on the reader captures generation 5 under the old epoch, then waits across the restart.
            started, release = asyncio.Event(), asyncio.Event()

            async def slow_load() -> int:
                version = db.versions[BY_PREFIX]
                started.set()
                await release.wait()
                return version

            early = asyncio.create_task(reader.get_or_create(BY_PREFIX, slow_load))
            await wait_until(started.is_set, timeout=1.0, message="the slow load never started")

            resyncs = [backplane_of(c).resyncs for c in (writer, reader)]
            await asyncio.to_thread(redis_server.restart)
            await wait_recovered([writer, reader], resyncs)
            new_epoch = await admin.hget(gens_key, "__epoch__")
            assert new_epoch is not None
            assert new_epoch != old_epoch

            db.bump(BY_PREFIX)
            await writer.remove_by_prefix(PREFIX)  # the prefix's first generation in the new epoch
            # (Its first attempt may meet a pooled connection the restart closed; then the retry publishes it.)
            await wait_until(
                lambda: writer.stats().pending_invalidations == 0, timeout=RECOVERY, message="never published"
            )
            assert await admin.hget(gens_key, f"p:{PREFIX}") is not None
            release.set()
            assert await early == 1  # it read the database before the write: allowed for its own caller

            # ...but it must not have been stored anywhere.
            raw = await admin.get(l2_of(reader).redis_key(f"{namespace}:v1:{BY_PREFIX}"))
            assert raw is None, f"a value captured under the old epoch was stored after the restart: {raw!r}"
            assert reader.stats().stale_sets_prevented >= 1
            await wait_until(
                lambda: reader.stats().invalidations_received == 6, timeout=1.0, message="last bump not received"
            )
            assert await read(reader, db, BY_PREFIX) == 2
            assert await read(writer, db, BY_PREFIX) == 2
    finally:
        await admin.aclose()


async def test_invalidations_made_while_redis_was_down_are_applied_after_it_returns(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
        await warm_l1(reader, db, *KEYS)
        await warm_l1(writer, db, *KEYS)
        resyncs = [backplane_of(c).resyncs for c in (writer, reader)]

        redis_server.kill()
        db.bump(*KEYS)
        await invalidate_all_three(writer)  # cannot be published: queued, never raised
        assert writer.stats().pending_invalidations == 3
        assert await versions_seen(writer, db, *KEYS) == db.versions  # the writer stops serving them at once

        await asyncio.to_thread(redis_server.restart)
        await wait_recovered([writer, reader], resyncs)
        assert writer.stats().invalidations_published >= 3
        assert await versions_seen(reader, db, *KEYS) == db.versions
        assert await versions_seen(writer, db, *KEYS) == db.versions


# ------------------------------------------------------------------------------------- (c) Redis frozen


async def test_a_frozen_redis_is_noticed_and_l1_is_bounded_until_the_resync(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    bound = HEARTBEAT.disconnected_expiration_seconds
    async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
        await warm_l1(reader, db, *KEYS)
        cached_at = time.monotonic()
        resyncs = [backplane_of(c).resyncs for c in (writer, reader)]

        redis_server.pause()
        try:
            paused_at = time.monotonic()
            await wait_until(
                lambda: reader.stats().backplane == "disconnected",
                timeout=NOTICE,
                interval=0.005,
                message="the frozen server was not noticed (redis-py's own health check would never notice it)",
            )
            noticed_after = time.monotonic() - paused_at
            assert reader.health()["redis"] == "down"

            db.bump(*KEYS)
            await invalidate_all_three(writer)  # times out: queued for retry

            # While cut off, L1 entries older than DisconnectedExpirationSeconds are not served.
            await asyncio.sleep(max(0.0, cached_at + bound - time.monotonic()))  # the bound is a span of time
            loads = dict(db.loads)
            hits = reader.counters.l1_hits
            assert await versions_seen(reader, db, *KEYS) == db.versions
            assert reader.counters.l1_hits == hits, "an L1 entry older than the disconnected bound was served"
            assert all(db.loads[k] == loads[k] + 1 for k in KEYS)
        finally:
            redis_server.resume()

        await wait_recovered([writer, reader], resyncs)
        assert await versions_seen(reader, db, *KEYS) == db.versions
        assert await versions_seen(writer, db, *KEYS) == db.versions
        print(f"[frozen resp{protocol}] noticed after {1000 * noticed_after:.0f} ms")


# ------------------------------------------------------------------------------------- (d) lost messages


async def _channel_and_epoch(cache: HybridCache, admin: Any) -> tuple[str, str]:
    l2 = l2_of(cache)
    epoch = await admin.hget(l2.generations_key, "__epoch__")
    return l2.channel, epoch.decode()


async def test_a_jump_in_message_numbers_triggers_a_resync(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    admin = redis_server.client()
    try:
        async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
            await warm_l1(reader, db, *KEYS)
            backplane = backplane_of(reader)
            gaps, resyncs = backplane.gaps_detected, backplane.resyncs
            channel, epoch = await _channel_and_epoch(reader, admin)
            forged_sequence = backplane.last_sequence + 50
            forged = {"i": "intruder", "s": forged_sequence, "e": epoch, "k": [], "g": {}}
            assert await admin.publish(channel, orjson.dumps(forged)) == 2

            await wait_until(
                lambda: backplane.gaps_detected > gaps and backplane.resyncs > resyncs,
                timeout=1.0,
                message="a jump in the message numbers was not treated as a gap",
            )
            # The resync dropped L1: the next reads are not L1 hits (and still correct).
            hits = reader.counters.l1_hits
            assert await versions_seen(reader, db, *KEYS) == db.versions
            assert reader.counters.l1_hits == hits
            # The forged number was not adopted: the real next message is in sequence, not another gap.
            assert backplane.last_sequence < forged_sequence
            await warm_l1(reader, db, *KEYS)
            gaps = backplane.gaps_detected
            db.bump(*KEYS)
            await invalidate_all_three(writer)
            await wait_until(
                lambda: backplane.last_sequence >= 3, timeout=1.0, message="real messages were not received"
            )
            assert backplane.gaps_detected == gaps
            assert await versions_seen(reader, db, *KEYS) == db.versions
    finally:
        await admin.aclose()


async def test_a_message_from_another_epoch_triggers_a_resync(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    db = Database(*KEYS)
    admin = redis_server.client()
    try:
        async with running_caches(settings_for(redis_server, namespace, protocol)) as (_writer, reader):
            await warm_l1(reader, db, *KEYS)
            backplane = backplane_of(reader)
            gaps, resyncs = backplane.gaps_detected, backplane.resyncs
            channel, _epoch = await _channel_and_epoch(reader, admin)
            forged = {"i": "intruder", "s": backplane.last_sequence + 1, "e": "another-epoch", "k": [], "g": {}}
            await admin.publish(channel, orjson.dumps(forged))
            await wait_until(
                lambda: backplane.gaps_detected > gaps and backplane.resyncs > resyncs,
                timeout=1.0,
                message="an epoch change was not noticed",
            )
            hits = reader.counters.l1_hits
            assert await versions_seen(reader, db, *KEYS) == db.versions
            assert reader.counters.l1_hits == hits, "L1 was not dropped after the epoch changed"
    finally:
        await admin.aclose()


async def test_the_heartbeat_finds_a_message_that_was_lost_silently(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """An invalidation applied in Redis whose message never arrived, on a connection that stayed up: only the
    heartbeat (message number read, then PING on the subscriber connection) can find it."""
    db = Database(*KEYS)
    admin = redis_server.client()
    try:
        async with running_caches(settings_for(redis_server, namespace, protocol)) as (_writer, reader):
            await warm_l1(reader, db, *KEYS)
            backplane = backplane_of(reader)
            gaps, resyncs = backplane.gaps_detected, backplane.resyncs

            # What the invalidation script does for a prefix, minus the PUBLISH.
            db.bump(BY_PREFIX)
            lost = (
                "local t = redis.call('TIME') "
                "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
                "local g = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') + 1, now) "
                "redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', g)) "
                "return redis.call('INCR', KEYS[2])"
            )
            layout = l2_of(reader)
            await admin.eval(lost, 2, layout.generations_key, layout.sequence_key, f"p:{PREFIX}")

            # (The gap is counted before the resync's round trip; the resync is what makes reads fresh.)
            await wait_until(
                lambda: backplane.gaps_detected > gaps and backplane.resyncs > resyncs,
                timeout=NOTICE,
                message="the heartbeat did not notice the missing message",
            )
            assert await versions_seen(reader, db, *KEYS) == db.versions
            stats = reader.stats()
            assert (stats.backplane_gaps, stats.backplane_resyncs) == (backplane.gaps_detected, backplane.resyncs)
            assert stats.backplane_gaps > gaps
    finally:
        await admin.aclose()


async def test_messages_dropped_by_an_output_buffer_overflow_are_recovered(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """A subscriber that falls behind its output-buffer limit is disconnected by Redis and loses what was queued
    for it; the invalidations published meanwhile must still not be served stale after it resubscribes."""
    keys = [f"Item:{n}" for n in range(20)]
    db = Database(*keys)
    admin = redis_server.client()
    try:
        async with running_caches(settings_for(redis_server, namespace, protocol)) as (writer, reader):
            await warm_l1(reader, db, *keys)
            backplane = backplane_of(reader)
            resyncs = [backplane_of(c).resyncs for c in (writer, reader)]
            received = reader.stats().invalidations_received
            channel, _epoch = await _channel_and_epoch(reader, admin)

            await admin.config_set("client-output-buffer-limit", "pubsub 64kb 0 0")
            try:
                # One script publishes ~512 kB at once: far past the limit before anyone can read it.
                flood = "for i = 1, 64 do redis.call('PUBLISH', KEYS[1], ARGV[1]) end"
                await admin.eval(flood, 1, channel, "x" * 8192)
                db.bump(*keys)
                await asyncio.gather(*(writer.remove(key) for key in keys))
            finally:
                await admin.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")

            await wait_recovered([writer, reader], resyncs)
            published = int(await admin.get(l2_of(reader).sequence_key) or 0)
            await wait_until(
                lambda: backplane.last_sequence >= published,
                timeout=1.0,
                message="the reader never caught up with the published messages",
            )
            assert reader.stats().invalidations_received - received < len(keys), "nothing was dropped"
            assert await versions_seen(reader, db, *keys) == db.versions
    finally:
        await admin.aclose()


# ------------------------------------------------------------------------------------- (e) publish failed


async def test_an_invalidation_queued_while_the_circuit_was_open_is_published_once_it_closes(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """The writer's circuit opens (say, after a burst of timeouts) while its subscription stays up: nothing
    resynchronises, yet its queued invalidation must be published once Redis is usable again."""
    db = Database(*KEYS)
    settings = settings_for(
        redis_server, namespace, protocol, circuit_breaker={"failure_threshold": 1, "break_duration_seconds": 0.2}
    )
    async with running_caches(settings) as (writer, reader):
        await warm_l1(reader, db, *KEYS)
        await warm_l1(writer, db, *KEYS)
        resyncs = backplane_of(writer).resyncs

        writer.breaker.record_failure()  # as after FailureThreshold consecutive failures
        assert writer.health()["circuit"] == "open"
        db.bump(*KEYS)
        await invalidate_all_three(writer)
        assert writer.stats().pending_invalidations == 3
        assert await versions_seen(writer, db, *KEYS) == db.versions  # L2 is skipped while open: factory

        await wait_until(
            lambda: writer.stats().pending_invalidations == 0,
            timeout=RECOVERY,
            message="queued invalidations were never published after the circuit could close again",
        )
        assert backplane_of(writer).resyncs == resyncs, "a resync happened; this test is about the case without one"
        await wait_until(
            lambda: reader.stats().invalidations_received == 3,
            timeout=1.0,
            message="the reader never received the queued invalidations",
        )
        assert await versions_seen(reader, db, *KEYS) == db.versions
        assert await versions_seen(writer, db, *KEYS) == db.versions


async def test_a_write_during_a_3s_freeze_reaches_another_instance_within_the_pause_plus_1_5s(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """At default settings (BreakDurationSeconds 60): Redis frozen for 3 s, the writer's invalidation fails and
    its circuit opens. Its queued invalidation must not wait out the 60 s break: the retries probe Redis on their
    own backoff, so the other instance serves the write within the pause + 1.5 s (issue 13, item 1)."""
    pause = 3.0
    db = Database(BY_KEY)
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, protocol=protocol)
    assert settings.circuit_breaker.break_duration_seconds == 60
    async with running_caches(settings) as (writer, reader):
        await warm_l1(reader, db, BY_KEY)
        await warm_l1(writer, db, BY_KEY)
        loop = asyncio.get_running_loop()
        redis_server.pause()
        paused_at = loop.time()
        try:
            db.bump(BY_KEY)
            await writer.remove(BY_KEY)
            assert writer.stats().pending_invalidations == 1
            # Requests during the freeze open the writer's circuit (FailureThreshold consecutive failures).
            for attempt in range(40):
                if writer.health()["circuit"] == "open":
                    break
                await writer.get_or_create(f"Other:{attempt}", db.loader(BY_KEY))
            assert writer.health()["circuit"] == "open"
            await asyncio.sleep(max(0.0, pause - (loop.time() - paused_at)))  # hold the freeze for its length
        finally:
            redis_server.resume()
        resumed_at = loop.time()

        async def serves_the_write() -> bool:
            return await read(reader, db, BY_KEY) == db.versions[BY_KEY]

        await wait_until(
            serves_the_write, timeout=10.0, interval=0.02, message="the other instance kept serving the old value"
        )
        delay = loop.time() - resumed_at
        assert delay <= 1.5, f"the other instance served the write {delay:.2f}s after Redis resumed (bound 1.5 s)"
        assert writer.stats().pending_invalidations == 0


# ------------------------------------------------------------------------------------- shutdown


async def test_close_publishes_queued_invalidations_when_redis_answers_within_its_deadline(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """A service stopped while Redis was unreachable must not take its queued invalidations with it: close()
    keeps trying (past the breaker) within its deadline, so the other instances learn of the write (item 9)."""
    db = Database(BY_KEY)
    settings = settings_for(redis_server, namespace, protocol)
    async with running_caches(settings, count=1) as (reader,):
        writer = HybridCache(settings)
        await writer.start()
        assert await writer.wait_until_connected(5.0)
        await warm_l1(reader, db, BY_KEY)
        await warm_l1(writer, db, BY_KEY)
        redis_server.pause()
        try:
            db.bump(BY_KEY)
            await writer.remove(BY_KEY)
            assert writer.stats().pending_invalidations == 1
            closing = asyncio.create_task(writer.close(flush_timeout=5.0))
            await asyncio.sleep(0.3)  # the stop arrives while Redis is still frozen
            assert not closing.done(), "close() gave up on the queued invalidation at once"
        finally:
            redis_server.resume()
        await asyncio.wait_for(closing, 6.0)
        assert writer.stats().pending_invalidations == 0

        async def serves_the_write() -> bool:
            return await read(reader, db, BY_KEY) == db.versions[BY_KEY]

        # By the message, or by the resync after the freeze: either way the key is gone from Redis.
        await wait_until(
            serves_the_write,
            timeout=RECOVERY,
            interval=0.02,
            message="the invalidation queued before close() never reached the other instance",
        )


async def test_close_names_what_it_could_not_publish_and_returns_within_its_deadline(
    redis_server: RedisServer, namespace: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(BY_KEY)
    writer = HybridCache(settings_for(redis_server, namespace, protocol))
    await writer.start()
    assert await writer.wait_until_connected(5.0)
    await warm_l1(writer, db, BY_KEY)
    redis_server.pause()
    try:
        await writer.remove(BY_KEY)
        await writer.remove_by_tag(TAG)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="hybridcache"):
            await asyncio.wait_for(writer.close(flush_timeout=0.5), 5.0)
        took = time.monotonic() - started
    finally:
        redis_server.resume()
    assert took < 0.5 + 1.0, f"close() took {took:.2f}s with a 0.5 s flush deadline"
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Closing with 2 invalidation(s)")]
    assert lost, "close() dropped queued invalidations without a word"
    assert f"{namespace}:v1:{BY_KEY}" in lost[0]
    assert f"t:{TAG}" in lost[0]


async def test_close_returns_even_when_it_races_a_heartbeat(
    redis_server: RedisServer, namespace: str, protocol: int
) -> None:
    """``close()`` cancels the backplane task. On Python 3.11 a cancellation that lands just as redis-py's socket
    write completes is swallowed (its ``send_packed_command`` wraps the write in ``asyncio.wait_for``,
    CPython gh-86296), and the heartbeat writes a PING every interval: the loop must still end. A 1 ms heartbeat
    and closes spread over the cycle make the race frequent (about one close in four before the fix)."""
    fast = BackplaneSettings(heartbeat_interval_seconds=0.001, heartbeat_timeout_seconds=0.3)
    settings = settings_for(redis_server, namespace, protocol, backplane=fast)
    attempts, hung = 0, 0
    where: list[str] = []
    while attempts < 150 and hung < 3:
        attempts += 1
        cache = HybridCache(settings)
        await cache.start()
        assert await cache.wait_until_connected(5.0)
        await asyncio.sleep(0.005 + (attempts % 23) * 0.0001)  # land the close at varying points of the cycle
        backplane_task = backplane_of(cache)._task
        closing = asyncio.create_task(cache.close())
        # A swallowed cancellation hangs for ever; a close that retries its cancel may take a few tenths.
        done, _ = await asyncio.wait([closing], timeout=2.0)
        if not done:
            hung += 1
            where.append(await_chain(closing))
            for _ in range(50):  # unstick it, so that this test fails instead of hanging
                assert backplane_task is not None
                backplane_task.cancel()
                done, _ = await asyncio.wait([closing], timeout=0.1)
                if done:
                    break
    assert hung == 0, f"close() hung in {hung} of {attempts} attempts, waiting in: {where}"


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where a suspended task is waiting: its coroutine's frames along ``cr_await`` (get_stack() stops at one)."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(frames) < 30:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " -> ".join(frames)
