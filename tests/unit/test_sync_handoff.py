"""``hybridcache.sync._Handoff``: how one sync call's factory is run, without Redis or a cache.

The calling thread runs the factory when the loop asks while it waits; a request the caller can no longer serve
(it was interrupted) goes to a thread of its own; the loop thread's own hand-over (``_loop_thread``) stops cleanly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hybridcache._loop_thread import LoopClosedError, LoopThread, result_of
from hybridcache.sync import _Handoff

WAIT = 10.0


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    loop_thread = LoopThread("test-sync-handoff")
    try:
        yield loop_thread
    finally:
        assert loop_thread.stop(WAIT)


def on_loop(runner: LoopThread, function: Any) -> Any:
    """Call ``function()`` on the loop's thread and return what it returned."""

    async def call() -> Any:
        return function()

    return runner.call(call())


def test_the_caller_runs_the_factory_the_loop_asks_for(runner: LoopThread) -> None:
    ran_in: list[int] = []

    def factory() -> str:
        ran_in.append(threading.get_ident())
        return "v"

    handoff = _Handoff(factory, runner, in_caller=True)

    async def load() -> str:
        return await handoff()

    assert handoff.run(load()) == "v"
    assert ran_in == [threading.get_ident()]


def test_after_the_call_a_factory_request_runs_in_a_thread_of_its_own(runner: LoopThread) -> None:
    threads: list[str] = []
    handoff = _Handoff(lambda: threads.append(threading.current_thread().name) or "v", runner, in_caller=True)

    async def nothing() -> None:
        return None

    handoff.run(nothing())
    later = on_loop(runner, handoff)  # the core asking after the call ended (an eager refresh)
    assert asyncio.run_coroutine_threadsafe(_wait(later), runner.loop).result(WAIT) == "v"
    assert threads == ["hybridcache-factory"]


def test_a_request_an_interrupted_caller_never_read_is_run_elsewhere(runner: LoopThread) -> None:
    """The loop asked the caller to run the factory, but the caller was interrupted before reading its inbox:
    _abandon (what the interrupted caller schedules) hands the request to a thread of its own."""
    threads: list[str] = []
    handoff = _Handoff(lambda: threads.append(threading.current_thread().name) or "v", runner, in_caller=True)
    requested = on_loop(runner, handoff)  # now in the caller's inbox, unread
    on_loop(runner, handoff._abandon)
    assert asyncio.run_coroutine_threadsafe(_wait(requested), runner.loop).result(WAIT) == "v"
    assert threads == ["hybridcache-factory"]


def test_a_stopped_loop_refuses_calls() -> None:
    runner = LoopThread("test-stopped")
    assert runner.stop(WAIT)
    assert not runner.thread.is_alive()

    async def anything() -> None:
        return None

    coroutine = anything()
    with pytest.raises(LoopClosedError):
        runner.call(coroutine)
    assert coroutine.cr_frame is None, "the refused coroutine was closed (no 'never awaited' warning)"


def test_stop_cancels_what_is_still_running(runner: LoopThread) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner.loop.call_soon_threadsafe(lambda: runner.loop.create_task(forever()))
    on_loop(runner, lambda: None)  # the task has started
    assert runner.stop(WAIT)
    assert cancelled.is_set()
    assert runner.loop.is_closed()


async def _wait(future: Any) -> Any:
    return await future


def test_a_call_that_reaches_a_stopping_loop_is_refused_not_left_pending(runner: LoopThread) -> None:
    """A call handed over just before stop() whose start runs while the loop shuts down: a task started then could
    outlive the last cancellation and the loop's close, and its caller would wait for ever. It is refused."""
    handoff = _Handoff(lambda: "v", runner, in_caller=True)

    async def load() -> str:
        return "never started"

    coroutine = load()
    runner._stopped = True  # what stop() sets before it schedules the loop's stop
    runner.loop.call_soon_threadsafe(handoff._start, coroutine)
    done, outcome = handoff._inbox.get(timeout=WAIT)
    assert (done, outcome) == (True, None)
    with pytest.raises(LoopClosedError):
        result_of(outcome)
    assert coroutine.cr_frame is None, "the refused coroutine was closed"
