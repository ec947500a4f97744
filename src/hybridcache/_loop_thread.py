"""An asyncio event loop running in a daemon thread of its own, for synchronous callers (``hybridcache.sync``).

Threads hand it coroutines with :meth:`LoopThread.call` (block until done) and get the outcome back through a
``queue.SimpleQueue`` (a C-level lock: cheaper than ``asyncio.run_coroutine_threadsafe``'s concurrent future,
which measured 115 µs against 97 µs per round trip here). The thread is a daemon, so a process that forgets
to close it can still exit; :meth:`LoopThread.stop` ends it cleanly (remaining tasks cancelled and awaited, async
generators and the default executor shut down, the loop closed), as ``asyncio.run`` does on return.

**After a fork** the child has a copy of the loop object but not its thread, and the copy shares the parent's
epoll instance and self-pipe: closing the copy, or closing a transport on it (which a redis-py connection's
finalizer does), would unregister the parent's descriptors from that shared epoll and break the parent's loop.
:meth:`abandon` is the only thing a child may do with it: keep it referenced, untouched, until the child exits.
(CPython 3.11 happens to leak what the vanished thread's frames referenced, the loop among it, so today nothing
would finalize it anyway; :func:`keep_forever` makes that a guarantee rather than an implementation detail.)
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

__all__ = ["LoopClosedError", "LoopThread", "abandoned", "keep_forever", "result_of"]

T = TypeVar("T")

# Objects a forked child inherited and must never finalize (see the module docstring). Never emptied.
_ABANDONED: Final[list[object]] = []


def keep_forever(*objects: object) -> None:
    """Keep ``objects`` referenced until the process exits, so that nothing finalizes them (in a forked child:
    what it inherited from the parent and must neither use nor close)."""
    _ABANDONED.extend(objects)


def abandoned() -> int:
    """How many inherited objects this process keeps untouched (tests read it)."""
    return len(_ABANDONED)


class LoopClosedError(RuntimeError):
    """The loop thread was stopped before (or while) a call was handed to it."""


class LoopThread:
    """One event loop, run forever by one daemon thread started in the constructor."""

    __slots__ = ("_stopped", "ident", "loop", "thread")

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopped = False
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name=name, daemon=True)
        self.thread.start()
        started.wait()
        self.ident = self.thread.ident

    def _run(self, started: threading.Event) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: a task not started yet must not be started any more."""
        return self._stopped

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and block until it returns (its exception is raised here).

        Raises :class:`LoopClosedError` when the loop stops before the coroutine could run or finish.
        """
        outcome: queue.SimpleQueue[asyncio.Future[T] | None] = queue.SimpleQueue()

        def start() -> None:
            if self._stopped:  # stop() was called after this was scheduled: the task might never end
                coroutine.close()
                outcome.put(None)
                return
            self.loop.create_task(coroutine).add_done_callback(outcome.put)

        if not self.call_soon(start):
            coroutine.close()
            raise LoopClosedError("the cache's event loop thread has stopped")
        return result_of(outcome.get())

    def call_soon(self, callback: Any, *args: Any) -> bool:
        """Schedule ``callback(*args)`` on the loop; False (nothing scheduled) when the loop no longer runs."""
        if self._stopped:
            return False
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def settle(self, callback: Any, *args: Any) -> bool:
        """Like :meth:`call_soon`, also while the loop is stopping (for outcomes the loop is waiting for)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the loop (tasks still running are cancelled) and join the thread; False if it did not end in time.

        Call it from another thread; whatever must finish cleanly (closing a cache) must have been awaited first.
        """
        self._stopped = True
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def abandon(self) -> None:
        """In a forked child: forget this loop without closing it (see the module docstring)."""
        self._stopped = True
        keep_forever(self.loop, self)


def result_of(task: asyncio.Future[T] | None) -> T:
    """The outcome of a task handed back from the loop: its result or its exception; :class:`LoopClosedError` when
    the loop refused to start it (``None``) or cancelled it while stopping."""
    if task is None or task.cancelled():
        raise LoopClosedError("the cache was closed while this call was waiting")
    return task.result()


def _cancel_remaining(loop: asyncio.AbstractEventLoop, passes: int = 5) -> None:
    """What ``asyncio.run`` does on exit: cancel every task left and let them finish, reporting their errors;
    again for tasks started meanwhile (a cancelled task's cleanup may start one), up to ``passes`` times."""
    for _ in range(passes):
        tasks = asyncio.all_tasks(loop)
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                message = "unhandled exception in a task left when the loop stopped"
                loop.call_exception_handler({"message": message, "exception": error})
