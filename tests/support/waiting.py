"""Waiting on conditions with a deadline: how tests wait, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

__all__ = ["wait_until", "wait_until_sync"]

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], *, timeout: float, interval: float = ..., message: str
) -> T: ...


@overload
async def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = ..., message: str) -> T: ...


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.005,
    message: str,
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that value.

    Raises ``AssertionError`` with ``message`` (and the last value seen) if ``timeout`` seconds pass first.
    The predicate is always evaluated at least once, and once more at the deadline, so a slow event loop
    cannot turn a condition that did become true into a spurious failure. Exceptions from the predicate
    propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        out_of_time = time.monotonic() >= deadline
        result = predicate()
        value: T = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if out_of_time:
            raise AssertionError(f"{message} (not true after {timeout}s; last value: {value!r})")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_until_sync(predicate: Callable[[], T], *, timeout: float, interval: float = 0.005, message: str) -> T:
    """Blocking twin of :func:`wait_until` for synchronous code; ``predicate`` must be synchronous."""
    deadline = time.monotonic() + timeout
    while True:
        out_of_time = time.monotonic() >= deadline
        value = predicate()
        if inspect.isawaitable(value):
            raise TypeError("wait_until_sync() got an async predicate; use `await wait_until(...)`")
        if value:
            return value
        if out_of_time:
            raise AssertionError(f"{message} (not true after {timeout}s; last value: {value!r})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
