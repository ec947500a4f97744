"""Issue 8, acceptance 3: ``hybridcache invalidate --prefix Dealership:Search`` against a running two-instance
reference service makes both instances drop their cached searches.

Two real ``python -m dealership`` processes share one SQLite file and one private redis-server; the CLI runs as a
real subprocess (the ``hybridcache`` console script when installed, else ``python -m hybridcache.cli``) with the
service's own ``appsettings.json`` and the same ``TheTechLoopCache__Configuration``, as an operator would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dealership.bootstrap import APPSETTINGS_PATH
from harness.redis_server import RedisServer
from harness.service import ServiceProcess
from tests.support import wait_until_sync

SEED_COUNT = 200
_SRC = Path(__file__).resolve().parents[2] / "src"


class Node:
    """An HTTP client bound to one service process."""

    def __init__(self, process: ServiceProcess) -> None:
        self.process = process
        self.http = httpx.Client(base_url=process.base_url, timeout=10.0)

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/api/cache/stats")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def search(self, term: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/dealership/search", params={"term": term})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found


@pytest.fixture
def nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    cache_env = {"Configuration": _configuration(redis_server)}
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    processes = [
        ServiceProcess(name, database_url=database_url, log_dir=tmp_path, cache_env=cache_env, seed_count=SEED_COUNT)
        for name in ("a", "b")
    ]
    started: list[Node] = []
    try:
        for process in processes:
            started.append(Node(process.start()))
        yield started[0], started[1]
    finally:
        for node in started:
            node.http.close()
        for process in processes:
            process.stop()
            print(f"--- log of instance {process.name} ---\n{process.log_tail(40)}")


def _configuration(server: RedisServer) -> str:
    return f"127.0.0.1:{server.port},abortConnect=false"


def hybridcache(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as the operator would: the service's appsettings.json plus the environment's Configuration."""
    script = Path(sys.executable).with_name("hybridcache")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hybridcache.cli"]
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("thetechloopcache__")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), env.get("PYTHONPATH")]))
    env["TheTechLoopCache__Configuration"] = _configuration(server)
    return subprocess.run(
        [*command, "--config", str(APPSETTINGS_PATH), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_invalidate_prefix_makes_both_instances_drop_their_cached_searches(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    terms = ("Ford", "Toyota")
    # Warm both searches on both instances: A computes them, B reads them from L2, then both hit L1.
    answers = {term: a.search(term) for term in terms}
    assert all(answers.values()), "the seeded data should match both terms"
    for node in (b, a, b):
        assert {term: node.search(term) for term in terms} == answers
    assert (a.stats()["handlerRuns"], b.stats()["handlerRuns"]) == (2, 0)
    a.http.get("/api/dealership/42").raise_for_status()  # a key outside the prefix, cached on A
    before = {"a": a.stats(), "b": b.stats()}

    # Both instances are listed by `hybridcache stats`.
    listed = hybridcache(redis_server, "stats", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["namespace"] == "dealership-svc:v1:"
    assert {instance["pid"] for instance in document["instances"]} == {a.process.pid, b.process.pid}
    table = hybridcache(redis_server, "stats")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("2 running instance(s) of dealership-svc:v1:")

    started = time.perf_counter()
    result = hybridcache(redis_server, "invalidate", "--prefix", "Dealership:Search")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "invalidated prefix 'Dealership:Search' in dealership-svc:v1: on every running instance"
    )

    # Each instance's next search of a term it had in L1 runs the handler again (the first to ask recomputes;
    # A asks for one term, B for the other, so each must have dropped its own copy).
    def recomputed(node: Node, term: str, runs_before: int) -> bool:
        assert node.search(term) == answers[term]
        return bool(node.stats()["handlerRuns"] > runs_before)

    wait_until_sync(
        lambda: recomputed(a, "Ford", before["a"]["handlerRuns"]),
        timeout=5.0,
        message="A still serves its cached search",
    )
    wait_until_sync(
        lambda: recomputed(b, "Toyota", before["b"]["handlerRuns"]),
        timeout=5.0,
        message="B still serves its cached search",
    )
    print(f"\nboth instances recomputed their searches {time.perf_counter() - started:.2f}s after the CLI started")

    after = {"a": a.stats(), "b": b.stats()}
    for name in ("a", "b"):
        assert after[name]["invalidationsReceived"] == before[name]["invalidationsReceived"] + 1
        assert after[name]["handlerRuns"] == before[name]["handlerRuns"] + 1
    # A's other cached entry was not under the prefix: still an L1 hit.
    a.http.get("/api/dealership/42").raise_for_status()
    assert a.stats()["l1Hits"] == after["a"]["l1Hits"] + 1
    assert a.stats()["handlerRuns"] == after["a"]["handlerRuns"]
