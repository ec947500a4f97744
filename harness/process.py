"""One child process on a free loopback port: started, waited for until it answers, signalled, reaped.

Every harness (redis-server, sentinel, the dealership service) is a :class:`ManagedProcess` that says only how
to build its command line for a port (:meth:`~ManagedProcess.command`) and how to tell that it answers
(:meth:`~ManagedProcess.ready`). Every child is killed and reaped when its owner stops it and, as a last resort,
when the interpreter exits, so a run never leaves an orphan or a zombie behind.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["HOST", "ManagedProcess", "ProcessError", "find_free_port"]

HOST = "127.0.0.1"
# Strong references to every child not yet reaped, so none can outlive the interpreter (see _kill_leftovers).
_LIVE: set[subprocess.Popen[bytes]] = set()


class ProcessError(RuntimeError):
    """A child process could not be started, or did not answer in time."""


def find_free_port() -> int:
    """A loopback port that was free a moment ago (the caller must still cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedProcess:
    """A child process listening on 127.0.0.1:``port`` (a free port picked at each start unless ``port`` is fixed).

    Subclasses implement :meth:`command` and :meth:`ready`, and may set :attr:`error` (the exception raised when
    a start fails) and override :meth:`environment`. Output goes to ``log_path``, which failure messages quote.
    """

    error: type[Exception] = ProcessError
    name = "process"

    def __init__(
        self,
        log_path: Path,
        *,
        port: int | None = None,
        startup_timeout: float = 10.0,
        attempts: int | None = None,
        poll_interval: float = 0.01,
    ) -> None:
        self.log_path = log_path
        self._fixed_port = port
        self.port = port or 0
        self._startup_timeout = startup_timeout
        self._attempts = attempts
        self._poll_interval = poll_interval
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- what a subclass says ---------------------------------------------------------------------------------

    def command(self, port: int) -> Sequence[str]:
        raise NotImplementedError

    def ready(self, port: int) -> bool:
        """True once the process on ``port`` answers."""
        raise NotImplementedError

    def environment(self) -> Mapping[str, str] | None:
        """The child's environment (None: inherit ours)."""
        return None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process and return once it answers; on losing a port race, retry on a new port."""
        if self.is_running:
            return self
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no attempt made"
        attempt = 0
        while time.monotonic() < deadline and (self._attempts is None or attempt < self._attempts):
            attempt += 1
            error = self._try_start(self._fixed_port or find_free_port(), deadline)
            if error is None:
                return self
            last_error = error
            if self._fixed_port is not None:
                time.sleep(0.05)  # a fixed port may still be held by the previous process: retry it briefly
        raise self.error(f"{self.name} did not start within {self._startup_timeout}s: {last_error}")

    def _try_start(self, port: int, deadline: float) -> str | None:
        self.port = port
        command = list(self.command(port))
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.environment()
            )
        self._process, self._paused = process, False
        _LIVE.add(process)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                _LIVE.discard(process)
                return f"exited with status {process.returncode}; log tail:\n{self.log_tail()}"
            if self.ready(port):
                return None
            time.sleep(self._poll_interval)
        self.kill()
        return f"no answer on port {port}; log tail:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL (works even while paused) and reap. Idempotent."""
        process, self._process, self._paused = self._process, None, False
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        _LIVE.discard(process)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful shutdown); falls back to SIGKILL after ``timeout``. Idempotent."""
        process, paused = self._process, self._paused
        self._process, self._paused = None, False
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            if paused:
                process.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _LIVE.discard(process)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (frozen, not dead)."""
        self._running_process().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._running_process().send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Kill the process and start a fresh one on the same port."""
        self.kill()
        fixed, self._fixed_port = self._fixed_port, self.port
        try:
            self.start()
        finally:
            self._fixed_port = fixed

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.kill()

    # -- inspection -------------------------------------------------------------------------------------------

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

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _running_process(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise self.error(f"{self.name} on port {self.port} is not running")
        return self._process


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(OSError):
            process.kill()
            process.wait()
    _LIVE.clear()
