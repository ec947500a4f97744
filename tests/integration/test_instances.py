"""Live instances in Redis (``hybridcache._redis.registry``) and the ``hybridcache`` operations CLI, on a private
redis-server: what running caches report, how dead ones disappear, and what each CLI command does to them.

The CLI runs in-process through ``main(argv)`` in a worker thread (it owns its event loop, as the console script
does), while the caches it acts on keep running on the test's loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache._redis.l2 import hash_tag
from hybridcache._redis.registry import InstanceKeys, InstanceRegistry, live_instances
from hybridcache.cli import main
from tests.support import wait_until

INSTANCE_NAME = "Ops:"
SERVICE = "ops-svc"
KEYS = InstanceKeys(INSTANCE_NAME, f"{SERVICE}:v1:")

StartCache = Callable[..., Awaitable[HybridCache]]


def settings_for(server: RedisServer, **overrides: Any) -> CacheSettings:
    fields: dict[str, Any] = {
        "configuration": f"127.0.0.1:{server.port},abortConnect=false",
        "instance_name": INSTANCE_NAME,
        "service_name": SERVICE,
    }
    fields.update(overrides)
    return CacheSettings(**fields)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection: redis.asyncio.Redis = redis.asyncio.Redis(port=redis_server.port, socket_timeout=5)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def start_cache(redis_server: RedisServer) -> AsyncIterator[StartCache]:
    caches: list[HybridCache] = []

    async def start(**overrides: Any) -> HybridCache:
        cache = HybridCache.from_settings(settings_for(redis_server, **overrides))
        caches.append(cache)
        await cache.start()
        assert await cache.wait_until_connected(timeout=5.0)
        return cache

    try:
        yield start
    finally:
        for cache in caches:
            await cache.close()


async def ids_of(client: redis.asyncio.Redis, keys: InstanceKeys = KEYS) -> set[str]:
    return {instance.instance_id for instance in await live_instances(client, keys)}


# ------------------------------------------------------------------------------------------------ registry


async def test_running_caches_report_themselves_and_withdraw_on_close(
    client: redis.asyncio.Redis, start_cache: StartCache
) -> None:
    a = await start_cache()
    b = await start_cache()
    await wait_until(lambda: ids_of(client), timeout=5.0, message="no instance reported")
    assert await ids_of(client) == {a.instance_id, b.instance_id}

    found = {instance.instance_id: instance for instance in await live_instances(client, KEYS)}
    mine = found[a.instance_id]
    assert (mine.pid, mine.namespace) == (os.getpid(), f"{SERVICE}:v1:")
    assert mine.version == importlib.metadata.version("hybridcache")
    assert mine.host
    assert 0 <= mine.age < 5
    assert mine.stats["circuit"] == "closed"
    assert mine.stats["backplane"] == "connected"

    await b.close()
    assert await ids_of(client) == {a.instance_id}, "a closed cache must withdraw its report at once"
    assert await client.zscore(KEYS.index, b.instance_id) is None


async def test_reports_carry_the_current_counters(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    cache = await start_cache()

    async def load() -> str:
        return "v"

    await cache.get_or_create("Thing:1", load)
    await cache.get_or_create("Thing:1", load)
    assert cache.instance_registry is not None
    assert await cache.instance_registry.report()
    (instance,) = await live_instances(client, KEYS)
    assert (instance.stats["handlerRuns"], instance.stats["l1Hits"], instance.stats["misses"]) == (1, 1, 1)
    assert instance.as_dict()["stats"] == cache.stats().as_dict()


async def test_an_instance_that_stops_reporting_disappears_and_is_pruned(
    client: redis.asyncio.Redis, start_cache: StartCache
) -> None:
    cache = await start_cache()
    dead = InstanceRegistry(client, keys=KEYS, instance_id="dead-one", stats=cache.stats, interval=0.1, ttl=0.3)
    assert await dead.report()  # reported once, then "crashed": never withdrawn
    assert await ids_of(client) == {cache.instance_id, "dead-one"}

    await wait_until(lambda: _missing(client, "dead-one"), timeout=3.0, message="an expired report is still listed")
    assert await client.zscore(KEYS.index, "dead-one") is None, "the reader must prune expired ids"
    assert await ids_of(client) == {cache.instance_id}


async def _missing(client: redis.asyncio.Redis, instance_id: str) -> bool:
    return instance_id not in await ids_of(client)


async def test_the_registry_reports_every_interval_with_a_ttl(client: redis.asyncio.Redis) -> None:
    registry = InstanceRegistry(client, keys=KEYS, instance_id="ticker", stats=_empty_stats, interval=0.05, ttl=5)
    registry.start()
    try:
        await wait_until(lambda: registry.reports >= 3, timeout=3.0, message="the registry stopped reporting")
    finally:
        await registry.close()
    assert await ids_of(client) == set()
    assert await client.exists(KEYS.index) == 0, "the last withdrawal leaves an empty (deleted) index"

    assert await registry.report()
    ttl_ms = await client.pttl(KEYS.report("ticker"))
    assert 0 < ttl_ms <= 5000
    assert 0 < await client.pttl(KEYS.index) <= 5000


async def test_keys_share_the_meta_slot_and_nothing_scans(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    cache = await start_cache()
    assert cache.internals.l2 is not None
    meta = hash_tag(cache.internals.l2.generations_key)
    assert hash_tag(KEYS.index) == hash_tag(KEYS.report(cache.instance_id)) == meta

    await client.config_resetstat()
    assert cache.instance_registry is not None
    await cache.instance_registry.report()
    await live_instances(client, KEYS)
    stats = await client.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats), sorted(stats)


async def test_namespaces_do_not_see_each_other(client: redis.asyncio.Redis, start_cache: StartCache) -> None:
    v1 = await start_cache()
    v2 = await start_cache(cache_version="v2")
    other = InstanceKeys(INSTANCE_NAME, f"{SERVICE}:v2:")
    assert await ids_of(client, KEYS) == {v1.instance_id}
    assert await ids_of(client, other) == {v2.instance_id}


async def test_reporting_failures_never_reach_the_cache(
    redis_server: RedisServer, start_cache: StartCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await start_cache()
    registry = cache.instance_registry
    assert registry is not None
    redis_server.kill()
    caplog.set_level(logging.DEBUG, logger="hybridcache.instances")
    assert not await registry.report()
    assert "Instance report of" in caplog.text
    # The report runs on the background client: no request-path error, no breaker failure.
    assert (cache.stats().l2_errors, cache.stats().circuit) == (0, "closed")

    async def load() -> str:
        return "still served"

    assert await cache.get_or_create("Thing:2", load) == "still served"
    await asyncio.wait_for(cache.close(), timeout=5)  # withdrawing from a dead server neither hangs nor raises


async def test_a_cache_without_redis_or_with_registration_off_registers_nothing(
    client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    async with HybridCache.from_settings(CacheSettings(service_name=SERVICE)) as local:
        assert local.instance_registry is None
    async with HybridCache(settings_for(redis_server), register_instance=False) as quiet:
        assert quiet.instance_registry is None
        assert await ids_of(client) == set()


_IDLE = HybridCache.from_settings(CacheSettings())


def _empty_stats() -> Any:
    return _IDLE.stats()


# ------------------------------------------------------------------------------------------------ the CLI


class Cli:
    """Runs ``hybridcache`` in-process (``main`` in a worker thread, with its own event loop) on a config file."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self._capsys = capsys

    def write(self, configuration: str, **section: Any) -> None:
        document = {
            "TheTechLoopCache": {
                "Configuration": configuration,
                "InstanceName": INSTANCE_NAME,
                "ServiceName": SERVICE,
                **section,
            }
        }
        self.config.write_text(json.dumps(document), encoding="utf-8")

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = await asyncio.to_thread(main, ["--config", str(self.config), *args])
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    for name in list(os.environ):
        if name.lower().startswith("thetechloopcache__"):
            monkeypatch.delenv(name)
    runner = Cli(tmp_path / "appsettings.json", capsys)
    runner.write(f"127.0.0.1:{redis_server.port},abortConnect=false")
    return runner


async def wait_received(cache: HybridCache, count: int) -> None:
    """Wait until ``cache`` applied ``count`` invalidation messages from others."""
    await wait_until(
        lambda: cache.stats().invalidations_received >= count, timeout=5.0, message="invalidation not received"
    )


def counting(value: Any) -> Callable[[], Awaitable[Any]]:
    async def load() -> Any:
        load.runs += 1  # type: ignore[attr-defined]
        return value

    load.runs = 0  # type: ignore[attr-defined]
    return load


async def test_cli_stats_lists_the_running_instances(cli: Cli, start_cache: StartCache) -> None:
    a = await start_cache()
    b = await start_cache()
    await a.get_or_create("Thing:1", counting("v"))
    assert a.instance_registry is not None
    await a.instance_registry.report()

    document = await cli.json("stats")
    assert document["namespace"] == f"{SERVICE}:v1:"
    by_id = {instance["instanceId"]: instance for instance in document["instances"]}
    assert set(by_id) == {a.instance_id, b.instance_id}
    assert by_id[a.instance_id]["stats"]["handlerRuns"] == 1
    assert by_id[a.instance_id]["pid"] == os.getpid()

    code, out, _ = await cli("stats")
    assert code == 0
    assert out.startswith(f"2 running instance(s) of {SERVICE}:v1:")
    header, *rows = out.splitlines()[1:]
    assert header.split()[:3] == ["INSTANCE", "HOST", "PID"]
    assert {row.split()[0] for row in rows} == {a.instance_id, b.instance_id, "total"}


async def test_cli_stats_with_no_instance_says_so(cli: Cli) -> None:
    code, out, _ = await cli("stats")
    assert (code, out.strip()) == (0, f"no running instance of {SERVICE}:v1: has reported in the last 15 s")
    assert (await cli.json("stats"))["instances"] == []


async def test_cli_get_shows_the_entry_and_whether_it_is_current(cli: Cli, start_cache: StartCache) -> None:
    cache = await start_cache()
    await cache.get_or_create("Thing:Big:1", counting({"name": "Ford", "n": 1}), ttl=600, tags=("things",))

    code, out, _ = await cli("get", "Thing:Big:1")
    assert code == 0
    assert f"redis key:    {INSTANCE_NAME}{SERVICE}:v1:Thing:Big:1" in out
    assert "status:       current" in out
    assert "tags:         things" in out
    assert '"name": "Ford"' in out

    entry = await cli.json("get", "Thing:Big:1")
    assert (entry["status"], entry["current"], entry["reasons"]) == ("current", True, [])
    assert entry["value"] == {"name": "Ford", "n": 1}
    assert 0 < entry["ttlMilliseconds"] <= 600_000
    assert entry["expires"] - entry["created"] == pytest.approx(600)

    await cache.remove_by_prefix("Thing:Big")  # bumps the prefix's generation; the entry stays until its TTL
    entry = await cli.json("get", "Thing:Big:1")
    assert (entry["status"], entry["current"]) == ("stale", False)
    [reason] = entry["reasons"]
    assert re.fullmatch(
        r"prefix 'Thing:Big' invalidated at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC, after the entry was computed",
        reason,
    ), reason

    await cache.remove_by_tag("things")
    entry = await cli.json("get", "Thing:Big:1")
    assert any(r.startswith("tag 'things' invalidated at ") for r in entry["reasons"]), entry["reasons"]


async def test_cli_get_of_a_missing_or_foreign_entry_fails(
    cli: Cli, start_cache: StartCache, client: redis.asyncio.Redis
) -> None:
    code, _, err = await cli("get", "Thing:404")
    assert code == 1
    assert f"no entry for 'Thing:404' (Redis key '{INSTANCE_NAME}{SERVICE}:v1:Thing:404')" in err

    await client.set(f"{INSTANCE_NAME}{SERVICE}:v1:Thing:junk", b"not an entry")
    code, _, err = await cli("get", "Thing:junk")
    assert code == 1
    assert "is not a hybridcache entry" in err


async def test_cli_invalidate_reaches_every_running_instance(
    cli: Cli, start_cache: StartCache, client: redis.asyncio.Redis
) -> None:
    a = await start_cache()
    b = await start_cache()
    loads = {key: counting(key) for key in ("Thing:Search:a", "Thing:Search:b", "Thing:7", "Other:1")}
    for cache in (a, b):
        for key, load in loads.items():
            await cache.get_or_create(key, load, tags=("tagged",) if key == "Other:1" else ())
    assert {key: load.runs for key, load in loads.items()} == dict.fromkeys(loads, 1)  # type: ignore[attr-defined]

    code, out, err = await cli("invalidate", "--prefix", "Thing:Search")
    assert code == 0, err
    assert out.strip() == f"invalidated prefix 'Thing:Search' in {SERVICE}:v1: on every running instance"
    for cache in (a, b):
        await wait_received(cache, 1)
        for key, load in loads.items():
            await cache.get_or_create(key, load)
    # A recomputed each search (its L1 copy dropped, the L2 entry stale); B then read A's fresh L2 entry.
    runs = {key: load.runs for key, load in loads.items()}  # type: ignore[attr-defined]
    assert runs == {"Thing:Search:a": 2, "Thing:Search:b": 2, "Thing:7": 1, "Other:1": 1}
    assert (a.stats().l1_hits, b.stats().l1_hits) == (2, 2), "only the keys outside the prefix hit L1"

    code, _, err = await cli("invalidate", "Thing:7", "--tag", "tagged")
    assert code == 0, err
    await wait_received(b, 2)
    await b.get_or_create("Thing:7", loads["Thing:7"])
    await b.get_or_create("Other:1", loads["Other:1"])
    assert (loads["Thing:7"].runs, loads["Other:1"].runs) == (2, 2)  # type: ignore[attr-defined]
    assert await ids_of(client) == {a.instance_id, b.instance_id}, "the CLI must not register itself"


async def test_cli_clear_invalidates_the_whole_namespace(cli: Cli, start_cache: StartCache) -> None:
    cache = await start_cache()
    load = counting("v")
    await cache.get_or_create("Thing:1", load)
    code, out, err = await cli("clear")
    assert code == 0, err
    assert out.strip() == f"invalidated everything in {SERVICE}:v1: on every running instance"
    await wait_received(cache, 1)
    await cache.get_or_create("Thing:1", load)
    assert load.runs == 2  # type: ignore[attr-defined]


async def test_cli_fails_with_exit_1_when_redis_is_unreachable(cli: Cli, redis_server: RedisServer) -> None:
    redis_server.kill()
    for command in (["stats"], ["get", "Thing:1"], ["invalidate", "Thing:1"], ["clear"]):
        code, out, err = await cli(*command)
        assert code == 1, (command, out, err)
        assert err.startswith(f"hybridcache: failed: cannot reach Redis at redis://127.0.0.1:{redis_server.port}/0")
    code, out, err = await cli("config", "check", "--connect")
    assert code == 1
    assert "configuration is valid" in out


async def test_cli_never_prints_the_password(cli: Cli, redis_server: RedisServer, client: redis.asyncio.Redis) -> None:
    secret = "s3cr3t-Pa55"
    await client.config_set("requirepass", secret)
    cli.write(f"127.0.0.1:{redis_server.port},password={secret}")
    outputs = []
    for command in (
        ["config", "check", "--connect"],
        ["config", "check", "--json"],
        ["stats"],
        ["get", "Thing:1"],
        ["invalidate", "Thing:1"],
        ["-vv", "clear"],
    ):
        code, out, err = await cli(*command)
        assert code in (0, 1), (command, err)
        outputs.append(out + err)
    assert "redis answers (standalone)" in outputs[0]
    assert "password=***" in outputs[0]

    cli.write(f"127.0.0.1:{redis_server.port},password=wrong-{secret}")
    code, out, err = await cli("stats")
    assert code == 1
    assert "AuthenticationError" in err
    outputs.append(out + err)
    assert not [text for text in outputs if secret in text]


# ------------------------------------------------------------------------------------------------ on a cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Three masters, no replicas: enough to spread the meta slot and the entries over different nodes."""
    support = pytest.importorskip("harness.redis_cluster", reason="the Redis Cluster harness is not here")
    with support.RedisClusterProcess(masters=3, replicas=0) as process:
        yield process


async def test_registry_and_cli_work_on_a_cluster(cluster: Any, cli: Cli) -> None:
    settings = CacheSettings(configuration=cluster.configuration, instance_name=INSTANCE_NAME, service_name=SERVICE)
    cli.write(cluster.configuration)
    async with HybridCache.from_settings(settings) as a, HybridCache.from_settings(settings) as b:
        assert await a.wait_until_connected(5.0)
        assert await b.wait_until_connected(5.0)
        load = counting({"v": 1})
        await a.get_or_create("Thing:Search:x", load)
        await b.get_or_create("Thing:Search:x", load)  # an L2 hit, then cached in B's L1 too
        document = await cli.json("stats")
        assert {instance["instanceId"] for instance in document["instances"]} == {a.instance_id, b.instance_id}

        code, _, err = await cli("invalidate", "--prefix", "Thing:Search")
        assert code == 0, err
        await wait_received(a, 1)
        await wait_received(b, 1)
        entry = await cli.json("get", "Thing:Search:x")
        assert entry["status"] == "stale"
        await b.get_or_create("Thing:Search:x", load)
        assert load.runs == 2  # type: ignore[attr-defined]
