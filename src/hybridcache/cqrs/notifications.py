"""Notifications: one message, any number of handlers, best-effort delivery (cosmicpython's events)."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Literal, TypeVar

__all__ = ["Notification", "NotificationHandler", "PublishStrategy", "run_notification_handlers"]

logger = logging.getLogger("hybridcache.cqrs")

N_contra = TypeVar("N_contra", bound="Notification", contravariant=True)

PublishStrategy = Literal["sequential", "concurrent"]


class Notification:
    """Something that happened. Handlers registered for a notification class also receive its subclasses."""

    __slots__ = ()


class NotificationHandler(ABC, Generic[N_contra]):
    """Reacts to one notification type (and so, contravariantly, to its subclasses)."""

    __slots__ = ()

    @abstractmethod
    async def handle(self, notification: N_contra) -> None:
        """React to ``notification``. An exception is logged and reported by ``publish``; it does not stop the
        other handlers."""


async def run_notification_handlers(
    notification: Notification,
    invocations: Sequence[Callable[[], Awaitable[None]]],
    strategy: PublishStrategy,
) -> tuple[Exception, ...]:
    """Run every invocation (one per handler) and return the exceptions they raised, each already logged.

    ``"sequential"`` awaits handlers one after another in registration order; ``"concurrent"`` runs them all
    at once and waits for every one. Cancellation is never swallowed.
    """
    failures: list[Exception] = []
    if strategy == "sequential":
        for invoke in invocations:
            try:
                await invoke()
            except Exception as exc:
                failures.append(exc)
    elif strategy == "concurrent":
        outcomes = await asyncio.gather(*(invoke() for invoke in invocations), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
    else:
        raise ValueError(f"unknown publish strategy {strategy!r}; expected 'sequential' or 'concurrent'")
    for failure in failures:
        logger.error("Notification handler failed for %s", type(notification).__name__, exc_info=failure)
    return tuple(failures)
