"""A private ``redis-server`` process on a free loopback port, for tests that need a real Redis.

Every server started here is killed and reaped when its owner stops it, when the fixture tears down, and (as a
last resort) when the interpreter exits, so a test run never leaves an orphan or a zombie behind.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio

__all__ = ["RedisServer", "RedisServerError", "find_free_port", "redis_server_binary"]

_HOST = "127.0.0.1"
_MISSING_BINARY = (
    "redis-server was not found on PATH. The test suite starts its own private Redis servers; "
    "run `make test` (or `make redis-server`), which installs it."
)
# Strong references to every child not yet reaped, so none can outlive the interpreter (see _kill_leftovers).
_LIVE: set[subprocess.Popen[bytes]] = set()


class RedisServerError(RuntimeError):
    """The redis-server process could not be started, or did not answer in time."""


def redis_server_binary() -> str:
    """Path of ``redis-server``; raises :class:`RedisServerError` naming ``make test`` if it is absent."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError(_MISSING_BINARY)
    return path


def find_free_port() -> int:
    """A loopback port that was free a moment ago (the caller must still cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` child process, no persistence, bound to 127.0.0.1.

    ``extra_args`` are appended to the command line,
    e.g. ``("--client-output-buffer-limit", "pubsub 64kb 0 0")``.
    Use as a context manager or call :meth:`start` / :meth:`kill` yourself.
    """

    def __init__(
        self, *, extra_args: Sequence[str] = (), port: int | None = None, startup_timeout: float = 10.0
    ) -> None:
        self._extra_args = tuple(extra_args)
        self._fixed_port = port
        self._port = port or 0
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._tmpdir = tempfile.TemporaryDirectory(prefix="hc-redis-")
        self._log_path = Path(self._tmpdir.name) / "redis.log"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it answers PING; on losing a port race, retry on a new port."""
        if self.is_running:
            return self
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            port = self._fixed_port or find_free_port()
            error = self._try_start(port, deadline)
            if error is None:
                return self
            last_error = error
            if self._fixed_port is not None:
                time.sleep(0.05)  # a fixed port may still be held by the previous process: retry it briefly
        raise RedisServerError(f"redis-server did not start within {self._startup_timeout}s: {last_error}")

    def _try_start(self, port: int, deadline: float) -> str | None:
        command = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._tmpdir.name,
            "--daemonize", "no",
            *self._extra_args,
        ]  # fmt: skip
        with self._log_path.open("ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._process, self._port, self._paused = process, port, False
        _LIVE.add(process)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                _LIVE.discard(process)
                return f"exited with status {process.returncode}; log tail:\n{self.log_tail()}"
            if _answers_ping(port):
                return None
            time.sleep(0.01)
        self.kill()
        return f"no PING answer on port {port}; log tail:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the server (works even while paused) and reap it. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        _LIVE.discard(process)
        self._process, self._paused = None, False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful shutdown); falls back to SIGKILL after ``timeout``. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            if self._paused:
                process.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _LIVE.discard(process)
        self._process, self._paused = None, False

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing (a frozen, not a dead, Redis)."""
        self._running_process().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._running_process().send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Kill the server and start a fresh one (empty data, new run_id) on the same port."""
        self.kill()
        fixed = self._fixed_port
        self._fixed_port = self._port
        try:
            self.start()
        finally:
            self._fixed_port = fixed

    def close(self) -> None:
        """Kill the server and remove its working directory."""
        self.kill()
        self._tmpdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- inspection -----------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return _HOST

    @property
    def url(self) -> str:
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        return f"redis://{_HOST}:{self._port}/{db}"

    @property
    def is_running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    @property
    def pid(self) -> int:
        return self._running_process().pid

    def client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A new asyncio client to this server; the caller closes it (``await c.aclose()``)."""
        return redis.asyncio.Redis(host=_HOST, port=self._port, **kwargs)

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        """A new blocking client to this server; the caller closes it."""
        return redis.Redis(host=_HOST, port=self._port, **kwargs)

    def run_id(self) -> str:
        """The server's ``run_id`` (changes on every restart)."""
        with self.sync_client(socket_timeout=5) as client:
            info: dict[str, Any] = client.info("server")
        return str(info["run_id"])

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _running_process(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise RedisServerError(f"redis-server on port {self._port} is not running")
        return self._process

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<RedisServer {self.url} {state}>"


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(OSError):
            process.kill()
            process.wait()
    _LIVE.clear()
