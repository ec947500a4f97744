"""Issue 17: the sync cache across ``os.fork`` (gunicorn, uWSGI and Celery prefork workers).

A gunicorn-style prefork: the parent creates the sync cache and uses it (its loop thread runs, its connections
and subscription are open, its L1 holds entries), then forks 4 workers. Each worker must use none of that: it
starts with an empty L1 and no loop, opens its own connections on first use (its ``CLIENT ID`` differs from the
parent's and from every other worker's; Redis counts one subscriber per process), and an invalidation made by one
worker reaches the others and the parent. The parent's own connections keep working throughout and after the
workers have exited (its request connection is the same one, its subscriber still receives), even though every
worker ran the garbage collector over what it inherited.

Workers talk to the test over pipes (``tests/support/forking.py``); every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import redis

from hybridcache._loop_thread import abandoned
from hybridcache.sync import SyncHybridCache
from tests.integration.conftest import CacheEnv
from tests.support.forking import Channel, forked, reap
from tests.support.waiting import wait_until_sync

WORKERS = 4
WAIT = 15.0  # seconds any step may take before the test fails
PROPAGATION_BOUND = 0.05  # seconds, as for the async cache (tests/integration/test_invalidation.py)


def on_loop(cache: SyncHybridCache, coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``coroutine()`` on the cache's own loop (its clients belong to that loop)."""
    loop = cache.internals.loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(coroutine(), loop).result(WAIT)


def client_id(cache: SyncHybridCache) -> int:
    """``CLIENT ID`` of a connection of the cache's request pool: which socket it talks to Redis on."""
    client = cache.internals.core.internals.client
    assert client is not None
    return int(on_loop(cache, client.client_id))


def subscribers(raw: redis.Redis, cache: SyncHybridCache) -> int:
    l2 = cache.internals.core.internals.l2
    assert l2 is not None
    ((_, count),) = raw.pubsub_numsub(l2.channel)
    return int(count)


# ---------------------------------------------------------------------------------------------- the test


def test_prefork_workers_get_their_own_loop_and_connections_and_see_each_others_invalidations(
    cache_env: CacheEnv,
) -> None:
    raw = redis.Redis.from_url(cache_env.redis_url, socket_timeout=5)
    raw.set("truth:Shared:1", 1)

    def read_truth() -> int:
        return int(raw.get("truth:Shared:1"))  # type: ignore[arg-type]

    parent = SyncHybridCache(cache_env.settings())
    try:
        assert parent.get_or_create("Item:1", lambda: "stored by the parent", ttl=300) == "stored by the parent"
        assert parent.get_or_create("Shared:1", read_truth) == 1
        parent_client = client_id(parent)
        parent_instance = parent.instance_id
        # Only a weak reference: a strong one would keep the parent's loop alive in the workers whatever the cache
        # does, and hide what the garbage collector would do to it there.
        parent_thread = weakref.ref(parent.internals.thread)  # type: ignore[arg-type]
        assert parent.stats().l1_entries == 2

        def worker(index: int, channel: Channel) -> None:
            # What the fork hook left: a fresh core, no loop, nothing of the parent's in reach.
            inherited = {
                "thread": parent.internals.thread is None,
                "l1_entries": parent.stats().l1_entries,
                "new_instance": parent.instance_id != parent_instance,
                "kept_untouched": abandoned(),
            }
            gc.collect()  # nothing inherited may be finalized (closing it would act on the parent's epoll set)
            from_l2 = parent.get_or_create("Item:1", lambda: "recomputed in a worker")
            shared = parent.get_or_create("Shared:1", read_truth)
            l1_hits = parent.stats().l1_hits
            again = parent.get_or_create("Shared:1", read_truth)
            assert parent.internals.thread is not None
            channel.send(
                pid=os.getpid(),
                inherited=inherited,
                client_id=client_id(parent),
                instance=parent.instance_id,
                from_l2=from_l2,
                shared=[shared, again],
                l1_hit=parent.stats().l1_hits == l1_hits + 1,
                loop_thread_alive=parent.internals.thread.is_alive(),
                parent_thread_seen=(thread := parent_thread()) is not None and thread.is_alive(),
            )
            command = channel.receive()
            if command["do"] == "invalidate":
                parent.remove("Shared:1")
                channel.send(done=time.monotonic())
            else:  # "watch": read until the new value shows, recording when each read started
                reads: list[tuple[float, int]] = []
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    value = parent.get_or_create("Shared:1", read_truth)
                    reads.append((started, value))
                    if value == 2:
                        break
                    time.sleep(0.001)
                channel.send(reads=reads, received=parent.stats().invalidations_received)
            assert channel.receive()["do"] == "exit"
            parent.close()  # the worker's own connections; the parent's stay open
            channel.send(closed=True)

        with forked(WORKERS, worker) as workers:
            reports = [channel.receive() for _, channel in workers]
            for report in reports:
                assert report["inherited"]["thread"], "the worker inherited the parent's loop thread object"
                assert report["inherited"]["l1_entries"] == 0, "the worker could serve the parent's L1"
                assert report["inherited"]["new_instance"], "the worker kept the parent's instance id"
                assert report["inherited"]["kept_untouched"] >= 2, "the parent's loop and core were not kept"
                assert report["from_l2"] == "stored by the parent"
                assert report["shared"] == [1, 1]
                assert report["l1_hit"], "the second read was not an L1 hit in the worker"
                assert report["loop_thread_alive"]
                assert not report["parent_thread_seen"], "the parent's loop thread does not exist in a child"
            ids = [parent_client] + [report["client_id"] for report in reports]
            assert len(set(ids)) == WORKERS + 1, f"a worker talks to Redis on the parent's socket: {ids}"
            instances = {parent_instance} | {report["instance"] for report in reports}
            assert len(instances) == WORKERS + 1
            assert subscribers(raw, parent) == WORKERS + 1, "each process subscribes on its own connection"

            # One worker writes; the others (and the parent) must drop their L1 copy.
            raw.set("truth:Shared:1", 2)
            writer, watchers = workers[0], workers[1:]
            writer[1].send(do="invalidate")
            done = writer[1].receive()["done"]
            for _, channel in watchers:
                channel.send(do="watch")
            watched = [channel.receive() for _, channel in watchers]
            for report in watched:
                reads = report["reads"]
                assert reads[-1][1] == 2, f"a worker never saw the invalidation: {reads[-3:]}"
                late = [(started - done, value) for started, value in reads if value == 1 and started > done]
                assert all(delay <= PROPAGATION_BOUND for delay, _ in late), f"stale past the bound: {late}"
                assert report["received"] == 1
            wait_until_sync(
                lambda: parent.get_or_create("Shared:1", read_truth) == 2,
                timeout=PROPAGATION_BOUND,
                interval=0.001,
                message="the parent still serves what a worker invalidated",
            )
            for _, channel in workers:
                channel.send(do="exit")
            assert all(channel.receive()["closed"] for _, channel in workers)

        # The workers are gone (each closed its own cache and exited): the parent's sockets are untouched.
        wait_until_sync(lambda: subscribers(raw, parent) == 1, timeout=WAIT, message="only the parent subscribes")
        assert client_id(parent) == parent_client, "the parent's request connection was replaced"
        parent.set("Item:2", "after the workers")
        assert parent.get("Item:2") == "after the workers"
        received = parent.stats().invalidations_received
        with SyncHybridCache(cache_env.settings()) as neighbour:
            neighbour.remove("Item:2")
        wait_until_sync(
            lambda: parent.stats().invalidations_received == received + 1,
            timeout=WAIT,
            message="the parent's subscriber no longer receives",
        )
        assert parent.get("Item:2") is None
    finally:
        parent.close()
        raw.close()


def test_a_fork_that_skips_pythons_hooks_is_repaired_by_after_fork_or_by_the_first_miss(cache_env: CacheEnv) -> None:
    """libc's fork called directly (as a server forking in C may): no at-fork hook runs. Until it is repaired the
    child's L1 hits come from the parent's copy (the documented gap); ``after_fork()`` repairs it at once, and so
    does the first call that misses L1 (its pid check). Either way the child then uses its own loop."""
    fork = ctypes.PyDLL(None).fork  # a PyDLL keeps the GIL held across the call, as os.fork does
    parent = SyncHybridCache(cache_env.settings())
    try:
        parent.get_or_create("Item:1", lambda: "parent's")
        parent_client = client_id(parent)
        for repair in ("after_fork", "first miss"):
            read_fd, write_fd = os.pipe()
            pid = fork()
            if pid == 0:
                code = 0
                try:
                    channel = Channel(read_fd, write_fd)
                    try:
                        before = parent.get("Item:1")  # an L1 hit on the inherited copy: nothing repaired yet
                        if repair == "after_fork":
                            parent.after_fork()
                            repaired_l1 = parent.stats().l1_entries
                        else:
                            parent.get_or_create("Other:1", lambda: "child's")  # a miss: the slow path
                            repaired_l1 = parent.stats().l1_entries - 1  # minus Other:1 itself
                        channel.send(
                            before=before,
                            repaired_l1=repaired_l1,
                            value=parent.get_or_create("Item:1", lambda: "recomputed"),
                            client_id=client_id(parent),
                        )
                    except BaseException:
                        channel.send(error=traceback.format_exc())
                        code = 1
                finally:
                    os._exit(code)
            try:
                report = Channel(read_fd, write_fd).receive()
            finally:
                os.close(read_fd)
                os.close(write_fd)
                reap(pid, within=5.0)
            assert report["before"] == "parent's"
            assert report["repaired_l1"] == 0, f"{repair}: the parent's L1 copy is still in reach"
            assert report["value"] == "parent's", f"{repair}: read back from L2 by the child"
            assert report["client_id"] != parent_client, f"{repair}: the child talks on the parent's socket"
        assert client_id(parent) == parent_client
        assert parent.get_or_create("Item:1", never_called) == "parent's"
    finally:
        parent.close()


def never_called() -> Any:
    raise AssertionError("the factory ran, but the value was cached")
