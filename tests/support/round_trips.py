"""Counting round trips on real connections: clients whose connections note every request they write.

A request is one write on a connection: a command, or a pipeline's commands sent together, whose replies are read
back on that connection before it writes again. Counting writes per server therefore counts round trips per server
(per node on a cluster). The connections are redis-py's own, talking to a real server; only
``send_packed_command`` is wrapped, to note what was sent and where.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection

__all__ = ["Writes", "counting_client", "counting_cluster_client"]


@dataclass
class Writes:
    """Every request written by the counting connections of one client: (server port, the bytes sent)."""

    sent: list[tuple[int, bytes]] = field(default_factory=list)

    def clear(self) -> None:
        self.sent.clear()

    def per_server(self, *markers: bytes) -> Counter[int]:
        """How many requests each server (by port) received that contain every one of ``markers``."""
        return Counter(port for port, payload in self.sent if all(marker in payload for marker in markers))


def _connection_class(writes: Writes) -> type[Connection]:
    class CountingConnection(Connection):
        async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
            if isinstance(command, str):
                payload = command.encode()
            elif isinstance(command, bytes):
                payload = command
            else:
                command = list(command)
                payload = b"".join(command)
            writes.sent.append((int(self.port), payload))
            await super().send_packed_command(command, check_health)

    return CountingConnection


def counting_client(host: str, port: int, writes: Writes, **options: Any) -> Redis:
    """A client of one server whose every connection (pooled, or made by its pool for the cache's GETs) counts."""
    pool = ConnectionPool(connection_class=_connection_class(writes), host=host, port=port, **options)
    return Redis(connection_pool=pool)


def counting_cluster_client(host: str, port: int, writes: Writes, **options: Any) -> RedisCluster:
    """A cluster client whose connections to every node (the seed, and each node it discovers) count."""
    counting = _connection_class(writes)
    client = RedisCluster(startup_nodes=[ClusterNode(host, port, connection_class=counting)], **options)
    # The nodes found by CLUSTER SLOTS are built with the client's connection options: count there too.
    client.nodes_manager.connection_kwargs["connection_class"] = counting
    return client
