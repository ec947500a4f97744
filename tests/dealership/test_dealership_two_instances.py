"""Two real uvicorn processes of the dealership service sharing one database and one private redis-server,
driven over HTTP (issue 6, acceptance 2 and 3).

The propagation delay of an update from instance A to instance B is measured (polling, 1 s deadline) and
printed (run with ``-s`` or ``-rA``) and recorded as a junit property. The module takes about 15 s (four
process pairs), under the threshold for the ``slow`` marker, so the quick loop runs it too.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.redis_server import RedisServer
from harness.service import ServiceProcess
from tests.support import wait_until_sync

SEED_COUNT = 200
BREAK_SECONDS = 2


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


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

    def health(self) -> dict[str, Any]:
        response = self.http.get("/health")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def dealership(self, dealership_id: int) -> httpx.Response:
        return self.http.get(f"/api/dealership/{dealership_id}")


@pytest.fixture
def nodes(database_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A then B (A seeds the database first), both on ``redis_server``; their logs are printed on failure."""
    cache_env = {
        "Configuration": f"127.0.0.1:{redis_server.port},abortConnect=false",
        "CircuitBreaker__BreakDurationSeconds": str(BREAK_SECONDS),
    }
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
            print(f"--- log of instance {process.name} ---\n{process.log_tail(60)}")


def _eventually(check: Callable[[], bool], *, timeout: float, message: str, interval: float = 0.002) -> float:
    """Poll ``check`` until true; return the seconds it took."""
    started = time.perf_counter()
    wait_until_sync(check, timeout=timeout, interval=interval, message=message)
    return time.perf_counter() - started


def test_two_instances_share_l2_and_propagate_invalidations(
    nodes: tuple[Node, Node], record_property: Callable[[str, object], None]
) -> None:
    a, b = nodes
    assert a.health() == b.health() == {"status": "ok", "redis": "up", "circuit": "closed"}

    # 1. GET on A: a miss, the handler runs once.
    a0 = a.stats()
    first = a.dealership(42)
    assert first.status_code == 200
    a1 = a.stats()
    assert (a1["misses"], a1["handlerRuns"]) == (a0["misses"] + 1, a0["handlerRuns"] + 1)

    # 2. GET on A again: an L1 hit, the handler does not run.
    assert a.dealership(42).json() == first.json()
    a2 = a.stats()
    assert a2["l1Hits"] == a1["l1Hits"] + 1
    assert a2["handlerRuns"] == a1["handlerRuns"]

    # 3. GET on B: an L2 hit, B's handler does not run.
    b0 = b.stats()
    assert b.dealership(42).json() == first.json()
    b1 = b.stats()
    assert b1["l2Hits"] == b0["l2Hits"] + 1
    assert b1["handlerRuns"] == b0["handlerRuns"]
    assert b.dealership(42).status_code == 200  # now in B's L1 too: the update must evict it there

    # 4. PUT on A, then B must answer the new name within 1 s.
    new_name = f"Renamed {uuid.uuid4().hex[:8]}"
    put = a.http.put("/api/dealership/42", json={"name": new_name, "businessAddress": "42 Propagation Ave"})
    assert put.status_code == 204
    stale_answers = 0

    def b_has_new_name() -> bool:
        nonlocal stale_answers
        fresh = bool(b.dealership(42).json()["name"] == new_name)
        stale_answers += not fresh
        return fresh

    # The delay includes B's own answer to the GET that sees the change (a miss: database and Redis).
    delay = _eventually(b_has_new_name, timeout=1.0, message="B still serves the old name")
    record_property("update_propagation_ms", round(delay * 1000, 2))
    record_property("update_stale_answers", stale_answers)
    print(f"\nupdate on A visible on B after {delay * 1000:.1f} ms ({stale_answers} stale answers before)")
    assert b.stats()["invalidationsReceived"] > b1["invalidationsReceived"]

    # 5. POST on B; A's search and list (both cached beforehand) include the new dealership.
    unique = f"Zephyr {uuid.uuid4().hex[:8]}"
    assert a.http.get("/api/dealership/search", params={"term": unique}).json() == []
    last_page = a.http.get("/api/dealership", params={"page": 2, "size": 100})
    assert last_page.headers["X-Total-Count"] == str(SEED_COUNT)
    created = b.http.post(
        "/api/dealership", json={"name": unique, "businessAddress": "1 Created Rd", "businessZipCodeId": 7}
    )
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert created.headers["Location"] == f"/api/dealership/{new_id}"

    def a_search_has_it() -> bool:
        found = a.http.get("/api/dealership/search", params={"term": unique}).json()
        return [d["id"] for d in found] == [new_id]

    _eventually(a_search_has_it, timeout=1.0, message="A's cached search does not include the new dealership")

    def a_list_has_it() -> bool:
        page = a.http.get("/api/dealership", params={"page": 3, "size": 100})
        return page.headers["X-Total-Count"] == str(SEED_COUNT + 1) and new_id in [d["id"] for d in page.json()]

    _eventually(a_list_has_it, timeout=1.0, message="A's cached list does not include the new dealership")
    assert a.dealership(new_id).json() == created.json()
    assert b.dealership(new_id).json() == created.json()

    # 6. DELETE; both instances answer 404 (B had the dealership in L1).
    assert a.http.delete(f"/api/dealership/{new_id}").status_code == 204
    assert a.dealership(new_id).status_code == 404
    _eventually(lambda: b.dealership(new_id).status_code == 404, timeout=1.0, message="B still serves the deleted id")
    assert b.http.delete(f"/api/dealership/{new_id}").status_code == 404


def test_redis_outage_keeps_every_route_correct_and_caching_resumes_after_restart(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    assert a.dealership(1).status_code == b.dealership(1).status_code == 200  # warm: A misses, B hits L2

    redis_server.kill()

    # Reads of every kind, on both instances, from L1 or the database.
    for node in (a, b):
        one = node.dealership(3)
        assert one.status_code == 200
        assert one.json()["id"] == 3
        listed = node.http.get("/api/dealership", params={"page": 1, "size": 5})
        assert [d["id"] for d in listed.json()] == [1, 2, 3, 4, 5]
        assert listed.headers["X-Total-Count"] == str(SEED_COUNT)
        assert node.http.get("/api/dealership/search", params={"term": "a"}).status_code == 200
        assert node.dealership(999_999).status_code == 404

    # Writes, and their visibility on the other instance (bounded by Backplane.DisconnectedExpirationSeconds).
    created = a.http.post(
        "/api/dealership", json={"name": "Outage Motors", "businessAddress": "1 Dark St", "businessZipCodeId": 3}
    )
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert b.dealership(new_id).json() == created.json()
    assert b.http.put(f"/api/dealership/{new_id}", json={"name": "Outage Motors II", "businessAddress": "2 Dark St"})
    assert b.dealership(new_id).json()["name"] == "Outage Motors II"
    _eventually(
        lambda: a.dealership(new_id).json()["name"] == "Outage Motors II",
        timeout=3.0,
        message="A serves its L1 copy beyond the disconnected expiration",
    )
    assert b.http.delete(f"/api/dealership/{new_id}").status_code == 204
    _eventually(lambda: a.dealership(new_id).status_code == 404, timeout=3.0, message="A still serves a deleted id")
    search = a.http.get("/api/dealership/search", params={"term": "Outage Motors"})
    assert search.status_code == 200
    assert search.json() == []

    # /health says so, with the circuit state; misses on fresh ids drive the breaker open.
    probe_ids = itertools.cycle(range(100, SEED_COUNT))

    def both_report_open_circuit() -> bool:
        for node in (a, b):
            assert node.dealership(next(probe_ids)).status_code == 200
        return all(node.health() == {"status": "ok", "redis": "down", "circuit": "open"} for node in (a, b))

    _eventually(
        both_report_open_circuit, timeout=5.0, interval=0.05, message="/health does not report redis down, circuit open"
    )

    # Redis comes back (empty, new run_id): after the break the circuit closes and L2 is shared again.
    redis_server.restart()

    def both_healthy() -> bool:
        for node in (a, b):
            assert node.dealership(next(probe_ids)).status_code == 200
        return all(node.health() == {"status": "ok", "redis": "up", "circuit": "closed"} for node in (a, b))

    _eventually(both_healthy, timeout=BREAK_SECONDS + 10.0, interval=0.05, message="the cache did not reconnect")

    shared_ids = iter(range(20, 60))

    def b_hits_what_a_stored() -> bool:
        dealership_id = next(shared_ids)
        before = b.stats()["l2Hits"]
        assert a.dealership(dealership_id).status_code == 200
        assert b.dealership(dealership_id).status_code == 200
        return bool(b.stats()["l2Hits"] > before)

    _eventually(
        b_hits_what_a_stored, timeout=5.0, interval=0.05, message="L2 hits do not grow again after Redis restarted"
    )
