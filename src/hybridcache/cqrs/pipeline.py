"""Pipeline behaviors: the MediatR-style middleware around every request handler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hybridcache.cqrs.requests import Request

__all__ = ["CallNext", "PipelineBehavior"]

R = TypeVar("R")

CallNext = Callable[[], Awaitable[R]]
"""Runs the rest of the pipeline (inner behaviors, then the handler). Call it at most once."""


class PipelineBehavior(ABC):
    """Middleware around request handlers.

    ``Mediator`` composes the behaviors that apply to a request type once, in registration order: the first
    registered is the outermost. A behavior may run code before and after ``call_next()``, transform its
    result, or short-circuit by returning without calling it (then no inner behavior and no handler runs).
    """

    __slots__ = ()

    def applies_to(self, request_type: type[Request[Any]]) -> bool:
        """Whether this behavior wraps requests of ``request_type``.

        Asked once per request type, when its chain is built, so a behavior that does not apply costs nothing
        on that type's hot path. Default: every type.
        """
        return True

    @abstractmethod
    async def handle(self, request: Request[R], call_next: CallNext[R]) -> R:
        """Process ``request``; ``await call_next()`` to continue down the pipeline."""
