"""Resilience primitives: a circuit breaker for L2 calls, a gate on concurrent L2 calls, and single-flight
execution of loaders.

Both are built for one asyncio event loop (no locks, no threads): every method is synchronous or awaits only
the wrapped work, so state changes happen between awaits and cannot interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from enum import StrEnum
from functools import partial
from typing import Any, Generic, TypeVar

from hybridcache.errors import CircuitOpenError

__all__ = ["CircuitBreaker", "CircuitOpenError", "CircuitState", "RequestSlots", "SingleFlight"]

logger = logging.getLogger("hybridcache.resilience")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker (closed → open → half-open → closed).

    * **closed**: every request is allowed; ``failure_threshold`` consecutive failures open the circuit.
    * **open**: requests are refused without touching the socket for ``break_duration`` seconds.
    * **half-open**: exactly one caller (the probe) is allowed; its success closes the circuit, its failure
      opens it for a new break period. A probe that never reports (its caller was cancelled without calling
      :meth:`release_probe`) stops blocking others after ``probe_timeout`` seconds: another probe is allowed.

    With ``enabled=False`` every request is allowed and the circuit never opens. Transitions are logged
    (WARNING on open, INFO otherwise), counted in :attr:`transitions` and passed to
    ``on_transition(old, new)``.
    Not thread-safe: use from one event loop.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        break_duration: float = 60.0,
        enabled: bool = True,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
        probe_timeout: float = 5.0,
        on_transition: Callable[[CircuitState, CircuitState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if break_duration <= 0 or probe_timeout <= 0:
            raise ValueError("break_duration and probe_timeout must be positive")
        self.failure_threshold = failure_threshold
        self.break_duration = break_duration
        self.probe_timeout = probe_timeout
        self.enabled = enabled
        self.name = name
        self.on_transition = on_transition
        self.transitions: dict[str, int] = {"open": 0, "half-open": 0, "closed": 0}
        self._clock = clock
        self._state = CircuitState.CLOSED
        # The hot path reads only this flag: True while closed, or always when disabled.
        self._allow_all = True
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> CircuitState:
        """The current state. An open circuit whose break has elapsed reports OPEN until a request arrives."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow_request(self) -> bool:
        """Whether the caller may use the protected resource now (if half-open, True makes it the probe).

        A caller that was allowed must report with :meth:`record_success`, :meth:`record_failure` or (when it
        gave up without an outcome) :meth:`release_probe`. While closed this reads one attribute: no clock, no
        lock.
        """
        if self._allow_all:
            return True
        return self._allow_slow()

    def _allow_slow(self) -> bool:
        now = self._clock()
        if self._state is CircuitState.OPEN:
            if now - self._opened_at < self.break_duration:
                return False
            self._transition(CircuitState.HALF_OPEN, "break elapsed; letting one probe through")
            self._probe_started = now
            return True
        # HALF_OPEN: one probe at a time, unless the outstanding one has been silent for too long.
        if self._probe_started is not None and now - self._probe_started < self.probe_timeout:
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """The allowed call succeeded: reset the failure count; a successful probe closes the circuit."""
        if self._allow_all:
            self._failures = 0
            return
        if self._state is CircuitState.HALF_OPEN:
            self._failures = 0
            self._probe_started = None
            self._allow_all = True
            self._transition(CircuitState.CLOSED, "probe succeeded")
        # OPEN: a call that began before the circuit opened finished late; it proves too little to close it.

    @property
    def openings(self) -> int:
        """How many times the circuit has opened: a caller past the gate notes it to tell, when its call
        succeeds, whether the call began while the current break was already in force."""
        return self.transitions["open"]

    def record_success_past_gate(self, openings_at_start: int) -> None:
        """A call that did not ask :meth:`allow_request` (a queued invalidation retrying on its own backoff)
        succeeded. If it began while the circuit was already open or half-open, Redis answered after the break
        began: that is what a probe proves, so the circuit closes now instead of after ``break_duration``.
        A call that began before the circuit opened proves too little, as in :meth:`record_success`."""
        if self._allow_all:
            self._failures = 0
            return
        if openings_at_start == self.openings:
            self._failures = 0
            self._probe_started = None
            self._allow_all = True
            self._transition(CircuitState.CLOSED, "a call past the gate succeeded")

    def record_failure(self) -> None:
        """The allowed call failed: count it; at the threshold (or on a failed probe) open the circuit."""
        if not self.enabled:
            return
        state = self._state
        if state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(f"after {self._failures} consecutive failures")
        elif state is CircuitState.HALF_OPEN:
            self._failures += 1
            self._open("again: the probe failed")
        # OPEN: late failures from calls started before opening do not extend the break.

    def release_probe(self) -> None:
        """The probe's caller gave up without an outcome (e.g. was cancelled): let the next caller probe.

        Harmless outside half-open, so any caller that ends without an outcome may call it.
        """
        if self._state is CircuitState.HALF_OPEN:
            self._probe_started = None

    def reset(self) -> None:
        """Force the circuit closed (e.g. an operator knows the resource is back)."""
        self._failures = 0
        self._probe_started = None
        if self._state is not CircuitState.CLOSED:
            self._allow_all = True
            self._transition(CircuitState.CLOSED, "reset")

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
    ) -> T:
        """Await ``fn()`` under the breaker.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the circuit refuses the request. An
        exception of ``failure_types`` is recorded as a failure and re-raised; success is recorded as such.
        Cancellation and other exceptions are neither: they propagate and, if this call was the probe, release
        it.
        """
        if not self.allow_request():
            raise CircuitOpenError(self.name, self._state)
        try:
            result = await fn()
        except asyncio.CancelledError:
            self.release_probe()
            raise
        except failure_types:
            self.record_failure()
            raise
        except BaseException:
            self.release_probe()
            raise
        self.record_success()
        return result

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._probe_started = None
        self._allow_all = False
        self._transition(CircuitState.OPEN, f"{why}; L2 skipped for {self.break_duration:g}s")

    def _transition(self, new: CircuitState, why: str) -> None:
        old, self._state = self._state, new
        self.transitions[new.value] += 1
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        logger.log(level, "Circuit breaker '%s' %s %s", self.name, _VERBS[new], why)
        if self.on_transition is not None:
            try:
                self.on_transition(old, new)
            except Exception:
                logger.exception("Circuit breaker '%s': on_transition callback failed", self.name)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value} failures={self._failures}>"


_VERBS = {CircuitState.OPEN: "opened", CircuitState.HALF_OPEN: "half-open:", CircuitState.CLOSED: "closed:"}


class SingleFlight(Generic[K, V]):
    """Collapse concurrent executions per key: concurrent :meth:`run` calls with one key share one run.

    The shared run is an asyncio task. Each caller awaits it through a shield, so cancelling one caller never
    cancels the run for the others; if every caller is cancelled the run still completes (it may be filling a
    cache) and its outcome is retrieved, so asyncio never reports an unretrieved exception. The key's entry is
    removed when the run completes: a caller arriving afterwards starts a new run, and ``len()`` (runs in
    flight) returns to zero, keeping memory bounded.
    """

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """Return the result of ``fn()`` — this caller's run, or the one already in flight for ``key``.

        Every caller sharing a run receives its result or its exception (the same instance).
        """
        return await asyncio.shield(self.start(key, fn))

    def start(self, key: K, fn: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The run in flight for ``key``, or a new run of ``fn()``; await it through ``asyncio.shield``."""
        flight = self._flights.get(key)
        if flight is None or flight.done():
            flight = asyncio.ensure_future(fn())
            self._flights[key] = flight
            flight.add_done_callback(partial(self._finished, key))
        return flight

    def current(self, key: K) -> asyncio.Future[V] | None:
        """The run in flight for ``key`` (to await through ``asyncio.shield``), or None."""
        flight = self._flights.get(key)
        return None if flight is None or flight.done() else flight

    def forget(self, key: K) -> None:
        """Let the next caller of ``key`` start a new run; callers already waiting keep the current one.

        Used when the run's result may be outdated (an invalidation overtook it): a caller arriving afterwards
        must not receive a value computed before the invalidation.
        """
        self._flights.pop(key, None)

    def forget_where(self, predicate: Callable[[K], bool]) -> int:
        """:meth:`forget` every key in flight for which ``predicate`` is true; returns how many."""
        doomed = [key for key in self._flights if predicate(key)]
        for key in doomed:
            del self._flights[key]
        return len(doomed)

    def cancel_all(self) -> None:
        """Cancel every run in flight; each leaves as it completes."""
        for flight in list(self._flights.values()):
            flight.cancel()

    def _finished(self, key: K, flight: asyncio.Future[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # marks the exception retrieved even if every waiter was cancelled


class RequestSlots:
    """At most ``limit`` calls at once; the others queue, first come first served, for a bounded time.

    A counting semaphore cut down to what the L2 request path needs: taking a free slot is one synchronous
    :meth:`try_take` (``asyncio.Semaphore`` costs two coroutine-free but generator-scanning ``locked()`` checks
    and an awaited ``acquire()`` on every call), and a released slot passes straight to the longest waiter, so a
    newcomer can never overtake the queue. Every slot taken (by :meth:`try_take` or :meth:`take`) must be
    returned with :meth:`give_back` exactly once.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Slots nobody holds (zero while anyone waits)."""
        return self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody is queued before us."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self, timeout: float) -> None:
        """Wait in line for a slot; ``TimeoutError`` after ``timeout`` seconds (holding nothing then)."""
        if self.try_take():
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(timeout):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.give_back()  # the slot reached us just as we gave up: pass it on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # already handed over and skipped by give_back
                    self._waiters.remove(turn)
            raise

    def give_back(self) -> None:
        """Return a slot: to the longest waiter still waiting, else to the free count."""
        waiters = self._waiters
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again as long as it has not.

    One cancel is not always enough on Python 3.11: a cancellation that lands just as redis-py completes a socket
    write inside ``asyncio.wait_for`` is swallowed (CPython gh-86296), and awaiting the task after a single cancel
    then waits forever. The caller's own cancellation is never suppressed. The task's outcome is retrieved.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled():
        task.exception()
