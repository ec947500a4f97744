"""CQRS for hybridcache: a small typed mediator, pipeline behaviors, and the cache markers.

Queries that mix in :class:`Cacheable` are answered through the cache by :class:`CachingBehavior`; commands
that mix in :class:`InvalidatesCache` invalidate what they declare, after their handler succeeded, through
:class:`CacheInvalidationBehavior`. Handlers stay pure business logic.
"""

from hybridcache.cqrs.behaviors import (
    CacheInvalidationBehavior,
    CachingBehavior,
    InvalidatingCache,
    InvalidationOutbox,
    ReadThroughCache,
)
from hybridcache.cqrs.markers import Cacheable, InvalidatesCache
from hybridcache.cqrs.mediator import HandlerNotFoundError, Mediator, ScopedMediator
from hybridcache.cqrs.notifications import Notification, NotificationHandler, PublishStrategy
from hybridcache.cqrs.pipeline import CallNext, PipelineBehavior
from hybridcache.cqrs.requests import Command, Query, Request, RequestHandler, response_type_of

__all__ = [
    "CacheInvalidationBehavior",
    "Cacheable",
    "CachingBehavior",
    "CallNext",
    "Command",
    "HandlerNotFoundError",
    "InvalidatesCache",
    "InvalidatingCache",
    "InvalidationOutbox",
    "Mediator",
    "Notification",
    "NotificationHandler",
    "PipelineBehavior",
    "PublishStrategy",
    "Query",
    "ReadThroughCache",
    "Request",
    "RequestHandler",
    "ScopedMediator",
    "response_type_of",
]
