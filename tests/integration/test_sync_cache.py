"""Issue 17: the sync API (``hybridcache.sync.SyncHybridCache``) on real Redis, from threads.

The contract of the async cache, called from plain threads: reads, writes, invalidation across instances, the
decorator for plain functions. Then what is particular to threads: an L1 hit served without the loop, single
flight across threads (32 threads missing one key run the factory once), the factory run in the calling thread
(its thread-locals and context variables, nested calls without deadlock), timeouts, errors, and the lifecycle
(lazy start, close, reuse, ``atexit``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from hybridcache import CacheConnectionError, CacheSettings, FactoryTimeoutError
from hybridcache.sync import CALL_TASK_NAME, FactoryInterruptedError, LoopClosedError, SyncHybridCache, cached
from tests.integration.conftest import L1_ONLY, L2_ONLY, CacheEnv
from tests.support.waiting import wait_until_sync

PROPAGATION_DEADLINE = 0.05  # seconds, as tests/integration/test_invalidation.py holds the async cache to
WAIT = 10.0  # seconds: how long any test waits for a thread, a future or a condition before failing


class User(BaseModel):
    id: int
    name: str


MakeSync = Callable[..., SyncHybridCache]


@pytest.fixture
def make_sync(cache_env: CacheEnv) -> Iterator[MakeSync]:
    """``make_sync(redis=True, memory=None, **overrides)``: a started sync cache (its subscription confirmed when
    it has Redis); every one is closed at teardown."""
    caches: list[SyncHybridCache] = []

    def make(*, redis: bool = True, memory: dict[str, Any] | None = None, **overrides: Any) -> SyncHybridCache:
        cache = SyncHybridCache(cache_env.settings(redis=redis, memory=memory, **overrides))
        caches.append(cache)
        cache.start()
        assert cache.wait_until_connected(5.0), "invalidation channel not confirmed"
        return cache

    try:
        yield make
    finally:
        for cache in caches:
            cache.close()


@pytest.fixture
def sync_cache(cache_mode: str, make_sync: MakeSync) -> SyncHybridCache:
    """A started sync cache of this test's mode (L1-only, L2-only, L1+L2)."""
    memory = {"enabled": False} if cache_mode == L2_ONLY else None
    return make_sync(redis=cache_mode != L1_ONLY, memory=memory)


class Counting:
    """A plain factory that returns ``value`` (or raises ``error``) and records the thread of each run."""

    def __init__(self, value: Any = "value", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.threads: list[str] = []

    @property
    def runs(self) -> int:
        return len(self.threads)

    def __call__(self) -> Any:
        self.threads.append(threading.current_thread().name)
        if self.error is not None:
            raise self.error
        return self.value


def calls_in_flight(cache: SyncHybridCache) -> int:
    """How many sync calls are on the cache's loop right now (each missed L1 and waits there)."""
    loop = cache.internals.loop
    assert loop is not None

    async def count() -> int:
        return sum(1 for task in asyncio.all_tasks() if task.get_name() == CALL_TASK_NAME)

    return asyncio.run_coroutine_threadsafe(count(), loop).result(WAIT)


def never() -> Any:
    raise AssertionError("the factory ran, but the value was cached")


# ---------------------------------------------------------------------------------------------- the contract


def test_get_or_create_computes_once_then_serves_the_cached_value(sync_cache: SyncHybridCache) -> None:
    factory = Counting({"id": 42})
    assert sync_cache.get_or_create("Dealership:42", factory, ttl=timedelta(minutes=5)) == {"id": 42}
    assert sync_cache.get_or_create("Dealership:42", never) == {"id": 42}
    assert factory.runs == 1
    stats = sync_cache.stats()
    assert (stats.misses, stats.handler_runs, stats.l1_hits + stats.l2_hits) == (1, 1, 1)


def test_none_is_cached_and_differs_from_a_miss(sync_cache: SyncHybridCache) -> None:
    assert sync_cache.get_or_create("Missing:1", Counting(None)) is None
    assert sync_cache.get_or_create("Missing:1", never) is None
    assert sync_cache.get("Never:set", default="absent") == "absent"


def test_get_set_and_the_three_removals(sync_cache: SyncHybridCache) -> None:
    sync_cache.set("A:1", "one", tags=("t",))
    sync_cache.set("A:2", "two")
    sync_cache.set("B:1", "three")
    assert [sync_cache.get(k) for k in ("A:1", "A:2", "B:1")] == ["one", "two", "three"]
    sync_cache.remove("A:2")
    assert sync_cache.get("A:2") is None
    sync_cache.remove_by_tag("t")
    assert sync_cache.get("A:1") is None
    sync_cache.remove_by_prefix("B")
    assert sync_cache.get("B:1") is None
    sync_cache.set("C:1", "four")
    sync_cache.clear()
    assert sync_cache.get("C:1") is None
    assert sync_cache.invalidate(keys=["X:1"], prefixes=["Y"], tags=["z"]) is True


def test_a_factory_error_reaches_the_caller_and_nothing_is_cached(sync_cache: SyncHybridCache) -> None:
    with pytest.raises(ValueError, match="boom"):
        sync_cache.get_or_create("Failing:1", Counting(error=ValueError("boom")))
    assert sync_cache.get_or_create("Failing:1", Counting("recovered")) == "recovered"
    assert sync_cache.stats().factory_errors == 1


def test_an_async_factory_is_refused(sync_cache: SyncHybridCache) -> None:
    async def load() -> str:
        return "x"

    with pytest.raises(TypeError, match="plain factory"):
        sync_cache.get_or_create("Async:1", load)
    with pytest.raises(TypeError, match="awaitable"):
        sync_cache.get_or_create("Async:2", lambda: load())
    assert sync_cache.get("Async:2") is None


def test_l2_values_come_back_as_the_declared_type(make_sync: MakeSync) -> None:
    writer = make_sync()
    reader = make_sync(memory={"enabled": False})
    writer.get_or_create("User:7", lambda: User(id=7, name="ann"), type_=User)
    assert reader.get_or_create("User:7", never, type_=User) == User(id=7, name="ann")
    assert reader.get("User:7", type_=User) == User(id=7, name="ann")
    assert reader.stats().l2_hits == 2


def test_an_invalidation_reaches_another_instance_within_the_propagation_deadline(make_sync: MakeSync) -> None:
    writer, other = make_sync(), make_sync()
    for key in ("Item:1", "Item:Search:a", "Tagged:1"):
        assert other.get_or_create(key, Counting("old"), tags=("t",)) == "old"
        assert other.get_or_create(key, never) == "old"  # an L1 hit on the other instance
    for invalidate, key in (
        (lambda: writer.remove("Item:1"), "Item:1"),
        (lambda: writer.remove_by_prefix("Item:Search"), "Item:Search:a"),
        (lambda: writer.remove_by_tag("t"), "Tagged:1"),
    ):
        invalidate()
        returned = time.monotonic()
        assert writer.get_or_create(key, Counting("new"), tags=("t",)) == "new", "the writer served the old value"
        wait_until_sync(
            lambda key=key: other.get_or_create(key, Counting("new"), tags=("t",)) == "new",
            timeout=max(0.0, returned + PROPAGATION_DEADLINE - time.monotonic()),
            interval=0.001,
            message=f"{key} still served old by the other instance",
        )
    assert other.stats().invalidations_received == 3


# ---------------------------------------------------------------------------------------------- threads


def test_an_l1_hit_is_served_in_the_calling_thread_while_the_loop_is_blocked(make_sync: MakeSync) -> None:
    cache = make_sync()
    assert cache.get_or_create("Item:1", Counting("v")) == "v"
    loop = cache.internals.loop
    assert loop is not None
    held, release = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (held.set(), release.wait(WAIT)))
    assert held.wait(WAIT), "the loop never ran the blocking callback"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            assert cache.get_or_create("Item:1", never) == "v"
            assert cache.get("Item:1") == "v"
            miss = pool.submit(cache.get_or_create, "Item:2", Counting("w"))
            done, _ = concurrent.futures.wait([miss], timeout=0.2)
            assert not done, "a miss was answered while the loop was blocked: it did not go through the loop"
        finally:
            release.set()
        assert miss.result(WAIT) == "w"
    assert cache.stats().l1_hits == 2


def test_32_threads_missing_one_key_together_run_the_factory_once(sync_cache: SyncHybridCache) -> None:
    """All 32 calls are on the loop at once while the (single) factory runs: it waits until it sees them."""
    threads = 32
    runs: list[str] = []

    def factory() -> dict[str, int]:
        runs.append(threading.current_thread().name)
        wait_until_sync(
            lambda: calls_in_flight(sync_cache) == threads,
            timeout=WAIT,
            interval=0.002,
            message="all 32 calls waiting on the loop",
        )
        return {"answer": 42}

    start = threading.Barrier(threads, timeout=WAIT)

    def call() -> Any:
        start.wait()
        return sync_cache.get_or_create("Shared:1", factory, ttl=60)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = [future.result(WAIT * 2) for future in [pool.submit(call) for _ in range(threads)]]
    assert results == [{"answer": 42}] * threads
    assert len(runs) == 1, runs
    assert runs[0].startswith("ThreadPoolExecutor"), "the factory ran in the leading caller's thread"
    stats = sync_cache.stats()
    assert (stats.handler_runs, stats.misses) == (1, 1)


def test_an_error_reaches_every_thread_that_shared_the_load(make_sync: MakeSync) -> None:
    cache = make_sync()
    threads = 8

    def factory() -> Any:
        wait_until_sync(lambda: calls_in_flight(cache) == threads, timeout=WAIT, message="8 calls on the loop")
        raise LookupError("not found")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(cache.get_or_create, "Failing:1", factory) for _ in range(threads)]
        errors = [future.exception(WAIT * 2) for future in futures]
    assert all(isinstance(error, LookupError) for error in errors), errors
    assert cache.stats().factory_errors == 1


def test_the_factory_runs_in_the_calling_thread_with_its_locals_and_context(make_sync: MakeSync) -> None:
    cache = make_sync()
    local = threading.local()
    local.connection = "this thread's connection"
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("r-1")
    seen: list[Any] = []

    def factory() -> str:
        seen.append((threading.get_ident(), getattr(local, "connection", None), request_id.get(None)))
        return "v"

    assert cache.get_or_create("Item:1", factory) == "v"
    assert seen == [(threading.get_ident(), "this thread's connection", "r-1")]


def test_factories_that_call_the_cache_do_not_deadlock(make_sync: MakeSync) -> None:
    """Three levels of nested misses from 16 threads at once: each factory's calls run in its own thread."""
    cache = make_sync()

    def level(depth: int, n: int) -> int:
        if depth == 0:
            return n
        below = [cache.get_or_create(f"L{depth - 1}:{n}:{i}", lambda i=i: level(depth - 1, n + i)) for i in range(2)]
        return sum(below)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(cache.get_or_create, f"L3:{n % 4}", lambda n=n: level(3, n % 4)) for n in range(16)]
        results = [future.result(WAIT * 3) for future in futures]
    assert results == [level(3, n % 4) for n in range(16)]


def test_with_a_timeout_the_caller_returns_at_it_and_the_factory_finishes_in_its_own_thread(
    make_sync: MakeSync,
) -> None:
    cache = make_sync()
    release = threading.Event()
    threads: list[str] = []

    def slow() -> str:
        threads.append(threading.current_thread().name)
        release.wait(WAIT)
        return "late"

    started = time.monotonic()
    with pytest.raises(FactoryTimeoutError):
        cache.get_or_create("Slow:1", slow, hard_timeout=0.2)
    assert time.monotonic() - started < 2.0, "the caller waited for the factory, not for its timeout"
    release.set()
    wait_until_sync(lambda: cache.get("Slow:1") == "late", timeout=WAIT, message="the late result stored")
    assert threads == ["hybridcache-factory"]


def test_an_eager_refresh_runs_the_factory_in_a_thread_of_its_own(make_sync: MakeSync) -> None:
    cache = make_sync()
    factory = Counting("v")
    cache.get_or_create("Hot:1", factory, ttl=0.6, eager_refresh=0.2)
    wait_until_sync(
        lambda: cache.get_or_create("Hot:1", factory, ttl=0.6, eager_refresh=0.2) == "v" and factory.runs >= 2,
        timeout=WAIT,
        interval=0.02,
        message="an eager refresh ran",
    )
    assert factory.threads[1] == "hybridcache-factory", factory.threads
    assert cache.stats().eager_refreshes >= 1


def test_calling_the_sync_cache_from_its_own_loop_is_an_error(make_sync: MakeSync) -> None:
    cache = make_sync()
    loop = cache.internals.loop
    assert loop is not None

    async def inside() -> None:
        cache.remove("Item:1")

    with pytest.raises(RuntimeError, match="own event loop"):
        asyncio.run_coroutine_threadsafe(inside(), loop).result(WAIT)


# ---------------------------------------------------------------------------------------------- the decorator


def test_the_decorator_caches_a_plain_function_by_its_arguments(make_sync: MakeSync) -> None:
    cache = make_sync()
    calls: list[int] = []

    @cache.cached(key="User:{user_id}", tags=("users",))
    def get_user(user_id: int, verbose: bool = False) -> User:
        calls.append(user_id)
        return User(id=user_id, name=f"user {user_id}")

    assert get_user(7) == User(id=7, name="user 7")
    assert get_user(user_id=7) == User(id=7, name="user 7")
    assert calls == [7]
    assert get_user.key_for(7) == "User:7"
    get_user.invalidate(7)
    assert get_user(7) == User(id=7, name="user 7")
    assert calls == [7, 7]
    cache.remove_by_tag("users")
    get_user(7)
    assert calls == [7, 7, 7]
    assert get_user.uncached(8) == User(id=8, name="user 8")
    assert get_user.__name__ == "get_user"


def test_the_decorator_decodes_l2_hits_as_the_return_annotation(make_sync: MakeSync) -> None:
    writer, reader = make_sync(), make_sync(memory={"enabled": False})

    def define(cache: SyncHybridCache) -> Callable[[int], User]:
        @cache.cached(key="User:{user_id}")
        def get_user(user_id: int) -> User:
            return User(id=user_id, name="from the factory")

        return get_user

    assert define(writer)(3) == User(id=3, name="from the factory")
    assert define(reader)(3) == User(id=3, name="from the factory")
    assert reader.stats().l2_hits == 1


def test_the_decorator_binds_methods_and_resolves_a_cache_given_later(make_sync: MakeSync) -> None:
    holder: dict[str, SyncHybridCache] = {}

    class Repository:
        tenant = "acme"

        @cached("Orders:{self.tenant}:{customer}", cache=lambda: holder["cache"])
        def orders(self, customer: str) -> list[str]:
            return [f"{self.tenant}/{customer}"]

    holder["cache"] = make_sync()
    repository = Repository()
    assert repository.orders("c 1") == ["acme/c 1"]
    assert repository.orders.key_for("c 1") == "Orders:acme:c%201"
    assert holder["cache"].get("Orders:acme:c%201") == ["acme/c 1"]
    repository.orders.invalidate("c 1")
    assert holder["cache"].get("Orders:acme:c%201") is None


def test_the_sync_decorator_refuses_async_functions_and_the_async_one_plain_functions(make_sync: MakeSync) -> None:
    cache = make_sync(redis=False)

    with pytest.raises(TypeError, match="plain function"):

        @cache.cached(key="A:{x}")
        async def coroutine_function(x: int) -> int:
            return x

    with pytest.raises(ValueError, match="not a parameter"):

        @cache.cached(key="A:{y}")
        def misnamed(x: int) -> int:
            return x


# ---------------------------------------------------------------------------------------------- lifecycle


def test_nothing_starts_before_the_first_call_and_close_stops_the_thread(cache_env: CacheEnv) -> None:
    cache = SyncHybridCache(cache_env.settings())
    try:
        assert cache.internals.thread is None, "the loop thread started before any call"
        assert cache.get_or_create("Item:1", Counting("v")) == "v"
        thread = cache.internals.thread
        assert thread is not None
        assert thread.is_alive()
    finally:
        cache.close()
    assert not thread.is_alive()
    assert cache.internals.thread is None


def test_a_closed_cache_starts_again_with_an_empty_l1_and_a_new_instance(cache_env: CacheEnv) -> None:
    with SyncHybridCache(cache_env.settings(memory={"enabled": True})) as cache:
        first = cache.instance_id
        cache.get_or_create("Item:1", Counting("v"))
    assert cache.stats().l1_entries == 0, "closed: no thread may be served the old L1"
    with cache:
        assert cache.instance_id != first
        assert cache.get_or_create("Item:1", never) == "v", "from L2"
        assert cache.stats().l2_hits == 1


def test_an_unreachable_redis_with_abort_connect_fails_start_and_leaves_no_thread() -> None:
    from harness.redis_server import find_free_port

    port = find_free_port()
    settings = CacheSettings(
        service_name="sync-unreachable",
        configuration=f"127.0.0.1:{port},abortConnect=true,connectTimeout=200",
    )
    before = {t.name for t in threading.enumerate()}
    cache = SyncHybridCache(settings)
    with pytest.raises(CacheConnectionError):
        cache.start()
    assert cache.internals.thread is None
    assert {t.name for t in threading.enumerate()} - before == set()


def test_the_atexit_hook_closes_a_cache_the_program_forgot_to_close(cache_env: CacheEnv, tmp_path: Any) -> None:
    """A process that uses the cache and exits without close(): its instance report is withdrawn from Redis (what
    close() does). The same process leaving by ``os._exit`` (no exit hooks) leaves it, which shows the check can
    fail."""
    program = textwrap.dedent(
        f"""
        import os, sys
        from hybridcache import CacheSettings
        from hybridcache.sync import SyncHybridCache
        cache = SyncHybridCache(CacheSettings(
            service_name={cache_env.service_name!r}, configuration={cache_env.redis_url!r}, instance_name="hc-test:"
        ))
        cache.get_or_create("Item:1", lambda: "v")
        print(cache.instance_id, flush=True)
        if sys.argv[1] == "hard":
            os._exit(0)
        """
    )
    script = tmp_path / "forgetful.py"
    script.write_text(program)
    client = redis.Redis.from_url(cache_env.redis_url, socket_timeout=5)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        for how, withdrawn in (("normal", True), ("hard", False)):
            done = subprocess.run(
                [sys.executable, str(script), how], capture_output=True, text=True, timeout=60, env=environment
            )
            assert done.returncode == 0, done.stderr
            instance = done.stdout.strip()
            report = f"{{hc-test:hybridcache:{cache_env.service_name}:v1:}}instance:{instance}"
            assert (client.exists(report) == 0) is withdrawn, f"{how} exit: report present={client.exists(report)}"
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------- interruptions


def test_a_factory_interrupted_in_its_thread_fails_the_others_and_the_cache_goes_on(make_sync: MakeSync) -> None:
    """KeyboardInterrupt in the leader's factory: the leader gets it; the threads that shared the load get
    FactoryInterruptedError (never a KeyboardInterrupt on the loop's thread, which would stop the loop)."""
    cache = make_sync()
    followers = 4

    def factory() -> str:
        wait_until_sync(lambda: calls_in_flight(cache) == followers + 1, timeout=WAIT, message="all calls in flight")
        raise KeyboardInterrupt

    leader_outcome: list[BaseException] = []

    def lead() -> None:
        try:
            cache.get_or_create("Item:1", factory)
        except BaseException as exc:
            leader_outcome.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    wait_until_sync(lambda: calls_in_flight(cache) == 1, timeout=WAIT, message="the leader's call on the loop")
    with concurrent.futures.ThreadPoolExecutor(followers) as pool:
        futures = [pool.submit(cache.get_or_create, "Item:1", never) for _ in range(followers)]
        errors = [future.exception(WAIT) for future in futures]
    leader.join(WAIT)
    assert [type(e) for e in leader_outcome] == [KeyboardInterrupt]
    assert all(isinstance(e, FactoryInterruptedError) for e in errors), errors
    assert cache.get_or_create("Item:1", Counting("after")) == "after"


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_caller_interrupted_while_waiting_leaves_the_load_to_the_others(make_sync: MakeSync) -> None:
    """The main thread waits for a load another thread runs; a signal interrupts it (as Ctrl-C would). Its call
    ends; the load completes for the thread running it, and the value is cached."""
    cache = make_sync()
    release = threading.Event()

    def factory() -> str:
        release.wait(WAIT)
        return "v"

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        leader = pool.submit(cache.get_or_create, "Item:1", factory)
        wait_until_sync(lambda: calls_in_flight(cache) == 1, timeout=WAIT, message="the leader's call on the loop")

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                cache.get_or_create("Item:1", never)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        wait_until_sync(lambda: calls_in_flight(cache) == 1, timeout=WAIT, message="the interrupted call ended")
        release.set()
        assert leader.result(WAIT) == "v"
    assert cache.get_or_create("Item:1", never) == "v"


def test_calls_racing_close_all_end_with_a_value_or_loop_closed(cache_env: CacheEnv) -> None:
    """8 threads miss distinct keys while the cache is closed 5 times (each call after a close starts it again):
    every call ends, with its value or LoopClosedError, never hanging on a loop that stopped under it."""
    cache = SyncHybridCache(cache_env.settings())
    stop = threading.Event()
    outcomes: list[str] = []
    unexpected: list[BaseException] = []

    def hammer(n: int) -> None:
        for i in range(5_000):
            if stop.is_set():
                return
            try:
                assert cache.get_or_create(f"K:{n}:{i}", lambda i=i: i) == i
                outcomes.append("value")
            except LoopClosedError:
                outcomes.append("closed")
            except BaseException as exc:
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        for closes in range(5):
            wait_until_sync(lambda c=closes: len(outcomes) > 50 * (c + 1), timeout=WAIT, message="calls going on")
            cache.close(flush_timeout=0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        cache.close()
    assert not [t.name for t in threads if t.is_alive()], "a call hung across close()"
    assert not unexpected, unexpected[:3]
    print(f"outcomes: {outcomes.count('value')} values, {outcomes.count('closed')} closed")
    assert outcomes.count("value") > 250
