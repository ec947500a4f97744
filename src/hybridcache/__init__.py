"""hybridcache: a two-level cache (L1 in-process memory, L2 Redis) for CQRS pipelines.

This module only re-exports the public names; each lives in the module that owns it.
"""

from hybridcache.cache import CacheConnectionError, HybridCache
from hybridcache.errors import CacheConfigurationError, HybridCacheError
from hybridcache.keys import CacheKey
from hybridcache.metrics import CacheStats
from hybridcache.settings import CacheSettings

__all__ = [
    "CacheConfigurationError",
    "CacheConnectionError",
    "CacheKey",
    "CacheSettings",
    "CacheStats",
    "HybridCache",
    "HybridCacheError",
]
