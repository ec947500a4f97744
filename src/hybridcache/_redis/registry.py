"""Live instances: every cache with Redis reports its counters there, so ``hybridcache stats`` can list them.

Layout (``I`` = InstanceName, ``N`` = ``{ServiceName}:{CacheVersion}:``, the meta hash tag of ``_redis/l2.py``):
  ``{I hybridcache:N}instances``         sorted set: instance id → time of its last report (Redis server ms)
  ``{I hybridcache:N}instance:<id>``     that instance's report (JSON), expiring ``ttl`` after it was written
Both carry the meta hash tag, so on a Redis Cluster they live in the slot of the generation hash and one script
writes them together. Each instance writes once per ``interval`` (one script call, a few hundred bytes): no hot
slot. The report key's TTL is what makes an instance "live"; the sorted set only indexes the ids, so nothing
ever scans the keyspace (no ``KEYS``/``SCAN``). A reader drops ids whose report has expired; each writer trims
ids not seen for a TTL, so the set stays bounded even when nobody reads it.

Reporting is best effort: a failure is logged at debug level and retried at the next interval; it never touches
the circuit breaker or the request path (it runs on the background client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.typing import EncodableT

from hybridcache._resilience import cancel_and_wait
from hybridcache.keys import namespace as build_namespace
from hybridcache.metrics import CacheStats, package_version
from hybridcache.settings import CacheSettings

__all__ = ["REPORT_INTERVAL_SECONDS", "InstanceKeys", "InstanceRegistry", "LiveInstance", "live_instances"]

logger = logging.getLogger("hybridcache.instances")

#: How often a cache reports its counters; a report lives for three intervals.
REPORT_INTERVAL_SECONDS: Final = 5.0

# KEYS: index, report. ARGV: instance id, report JSON, TTL ms. Server time orders the reports, whatever the
# clocks of the reporting hosts say. The index lives as long as its longest-lived report.
_REPORT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ms - ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return ms
"""

# KEYS: index. The server's time and the index, read together (on a cluster: from the meta slot's master).
_READ = """
local now = redis.call('TIME')
return {now[1], now[2], redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""

# KEYS: index, report. ARGV: instance id.
_WITHDRAW = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceKeys:
    """Where the reports of one cache namespace live (see the module docstring)."""

    instance_name: str
    namespace: str  # ``{ServiceName}:{CacheVersion}:``

    @classmethod
    def for_settings(cls, settings: CacheSettings) -> InstanceKeys:
        return cls(settings.instance_name, build_namespace(settings.service_name, settings.cache_version))

    @property
    def meta(self) -> str:
        return f"{{{self.instance_name}hybridcache:{self.namespace}}}"

    @property
    def index(self) -> str:
        """The sorted set of instance ids, scored by their last report."""
        return f"{self.meta}instances"

    def report(self, instance_id: str) -> str:
        """The key holding one instance's last report."""
        return f"{self.meta}instance:{instance_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class LiveInstance:
    """One running instance as it last reported itself.

    ``stats`` is its :meth:`CacheStats.as_dict` (camelCase) at ``reported_at``; ``age`` is how many seconds ago
    that was, by the Redis server's clock (so clock skew between hosts does not matter).
    """

    instance_id: str
    host: str
    pid: int
    started_at: float  # Unix seconds, the reporting host's clock
    version: str
    namespace: str
    reported_at: float  # Unix seconds, the Redis server's clock
    age: float
    stats: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """camelCase JSON, as ``hybridcache stats --json`` prints it."""
        return {
            "instanceId": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "startedAt": self.started_at,
            "version": self.version,
            "namespace": self.namespace,
            "reportedAt": self.reported_at,
            "age": self.age,
            "stats": self.stats,
        }


class InstanceRegistry:
    """Reports one cache's counters to Redis every ``interval`` seconds until closed.

    ``client`` should be a background client (not the request path's pool). ``stats`` is called once per report.
    The report expires ``ttl`` (default three intervals) after it was written, so an instance that dies without
    :meth:`close` disappears from :func:`live_instances` within that time.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        keys: InstanceKeys,
        instance_id: str,
        stats: Callable[[], CacheStats],
        interval: float = REPORT_INTERVAL_SECONDS,
        ttl: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.keys = keys
        self.instance_id = instance_id
        self.interval = interval
        self.ttl = 3 * interval if ttl is None else ttl
        if self.ttl <= interval:
            raise ValueError(f"ttl ({self.ttl}) must be longer than the interval ({interval})")
        self._client = client
        self._stats = stats
        self._started_at = time.time()
        self._host = socket.gethostname()
        self._report = client.register_script(_REPORT)
        self._withdraw = client.register_script(_WITHDRAW)
        self._task: asyncio.Task[None] | None = None
        self.reports = 0  # successful reports, for tests and curiosity

    def start(self) -> None:
        """Start reporting in the background (the first report is sent at once). Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"hybridcache-instance-{self.instance_id}")

    async def close(self, timeout: float = 1.0) -> None:
        """Stop reporting and withdraw this instance's report (best effort, within ``timeout`` seconds)."""
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        try:
            async with asyncio.timeout(timeout):
                index, report = self.keys.index, self.keys.report(self.instance_id)
                await self._withdraw(keys=[index, report], args=[self.instance_id])
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("Could not withdraw the report of instance %s: %s", self.instance_id, exc)

    def payload(self) -> bytes:
        """The report as written: identity, start time, version and the current counters."""
        return orjson.dumps(
            {
                "instanceId": self.instance_id,
                "host": self._host,
                "pid": os.getpid(),
                "startedAt": self._started_at,
                "version": package_version(),
                "namespace": self.keys.namespace,
                "stats": self._stats().as_dict(),
            }
        )

    async def report(self) -> bool:
        """Write one report now; False (logged at debug level) when Redis could not take it."""
        keys = [self.keys.index, self.keys.report(self.instance_id)]
        args: list[EncodableT] = [self.instance_id, self.payload(), int(self.ttl * 1000)]
        try:
            async with asyncio.timeout(self.interval):
                await self._report(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("Instance report of %s failed: %s: %s", self.instance_id, exc.__class__.__name__, exc)
            return False
        self.reports += 1
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.report()
            except Exception:  # a bug here must never take the cache down with it
                logger.debug("Instance report of %s failed unexpectedly", self.instance_id, exc_info=True)
            await asyncio.sleep(self.interval)


async def live_instances(client: Redis | RedisCluster, keys: InstanceKeys | CacheSettings) -> list[LiveInstance]:
    """The instances of a cache namespace whose report has not expired, most recently started first.

    Ids whose report has expired (the instance died without withdrawing it) are removed from the index on the
    way. Redis errors propagate (this is an operator's read, not the request path).
    """
    if isinstance(keys, CacheSettings):
        keys = InstanceKeys.for_settings(keys)
    seconds, microseconds, flat = await client.register_script(_READ)(keys=[keys.index])
    now = int(seconds) + int(microseconds) / 1_000_000
    members = [_text(item) for item in flat]
    ids = members[::2]
    if not ids:
        return []
    scores = {instance_id: float(score) / 1000 for instance_id, score in zip(ids, members[1::2], strict=True)}
    # The reports share the index's hash tag: one MGET, one slot, even on a cluster.
    payloads = await client.mget([keys.report(instance_id) for instance_id in ids])
    found: list[LiveInstance] = []
    expired: list[str] = []
    for instance_id, payload in zip(ids, payloads, strict=True):
        if payload is None:
            expired.append(instance_id)
            continue
        try:
            found.append(_parse(instance_id, payload, scores[instance_id], now))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.debug("Ignoring an unreadable report of instance %s: %s", instance_id, exc)
    if expired:
        await client.zrem(keys.index, *expired)
    found.sort(key=lambda instance: instance.started_at, reverse=True)
    return found


def _parse(instance_id: str, payload: bytes | str, reported_at: float, now: float) -> LiveInstance:
    data = orjson.loads(payload)
    stats = data["stats"]
    if not isinstance(stats, dict):
        raise TypeError("stats is not an object")
    return LiveInstance(
        instance_id=instance_id,
        host=str(data["host"]),
        pid=int(data["pid"]),
        started_at=float(data["startedAt"]),
        version=str(data["version"]),
        namespace=str(data["namespace"]),
        reported_at=reported_at,
        age=max(0.0, now - reported_at),
        stats=stats,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
