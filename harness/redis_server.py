"""A private ``redis-server`` process on a free loopback port, for tests and benchmarks that need a real Redis.

Never the system Redis on 6379: every server here binds 127.0.0.1 on a port of its own, without persistence, in
its own temporary directory, and is killed and reaped by its owner or at interpreter exit (:mod:`harness.process`).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from harness.process import HOST, ManagedProcess, ProcessError, find_free_port

__all__ = ["RedisServer", "RedisServerError", "find_free_port", "redis_server_binary"]

_MISSING_BINARY = (
    "redis-server was not found on PATH. The test suite starts its own private Redis servers; "
    "run `make test` (or `make redis-server`), which installs it."
)


class RedisServerError(ProcessError):
    """The redis-server process could not be started, or did not answer in time."""


def redis_server_binary() -> str:
    """Path of ``redis-server``; raises :class:`RedisServerError` naming ``make test`` if it is absent."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError(_MISSING_BINARY)
    return path


def answers_ping(port: int) -> bool:
    """True if something on 127.0.0.1:``port`` answers a RESP ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedProcess):
    """One ``redis-server`` child process, no persistence, bound to 127.0.0.1.

    ``extra_args`` are appended to the command line, e.g. ``("--client-output-buffer-limit", "pubsub 64kb 0 0")``.
    Use as a context manager or call :meth:`start` / :meth:`kill` yourself; :meth:`restart` starts an empty server
    (new run_id) on the same port, :meth:`pause` / :meth:`resume` freeze and thaw it (SIGSTOP / SIGCONT).
    """

    error = RedisServerError
    name = "redis-server"

    def __init__(
        self, *, extra_args: Sequence[str] = (), port: int | None = None, startup_timeout: float = 10.0
    ) -> None:
        self._extra_args = tuple(extra_args)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="hc-redis-")
        super().__init__(Path(self._tmpdir.name) / "redis.log", port=port, startup_timeout=startup_timeout)

    def command(self, port: int) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._tmpdir.name,
            "--daemonize", "no",
            *self._extra_args,
        ]  # fmt: skip

    def ready(self, port: int) -> bool:
        return answers_ping(port)

    def close(self) -> None:
        """Kill the server and remove its working directory."""
        self.kill()
        self._tmpdir.cleanup()

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A new asyncio client to this server; the caller closes it (``await c.aclose()``)."""
        return redis.asyncio.Redis(host=HOST, port=self.port, **kwargs)

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        """A new blocking client to this server; the caller closes it."""
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def run_id(self) -> str:
        """The server's ``run_id`` (changes on every restart)."""
        with self.sync_client(socket_timeout=5) as client:
            info: dict[str, Any] = client.info("server")
        return str(info["run_id"])

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<RedisServer {self.url} {state}>"
