"""A private Sentinel setup on free loopback ports: one master, one replica and three sentinels.

The data nodes are :class:`RedisServer` processes (the replica started with ``--replicaof``); each sentinel is
``redis-server <conf> --sentinel`` (the same binary; ``redis-sentinel`` need not be on PATH) with its config file
in its own temporary directory, because Sentinel rewrites it. The setup counts as ready once every sentinel
names the same master, knows the replica and the two other sentinels, and the replica's link is up.

:meth:`RedisSentinelSetup.failover` and :meth:`kill_master` block until the sentinels agree on the new master;
call them through ``asyncio.to_thread`` from a running event loop.

With ``sentinel_password`` every sentinel runs with ``requirepass`` (they then use it with each other too) and this
module's own clients pass it; the data nodes stay password-free.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from harness.process import HOST as _HOST
from harness.process import ManagedProcess, ProcessError
from harness.redis_server import RedisServer, RedisServerError, redis_server_binary
from hybridcache.connection import mask_configuration

__all__ = ["RedisSentinelSetup", "SentinelError", "SentinelProcess"]

SERVICE = "mymaster"


class SentinelError(ProcessError):
    """The setup could not be started, or did not reach the expected state in time."""


class SentinelProcess(ManagedProcess):
    """One ``redis-server <conf> --sentinel`` child process on a free port."""

    error = SentinelError
    name = "sentinel"

    def __init__(
        self, master_port: int, *, down_after_ms: int, failover_timeout_ms: int, password: str | None = None
    ) -> None:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="hc-sentinel-")
        self._conf = Path(self._tmpdir.name) / "sentinel.conf"
        self._master_port = master_port
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._password = password
        super().__init__(Path(self._tmpdir.name) / "sentinel.log")

    def command(self, port: int) -> list[str]:
        self._conf.write_text(  # rewritten for every attempt: Sentinel rewrites it, and the port may change
            f"port {port}\n"
            f"bind {_HOST}\n"
            f"dir {self._tmpdir.name}\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {SERVICE} {_HOST} {self._master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self._down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self._failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            + (f"requirepass {self._password}\n" if self._password is not None else "")
        )
        return [redis_server_binary(), str(self._conf), "--sentinel"]

    def ready(self, port: int) -> bool:
        with contextlib.suppress(redis.RedisError, OSError), self.client(socket_timeout=0.5) as client:
            return bool(client.ping())
        return False

    def close(self) -> None:
        self.kill()
        self._tmpdir.cleanup()

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("password", self._password)
        return redis.Redis(host=_HOST, port=self.port, decode_responses=True, **kwargs)

    def master(self) -> dict[str, Any]:
        """``SENTINEL MASTER mymaster`` as a dict."""
        with self.client() as client:
            return dict(client.sentinel_master(SERVICE))

    def master_port(self) -> int:
        with self.client() as client:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)


class RedisSentinelSetup:
    """One master, one replica, three sentinels monitoring them as ``mymaster`` (quorum 2); with
    ``sentinel_password`` the sentinels require it (``requirepass``)."""

    service_name = SERVICE

    def __init__(
        self,
        *,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        startup_timeout: float = 30.0,
        sentinel_password: str | None = None,
    ) -> None:
        self.sentinel_password = sentinel_password
        self._sentinel_count = sentinels
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._startup_timeout = startup_timeout
        self.servers: dict[int, RedisServer] = {}  # the data nodes, by port
        self.sentinels: list[SentinelProcess] = []

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Self:
        deadline = time.monotonic() + self._startup_timeout
        try:
            master = self._start_server(())
            self._start_server(("--replicaof", _HOST, str(master.port)))
            for _ in range(self._sentinel_count):
                sentinel = SentinelProcess(
                    master.port,
                    down_after_ms=self._down_after_ms,
                    failover_timeout_ms=self._failover_timeout_ms,
                    password=self.sentinel_password,
                )
                self.sentinels.append(sentinel)
                sentinel.start()
            self.wait_ready(master.port, timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.close()
            raise
        return self

    def _start_server(self, extra_args: tuple[str, ...]) -> RedisServer:
        server = RedisServer(extra_args=extra_args)
        try:
            server.start()
        except RedisServerError:
            server.close()
            raise
        self.servers[server.port] = server
        return server

    def close(self) -> None:
        """Kill every process and remove their directories. Idempotent."""
        for sentinel in self.sentinels:
            sentinel.close()
        self.sentinels.clear()
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(_HOST, s.port) for s in self.sentinels]

    @property
    def configuration(self) -> str:
        """The StackExchange form: ``127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3,serviceName=mymaster``, followed by
        ``,sentinelPassword=…`` when the sentinels have one."""
        password = f",sentinelPassword={self.sentinel_password}" if self.sentinel_password is not None else ""
        return ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses) + f",serviceName={SERVICE}{password}"

    @property
    def url(self) -> str:
        """The URL form: ``redis+sentinel://127.0.0.1:s1,…/mymaster`` (it cannot carry a sentinel password)."""
        return "redis+sentinel://" + ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses) + f"/{SERVICE}"

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain blocking client to one data node; the caller closes it."""
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(host=_HOST, port=port, decode_responses=True, **kwargs)

    # -- inspection -----------------------------------------------------------------------------------------

    def master(self) -> int:
        """Port of the master the (live) sentinels name; raises if they disagree."""
        ports = {s.master_port() for s in self.sentinels if s.is_running}
        if len(ports) != 1:
            raise SentinelError(f"the sentinels disagree on the master: {sorted(ports)}")
        return ports.pop()

    def replica(self) -> int:
        """Port of a data node that is not the master."""
        master = self.master()
        return next(port for port in self.servers if port != master)

    def role(self, port: int) -> str:
        with self.client(port) as client:
            return str(client.info("replication")["role"])

    def run_id(self, port: int) -> str:
        with self.client(port) as client:
            return str(client.info("server")["run_id"])

    def is_ready(self, master_port: int) -> bool:
        """Every live sentinel names ``master_port``, sees it up with its replicas and the other sentinels."""
        live = [s for s in self.sentinels if s.is_running]
        replicas = sum(1 for port, server in self.servers.items() if port != master_port and server.is_running)
        for sentinel in live:
            state = sentinel.master()
            if int(state["port"]) != master_port or "down" in str(state["flags"]):
                return False
            if int(state["num-slaves"]) < replicas or int(state["num-other-sentinels"]) < len(live) - 1:
                return False
            with sentinel.client() as client:
                known = client.sentinel_slaves(SERVICE)
            if sum(1 for r in known if "down" not in str(r["flags"]) and r["master-link-status"] == "ok") < replicas:
                return False
        if self.role(master_port) != "master":
            return False
        for port, server in self.servers.items():
            if port != master_port and server.is_running:
                with self.client(port) as client:
                    info = client.info("replication")
                if info.get("master_port") != master_port or info.get("master_link_status") != "up":
                    return False
        return True

    def wait_ready(self, master_port: int | None = None, *, timeout: float = 30.0) -> None:
        port = master_port if master_port is not None else self.master()
        self._wait(lambda: self.is_ready(port), timeout=timeout, what=f"the sentinels to agree on master {port}")

    def _wait(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, OSError, SentinelError, KeyError):
                if predicate():
                    return
            if time.monotonic() >= deadline:
                raise SentinelError(f"timed out after {timeout}s waiting for {what}:\n{self.describe()}")
            time.sleep(0.05)

    def describe(self) -> str:
        lines = []
        for sentinel in self.sentinels:
            try:
                state = sentinel.master()
                lines.append(f"sentinel {sentinel.port}: master {state.get('port')} flags {state.get('flags')}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"sentinel {sentinel.port}: {exc}")
        for port, server in self.servers.items():
            try:
                lines.append(f"node {port}: role {self.role(port)}" if server.is_running else f"node {port}: down")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"node {port}: {exc}")
        return "\n".join(lines)

    # -- faults and failover --------------------------------------------------------------------------------

    def failover(self, *, demoted: bool = True, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER mymaster``; returns the new master's port once every sentinel names it and it says it
        is a master, and (``demoted``) the old master replicates from it with its link up, as the data nodes
        report it. The sentinels convert the old master only after their INFO period (~10 s): with
        ``demoted=False`` it is still a writable master when this returns."""
        old = self.master()
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = next(port for port in self.servers if port != old)
        if demoted:
            self._wait(lambda: self._switched(old, new), timeout=timeout, what=f"the failover from {old} to {new}")
        else:
            self._wait(lambda: self._named(new), timeout=timeout, what=f"the sentinels to name {new} the master")
        return new

    def wait_demoted(self, old: int, *, timeout: float = 30.0) -> None:
        """After ``failover(demoted=False)``: wait until the old master replicates from the current one."""
        new = self.master()
        self._wait(lambda: self._switched(old, new), timeout=timeout, what=f"{old} to replicate from {new}")

    def _named(self, new: int) -> bool:
        return all(s.master_port() == new for s in self.sentinels if s.is_running) and self.role(new) == "master"

    def _switched(self, old: int, new: int) -> bool:
        if not self._named(new):
            return False
        if not self.servers[old].is_running:
            return True
        with self.client(old) as client:
            info = client.info("replication")
        return bool(info.get("master_port") == new and info.get("master_link_status") == "up")

    def kill_master(self, *, timeout: float = 30.0) -> int:
        """SIGKILL the master; returns the replica's port once the sentinels have promoted it (after
        ``down_after_ms`` and an election)."""
        old = self.master()
        self.servers[old].kill()
        new = next(port for port in self.servers if port != old)
        self._wait(
            lambda: self._switched(old, new), timeout=timeout, what=f"the promotion of {new} after killing {old}"
        )
        return new

    def restart(self, port: int, *, timeout: float = 30.0) -> None:
        """Start a killed data node again (empty, new run_id) as a replica of the current master; wait until the
        sentinels see it in sync."""
        master = self.master()
        if port == master:
            raise SentinelError(f"{port} is the current master: kill_master() first")
        server = self.servers[port]
        server.kill()
        restarted = RedisServer(extra_args=("--replicaof", _HOST, str(master)), port=port)
        server.close()
        self.servers[port] = restarted.start()
        self.wait_ready(master, timeout=timeout)

    def __repr__(self) -> str:
        return f"<RedisSentinelSetup {mask_configuration(self.configuration)}>"
