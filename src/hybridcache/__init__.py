"""hybridcache: a two-level cache (L1 in-process memory, L2 Redis) for CQRS pipelines.

This module only re-exports the public names; each lives in the module that owns it.
"""

from hybridcache.cache import CacheConnectionError, FactoryTimeoutError, HybridCache
from hybridcache.errors import CacheConfigurationError, CircuitOpenError, HybridCacheError
from hybridcache.keys import CacheKey
from hybridcache.metrics import CacheStats
from hybridcache.settings import (
    BackplaneSettings,
    CacheSettings,
    CircuitBreakerSettings,
    DistributedLockSettings,
    FailSafeSettings,
    MemoryCacheSettings,
    OutboxSettings,
)

__all__ = [
    "BackplaneSettings",
    "CacheConfigurationError",
    "CacheConnectionError",
    "CacheKey",
    "CacheSettings",
    "CacheStats",
    "CircuitBreakerSettings",
    "CircuitOpenError",
    "DistributedLockSettings",
    "FactoryTimeoutError",
    "FailSafeSettings",
    "HybridCache",
    "HybridCacheError",
    "MemoryCacheSettings",
    "OutboxSettings",
]
