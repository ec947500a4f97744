"""Real service processes for end-to-end tests: ``python -m dealership`` under uvicorn on a free loopback port.

Each process runs this checkout's code (``src`` first on ``PYTHONPATH``), gets its cache configuration only from
the environment we pass (never the developer's ``TheTechLoopCache__…`` variables, never the system Redis), logs
to a file that failure messages quote, and is terminated — killed if it does not stop — at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from tests.support import find_free_port

__all__ = ["ServiceProcess", "ServiceProcessError"]

_SRC = Path(__file__).resolve().parents[2] / "src"
_HOST = "127.0.0.1"


class ServiceProcessError(RuntimeError):
    """The service process could not be started or did not become healthy in time."""


class ServiceProcess:
    """One ``python -m dealership`` child process.

    ``cache_env`` maps ``TheTechLoopCache`` keys to values (``{"Configuration": "127.0.0.1:6400"}``,
    ``{"CircuitBreaker__BreakDurationSeconds": "2"}``); they become ``TheTechLoopCache__<key>`` variables.
    """

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        log_dir: Path,
        cache_env: Mapping[str, str],
        seed_count: int = 200,
        startup_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.seed_count = seed_count
        self.log_path = log_dir / f"{name}.log"
        self._cache_env = dict(cache_env)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceProcessError(f"{self.name} is not running")
        return self._process.pid

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("thetechloopcache__")}
        env.pop("DATABASE_URL", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in self._cache_env.items():
            env[f"TheTechLoopCache__{key}"] = value
        return env

    def start(self) -> Self:
        """Start the process and return once ``GET /health`` answers 200 (retrying on a port lost to a race)."""
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no attempt made"
        for _ in range(3):
            self.port = find_free_port()
            error = self._try_start(deadline)
            if error is None:
                return self
            last_error = error
            if time.monotonic() >= deadline:
                break
        raise ServiceProcessError(f"{self.name} did not become healthy: {last_error}")

    def _try_start(self, deadline: float) -> str | None:
        command = [
            sys.executable, "-m", "dealership",
            "--host", _HOST,
            "--port", str(self.port),
            "--database-url", self.database_url,
            "--seed-count", str(self.seed_count),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._environment()
            )
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                return f"exited with status {code}; log tail:\n{self.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return None
            time.sleep(0.05)
        self.stop()
        return f"no healthy answer within {self._startup_timeout}s; log tail:\n{self.log_tail()}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after ``timeout``. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
