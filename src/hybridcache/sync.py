"""The cache for synchronous code (threads): :class:`SyncHybridCache`, over the same core as the async API.

A :class:`SyncHybridCache` wraps one :class:`~hybridcache.HybridCache`, run by an event loop in a daemon
thread the sync cache owns, started on first use. Everything the async API guarantees (single flight, no stale
set, bounded staleness, the backplane, the circuit breaker) is the core's, unchanged; this module only decides
which thread does what (docs/sync.md has the whole argument and the measured cost):

* **An L1 hit is served in the calling thread**, without touching the loop: ``HybridCache._l1_hit_in_thread``,
  a read-only lookup that serves only entries the loop has validated against the current generations.
* **Everything else runs on the loop** (misses, L2, writes, the backplane): the call is handed over as a task and
  the calling thread blocks until it ends. So all threads share the core's single flight: however many threads
  miss one key together, one factory runs.
* **The factory runs in the thread that called**, when that thread leads the load: the loop asks it (through
  the call's inbox) to run the factory, and carries on meanwhile. A factory may itself use the cache (its
  calls are new calls from its own thread); it sees its thread's locals (a Django or SQLAlchemy connection, a
  Flask context) and its context variables; and no pool of factory threads can run dry. Two cases run the
  factory in a new daemon thread of its own instead: a call with a factory timeout (soft, hard or a default in
  ``FailSafe``), so that its caller can return at the timeout while the factory finishes; and a load nobody
  waits for (an eager refresh).
* **Fork**: a child process (gunicorn, uWSGI or Celery prefork workers) never uses what it inherited: a hook
  (``os.register_at_fork``) gives every sync cache in the child a new core (empty L1, a new instance id) and no
  loop; the first call starts the child's own loop and connections. The parent's loop, sockets and core are
  kept referenced and untouched in the child, never closed (closing would act on the parent's epoll set), so
  the parent's connections keep working. A server that forks in C without running Python's at-fork hooks
  (some uWSGI versions) must call :meth:`SyncHybridCache.after_fork` in each worker (``@postfork``); the first
  call that misses L1 checks the pid and repairs it too, but until then L1 hits could be served from the
  parent's copy (a pid check per hit would cost a system call, about 150 ns here, on a 380 ns hit).
* **Lifecycle**: started lazily (or by :meth:`SyncHybridCache.start` / ``with``); :meth:`SyncHybridCache.close`
  publishes what is queued, closes the connections and stops the thread; an ``atexit`` hook closes every sync
  cache still open when the interpreter exits.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import inspect
import os
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Generic, ParamSpec, Self, TypeVar

from hybridcache._core.pending import DEFAULT_CLOSE_FLUSH_TIMEOUT
from hybridcache._loop_thread import LoopClosedError, LoopThread, keep_forever, result_of
from hybridcache.cache import HybridCache, TtlLike
from hybridcache.decorators import _UNRESOLVED, L1_MISS, SyncCachedFunction, cached_sync
from hybridcache.errors import HybridCacheError
from hybridcache.metrics import CacheStats
from hybridcache.settings import CacheSettings

__all__ = ["FactoryInterruptedError", "LoopClosedError", "SyncHybridCache", "SyncInternals", "cached"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

cached: Final = cached_sync
"""``@cached("User:{user_id}", cache=lambda: app.cache)``: the module-level form, resolving the cache per call."""

# The name of the loop task carrying each sync call that missed L1 (tests count calls in flight by it).
CALL_TASK_NAME: Final = "hybridcache-sync-call"
# How long the atexit hook lets each cache publish what it still has queued.
_EXIT_FLUSH_TIMEOUT: Final = 1.0
_STOP_TIMEOUT: Final = 10.0


class FactoryInterruptedError(HybridCacheError):
    """A factory was interrupted by ``KeyboardInterrupt`` or ``SystemExit`` in the thread running it: what the
    other callers waiting for that load receive (the interrupted thread gets the original exception)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SyncInternals:
    """What :attr:`SyncHybridCache.internals` shows: the core, and the loop and thread running it (None until
    started). For tests and diagnostics: call the core's coroutines only on ``loop``."""

    core: HybridCache
    loop: Any
    thread: threading.Thread | None


class SyncHybridCache:
    """A two-level cache for synchronous, multi-threaded code; the same settings and guarantees as
    :class:`~hybridcache.HybridCache`. Safe to share between threads; see the module docstring for which
    thread does what."""

    def __init__(
        self, settings: CacheSettings, *, stale_set_protection: bool = True, register_instance: bool = True
    ) -> None:
        """Prefer :meth:`from_settings`. ``stale_set_protection`` and ``register_instance`` as for
        :class:`~hybridcache.HybridCache` (the first exists for tests only). Nothing connects here."""
        self.settings = settings
        self._stale_set_protection = stale_set_protection
        self._register_instance = register_instance
        fail_safe = settings.fail_safe
        self._timed_by_default = (
            fail_safe.factory_soft_timeout is not None or fail_safe.factory_hard_timeout is not None
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._install(self._new_core(), None)
        _track(self)

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> Self:
        """A cache configured by ``settings``; nothing connects until first use (or :meth:`start`)."""
        return cls(settings)

    def _new_core(self) -> HybridCache:
        return HybridCache(
            self.settings, stale_set_protection=self._stale_set_protection, register_instance=self._register_instance
        )

    def _install(self, core: HybridCache, runner: LoopThread | None) -> None:
        # One attribute for both, read in one step by other threads: never a core with another core's loop.
        self._state: tuple[HybridCache, LoopThread | None] = (core, runner)
        # The calling thread's L1 lookup (also what the sync @cached calls): an attribute, not a method that
        # would forward to it, because it is the whole cost of a hit.
        self._l1_hit_value: Callable[[str], Any] = core._l1_hit_in_thread

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the loop thread and connect (what the first call does otherwise); raises as
        :meth:`HybridCache.start` does (``CacheConnectionError`` with ``abortConnect=true``)."""
        self._running()

    def _running(self) -> tuple[HybridCache, LoopThread]:
        core, runner = self._state
        if runner is None or self._pid != os.getpid():
            core, runner = self._start()
        if runner.ident == threading.get_ident():
            raise RuntimeError(
                "SyncHybridCache was called from its own event loop's thread (from a coroutine or callback running"
                " there); use the async HybridCache (SyncHybridCache.internals.core) in async code"
            )
        return core, runner

    def _start(self) -> tuple[HybridCache, LoopThread]:
        if self._pid != os.getpid():
            self._after_fork()  # a fork that bypassed os.register_at_fork's hooks
        with self._lock:
            core, runner = self._state
            if runner is not None:
                return core, runner
            runner = LoopThread(name=f"hybridcache-sync-{core.instance_id}")
            try:
                runner.call(core.start())
            except BaseException:
                with contextlib.suppress(Exception):
                    runner.call(core.close(flush_timeout=0))
                runner.stop(_STOP_TIMEOUT)
                self._install(self._new_core(), None)
                raise
            self._install(core, runner)
            _LIVE.add(self)
            return core, runner

    def close(self, *, flush_timeout: float = DEFAULT_CLOSE_FLUSH_TIMEOUT) -> None:
        """Publish what is still queued (for up to ``flush_timeout`` seconds, as :meth:`HybridCache.close`), close
        the connections and stop the loop thread. Calls still waiting on the loop in other threads raise
        ``LoopClosedError`` (a ``RuntimeError``). The cache can be used again afterwards: it starts anew (empty
        L1) on the next call."""
        with self._lock:
            core, runner = self._state
            if runner is None:
                return
            if runner.ident == threading.get_ident():
                raise RuntimeError("SyncHybridCache.close() was called from its own event loop's thread")
            # From here on other threads neither serve from the old L1 nor reach the old loop.
            self._install(self._new_core(), None)
            _LIVE.discard(self)
        try:
            runner.call(core.close(flush_timeout=flush_timeout))
        finally:
            runner.stop(_STOP_TIMEOUT)

    def _after_fork(self) -> None:
        """In a forked child: a new core and no loop; what the parent had is kept, untouched (module docstring)."""
        core, runner = self._state
        if runner is not None:
            runner.abandon()
        keep_forever(core)
        self._lock = threading.Lock()  # the parent's may have been held by a thread the child does not have
        self._pid = os.getpid()
        self._install(self._new_core(), None)
        _LIVE.discard(self)

    def after_fork(self) -> None:
        """Make a forked child's cache its own (new core, no loop, nothing of the parent's used), if that has not
        happened yet; a no-op in the process that created the cache and in a child already repaired.

        ``os.fork`` runs this by itself (``os.register_at_fork``). Call it from a server's post-fork hook when
        the server forks without running Python's hooks (uWSGI: ``uwsgidecorators.postfork(cache.after_fork)``).
        """
        if self._pid != os.getpid():
            self._after_fork()

    def wait_until_connected(self, timeout: float = 5.0) -> bool:
        """Wait for a confirmed invalidation subscription (True at once when there is no Redis)."""
        core, runner = self._running()
        return runner.call(core.wait_until_connected(timeout))

    # ------------------------------------------------------------------ reads

    def get_or_create(
        self,
        key: str,
        factory: Callable[[], T],
        *,
        ttl: TtlLike | None = None,
        type_: Any = None,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> T:
        """The cached value of ``key``, computing it with ``factory`` (a plain callable) on a miss.

        Options and guarantees as :meth:`HybridCache.get_or_create`: however many threads of this process miss
        ``key`` together, ``factory`` runs once (in the thread of the caller that leads the load; see the
        module docstring for the exceptions) and every one of them gets its result or its exception.
        """
        value = self._l1_hit_value(key)
        if value is not L1_MISS:
            return value  # type: ignore[no-any-return]  # the value factory returned when it was cached
        options = {
            "ttl": ttl,
            "type_": type_,
            "tags": tags,
            "fail_safe": fail_safe,
            "soft_timeout": soft_timeout,
            "hard_timeout": hard_timeout,
            "eager_refresh": eager_refresh,
        }
        timed = soft_timeout is not None or hard_timeout is not None or self._timed_by_default
        return self._load(key, factory, options, in_caller=not timed)

    def _load(self, key: str, factory: Callable[[], T], options: dict[str, Any], *, in_caller: bool) -> T:
        if inspect.iscoroutinefunction(factory):
            raise TypeError("SyncHybridCache needs a plain factory; use HybridCache for coroutine functions")
        core, runner = self._running()
        handoff: _Handoff[T] = _Handoff(factory, runner, in_caller=in_caller)
        return handoff.run(core.get_or_create(key, handoff, **options))

    def get(self, key: str, *, type_: Any = None, default: Any = None) -> Any:
        """The cached value of ``key`` (L1, then L2), or ``default`` when neither has a current entry."""
        value = self._l1_hit_value(key)
        if value is not L1_MISS:
            return value
        core, runner = self._running()
        return runner.call(core.get(key, type_=type_, default=default))

    def set(
        self, key: str, value: Any, *, ttl: TtlLike | None = None, type_: Any = None, tags: Sequence[str] = ()
    ) -> None:
        """Store ``value`` under ``key`` in L2 and L1 (other instances drop their L1 copy of it first)."""
        core, runner = self._running()
        runner.call(core.set(key, value, ttl=ttl, type_=type_, tags=tags))

    def cached(
        self,
        key: str,
        *,
        ttl: TtlLike | None = None,
        type_: Any = _UNRESOLVED,
        tags: Sequence[str] = (),
        fail_safe: bool | None = None,
        soft_timeout: TtlLike | None = None,
        hard_timeout: TtlLike | None = None,
        eager_refresh: float | None = None,
    ) -> Callable[[Callable[P, R]], SyncCachedFunction[P, R]]:
        """Decorate a plain function so its results are cached here under ``key``, a template over its
        parameters; as :meth:`HybridCache.cached` (docs/functions.md), for ``def`` functions."""
        return cached_sync(
            key,
            cache=self,
            ttl=ttl,
            type_=type_,
            tags=tags,
            fail_safe=fail_safe,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            eager_refresh=eager_refresh,
        )

    # ------------------------------------------------------------------ writes

    def remove(self, key: str) -> None:
        """Drop ``key`` everywhere: this L1, L2, and (via the backplane) every other instance's L1."""
        self.invalidate(keys=[key])

    def remove_by_prefix(self, prefix: str) -> None:
        """Invalidate every key under ``prefix`` at ``:`` boundaries (``A:B`` covers ``A:B`` and ``A:B:…``)."""
        self.invalidate(prefixes=[prefix])

    def remove_by_tag(self, tag: str) -> None:
        """Invalidate every entry created with ``tag``."""
        self.invalidate(tags=[tag])

    def clear(self) -> None:
        """Invalidate the whole namespace of this service version."""
        self.invalidate(prefixes=[""])

    def invalidate(
        self, *, keys: Iterable[str] = (), prefixes: Iterable[str] = (), tags: Iterable[str] = (), queue: bool = True
    ) -> bool:
        """As :meth:`HybridCache.invalidate`: when it returns, no thread of this process is served what it
        covers; other instances drop it when the message reaches them."""
        core, runner = self._running()
        return runner.call(core.invalidate(keys=list(keys), prefixes=list(prefixes), tags=list(tags), queue=queue))

    # ------------------------------------------------------------------ observation

    def stats(self) -> CacheStats:
        """The core's counters (L1 hits served in calling threads included); read without the loop."""
        return self._state[0].stats()

    def health(self) -> dict[str, str]:
        """``{"redis": "up"|"down"|"disabled", "circuit": "closed"|"open"|"half-open"}``."""
        return self._state[0].health()

    @property
    def instance_id(self) -> str:
        """The current core's instance id (a forked child, or a cache closed and used again, has a new one)."""
        return self._state[0].instance_id

    @property
    def internals(self) -> SyncInternals:
        """The core and the loop running it: not a stable API (tests, diagnostics)."""
        core, runner = self._state
        return SyncInternals(core, None if runner is None else runner.loop, None if runner is None else runner.thread)


# ---------------------------------------------------------------------------------------------- one call's factory


class _Handoff(Generic[T]):
    """One sync call on the loop, and its factory as the core sees it: a callable returning an awaitable.

    The calling thread blocks in :meth:`run`, reading its inbox: *run this factory* (an asyncio future to
    resolve with its outcome) or *the call has ended*. The loop's thread puts both, in that order, so a caller
    always runs what it was asked to before it returns. After the call has ended (or the caller stopped
    waiting, interrupted), a factory call from the core (an eager refresh, a load that outlived its caller)
    runs in a thread of its own.
    """

    __slots__ = ("_context", "_factory", "_in_caller", "_inbox", "_runner", "_task")

    def __init__(self, factory: Callable[[], T], runner: LoopThread, *, in_caller: bool) -> None:
        self._factory = factory
        self._runner = runner
        self._in_caller = in_caller  # read and changed on the loop's thread only, once the call is handed over
        self._context = contextvars.copy_context()
        self._inbox: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._task: asyncio.Task[T] | None = None

    # -- on the calling thread

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop; serve its factory requests here until it ends; return its result."""
        if not self._runner.call_soon(self._start, coroutine):
            coroutine.close()
            raise LoopClosedError("the cache's event loop thread has stopped")
        inbox = self._inbox
        done = False
        try:
            while True:
                done, item = inbox.get()
                if done:
                    result: T = result_of(item)
                    return result
                self._run_here(item)
        except BaseException:
            if not done:  # interrupted while waiting: the loop must stop handing this thread work
                self._runner.call_soon(self._abandon)
            raise

    def _run_here(self, future: asyncio.Future[T]) -> None:
        try:
            value = _call(self._factory)
        except Exception as exc:
            self._runner.settle(_settle, future, None, exc)
        except BaseException as exc:
            interrupted = FactoryInterruptedError(f"the factory was interrupted by {exc.__class__.__name__}")
            self._runner.settle(_settle, future, None, interrupted)
            raise
        else:
            self._runner.settle(_settle, future, value, None)

    # -- on the loop's thread

    def _start(self, coroutine: Coroutine[Any, Any, T]) -> None:
        if self._runner.stopping:  # close() began after this call was handed over: it might never end
            coroutine.close()
            self._inbox.put((True, None))
            return
        self._task = task = self._runner.loop.create_task(self._call(coroutine), name=CALL_TASK_NAME)
        task.add_done_callback(self._ended)

    async def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return await coroutine
        finally:
            self._in_caller = False

    def _ended(self, task: asyncio.Task[T]) -> None:
        self._inbox.put((True, task))

    def __call__(self) -> asyncio.Future[T]:
        """The factory, as the core calls it: an awaitable of its result."""
        future: asyncio.Future[T] = self._runner.loop.create_future()
        if self._in_caller:
            self._inbox.put((False, future))
        else:
            _run_in_own_thread(self._runner, self._context.copy(), self._factory, future)
        return future

    def _abandon(self) -> None:
        """The caller stopped waiting: factories it was asked to run go to threads of their own; its call ends."""
        self._in_caller = False
        while True:
            try:
                done, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if not done and not item.done():
                _run_in_own_thread(self._runner, self._context.copy(), self._factory, item)
        if self._task is not None:
            self._task.cancel()


def _call(factory: Callable[[], T]) -> T:
    value = factory()
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: say so here rather than in a RuntimeWarning later
        raise TypeError("the factory returned an awaitable; SyncHybridCache needs a plain function")
    return value


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    """Resolve ``future`` (on the loop's thread) unless it was cancelled meanwhile (the cache closed)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _run_in_own_thread(
    runner: LoopThread, context: contextvars.Context, factory: Callable[[], Any], future: asyncio.Future[Any]
) -> None:
    """Run ``factory`` in a new daemon thread and resolve ``future`` with its outcome (on the loop)."""

    def target() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(_call, factory)
        except Exception as exc:
            error = exc
        except BaseException as exc:
            error = FactoryInterruptedError(f"the factory was interrupted by {exc.__class__.__name__}")
        runner.settle(_settle, future, value, error)

    threading.Thread(target=target, name="hybridcache-factory", daemon=True).start()


# ---------------------------------------------------------------------------------------------- process-wide hooks

_ALL: Final[weakref.WeakSet[SyncHybridCache]] = weakref.WeakSet()  # every sync cache (for the fork hook)
_LIVE: Final[weakref.WeakSet[SyncHybridCache]] = weakref.WeakSet()  # those with a running loop (for atexit)
_hooks_installed = False
_hooks_lock = threading.Lock()


def _track(cache: SyncHybridCache) -> None:
    """Remember ``cache`` for the fork and exit hooks, installing them with the first sync cache (not at import)."""
    global _hooks_installed
    with _hooks_lock:
        _ALL.add(cache)
        if not _hooks_installed:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(_close_at_exit)
            _hooks_installed = True


def _after_fork_in_child() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()
    for cache in list(_ALL):
        cache._after_fork()


def _close_at_exit() -> None:
    for cache in list(_LIVE):
        with contextlib.suppress(Exception):
            cache.close(flush_timeout=_EXIT_FLUSH_TIMEOUT)
