"""The dealership REST API in-process (httpx over ASGI) against a real database (SQLite file; PostgreSQL where
available) and a real private redis-server: DESIGN.md §5 route by route, and the cache behaviour behind it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from dealership.app import create_app
from dealership.bootstrap import ServiceConfig
from dealership.dto import MAX_ID
from dealership.seed import generate
from harness.postgres import PG_HOST, PG_PORT, PG_USER
from harness.process import find_free_port
from hybridcache import CacheSettings
from tests.support import wait_until

SEED_COUNT = 60
SEED = generate(SEED_COUNT)
DEALERSHIP_KEYS = ["id", "name", "businessAddress", "businessZipCodeId", "uniqueKey", "businessZipCode"]
ZIP_CODE_KEYS = ["id", "code", "city", "stateProvinceId", "stateProvince"]


class Instance:
    """One running app and a client talking to it in-process."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def stats(self) -> dict[str, Any]:
        response = await self.client.get("/api/cache/stats")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(url, **kwargs)


StartInstance = Callable[..., Awaitable[Instance]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'dealership.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def start_instance(database_url: str, redis_url: str, namespace: str) -> AsyncIterator[StartInstance]:
    """``await start_instance(**cache_overrides)`` runs one more app on the shared database and Redis."""
    async with AsyncExitStack() as stack:

        async def start(**cache: Any) -> Instance:
            settings = CacheSettings(**{"configuration": redis_url, "service_name": namespace, **cache})
            app = create_app(ServiceConfig(database_url=database_url, seed_count=SEED_COUNT, cache_settings=settings))
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dealership.test")
            await stack.enter_async_context(client)
            return Instance(app, client)

        yield start


@pytest.fixture
async def api(start_instance: StartInstance) -> Instance:
    return await start_instance()


def seeded(dealership_id: int) -> dict[str, Any]:
    _, columns = SEED.dealerships[dealership_id - 1]
    return columns


# -- reads ----------------------------------------------------------------------------------------------------


async def test_get_by_id_answers_the_aspnet_camel_case_shape(api: Instance) -> None:
    response = await api.get("/api/dealership/42")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == DEALERSHIP_KEYS
    assert list(body["businessZipCode"]) == ZIP_CODE_KEYS
    assert list(body["businessZipCode"]["stateProvince"]) == ["id", "code", "name"]
    assert body["id"] == 42
    assert body["name"] == seeded(42)["name"]
    assert body["businessAddress"] == seeded(42)["business_address"]
    assert uuid.UUID(body["uniqueKey"]) == seeded(42)["unique_key"]
    assert body["businessZipCodeId"] == body["businessZipCode"]["id"]
    assert body["businessZipCode"]["stateProvinceId"] == body["businessZipCode"]["stateProvince"]["id"]


async def test_repeated_get_is_an_l1_hit_and_does_not_run_the_handler(api: Instance) -> None:
    first = await api.get("/api/dealership/7")
    before = await api.stats()
    second = await api.get("/api/dealership/7")
    after = await api.stats()

    assert second.json() == first.json()
    assert after["l1Hits"] == before["l1Hits"] + 1
    assert after["handlerRuns"] == before["handlerRuns"]


async def test_missing_id_is_404_with_json_and_the_miss_is_cached(api: Instance) -> None:
    first = await api.get("/api/dealership/999999")
    before = await api.stats()
    second = await api.get("/api/dealership/999999")
    after = await api.stats()

    assert first.status_code == second.status_code == 404
    assert first.json() == {"detail": "Dealership 999999 not found"}
    assert after["handlerRuns"] == before["handlerRuns"]


# Counters a request that reaches the cache moves (a miss, a handler run, a stored entry, an invalidation).
CACHE_ACTIVITY = ["l1Hits", "l2Hits", "misses", "handlerRuns", "l1Entries", "invalidationsPublished"]


@pytest.mark.parametrize("dealership_id", [0, -1, -MAX_ID - 1, -(10**30)])
async def test_a_non_positive_id_is_the_same_404_without_touching_cache_or_database(
    api: Instance, dealership_id: int
) -> None:
    # The seed's {id:int} lets 0 and negative ids reach the handler, which finds nothing: 404, not 422.
    before = await api.stats()

    got = await api.get(f"/api/dealership/{dealership_id}")
    put = await api.client.put(f"/api/dealership/{dealership_id}", json={"name": "x", "businessAddress": "y"})
    deleted = await api.client.delete(f"/api/dealership/{dealership_id}")

    after = await api.stats()
    for response in (got, put, deleted):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": f"Dealership {dealership_id} not found"}
    assert {key: after[key] for key in CACHE_ACTIVITY} == {key: before[key] for key in CACHE_ACTIVITY}


async def test_list_is_ordered_by_id_with_the_total_count_header(api: Instance) -> None:
    first = await api.get("/api/dealership")
    page = await api.get("/api/dealership", params={"page": 3, "size": 7})
    beyond = await api.get("/api/dealership", params={"page": 100, "size": 10})

    assert [d["id"] for d in first.json()] == list(range(1, 11))
    assert [d["id"] for d in page.json()] == list(range(15, 22))
    assert all(list(d) == DEALERSHIP_KEYS for d in page.json())
    assert beyond.json() == []
    assert first.headers["X-Total-Count"] == page.headers["X-Total-Count"] == beyond.headers["X-Total-Count"]
    assert first.headers["X-Total-Count"] == str(SEED_COUNT)


async def test_cached_list_keeps_its_total_count(api: Instance) -> None:
    await api.get("/api/dealership", params={"page": 2, "size": 5})
    before = await api.stats()
    cached = await api.get("/api/dealership", params={"page": 2, "size": 5})

    assert (await api.stats())["handlerRuns"] == before["handlerRuns"]
    assert cached.headers["X-Total-Count"] == str(SEED_COUNT)
    assert [d["id"] for d in cached.json()] == [6, 7, 8, 9, 10]


async def test_search_matches_case_insensitively_ordered_by_name(api: Instance) -> None:
    term = "ford"
    expected = sorted(
        (
            (columns["name"], index + 1)
            for index, (_, columns) in enumerate(SEED.dealerships)
            if term in str(columns["name"]).lower()
        ),
    )
    assert expected, "the seed should contain Ford dealerships"

    response = await api.get("/api/dealership/search", params={"term": "FoRd", "size": 100})

    assert response.status_code == 200
    assert [(d["name"], d["id"]) for d in response.json()] == expected
    limited = await api.get("/api/dealership/search", params={"term": "ford", "size": 2})
    assert [d["id"] for d in limited.json()] == [dealership_id for _, dealership_id in expected[:2]]


async def test_search_term_is_literal_not_a_like_pattern(api: Instance) -> None:
    created = await api.client.post(
        "/api/dealership", json={"name": "100% Ford_Outlet", "businessAddress": "1 Main St", "businessZipCodeId": 1}
    )
    assert created.status_code == 201

    percent = await api.get("/api/dealership/search", params={"term": "%"})
    underscore = await api.get("/api/dealership/search", params={"term": "d_O"})

    assert [d["name"] for d in percent.json()] == ["100% Ford_Outlet"]
    assert [d["name"] for d in underscore.json()] == ["100% Ford_Outlet"]


# -- validation -----------------------------------------------------------------------------------------------

VALID = {"name": "Ford of Springfield", "businessAddress": "12 Main St", "businessZipCodeId": 1}


@pytest.mark.parametrize(
    ("method", "url", "body", "location"),
    [
        ("GET", "/api/dealership/abc", None, ["path", "id"]),
        ("GET", "/api/dealership/1.5", None, ["path", "id"]),
        ("GET", f"/api/dealership/{MAX_ID + 1}", None, ["path", "id"]),
        ("PUT", "/api/dealership/abc", {"name": "a", "businessAddress": "b"}, ["path", "id"]),
        ("DELETE", "/api/dealership/abc", None, ["path", "id"]),
        ("PUT", "/api/dealership/0", {"name": "a"}, ["body", "businessAddress"]),  # a bad body first, as in ASP.NET
        ("GET", "/api/dealership?size=0", None, ["query", "size"]),
        ("GET", "/api/dealership?size=101", None, ["query", "size"]),
        ("GET", "/api/dealership?page=0", None, ["query", "page"]),
        ("GET", "/api/dealership/search?size=10", None, ["query", "term"]),
        ("GET", "/api/dealership/search?term=", None, ["query", "term"]),
        ("GET", "/api/dealership/search?term=" + "x" * 101, None, ["query", "term"]),
        ("GET", "/api/dealership/search?term=ford&size=500", None, ["query", "size"]),
        ("POST", "/api/dealership", {**VALID, "name": ""}, ["body", "name"]),
        ("POST", "/api/dealership", {**VALID, "name": "x" * 201}, ["body", "name"]),
        ("POST", "/api/dealership", {**VALID, "name": "   "}, ["body", "name"]),
        ("POST", "/api/dealership", {**VALID, "name": "nul\x00"}, ["body", "name"]),
        ("POST", "/api/dealership", {**VALID, "businessAddress": "y" * 501}, ["body", "businessAddress"]),
        ("POST", "/api/dealership", {"name": "a", "businessAddress": "b"}, ["body", "businessZipCodeId"]),
        ("POST", "/api/dealership", {**VALID, "businessZipCodeId": 0}, ["body", "businessZipCodeId"]),
        ("POST", "/api/dealership", {**VALID, "businessZipCodeId": 987654}, ["body", "businessZipCodeId"]),
        ("PUT", "/api/dealership/1", {"name": "a"}, ["body", "businessAddress"]),
        ("PUT", "/api/dealership/1", {"name": "", "businessAddress": "b"}, ["body", "name"]),
    ],
)
async def test_invalid_input_is_422_naming_the_field(
    api: Instance, method: str, url: str, body: dict[str, Any] | None, location: list[str]
) -> None:
    response = await api.client.request(method, url, json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert location in [error["loc"] for error in response.json()["detail"]]


async def test_a_lone_surrogate_in_the_body_is_a_422_not_a_500(api: Instance) -> None:
    raw = b'{"name": "\\ud800", "businessAddress": "b", "businessZipCodeId": 1}'
    response = await api.client.post("/api/dealership", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert ["body", "name"] in [error["loc"] for error in response.json()["detail"]]


# -- writes ---------------------------------------------------------------------------------------------------


async def test_create_answers_201_with_location_and_body_and_refreshes_lists(api: Instance) -> None:
    stale_list = await api.get("/api/dealership", params={"page": 1, "size": 100})
    stale_search = await api.get("/api/dealership/search", params={"term": "Zebra"})
    assert stale_search.json() == []

    created = await api.client.post(
        "/api/dealership", json={"name": "Zebra Motors", "businessAddress": "9 Zoo Rd", "businessZipCodeId": 5}
    )

    assert created.status_code == 201
    body = created.json()
    assert list(body) == DEALERSHIP_KEYS
    assert created.headers["Location"] == f"/api/dealership/{body['id']}"
    assert body["businessZipCode"]["id"] == 5
    uuid.UUID(body["uniqueKey"])
    assert (await api.get(created.headers["Location"])).json() == body
    fresh_list = await api.get("/api/dealership", params={"page": 1, "size": 100})
    assert fresh_list.headers["X-Total-Count"] == str(int(stale_list.headers["X-Total-Count"]) + 1)
    assert body["id"] in [d["id"] for d in fresh_list.json()]
    assert [d["id"] for d in (await api.get("/api/dealership/search", params={"term": "Zebra"})).json()] == [body["id"]]


async def test_create_invalidates_a_cached_404_of_the_new_id(api: Instance) -> None:
    next_id = SEED_COUNT + 1
    assert (await api.get(f"/api/dealership/{next_id}")).status_code == 404  # now cached as "absent"

    created = await api.client.post("/api/dealership", json=VALID)

    assert created.json()["id"] == next_id
    assert (await api.get(f"/api/dealership/{next_id}")).status_code == 200


async def test_create_accepts_snake_case_input(api: Instance) -> None:
    created = await api.client.post(
        "/api/dealership", json={"name": "Snake Ford", "business_address": "1 Python Way", "business_zip_code_id": 2}
    )

    assert created.status_code == 201
    assert created.json()["businessAddress"] == "1 Python Way"


async def test_update_is_visible_in_get_list_and_search_that_were_cached(api: Instance) -> None:
    await api.get("/api/dealership/3")
    await api.get("/api/dealership", params={"page": 1, "size": 5})
    await api.get("/api/dealership/search", params={"term": "Renamed"})

    updated = await api.client.put("/api/dealership/3", json={"name": "Renamed Toyota", "businessAddress": "5 New St"})

    assert updated.status_code == 204
    assert updated.content == b""
    one = (await api.get("/api/dealership/3")).json()
    assert (one["name"], one["businessAddress"]) == ("Renamed Toyota", "5 New St")
    assert one["uniqueKey"] == str(seeded(3)["unique_key"])
    listed = (await api.get("/api/dealership", params={"page": 1, "size": 5})).json()
    assert listed[2]["name"] == "Renamed Toyota"
    found = (await api.get("/api/dealership/search", params={"term": "Renamed"})).json()
    assert [d["id"] for d in found] == [3]


async def test_writes_to_a_missing_id_are_404_and_invalidate_nothing(api: Instance) -> None:
    before = await api.stats()

    put = await api.client.put("/api/dealership/999999", json={"name": "x", "businessAddress": "y"})
    delete = await api.client.delete("/api/dealership/999999")

    assert put.status_code == delete.status_code == 404
    assert put.json() == {"detail": "Dealership 999999 not found"}
    assert (await api.stats())["invalidationsPublished"] == before["invalidationsPublished"]


async def test_delete_answers_204_then_404(api: Instance) -> None:
    assert (await api.get("/api/dealership/9")).status_code == 200

    deleted = await api.client.delete("/api/dealership/9")

    assert deleted.status_code == 204
    assert (await api.get("/api/dealership/9")).status_code == 404
    assert (await api.client.delete("/api/dealership/9")).status_code == 404
    listed = await api.get("/api/dealership", params={"size": 100})
    assert 9 not in [d["id"] for d in listed.json()]
    assert listed.headers["X-Total-Count"] == str(SEED_COUNT - 1)


# -- routes match case-insensitively, as in ASP.NET Core ------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("/api/Dealership/1", "/api/dealership/1"),
        ("/API/dealership?page=1&size=10", "/api/dealership?page=1&size=10"),
        ("/Api/DealerShip?Page=2&SIZE=3", "/api/dealership?Page=2&SIZE=3"),  # query names stay as sent: ignored
        ("/api/DEALERSHIP/search?term=Ab", "/api/dealership/search?term=Ab"),
        ("/API/DEALERSHIP/SEARCH?term=FoRd&size=100", "/api/dealership/search?term=FoRd&size=100"),
        ("/api/dealership/Search?size=10", "/api/dealership/search?size=10"),  # 422: term missing
        ("/HEALTH", "/health"),
    ],
)
async def test_a_path_in_any_letter_case_gets_the_lower_case_routes_answer(
    api: Instance, sent: str, canonical: str
) -> None:
    expected = await api.get(canonical)
    response = await api.get(sent)

    assert response.status_code == expected.status_code
    assert response.json() == expected.json()
    for header in ("content-type", "X-Total-Count"):
        assert response.headers.get(header) == expected.headers.get(header)


async def test_cache_stats_answer_in_any_letter_case(api: Instance) -> None:
    response = await api.get("/api/cache/Stats")

    assert response.status_code == 200
    assert list(response.json()) == list(await api.stats())


async def test_the_search_term_and_a_path_value_keep_their_case(api: Instance) -> None:
    await api.get("/api/DEALERSHIP/search", params={"term": "Ab"})  # cached as Dealership:Search:Ab:10

    before = await api.stats()
    same_term = await api.get("/api/dealership/search", params={"term": "Ab"})
    middle = await api.stats()
    lower_term = await api.get("/api/dealership/search", params={"term": "ab"})
    after = await api.stats()

    assert same_term.status_code == lower_term.status_code == 200
    assert middle["handlerRuns"] == before["handlerRuns"]  # the same key: "Ab" reached the query unchanged
    assert middle["l1Hits"] == before["l1Hits"] + 1
    assert after["handlerRuns"] == middle["handlerRuns"] + 1  # "ab" is another key
    long_term = "Xy" * 51
    echoed = await api.get("/API/Dealership/Search", params={"term": long_term})
    assert echoed.status_code == 422
    assert [error["input"] for error in echoed.json()["detail"]] == [long_term]
    not_an_id = await api.get("/API/DEALERSHIP/AbC")
    assert not_an_id.status_code == 422
    assert [(error["loc"], error["input"]) for error in not_an_id.json()["detail"]] == [(["path", "id"], "AbC")]
    # "Search" is the literal of GET /search only: for DELETE it is an id value, kept as sent.
    delete = await api.client.delete("/API/Dealership/Search")
    assert [error["input"] for error in delete.json()["detail"]] == ["Search"]


async def test_writes_in_any_letter_case_and_location_stays_canonical(api: Instance) -> None:
    created = await api.client.post(
        "/API/DEALERSHIP", json={"name": "Case Motors", "businessAddress": "1 Upper St", "businessZipCodeId": 3}
    )
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert created.headers["Location"] == f"/api/dealership/{new_id}"

    updated = await api.client.put(f"/Api/Dealership/{new_id}", json={"name": "Case Cars", "businessAddress": "2 St"})
    assert updated.status_code == 204
    assert (await api.get(f"/api/dealership/{new_id}")).json()["name"] == "Case Cars"
    assert (await api.client.delete(f"/API/dealership/{new_id}")).status_code == 204
    assert (await api.get(f"/api/dealership/{new_id}")).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/dealerships/1",
        "/API/Nothing",
        "/api/dealership/1/extra",
        "/apii/dealership",
        "/api/dealer\u017fhip/1",  # U+017F, the long s: only ASCII letters match ignoring case
        "/api/cache/stats/x",
    ],
)
async def test_unknown_paths_stay_404(api: Instance, path: str) -> None:
    response = await api.get(path)

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_a_trailing_slash_redirects_to_the_canonical_path(api: Instance) -> None:
    response = await api.get("/API/Dealership/?size=3")

    assert response.status_code == 307
    assert response.headers["location"] == "http://dealership.test/api/dealership?size=3"


async def test_metrics_and_openapi_keep_the_canonical_paths(api: Instance) -> None:
    assert (await api.get("/API/DEALERSHIP/2")).status_code == 200

    metrics = (await api.get("/Metrics")).text
    paths = (await api.get("/OpenAPI.json")).json()["paths"]

    assert 'http_requests_total{method="GET",route="/api/dealership/{id}",status="200"} 1.0' in metrics
    assert "<unmatched>" not in metrics
    assert all(path == path.lower() for path in paths)


# -- operations -----------------------------------------------------------------------------------------------


async def test_health_stats_and_metrics(api: Instance) -> None:
    await api.get("/api/dealership/1")
    await api.get("/api/dealership/1")

    health = await api.get("/health")
    stats = await api.stats()
    metrics = await api.get("/metrics")

    assert health.json() == {"status": "ok", "redis": "up", "circuit": "closed"}
    for key in ("l1Hits", "l2Hits", "misses", "handlerRuns", "invalidationsPublished", "invalidationsReceived"):
        assert isinstance(stats[key], int), key
    assert stats["circuit"] == "closed"
    assert stats["l1Hits"] >= 1
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert f"hybridcache_l1_hits_total {float(stats['l1Hits'])}" in text
    assert 'hybridcache_circuit{state="closed"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/api/dealership/{id}",status="200"} 2.0' in text
    # The first read missed L1 and L2 and ran the handler: both latency histograms have a series for it.
    assert 'hybridcache_l2_read_duration_seconds_count{namespace="Dealership",result="miss"}' in text
    assert 'hybridcache_factory_duration_seconds_count{namespace="Dealership",result="ok"}' in text


async def test_openapi_docs_are_served(api: Instance) -> None:
    assert (await api.get("/docs")).status_code == 200
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/api/dealership", "/api/dealership/{id}", "/api/dealership/search", "/health"} <= set(paths)


# -- several instances, and no Redis --------------------------------------------------------------------------


async def test_second_instance_reads_l2_and_drops_l1_on_the_first_ones_write(start_instance: StartInstance) -> None:
    a = await start_instance()
    b = await start_instance()
    original = (await a.get("/api/dealership/11")).json()

    b_before = await b.stats()
    assert (await b.get("/api/dealership/11")).json() == original
    b_after = await b.stats()
    assert b_after["l2Hits"] == b_before["l2Hits"] + 1
    assert b_after["handlerRuns"] == b_before["handlerRuns"]

    await a.client.put("/api/dealership/11", json={"name": "Renamed on A", "businessAddress": "1 A St"})

    async def b_sees_new_name() -> bool:
        return bool((await b.get("/api/dealership/11")).json()["name"] == "Renamed on A")

    await wait_until(b_sees_new_name, timeout=2.0, message="instance B still serves the old name")
    assert (await b.stats())["invalidationsReceived"] >= 1


async def test_serves_from_l1_and_the_database_without_redis(start_instance: StartInstance) -> None:
    disabled = await start_instance(configuration=None)
    unreachable = await start_instance(configuration=f"127.0.0.1:{find_free_port()},abortConnect=false")

    for instance, state in ((disabled, "disabled"), (unreachable, "down")):
        assert (await instance.get("/api/dealership/5")).json()["id"] == 5
        assert (await instance.get("/api/dealership/5")).status_code == 200
        assert (await instance.get("/health")).json()["redis"] == state
        put = await instance.client.put("/api/dealership/5", json={"name": f"No Redis {state}", "businessAddress": "x"})
        assert put.status_code == 204
        assert (await instance.get("/api/dealership/5")).json()["name"] == f"No Redis {state}"
        assert (await instance.stats())["l1Hits"] >= 1


@pytest.mark.postgres
async def test_a_lost_database_is_a_503_with_json_while_cached_reads_still_answer(
    postgres_url: str, redis_url: str, namespace: str
) -> None:
    settings = CacheSettings(configuration=redis_url, service_name=namespace)
    app = create_app(ServiceConfig(database_url=postgres_url, seed_count=SEED_COUNT, cache_settings=settings))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        cached = await client.get("/api/dealership/1")
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
        try:
            await admin.execute(f'DROP DATABASE "{make_url(postgres_url).database}" WITH (FORCE)')
        finally:
            await admin.close()

        assert (await client.get("/api/dealership/1")).json() == cached.json()
        for response in (
            await client.get("/api/dealership/2"),
            await client.put("/api/dealership/1", json={"name": "x", "businessAddress": "y"}),
        ):
            assert response.status_code == 503
            assert response.json() == {"detail": "The database is unavailable; try again shortly"}
