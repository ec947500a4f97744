"""Building the Redis clients a cache needs, for a standalone server, Sentinel or Redis Cluster.

A cache uses two clients with separate pools: the *request* client (short timeouts; its pool is sized to the
number of concurrent request-path calls) and the *background* client (the backplane's resync and heartbeat), so a
burst of requests can never starve the invalidation channel. The backplane's subscription needs one more
connection, to the server that carries the channel: :meth:`RedisClients.subscriber` makes it, anew after every
failure, so a failover or a slot move is followed.

Topology is taken from the configuration: a ``serviceName`` means Sentinel; several endpoints (or a
``redis+cluster://`` URL) mean Cluster; a single endpoint is probed with ``INFO cluster`` and treated as a cluster
seed when the server says ``cluster_enabled:1`` (as StackExchange.Redis discovers it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from typing import Any, Literal

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hybridcache.connection import RedisEndpointConfig

logger = logging.getLogger("hybridcache.redis")

__all__ = ["AnyRedis", "Redis", "RedisClients", "RedisError", "connect", "follow_sentinel_master", "wrap_client"]

Topology = Literal["standalone", "sentinel", "cluster"]
AnyRedis = Redis | RedisCluster
_BACKGROUND_POOL = 8


@dataclasses.dataclass
class RedisClients:
    """The clients of one cache and how to reach the server carrying its invalidation channel."""

    request: AnyRedis
    background: AnyRedis
    topology: Topology
    node_options: dict[str, Any]  # connection options for one plain node connection (the subscriber)
    owned: bool = True

    @property
    def is_cluster(self) -> bool:
        return self.topology == "cluster"

    async def subscriber(self, channel: str) -> Redis:
        """A plain client (its own pool) on the server that carries ``channel``.

        Standalone and Sentinel: the background client's server (Sentinel resolves the current master on each
        connect). Cluster: the master owning the channel's slot, looked up in a refreshed slot map.
        """
        if isinstance(self.background, RedisCluster):
            with contextlib.suppress(RedisError, OSError):
                await self.background.initialize()
            node = self.background.get_node_from_key(channel)
            if node is None:
                raise RedisError(f"no cluster node serves the slot of {channel!r}")
            return await self._cluster_master(node.host, int(node.port))
        pool = self.background.connection_pool
        return Redis(connection_pool=pool.__class__(**_pool_arguments(pool)))

    async def _cluster_master(self, host: str, port: int) -> Redis:
        """A client on the master at (host, port), or on the master that node replicates.

        Right after a failover the slot map can still name the old master, now a replica. A replica accepts
        ``SSUBSCRIBE`` for its master's slots, but gets the messages late over the cluster bus (or not at all while
        the new master does not list it yet), which breaks the heartbeat's ordering argument: subscribe on the
        master only. ``ROLE`` on the stale node names its new master, so there is no need to wait for gossip.
        """
        for _hop in range(2):
            client = Redis(host=host, port=port, **self.node_options)
            try:
                role = await client.role()
            except BaseException:
                await client.aclose()
                raise
            kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
            if kind == "master":
                return client
            await client.aclose()
            if kind != "slave":
                break
            host = role[1].decode() if isinstance(role[1], bytes) else str(role[1])
            port = int(role[2])
        raise RedisError(f"no master found for the invalidation channel (last tried {host}:{port})")

    async def aclose(self) -> None:
        await self.background.aclose()
        if self.owned:
            await self.request.aclose()


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, made to let go of an old master that is still up after a failover.

    redis-py re-resolves the master only when it opens a connection; then it drops the idle connections, but the
    busy ones go back into its asyncio pool when released (it never checks ``owns_connection`` there) and keep
    talking to the old master. Here a connection released while the pool names another master reconnects first.
    """

    async def release(self, connection: Any) -> None:
        address = self.master_address
        if self.is_master and address is not None and (connection.host, connection.port) != tuple(address):
            connection.mark_for_reconnect()
        await super().release(connection)


async def follow_sentinel_master(*clients: AnyRedis) -> tuple[str, int] | None:
    """Ask the sentinels for the current master and point every Sentinel-managed client among ``clients`` at it.

    redis-py resolves the master only when it opens a connection. After a failover whose old master stays up
    (``SENTINEL FAILOVER``, a partition) pooled connections keep using the old master, which accepts writes until
    the sentinels demote it about ten seconds later, while connections opened meanwhile go to the new one: two
    instances can then publish and subscribe on different servers. Re-resolving moves a pool at once: redis-py
    drops its idle connections, and :class:`_SentinelPool` reconnects the busy ones when they are released.
    Returns the master's address, or None when no client is Sentinel-managed (no I/O then).
    """
    address: tuple[str, int] | None = None
    for client in clients:
        pool = getattr(client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool) and pool.is_master:
            previous = pool.master_address
            host, port = await pool.get_master_address()
            address = (str(host), int(port))
            if previous is not None and tuple(previous) != address:
                logger.warning("Sentinel names a new master %s:%d; moving connections there", *address)
    return address


def _pool_arguments(pool: Any) -> dict[str, Any]:
    arguments = dict(pool.connection_kwargs)
    arguments["connection_class"] = pool.connection_class
    arguments["max_connections"] = 2
    for name in ("service_name", "sentinel_manager", "is_master", "check_connection"):
        if hasattr(pool, name):  # a SentinelConnectionPool must be rebuilt with its own arguments
            arguments[name] = getattr(pool, name)
    return arguments


def _sentinel_options(endpoint: RedisEndpointConfig, node: dict[str, Any]) -> dict[str, Any]:
    """Connection options for the sentinels: the data nodes' timeouts, TLS setting and retry policy (none), and
    ``sentinelUser``/``sentinelPassword`` as their credentials (``user``/``password`` are the data nodes' and are not
    sent to them).

    Without ``retry`` redis-py's default would retry a refused connection, a ``NOAUTH`` or a ``WRONGPASS`` three
    times with backoff, on each sentinel in turn: a wrong sentinel password then held start-up for about 30 s.
    """
    kept = ("socket_timeout", "socket_connect_timeout", "ssl", "retry")
    options = {k: v for k, v in node.items() if k in kept}
    if endpoint.sentinel_username is not None:
        options["username"] = endpoint.sentinel_username
    if endpoint.sentinel_password is not None:
        options["password"] = endpoint.sentinel_password
    return options


def _node_options(endpoint: RedisEndpointConfig, operation_timeout: float, connect_timeout: float) -> dict[str, Any]:
    options = endpoint.to_redis_kwargs(single_host=False)
    options["retry"] = Retry(NoBackoff(), 0)  # a timeout reaches the circuit breaker at once, not after retries
    for name in ("host", "port"):
        options.pop(name, None)
    options["socket_timeout"] = operation_timeout
    options["socket_connect_timeout"] = connect_timeout
    return options


async def connect(
    endpoint: RedisEndpointConfig,
    *,
    operation_timeout: float,
    connect_timeout: float,
    request_pool_size: int,
    protocol: int | None = None,
) -> RedisClients:
    """Build the clients for ``endpoint``; connects only to probe a single endpoint for cluster mode."""
    node = _node_options(endpoint, operation_timeout, connect_timeout)
    if protocol is not None and endpoint.protocol is None:
        node["protocol"] = protocol
    # Connections are opened lazily on the request path, where nothing may wait longer than an operation.
    request_options = {**node, "socket_connect_timeout": min(connect_timeout, operation_timeout)}
    background_options = dict(node)

    if endpoint.service_name is not None:
        sentinel_options = _sentinel_options(endpoint, node)
        sentinel = Sentinel(list(endpoint.hosts), sentinel_kwargs=sentinel_options, **request_options)
        request = sentinel.master_for(
            endpoint.service_name,
            connection_pool_class=_SentinelPool,
            max_connections=request_pool_size,
            **request_options,
        )
        background = sentinel.master_for(
            endpoint.service_name,
            connection_pool_class=_SentinelPool,
            max_connections=_BACKGROUND_POOL,
            **background_options,
        )
        return RedisClients(request, background, "sentinel", node)

    if endpoint.cluster or len(endpoint.hosts) > 1 or await _is_cluster_node(endpoint, background_options):
        return _cluster_clients(endpoint, request_options, background_options, request_pool_size, node)

    ((host, port),) = endpoint.hosts
    request = Redis(host=host, port=port, max_connections=request_pool_size, **request_options)
    background = Redis(host=host, port=port, max_connections=_BACKGROUND_POOL, **background_options)
    return RedisClients(request, background, "standalone", {**node, "host": host, "port": port})


def _cluster_clients(
    endpoint: RedisEndpointConfig,
    request_options: dict[str, Any],
    background_options: dict[str, Any],
    request_pool_size: int,
    node: dict[str, Any],
) -> RedisClients:
    cluster_unsupported = ("db", "health_check_interval", "client_name")
    nodes = [ClusterNode(host, port) for host, port in endpoint.hosts]

    def build(options: dict[str, Any], pool: int) -> RedisCluster:
        kept = {k: v for k, v in options.items() if k not in cluster_unsupported}
        return RedisCluster(startup_nodes=nodes, max_connections=pool, **kept)

    if endpoint.db:
        raise ValueError(f"{endpoint}: Redis Cluster has only database 0 (defaultDatabase={endpoint.db})")
    request = build(request_options, request_pool_size)
    background = build(background_options, _BACKGROUND_POOL)
    plain = {k: v for k, v in node.items() if k != "db"}
    return RedisClients(request, background, "cluster", plain)


async def _is_cluster_node(endpoint: RedisEndpointConfig, options: dict[str, Any]) -> bool:
    ((host, port),) = endpoint.hosts
    probe = Redis(host=host, port=port, **options)
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError) as exc:
        logger.debug("Could not probe %s for cluster mode: %s", endpoint, exc)
        return False
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


def wrap_client(client: AnyRedis, *, connect_timeout: float) -> RedisClients:
    """Clients around one the application built: it serves requests; the backplane gets its own small pool."""
    if isinstance(client, RedisCluster):
        options = _plain_options(client.nodes_manager.connection_kwargs)
        return RedisClients(client, client, "cluster", options, owned=False)
    pool = client.connection_pool
    options = dict(pool.connection_kwargs)
    options["socket_connect_timeout"] = connect_timeout
    background = Redis(
        connection_pool=ConnectionPool(
            connection_class=pool.connection_class, max_connections=_BACKGROUND_POOL, **options
        )
    )
    return RedisClients(client, background, "standalone", options, owned=False)


def _plain_options(node_options: dict[str, Any]) -> dict[str, Any]:
    """What of a cluster client's per-node connection options a plain ``Redis`` takes (the subscriber is one).

    The cluster client keeps entries there that ``Redis()`` refuses (its connection class, response callbacks and
    other internals): passed on, they failed every subscription of a cache given a cluster client. TLS travels as
    the connection class there and as ``ssl=True`` here.
    """
    accepted = inspect.signature(Redis.__init__).parameters
    options = {name: value for name, value in node_options.items() if name in accepted}
    connection_class = node_options.get("connection_class")
    if isinstance(connection_class, type) and issubclass(connection_class, SSLConnection):
        options["ssl"] = True
    return options
