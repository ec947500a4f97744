"""The Redis deployments a test can run on, each seen the way the standalone suites see "the" Redis server.

The integration conftest parametrises tests marked ``all_topologies`` over :data:`TOPOLOGIES` and gives them a
:class:`RedisEndpoint` (the ``redis_endpoint`` fixture): on standalone that is the test's own private
:class:`~harness.redis_server.RedisServer`; on a cluster or behind Sentinel it is an :class:`Endpoint` of the
session's setup. A test reads ``url`` (any configuration string the cache accepts) and, to inspect Redis,
``sync_client()``: a blocking client of the node that holds the data, or for a cluster a :class:`ClusterAdmin`
that answers for all of its masters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from harness.redis_cluster import RedisClusterProcess
from harness.redis_sentinel import RedisSentinelSetup

__all__ = [
    "CLUSTER",
    "SENTINEL",
    "STANDALONE",
    "TOPOLOGIES",
    "ClusterAdmin",
    "Endpoint",
    "RedisEndpoint",
    "cluster_endpoint",
    "sentinel_endpoint",
]

STANDALONE = "standalone"
CLUSTER = "cluster"
SENTINEL = "sentinel"
TOPOLOGIES = (STANDALONE, CLUSTER, SENTINEL)


class RedisEndpoint(Protocol):
    """What a topology-parametrised test may ask of its Redis: a ``RedisServer`` offers both."""

    @property
    def url(self) -> str: ...

    def sync_client(self, **options: Any) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class Endpoint:
    """A cluster or Sentinel setup as a :class:`RedisEndpoint`: a configuration string in ``url`` and, for the few
    tests that inspect Redis, ``sync_client(**options)``: a blocking client of the topology built by ``admin``."""

    url: str
    admin: Callable[..., AbstractContextManager[Any]]

    def sync_client(self, **options: Any) -> AbstractContextManager[Any]:
        """A new blocking client (``options`` such as ``socket_timeout`` are passed on); the caller closes it."""
        return self.admin(**options)


class ClusterAdmin:
    """The cluster seen as one server by the tests that inspect "the" server: ``pttl`` goes to the key's master
    (a cluster client); ``config_resetstat`` and ``info("commandstats")`` cover every master, with each command's
    ``calls`` summed, so a count means what it means on a standalone server."""

    def __init__(self, cluster: RedisClusterProcess, **options: Any) -> None:
        self._cluster = cluster
        self._options = options
        self._client = cluster.cluster_client(**options)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()

    def pttl(self, key: str) -> int:
        return int(self._client.pttl(key))

    def config_resetstat(self) -> None:
        for _, port in self._cluster.masters():
            with self._cluster.client(port, **self._options) as node:
                node.config_resetstat()

    def info(self, section: str) -> dict[str, dict[str, int]]:
        if section != "commandstats":
            raise ValueError(f"ClusterAdmin sums INFO commandstats only, not {section!r}")
        calls: Counter[str] = Counter()
        for _, port in self._cluster.masters():
            with self._cluster.client(port, **self._options) as node:
                for name, stats in node.info("commandstats").items():
                    calls[name] += int(stats["calls"])
        return {name: {"calls": count} for name, count in calls.items()}


def cluster_endpoint(cluster: RedisClusterProcess) -> Endpoint:
    """The cluster by its URL; ``sync_client()`` is a :class:`ClusterAdmin`."""
    return Endpoint(cluster.url, admin=lambda **options: ClusterAdmin(cluster, **options))


def sentinel_endpoint(setup: RedisSentinelSetup) -> Endpoint:
    """The setup by its StackExchange configuration (``s1:p1,s2:p2,s3:p3,serviceName=mymaster``);
    ``sync_client()`` is a plain client of the master the sentinels name (the cache reads and writes there)."""
    return Endpoint(setup.configuration, admin=lambda **options: setup.client(setup.master(), **options))
