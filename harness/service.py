"""Real service processes: ``python -m dealership`` under uvicorn on a free loopback port (end-to-end tests and
the service benchmarks).

Each process runs this checkout's code (``src`` first on ``PYTHONPATH``), gets its cache configuration only from
the environment we pass (never the developer's ``TheTechLoopCache__…`` variables, never the system Redis), logs
to a file that failure messages quote, and is terminated — killed if it does not stop — at teardown.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from harness.process import HOST, ManagedProcess, ProcessError

__all__ = ["ServiceProcess", "ServiceProcessError"]

_SRC = Path(__file__).resolve().parents[1] / "src"


class ServiceProcessError(ProcessError):
    """The service process could not be started or did not become healthy in time."""


class ServiceProcess(ManagedProcess):
    """One ``python -m dealership`` child process, healthy once ``GET /health`` answers 200.

    ``cache_env`` maps ``TheTechLoopCache`` keys to values (``{"Configuration": "127.0.0.1:6400"}``,
    ``{"CircuitBreaker__BreakDurationSeconds": "2"}``); they become ``TheTechLoopCache__<key>`` variables.
    ``module`` and ``args`` start another entry point that takes the service's options after its own (a
    benchmark's wrapper: ``python -m <module> <args> --host ... --port ...``); the repository root is importable.
    """

    error = ServiceProcessError

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        log_dir: Path,
        cache_env: Mapping[str, str],
        seed_count: int = 200,
        startup_timeout: float = 30.0,
        module: str = "dealership",
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.module, self.args = module, tuple(args)
        self.database_url = database_url
        self.seed_count = seed_count
        self._cache_env = dict(cache_env)
        super().__init__(log_dir / f"{name}.log", startup_timeout=startup_timeout, attempts=3, poll_interval=0.05)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("thetechloopcache__")}
        env.pop("DATABASE_URL", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), str(_SRC.parent), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in self._cache_env.items():
            env[f"TheTechLoopCache__{key}"] = value
        return env

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", self.module, *self.args,
            "--host", HOST,
            "--port", str(port),
            "--database-url", self.database_url,
            "--seed-count", str(self.seed_count),
        ]  # fmt: skip

    def ready(self, port: int) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://{HOST}:{port}/health", timeout=1.0).status_code == 200
        return False

    def log_tail(self, lines: int = 30) -> str:
        return super().log_tail(lines)

    def close(self) -> None:
        self.stop()
