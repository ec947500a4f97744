"""The mediator: routes each request to its one handler through the behaviors that apply, and each
notification to all of its handlers.

Handlers are created per ``send`` by a *factory* that receives the caller's *scope* — any object your
factories understand; in a web service, the per-HTTP-request unit of work, so every handler of that request
shares one database session::

    mediator: Mediator[UnitOfWork] = Mediator([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
    mediator.register(GetDealershipById, lambda uow: GetDealershipByIdHandler(ReadRepository(uow.session, M)))
    async with UnitOfWork(session_factory) as uow:
        dto = await mediator.send(GetDealershipById(42), uow)

The factory runs only when the pipeline actually reaches the handler: on a cache hit no handler (and no
repository) is built at all. A ``Mediator()`` without a scope type has scope ``None`` and ``send(request)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar, overload

from typing_extensions import TypeVar as DefaultTypeVar

from hybridcache.cqrs.notifications import (
    Notification,
    NotificationHandler,
    PublishStrategy,
    run_notification_handlers,
)
from hybridcache.cqrs.pipeline import PipelineBehavior
from hybridcache.cqrs.requests import Request, RequestHandler
from hybridcache.errors import HybridCacheError

__all__ = ["HandlerNotFoundError", "Mediator", "ScopedMediator"]

R = TypeVar("R")
ReqT = TypeVar("ReqT", bound=Request[Any])
N = TypeVar("N", bound=Notification)
ScopeT = DefaultTypeVar("ScopeT", default=None)

# A built pipeline step: (request, scope) -> awaitable answer. Steps are plain functions returning the next
# coroutine (not coroutines themselves), so a chain of n behaviors costs n coroutine frames, not 2n.
_Step = Callable[[Any, Any], Awaitable[Any]]


class HandlerNotFoundError(HybridCacheError, LookupError):
    """``send`` got a request type that has no registered handler."""

    def __init__(self, request_type: type[Any]) -> None:
        super().__init__(
            f"No handler registered for {request_type.__qualname__} "
            f"({request_type.__module__}.{request_type.__qualname__}); "
            "register one with mediator.register(RequestType, factory)"
        )
        self.request_type = request_type


class Mediator(Generic[ScopeT]):
    """Sends requests through pipeline behaviors to their handler; publishes notifications.

    Registration is expected at start-up; registering after requests were sent is allowed and rebuilds the
    affected chains. One handler per request type, matched on the exact type.
    """

    def __init__(self, behaviors: Iterable[PipelineBehavior] = ()) -> None:
        self._behaviors: list[PipelineBehavior] = list(behaviors)
        self._factories: dict[type[Any], Callable[[Any], RequestHandler[Any, Any]]] = {}
        self._pipelines: dict[type[Any], _Step] = {}
        self._subscribers: dict[type[Any], list[Callable[[Any], NotificationHandler[Any]]]] = {}
        self._subscriber_cache: dict[type[Any], tuple[Callable[[Any], NotificationHandler[Any]], ...]] = {}

    # -- registration -------------------------------------------------------------------------------------

    def register(self, request_type: type[ReqT], factory: Callable[[ScopeT], RequestHandler[ReqT, Any]]) -> None:
        """Make ``factory(scope)`` the handler of ``request_type``; ``ValueError`` if it already has one."""
        if request_type in self._factories:
            raise ValueError(f"{request_type.__qualname__} already has a handler")
        self._factories[request_type] = factory
        self._pipelines.clear()

    def add_behavior(self, behavior: PipelineBehavior) -> None:
        """Append ``behavior``: it wraps inside every behavior added before it."""
        self._behaviors.append(behavior)
        self._pipelines.clear()

    def subscribe(self, notification_type: type[N], factory: Callable[[ScopeT], NotificationHandler[N]]) -> None:
        """Add a handler of ``notification_type`` (and of its subclasses), called in subscription order."""
        self._subscribers.setdefault(notification_type, []).append(factory)
        self._subscriber_cache.clear()

    @property
    def behaviors(self) -> tuple[PipelineBehavior, ...]:
        """The registered behaviors, outermost first."""
        return tuple(self._behaviors)

    def behaviors_for(self, request_type: type[Request[Any]]) -> tuple[PipelineBehavior, ...]:
        """The behaviors that wrap ``request_type``'s handler, outermost first."""
        return tuple(b for b in self._behaviors if b.applies_to(request_type))

    # -- requests -----------------------------------------------------------------------------------------

    @overload
    async def send(self: Mediator[None], request: Request[R], scope: None = None) -> R: ...
    @overload
    async def send(self, request: Request[R], scope: ScopeT) -> R: ...
    async def send(self, request: Request[R], scope: ScopeT | None = None) -> R:
        """Run ``request`` through the behaviors that apply to its type, then its handler; return the answer.

        Raises :class:`HandlerNotFoundError` when the type has no handler. Exceptions from behaviors and the
        handler propagate unchanged.
        """
        step = self._pipelines.get(request.__class__)
        if step is None:
            step = self._build(request.__class__)
        result: R = await step(request, scope)
        return result

    def scoped(self, scope: ScopeT) -> ScopedMediator[ScopeT]:
        """A view of this mediator that passes ``scope`` to every ``send`` and ``publish``."""
        return ScopedMediator(self, scope)

    def _build(self, request_type: type[Any]) -> _Step:
        factory = self._factories.get(request_type)
        if factory is None:
            raise HandlerNotFoundError(request_type)
        step = _handler_step(factory)
        for behavior in reversed(self.behaviors_for(request_type)):
            step = _behavior_step(behavior, step)
        self._pipelines[request_type] = step
        return step

    # -- notifications ------------------------------------------------------------------------------------

    @overload
    async def publish(
        self: Mediator[None],
        notification: Notification,
        scope: None = None,
        *,
        strategy: PublishStrategy = "sequential",
    ) -> tuple[Exception, ...]: ...
    @overload
    async def publish(
        self, notification: Notification, scope: ScopeT, *, strategy: PublishStrategy = "sequential"
    ) -> tuple[Exception, ...]: ...
    async def publish(
        self,
        notification: Notification,
        scope: ScopeT | None = None,
        *,
        strategy: PublishStrategy = "sequential",
    ) -> tuple[Exception, ...]:
        """Deliver ``notification`` to every handler subscribed to its class or a base class.

        Best-effort: every handler runs even when another fails; failures are logged and returned (an empty
        tuple means all succeeded). No subscriber is not an error.
        """
        factories = self._subscriber_cache.get(notification.__class__)
        if factories is None:
            factories = self._subscriber_cache[notification.__class__] = tuple(
                factory
                for cls in reversed(notification.__class__.__mro__)
                for factory in self._subscribers.get(cls, ())
            )
        invocations = [_notification_invocation(f, scope, notification) for f in factories]
        return await run_notification_handlers(notification, invocations, strategy)


class ScopedMediator(Generic[ScopeT]):
    """A mediator bound to one scope (one unit of work, one HTTP request): ``send``/``publish`` without it."""

    __slots__ = ("mediator", "scope")

    def __init__(self, mediator: Mediator[ScopeT], scope: ScopeT) -> None:
        self.mediator = mediator
        self.scope = scope

    async def send(self, request: Request[R]) -> R:
        """``mediator.send(request, scope)``."""
        return await self.mediator.send(request, self.scope)

    async def publish(
        self, notification: Notification, *, strategy: PublishStrategy = "sequential"
    ) -> tuple[Exception, ...]:
        """``mediator.publish(notification, scope, strategy=...)``."""
        return await self.mediator.publish(notification, self.scope, strategy=strategy)


def _handler_step(factory: Callable[[Any], RequestHandler[Any, Any]]) -> _Step:
    def invoke_handler(request: Any, scope: Any) -> Awaitable[Any]:
        return factory(scope).handle(request)

    return invoke_handler


def _behavior_step(behavior: PipelineBehavior, inner: _Step) -> _Step:
    handle = behavior.handle

    def invoke_behavior(request: Any, scope: Any) -> Awaitable[Any]:
        # partial, not a lambda: one C-level object per send instead of a closure and two cells.
        return handle(request, partial(inner, request, scope))

    return invoke_behavior


def _notification_invocation(
    factory: Callable[[Any], NotificationHandler[Any]], scope: Any, notification: Notification
) -> Callable[[], Awaitable[None]]:
    return lambda: factory(scope).handle(notification)
