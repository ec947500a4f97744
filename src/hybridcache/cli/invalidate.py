"""``hybridcache invalidate`` and ``clear``: publish an invalidation through the cache's own path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from hybridcache._redis.clients import RedisClients
from hybridcache.cache import HybridCache
from hybridcache.cli.exits import EXIT_OK, CommandFailed
from hybridcache.keys import namespace
from hybridcache.settings import BackplaneSettings, CacheSettings, MemoryCacheSettings


async def run_invalidate(
    settings: CacheSettings,
    clients: RedisClients,
    keys: Sequence[str],
    prefixes: Sequence[str],
    tags: Sequence[str],
    out: TextIO,
) -> int:
    # The publishing cache needs no L1, no subscription and no instance report: it only runs the invalidation.
    quiet = settings.model_copy(
        update={
            "enabled": True,
            "backplane": BackplaneSettings(enabled=False),
            "memory_cache": MemoryCacheSettings(enabled=False),
        }
    )
    cache = HybridCache(quiet, redis=clients.request, register_instance=False)
    await cache.start()
    try:
        await cache.invalidate(keys=keys, prefixes=prefixes, tags=tags)
        stats = cache.stats()
    finally:
        await cache.close()
    name = namespace(settings.service_name, settings.cache_version)
    if stats.invalidation_failures or stats.pending_invalidations or not stats.invalidations_published:
        raise CommandFailed(f"the invalidation was not published to {name} (Redis error; run with -v for details)")
    what = [f"key {k!r}" for k in keys] + [f"prefix {p!r}" if p else "everything" for p in prefixes]
    what += [f"tag {t!r}" for t in tags]
    print(f"invalidated {', '.join(what)} in {name} on every running instance", file=out)
    return EXIT_OK
