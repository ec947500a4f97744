"""A private Redis Cluster (3 masters + 3 replicas by default) on free loopback ports, for tests and benchmarks.

Each node is a :class:`RedisServer` (its own temporary directory, no persistence) started with
``--cluster-enabled yes``; the nodes are joined with ``redis-cli --cluster create … --cluster-replicas 1`` and the
cluster counts as ready once every node says ``cluster_state:ok``, agrees on the same masters, and every replica's
link to its master is up. The cluster bus gets its own free port (``--cluster-port``) rather than ``port + 10000``,
which may be taken or out of range.

Methods that change the topology (:meth:`RedisClusterProcess.failover`, :meth:`kill`, :meth:`restart`) block until
the cluster is consistent again, within a deadline; call them through ``asyncio.to_thread`` from a running event
loop so the caches under test keep working meanwhile.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis
from redis.crc import key_slot

from harness.process import HOST as _HOST
from harness.process import find_free_port
from harness.redis_server import RedisServer, RedisServerError

__all__ = ["ClusterError", "NodeInfo", "RedisClusterProcess"]


class ClusterError(RuntimeError):
    """The cluster could not be formed, or did not reach the expected state in time."""


@dataclass(frozen=True)
class NodeInfo:
    """One line of ``CLUSTER NODES`` as seen by some node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # the master's id for a replica, None for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges
    connected: bool

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def serves(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeInfo]:
    """Parse the text of ``CLUSTER NODES`` (one node per line)."""
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        address = fields[1].split("@")[0]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        nodes.append(
            NodeInfo(
                node_id=fields[0],
                port=int(address.rpartition(":")[2] or 0),
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
                connected=fields[7] == "connected",
            )
        )
    return nodes


class RedisClusterProcess:
    """``masters`` masters with ``replicas`` replicas each, every node a private ``redis-server`` on 127.0.0.1.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a silent master takes to be failed over.
    Use as a context manager or call :meth:`start` / :meth:`close` yourself.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        startup_timeout: float = 60.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and a non-negative replica count")
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._startup_timeout = startup_timeout
        self._extra_args = tuple(extra_args)
        self.nodes: dict[int, RedisServer] = {}  # by client port

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the nodes, join them and return once the cluster is ready; on any failure everything is killed."""
        deadline = time.monotonic() + self._startup_timeout
        try:
            for _ in range(self._masters * (1 + self._replicas)):
                self._start_node()
            self._create(deadline)
            self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self) -> RedisServer:
        for _attempt in range(5):
            bus_port = find_free_port()
            server = RedisServer(
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self._node_timeout_ms),
                    "--cluster-port", str(bus_port),
                    *self._extra_args,
                )
            )  # fmt: skip
            try:
                server.start()
            except RedisServerError as exc:  # most likely the bus port was taken meanwhile
                server.close()
                error = exc
                continue
            self.nodes[server.port] = server
            return server
        raise ClusterError(f"could not start a cluster node: {error}")

    def _create(self, deadline: float) -> None:
        if self._masters < 3:
            self._create_small()
            return
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ClusterError("redis-cli was not found on PATH (it comes with redis-server: `make redis-server`)")
        command = [
            cli, "--cluster", "create",
            *(f"{_HOST}:{port}" for port in self.nodes),
            "--cluster-replicas", str(self._replicas),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"redis-cli --cluster create did not finish: {exc.stdout!r}") from None
        output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        if result.returncode != 0 or "[OK] All 16384 slots covered" not in output:
            raise ClusterError(f"redis-cli --cluster create failed ({result.returncode}):\n{output[-2000:]}")

    def _create_small(self) -> None:
        """``redis-cli --cluster create`` refuses fewer than 3 masters: assign slots and meet nodes by hand."""
        ports = list(self.nodes)
        masters, replicas = ports[: self._masters], ports[self._masters :]
        share = 16384 // len(masters)
        for index, port in enumerate(masters):
            first = index * share
            last = 16383 if index == len(masters) - 1 else first + share - 1
            with self.client(port) as node:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.client(ports[0]) as first_node:
            for port in ports[1:]:
                first_node.execute_command("CLUSTER", "MEET", _HOST, port, self._bus_port(port))
        self._wait(lambda: self._everyone_knows(ports), timeout=10, what="the nodes to meet")
        for index, port in enumerate(replicas):
            master = masters[index % len(masters)]
            with self.client(master) as node:
                master_id = str(node.execute_command("CLUSTER", "MYID"))
            with self.client(port) as node:
                node.execute_command("CLUSTER", "REPLICATE", master_id)

    def _bus_port(self, port: int) -> int:
        with self.client(port) as node:
            line = next(n for n in str(node.execute_command("CLUSTER", "NODES")).splitlines() if "myself" in n)
        return int(line.split()[1].split("@")[1].split(",")[0])

    def _everyone_knows(self, ports: list[int]) -> bool:
        for port in ports:
            nodes = self.cluster_nodes(port)
            if len(nodes) != len(ports) or any("handshake" in n.flags for n in nodes):
                return False
        return True

    def close(self) -> None:
        """Kill every node and remove their directories. Idempotent."""
        for server in self.nodes.values():
            server.close()
        self.nodes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def seeds(self) -> list[tuple[str, int]]:
        """Every node's (host, port), in start order."""
        return [(_HOST, port) for port in self.nodes]

    @property
    def configuration(self) -> str:
        """The StackExchange form the cache accepts: ``127.0.0.1:p1,127.0.0.1:p2,…`` (several endpoints = Cluster)."""
        return ",".join(f"{host}:{port}" for host, port in self.seeds)

    @property
    def url(self) -> str:
        """The URL form: ``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…``."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.seeds)

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain blocking client to one node (no redirections followed); the caller closes it."""
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(host=_HOST, port=port, decode_responses=True, **kwargs)

    def cluster_client(self, **kwargs: Any) -> redis.RedisCluster:
        """A blocking cluster client (follows redirections); the caller closes it."""
        kwargs.setdefault("socket_timeout", 5)
        live = [redis.cluster.ClusterNode(_HOST, port) for port, s in self.nodes.items() if s.is_running]
        return redis.RedisCluster(startup_nodes=live, decode_responses=True, **kwargs)

    # -- inspection -----------------------------------------------------------------------------------------

    def live_ports(self) -> list[int]:
        return [port for port, server in self.nodes.items() if server.is_running and not server.is_paused]

    def cluster_nodes(self, via: int | None = None) -> list[NodeInfo]:
        """``CLUSTER NODES`` as node ``via`` (default: the first live node) sees it."""
        port = via if via is not None else self.live_ports()[0]
        with self.client(port) as node:
            return parse_cluster_nodes(str(node.execute_command("CLUSTER", "NODES")))

    def masters(self) -> list[tuple[str, int]]:
        """(host, port) of every master that serves slots, by the first live node's view, in slot order."""
        serving = [n for n in self.cluster_nodes() if n.is_master and n.slots and not n.failing]
        return [(_HOST, n.port) for n in sorted(serving, key=lambda n: n.slots[0])]

    def replicas_of(self, master_port: int) -> list[int]:
        """Ports of the replicas of the master on ``master_port``."""
        nodes = self.cluster_nodes()
        master = next(n for n in nodes if n.port == master_port)
        return [n.port for n in nodes if n.master_id == master.node_id]

    def master_for_slot(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        for node in self.cluster_nodes():
            if node.is_master and not node.failing and node.serves(slot):
                return node.port
        raise ClusterError(f"no master serves slot {slot}")

    def master_for_key(self, key: str | bytes) -> int:
        """Port of the master serving ``key``'s slot (hash tags honoured)."""
        return self.master_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def run_id(self, port: int) -> str:
        with self.client(port) as node:
            return str(node.info("server")["run_id"])

    def state(self, port: int) -> str:
        with self.client(port) as node:
            return str(node.execute_command("CLUSTER", "INFO")).split("cluster_state:")[1].split()[0]

    # -- readiness ------------------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Every live node says ok, all agree on who serves which slots, and every live replica is in sync."""
        live = self.live_ports()
        views: set[tuple[tuple[int, tuple[tuple[int, int], ...]], ...]] = set()
        try:
            for port in live:
                if self.state(port) != "ok":
                    return False
                nodes = self.cluster_nodes(port)
                if any(n.failing for n in nodes if n.port in live):
                    return False
                views.add(tuple(sorted((n.port, n.slots) for n in nodes if n.is_master and n.slots)))
                with self.client(port) as node:
                    replication = node.info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
        except (redis.RedisError, OSError, IndexError):
            return False
        return len(views) == 1 and sum(e - s + 1 for _, slots in next(iter(views)) for s, e in slots) == 16384

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._wait(self.is_ready, timeout=timeout, what="the cluster to be ready")

    def _wait(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, OSError, ClusterError):
                if predicate():
                    return
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout}s waiting for {what}:\n{self.describe()}")
            time.sleep(0.05)

    def describe(self) -> str:
        """Every live node's view of the cluster, for failure messages."""
        lines = []
        for port in self.live_ports():
            try:
                with self.client(port, socket_timeout=1) as node:
                    lines.append(f"-- {port}: {node.execute_command('CLUSTER', 'NODES')}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"-- {port}: {exc}")
        return "\n".join(lines)

    # -- faults and failover --------------------------------------------------------------------------------

    def failover(self, replica_port: int, *, timeout: float = 20.0) -> None:
        """``CLUSTER FAILOVER`` on the replica on ``replica_port``; returns once it is a master serving slots, its
        old master has become its replica and the cluster is ready again."""
        nodes = self.cluster_nodes(replica_port)
        me = next(n for n in nodes if n.port == replica_port)
        if me.is_master:
            raise ClusterError(f"node {replica_port} is already a master")
        old_master = next(n.port for n in nodes if n.node_id == me.master_id)
        with self.client(replica_port) as node:
            node.execute_command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            for port in self.live_ports():
                view = {n.port: n for n in self.cluster_nodes(port)}
                if not (view[replica_port].is_master and view[replica_port].slots):
                    return False
                if view[old_master].is_master:
                    return False
            return self.is_ready()

        self._wait(promoted, timeout=timeout, what=f"replica {replica_port} to take over from {old_master}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (its cluster config stays on disk for :meth:`restart`)."""
        self.nodes[port].kill()

    def restart(self, port: int, *, timeout: float = 30.0) -> None:
        """Start a killed node again on its port (empty data, new run_id, same node id) and wait until ready."""
        self.nodes[port].restart()
        self.wait_ready(timeout=timeout)

    def fail_master(self, port: int, *, timeout: float = 30.0) -> int:
        """SIGKILL the master on ``port`` and wait until a replica serves its slots (after ``node_timeout_ms`` and
        an election) and every live node says ok again; returns the new master's port."""
        slot = next(n for n in self.cluster_nodes() if n.port == port).slots[0][0]
        self.kill(port)
        heir: list[int] = []

        def taken_over() -> bool:
            heir[:] = [self.master_for_slot(slot)]
            return heir[0] != port and all(self.state(p) == "ok" for p in self.live_ports())

        self._wait(taken_over, timeout=timeout, what=f"a replica to take over from the killed master {port}")
        return heir[0]

    def __repr__(self) -> str:
        return f"<RedisClusterProcess {self.configuration}>"
