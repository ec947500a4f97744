"""A connection to the service's Redis for one CLI command, pinged before use and closed after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from hybridcache._redis.clients import RedisClients, RedisError, connect
from hybridcache.cli.exits import CommandFailed, UsageError
from hybridcache.settings import CacheSettings

# An operator's one-off command may wait longer than the service's request path would.
_MIN_TIMEOUT: Final = 2.0


@contextlib.asynccontextmanager
async def redis_session(settings: CacheSettings, section: str, command: str) -> AsyncIterator[RedisClients]:
    endpoint = settings.redis_endpoint
    if endpoint is None:
        raise UsageError(f"{section}:Configuration is not set: '{command}' needs the service's Redis")
    try:
        clients = await connect(
            endpoint,
            operation_timeout=max(endpoint.operation_timeout or 0.0, _MIN_TIMEOUT),
            connect_timeout=max(endpoint.connect_timeout or 0.0, _MIN_TIMEOUT),
            request_pool_size=4,
            protocol=settings.protocol,
        )
    except (RedisError, OSError, ValueError) as exc:
        raise CommandFailed(f"cannot connect to Redis at {endpoint}: {exc.__class__.__name__}: {exc}") from exc
    try:
        try:
            await clients.request.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise CommandFailed(f"cannot reach Redis at {endpoint}: {exc.__class__.__name__}: {exc}") from exc
        yield clients
    finally:
        await clients.aclose()
