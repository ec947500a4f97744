"""Exceptions raised by hybridcache; every one derives from :class:`HybridCacheError`."""

from __future__ import annotations


class HybridCacheError(Exception):
    """Base class of every exception hybridcache raises on purpose."""


class CacheConfigurationError(HybridCacheError, ValueError):
    """The cache configuration is invalid.

    Raised at load time (never later, on a request) with a one-line message that names the offending key in
    .NET path form (``TheTechLoopCache:MemoryCache:SizeLimit``) and the expected form. Messages never contain
    a password.
    """


class CircuitOpenError(HybridCacheError):
    """A call was refused without being attempted because the circuit breaker guarding it is open.

    ``name`` is the breaker's name (``"redis"`` for L2) and ``state`` its state when it refused.
    """

    def __init__(self, name: str, state: str = "open") -> None:
        super().__init__(f"Circuit breaker '{name}' is {state}; call not attempted")
        self.name = name
        self.state = state


class FactoryTimeoutError(HybridCacheError, TimeoutError):
    """The factory did not finish within its hard timeout (or its soft timeout, when a stale value was served).

    The factory is not cancelled: it finishes in the background and its result is stored.
    """
