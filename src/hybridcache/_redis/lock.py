"""Distributed single flight: one factory run per key across every instance, not just per process.

The instance that misses first takes a lease lock in Redis (``SET NX PX``), reads L2 once more (another instance
may have filled the key and released its lease since this one's miss), and runs the factory; the others
register a waiter, check L2 once more, and sleep until the holder announces on the backplane channel that the key
has been filled (a ``{"f": key}`` notice, published right after the lease is released). Nobody polls.
A notice that finds L2 still empty (an earlier round's, or a holder whose store an invalidation refused) sends the
waiter back for the lease rather than to the factory. If no useful notice comes within the wait timeout — the
holder died, or the channel is down — a waiter runs the factory itself: the lock bounds duplication, it never
blocks progress. The lease bounds how long a crashed holder can keep others waiting. An eager refresh, too, runs
only under the key's lease (see ``_core/fill_path.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from hybridcache._redis.l2 import L2UnavailableError, RedisL2

# The fill notice is published separately: on a cluster the lock and the channel live in different slots.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DistributedSingleFlight:
    """Lease locks per cache key and the local waiters for their fill notices."""

    def __init__(
        self, l2: RedisL2, client: Redis | RedisCluster, *, instance_id: str, lease_ms: int, wait_timeout: float
    ) -> None:
        self._l2 = l2
        self._client = client
        self._instance_id = instance_id
        self._lease_ms = lease_ms
        self.wait_timeout = wait_timeout
        self._release = client.register_script(_RELEASE)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def try_acquire(self, full_key: str) -> str | None:
        """A token when this instance now holds the lease, None when another does.

        A request-path call like an L2 read: it goes through the circuit breaker and takes a request slot, so an
        open circuit refuses it without touching the socket and its failures count towards opening it. Raises
        L2UnavailableError for a failed Redis call (as :func:`~hybridcache._redis.l2.is_redis_failure` classifies it)
        or an open circuit; anything else, a bug of ours, propagates as it is.
        """
        token = secrets.token_hex(8)
        lock_key = self._l2.lock_key(full_key)
        acquired = await self._l2.request(lambda: self._client.set(lock_key, token, nx=True, px=self._lease_ms))
        return token if acquired else None

    async def release(self, full_key: str, token: str) -> None:
        """Drop the lease (if still ours) and wake every instance's waiters for ``full_key``.

        A failed Redis call (or an open circuit) is swallowed: the lease expires by itself and waiters fall back
        after their timeout. Anything that is not a Redis failure propagates.
        """
        notice = orjson.dumps({"f": full_key, "i": self._instance_id})
        lock_key = self._l2.lock_key(full_key)
        with contextlib.suppress(L2UnavailableError):
            await self._l2.request(lambda: self._release(keys=[lock_key], args=[token]))
        with contextlib.suppress(L2UnavailableError):
            await self._l2.publish(notice)
        self.notify(full_key)

    def register(self, full_key: str) -> asyncio.Future[None]:
        """Start listening for the fill notice of ``full_key`` (before re-checking L2, so none is missed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(full_key, []).append(future)
        return future

    def unregister(self, full_key: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(full_key)
        if waiters is None:
            return
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            del self._waiters[full_key]

    def notify(self, full_key: str) -> None:
        """Wake the local waiters of ``full_key`` (called for fill notices from the backplane)."""
        for future in self._waiters.pop(full_key, ()):
            if not future.done():
                future.set_result(None)

    async def wait(self, future: asyncio.Future[None], timeout: float | None = None) -> bool:
        """True when the fill notice came within ``timeout`` seconds (default: the wait timeout; <= 0: no wait)."""
        limit = self.wait_timeout if timeout is None else timeout
        if limit <= 0:
            return future.done()
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(future)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._waiters)
