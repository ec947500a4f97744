"""The L2 hit's ``GET``, sent the shortest way redis-py allows for each topology.

An L2 hit is one ``GET``, so whatever redis-py does around a command is a large share of its cost. Its
``execute_command`` adds a retry wrapper and operation metrics; its asyncio ``ConnectionPool`` adds a lock, a
readiness probe of the socket and connection metrics to every checkout. Measured on the reference DTO
(``benchmarks/bench_cache.py``), the pool checkout alone costs about as much as decoding the value. Here:

* **standalone** — :class:`GetConnections`: connections reserved for GETs, kept in a free list beside the client's
  pool and made by that pool (same class and options: auth, database, RESP version, TLS, timeouts);
* **Sentinel** — :func:`get_pooled`: a connection checked out of the client's pool, which follows the master;
* **cluster** — :func:`get_on_cluster`: the connection of the master the client's slot map names, handing over
  to the cluster client for whatever it exists to handle (redirects, slot-map refresh).

In all three the reply is read on the connection the request went out on, by redis-py's own connection: socket
timeouts, RESP2/3 parsing, and dropping a connection whose exchange failed or was cancelled midway (so no caller
ever reads another caller's reply) stay redis-py's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import AskError, ClusterDownError, MovedError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["GetConnections", "get_on_cluster", "get_pooled"]


class GetConnections:
    """Connections of one standalone server reserved for L2 GETs: a last-in-first-out free list.

    There are never more than the most GETs that ran at once (the cache's request slots bound that); a
    connection is made on first need by the client's pool (:meth:`ConnectionPool.make_connection`) and connects
    on first use. They are not counted against the pool's ``max_connections``. An idle connection the server has
    since closed (a restart, an idle ``timeout``) fails its next GET with a connection error: that GET is sent
    once more on a fresh socket, so a restart costs no failed read. A connection that failed otherwise was
    disconnected by redis-py and reconnects when next used.
    """

    __slots__ = ("_idle", "_made", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: deque[AbstractConnection] = deque()
        self._made: list[AbstractConnection] = []

    def __len__(self) -> int:
        """Connections made so far (idle or in use)."""
        return len(self._made)

    async def get(self, redis_key: str) -> Any:
        """The raw reply to ``GET redis_key`` (bytes, or None)."""
        connection = self._take()
        try:
            reused = connection.is_connected
            packed = connection.pack_command("GET", redis_key)
            try:
                await connection.send_packed_command(packed, False)
                return await connection.read_response()
            except RedisConnectionError:
                if not reused:
                    raise
            # The socket was closed while idle: once more, on a fresh one (redis-py reconnects on send).
            await connection.disconnect()
            await connection.send_packed_command(packed, False)
            return await connection.read_response()
        finally:
            self._idle.append(connection)

    def _take(self) -> AbstractConnection:
        if self._idle:
            return self._idle.pop()
        connection: AbstractConnection = self._pool.make_connection()
        self._made.append(connection)
        return connection

    async def aclose(self) -> None:
        """Disconnect every connection made (they can still reconnect if used again)."""
        for connection in self._made:
            await connection.disconnect()


async def get_pooled(pool: ConnectionPool, redis_key: str) -> Any:
    """``GET`` on a connection checked out of ``pool`` (used for Sentinel, whose pool tracks the master)."""
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(connection.pack_command("GET", redis_key), False)
        return await connection.read_response()
    finally:
        await pool.release(connection)


# What makes a GET sent straight to the slot's master hand over to the cluster client: a redirect, a slot that is
# moving or not served, a connection refused or dropped (the node may be gone: the client refreshes its slot map).
_CLUSTER_HANDOVER = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError, RedisConnectionError)


async def get_on_cluster(client: RedisCluster, redis_key: str) -> Any:
    """``GET`` on a connection of the master its slot maps to, without the cluster client's per-command dispatch.

    Whatever the cluster client exists to handle — ``MOVED``/``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, an uncovered
    slot, a connection error — hands the GET over to it (``client.get``), which follows the redirect or refreshes
    its slot map and answers. A timeout is not handed over: a paused master would then cost two timeouts.
    """
    try:
        node = client.get_node_from_key(redis_key)
    except SlotNotCoveredError:
        node = None
    if node is None:
        return await client.get(redis_key)
    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)
        await connection.send_packed_command(connection.pack_command("GET", redis_key), False)
        return await connection.read_response()
    except _CLUSTER_HANDOVER:
        pass
    finally:
        try:
            await node.disconnect_if_needed(connection)
        finally:
            node.release(connection)
    return await client.get(redis_key)
