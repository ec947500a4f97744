"""Issue 16: many keys per call — ``get_or_create_many``, ``get_many``, ``set_many``, ``remove_many`` — on a real Redis.

* **Cost.** 50 keys of which 10 are missing (40 in L2, none in L1) cost one L2 read and one factory call:
  counted by the server (``INFO commandstats``: one ``MGET``, no ``GET``) on a server, Sentinel and a cluster, and
  by the client (requests written per server, by connections that note each write) on a server and a cluster: one
  round trip per node for the read, for the captures and for the stores.
* **Single flight.** Overlapping batches load each key once; a batch joins a single-key load in flight and a
  single-key caller joins a batch's load, including while the batch is still reading L2 (its *lead*).
* **The contract** of each call in every mode (L1-only, L2-only, L1+L2): order, duplicates, keys the factory leaves
  out (cached as ``None``), typed values, per-key tags, errors, fail-safe, timeouts, eager refresh, tracing,
  cancellation, and a ``NOSCRIPT`` server.

The races with invalidations (the no-stale-set rules) are in ``test_batch_races.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.crc import key_slot

from harness.process import HOST
from harness.redis_cluster import RedisClusterProcess
from harness.redis_server import RedisServer
from hybridcache import CacheSettings, FactoryTimeoutError, HybridCache
from hybridcache._redis import scripts
from tests.integration.conftest import L1_ONLY, CacheEnv, MakeCache, RawRedis, StartCache
from tests.support.redis_topology import CLUSTER, RedisEndpoint
from tests.support.round_trips import Writes, counting_client, counting_cluster_client
from tests.support.waiting import wait_until

KEYS = [f"Dealership:{n}" for n in range(50)]
MISSING = KEYS[4::5]  # ten keys, spread over the batch
PRESENT = [key for key in KEYS if key not in MISSING]
# No heartbeat (its GET of the message counter) inside a measured window.
QUIET = {"heartbeat_interval_seconds": 30.0, "heartbeat_timeout_seconds": 5.0}


class Dealer(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: int
    name: str


def dealer(key: str, version: int = 1) -> Dealer:
    number = int(key.rsplit(":", 1)[1])
    return Dealer(id=number, name=f"Dealer {number} v{version}")


class Loader:
    """A ``factory_many`` over a dict standing for the database: each call's keys are recorded, the rows are read
    when the call starts, and (``hold``) the call waits for :attr:`release` before returning them."""

    def __init__(self, db: dict[str, Any] | None = None, *, hold: bool = False, error: Exception | None = None) -> None:
        self.db: dict[str, Any] = {} if db is None else db
        self.calls: list[list[str]] = []
        self.runs: Counter[str] = Counter()
        self.error = error
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, keys: list[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        self.runs.update(keys)
        rows = {key: self.db[key] for key in keys if key in self.db}
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return rows

    async def started(self, count: int = 1) -> None:
        await wait_until(lambda: len(self.calls) >= count, timeout=5.0, message=f"factory call {count} never came")


class One:
    """A single-key factory over the same kind of database, counting its runs, optionally held."""

    def __init__(self, value: Any, *, hold: bool = False) -> None:
        self.value = value
        self.runs = 0
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self) -> Any:
        self.runs += 1
        await self.release.wait()
        return self.value


def counts(stats: Any) -> tuple[int, int, int, int]:
    return stats.l1_hits, stats.l2_hits, stats.misses, stats.handler_runs


def commandstats(admin: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls} (a cluster's ClusterAdmin sums its masters)."""
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in admin.info("commandstats").items()}


@contextmanager
def server_counts(endpoint: RedisEndpoint) -> Iterator[dict[str, int]]:
    """The commands the endpoint's server(s) ran inside the block (filled in when it ends)."""
    measured: dict[str, int] = {}
    admin_cm: AbstractContextManager[Any] = endpoint.sync_client(socket_timeout=5)
    with admin_cm as admin:
        admin.config_resetstat()
        yield measured
        measured.update(commandstats(admin))


# ---------------------------------------------------------------------------------------------- acceptance 1: cost


@pytest.mark.all_topologies
async def test_fifty_keys_with_ten_missing_cost_one_l2_read_and_one_factory_call(
    cache_env: CacheEnv, start_cache: StartCache, redis_endpoint: RedisEndpoint, topology: str
) -> None:
    # The endpoint itself (on standalone cache_env is a db of the shared server, whose counts other tests share).
    settings = cache_env.settings(configuration=redis_endpoint.url, backplane=QUIET)
    writer, reader = await start_cache(settings), await start_cache(settings)
    await writer.set_many({key: dealer(key) for key in PRESENT}, type_=Dealer)  # in L2; not in the reader's L1
    loader = Loader({key: dealer(key) for key in KEYS})

    with server_counts(redis_endpoint) as calls:
        values = await reader.get_or_create_many(KEYS, loader, type_=Dealer)

    assert list(values) == KEYS
    assert values == {key: dealer(key) for key in KEYS}
    assert loader.calls == [MISSING], "one factory call, with exactly the missing keys, in the batch's order"
    assert counts(reader.stats()) == (0, 40, 10, 10), "counted per key, as single-key calls would count"
    slots = {key_slot(cache_env.redis_key(key).encode()) for key in KEYS}
    # One MGET on a server; on a cluster one MGET per hash slot, which the client sends per node (next test).
    assert calls.get("mget") == (len(slots) if topology == CLUSTER else 1), calls
    # commandstats counts the commands scripts run too: each capture and each conditional set reads its key's
    # capture token with a GET. Those 2 x 10 are all: none of the 50 keys was read on its own.
    assert calls.get("get", 0) == 2 * len(MISSING), f"keys were read one by one: {calls}"

    with server_counts(redis_endpoint) as again:
        assert await reader.get_or_create_many(KEYS, loader, type_=Dealer) == values
    assert loader.calls == [MISSING]
    assert counts(reader.stats()) == (50, 40, 10, 10), "the second call is all L1"
    assert again.get("mget", 0) == 0, again


@pytest.mark.parametrize("where", ["standalone", "cluster"])
async def test_each_step_of_a_batch_is_one_round_trip_per_node(
    where: str, namespace: str, request: pytest.FixtureRequest
) -> None:
    """The requests the cache's connections write, per server: the L2 read, the captures of the missing keys and
    their stores are one request each per node they touch, and nothing else names an entry."""
    writes = Writes()
    client: Any
    if where == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, client = server.url, counting_client(HOST, server.port, writes, socket_timeout=5)
        node_of: Any = lambda _key: server.port  # noqa: E731
        capture = scripts.CAPTURE
    else:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        host, port = cluster.seeds[0]
        url, client = cluster.url, counting_cluster_client(host, port, writes, socket_timeout=5)
        node_of = cluster.master_for_key
        capture = scripts.CAPTURE_KEY  # the token in the entry's slot; prefix generations from the mirror
    settings = CacheSettings(service_name=namespace, backplane=QUIET)  # its Redis is the client given below
    try:
        async with HybridCache(CacheSettings(service_name=namespace, configuration=url)) as writer:
            await writer.set_many({key: dealer(key) for key in PRESENT}, type_=Dealer)
        reader = HybridCache(settings, redis=client, register_instance=False)
        async with reader:
            assert await reader.wait_until_connected(5.0)
            loader = Loader({key: dealer(key) for key in KEYS})
            writes.clear()
            assert await reader.get_or_create_many(KEYS, loader, type_=Dealer) == {k: dealer(k) for k in KEYS}
            l2 = reader.internals.l2
            assert l2 is not None
            entry = [l2.redis_key(f"{namespace}:v1:{key}") for key in KEYS]
    finally:
        await client.aclose()

    read_nodes = Counter({node_of(key): 1 for key in entry})
    loaded_nodes = Counter({node_of(key): 1 for key, name in zip(entry, KEYS, strict=True) if name in MISSING})
    if where == "cluster":
        assert len(read_nodes) == 3, f"the 50 keys should spread over the 3 masters: {read_nodes}"
    marker = f"{namespace}:v1:Dealership:".encode()
    assert writes.per_server(b"MGET", marker) == read_nodes
    assert writes.per_server(b"EVALSHA", sha(capture).encode(), marker) == loaded_nodes
    assert writes.per_server(b"EVALSHA", sha(scripts.SET_IF_CURRENT).encode(), marker) == loaded_nodes
    everything = writes.per_server(marker)
    assert sum(everything.values()) == sum(read_nodes.values()) + 2 * sum(loaded_nodes.values()), everything
    assert loader.calls == [MISSING]


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- acceptance 2


async def test_overlapping_batches_and_single_keys_load_each_key_once(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = [f"Car:{n}" for n in range(45)]
    loader = Loader({key: f"v-{key}" for key in keys}, hold=True)
    single = One("from a single-key factory")

    first = asyncio.create_task(cache.get_or_create_many(keys[:30], loader))
    await loader.started(1)
    second = asyncio.create_task(cache.get_or_create_many(keys[15:], loader))
    joins_first = asyncio.create_task(cache.get_or_create(keys[20], single))
    joins_second = asyncio.create_task(cache.get_or_create(keys[40], single))
    await loader.started(2)
    assert loader.calls == [keys[:30], keys[30:]], "the second batch loaded keys the first was loading"
    loader.release.set()

    assert await first == {key: f"v-{key}" for key in keys[:30]}
    assert await second == {key: f"v-{key}" for key in keys[15:]}
    assert await joins_first == f"v-{keys[20]}"
    assert await joins_second == f"v-{keys[40]}"
    assert set(loader.runs.values()) == {1}, f"keys loaded more than once: {loader.runs}"
    assert single.runs == 0, "a single-key caller loaded a key a batch was loading"
    assert cache.stats().handler_runs == 45


async def test_a_batch_joins_a_single_key_load_in_flight(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = [f"Car:{n}" for n in range(10)]
    single = One("single", hold=True)
    loading = asyncio.create_task(cache.get_or_create(keys[5], single))
    await wait_until(lambda: single.runs == 1, timeout=5.0, message="the single-key load never started")
    loader = Loader({key: f"v-{key}" for key in keys})
    batch = asyncio.create_task(cache.get_or_create_many(keys, loader))
    await loader.started()
    assert loader.calls == [keys[:5] + keys[6:]]
    single.release.set()
    values = await batch
    assert values[keys[5]] == "single" == await loading
    assert list(values) == keys
    assert single.runs == 1


async def test_a_single_key_caller_joins_a_batch_still_reading_l2(
    redis_server: RedisServer, namespace: str, admin: Redis
) -> None:
    """While the batch's MGET is held (``CLIENT PAUSE``), a single-key caller of one of its keys finds the batch's
    lead, waits for it, and gets the batch's load: no GET of its own, no factory run of its own."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url, backplane=QUIET)
    async with HybridCache(settings) as cache:
        assert await cache.wait_until_connected(5.0)
        keys = [f"Car:{n}" for n in range(5)]
        loader = Loader({key: f"v-{key}" for key in keys})
        single = One("single")
        full_key = f"{namespace}:v1:{keys[2]}"
        await admin.execute_command("CLIENT", "PAUSE", "5000", "ALL")
        try:
            batch = asyncio.create_task(cache.get_or_create_many(keys, loader))
            await wait_until(
                lambda: cache.internals.loads.lead_of(full_key) is not None, timeout=5.0, message="no lead opened"
            )
            follower = asyncio.create_task(cache.get_or_create(keys[2], single))
            for _ in range(3):  # the follower's first step takes it to the lead, where it waits
                await asyncio.sleep(0)
            assert not batch.done(), "the batch's L2 read was not held"
            assert not follower.done()
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        assert await follower == f"v-{keys[2]}"
        assert await batch == {key: f"v-{key}" for key in keys}
    assert single.runs == 0
    assert loader.calls == [keys]


# ---------------------------------------------------------------------------------------------- the contract


async def test_get_many_set_many_remove_many(cache_mode: str, make_cache: MakeCache) -> None:
    cache = await make_cache()
    reader = cache if cache_mode == L1_ONLY else await make_cache()  # through Redis when there is one
    await cache.set_many({"Car:1": 1, "Car:2": None, "Car:3": [3]}, ttl=60)
    got = await reader.get_many(["Car:3", "Car:1", "Car:9", "Car:2", "Car:1"], default="absent")
    assert got == {"Car:3": [3], "Car:1": 1, "Car:9": "absent", "Car:2": None}
    assert list(got) == ["Car:3", "Car:1", "Car:9", "Car:2"], "the order of the keys, duplicates once"
    if cache_mode != L1_ONLY:
        assert counts(reader.stats())[1:3] == (3, 1), "three L2 hits (a cached None is one), one miss"

    published = cache.stats().invalidations_published
    await cache.remove_many(["Car:1", "Car:3"])
    if cache_mode != L1_ONLY:
        assert cache.stats().invalidations_published == published + 1, "one message for every key"
        await wait_until(
            lambda: reader.stats().invalidations_received >= 2,  # set_many's, then remove_many's
            timeout=1.0,
            message="the removal did not reach the other instance",
        )
    assert await cache.get_many(["Car:1", "Car:2", "Car:3"]) == {"Car:1": None, "Car:2": None, "Car:3": None}
    assert await reader.get_many(["Car:1", "Car:3"], default=0) == {"Car:1": 0, "Car:3": 0}
    assert await reader.get_many([]) == {}


async def test_set_many_replaces_what_other_instances_hold(cache_mode: str, make_cache: MakeCache) -> None:
    if cache_mode == L1_ONLY:
        pytest.skip("one instance: nothing else holds the old values")
    writer, other = await make_cache(), await make_cache()
    await other.get_or_create_many(["Car:1", "Car:2"], Loader({"Car:1": "old", "Car:2": "old"}))
    received = other.stats().invalidations_received
    await writer.set_many({"Car:1": "new", "Car:2": "new"})
    await wait_until(lambda: other.stats().invalidations_received == received + 1, timeout=1.0, message="not received")
    assert await other.get_many(["Car:1", "Car:2"]) == {"Car:1": "new", "Car:2": "new"}


async def test_keys_the_factory_leaves_out_are_cached_as_none(cache_mode: str, make_cache: MakeCache) -> None:
    cache = await make_cache()
    reader = cache if cache_mode == L1_ONLY else await make_cache()
    loader = Loader({"Car:1": "one", "Car:3": "three", "Car:99": "not asked for"})
    assert await cache.get_or_create_many(["Car:1", "Car:2", "Car:3"], loader) == {
        "Car:1": "one",
        "Car:2": None,
        "Car:3": "three",
    }
    again = Loader({"Car:2": "two"})
    assert await reader.get_or_create_many(["Car:3", "Car:2", "Car:1"], again) == {
        "Car:3": "three",
        "Car:2": None,
        "Car:1": "one",
    }
    assert again.calls == [], "a key the factory left out was not cached (as a None result is)"
    assert await reader.get_many(["Car:99"], default="absent") == {"Car:99": "absent"}, "not asked, not cached"


async def test_typed_values_come_back_as_the_declared_model(cache_mode: str, make_cache: MakeCache) -> None:
    cache = await make_cache()
    reader = cache if cache_mode == L1_ONLY else await make_cache()  # decoded from L2 where there is one
    keys = [f"Dealership:{n}" for n in range(1, 6)]
    await cache.get_or_create_many(keys, Loader({key: dealer(key) for key in keys}), type_=Dealer | None)
    values = await reader.get_or_create_many([*keys, "Dealership:404"], Loader(), type_=Dealer | None)
    assert values == {**{key: dealer(key) for key in keys}, "Dealership:404": None}
    assert all(isinstance(value, Dealer) for value in list(values.values())[:5])
    assert await reader.get_many(keys[:2], type_=Dealer) == {key: dealer(key) for key in keys[:2]}


async def test_duplicates_empty_batches_and_invalid_keys(make_cache: MakeCache) -> None:
    cache = await make_cache()
    loader = Loader({"Car:1": 1, "Car:2": 2})
    assert await cache.get_or_create_many(["Car:2", "Car:1", "Car:2"], loader) == {"Car:2": 2, "Car:1": 1}
    assert loader.calls == [["Car:2", "Car:1"]]
    assert await cache.get_or_create_many([], loader) == {}
    assert loader.calls == [["Car:2", "Car:1"]], "an empty batch calls nothing"
    with pytest.raises(ValueError, match="control characters"):
        await cache.get_or_create_many(["Car:3", "bad\nkey"], loader)
    assert len(loader.calls) == 1, "an invalid key fails the call before anything is loaded"
    with pytest.raises(TypeError, match="mapping"):
        await cache.get_or_create_many(["Car:4"], _returns_a_list)


async def _returns_a_list(keys: list[str]) -> Any:
    return [1 for _ in keys]


async def test_per_key_tags(cache_mode: str, make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = ["Dealership:1", "Dealership:2", "Dealership:3"]
    loader = Loader({key: key for key in keys})
    await cache.get_or_create_many(keys, loader, tags=lambda key: ("dealerships", f"dealer-{key[-1]}"))
    await cache.remove_by_tag("dealer-2")
    assert await cache.get_or_create_many(keys, loader, tags=lambda key: ("dealerships", f"dealer-{key[-1]}")) == {
        key: key for key in keys
    }
    assert loader.calls == [keys, ["Dealership:2"]], "only the tagged key was loaded again"
    await cache.remove_by_tag("dealerships")
    await cache.get_or_create_many(keys, loader, tags=("dealerships",))
    assert loader.calls[-1] == keys


async def test_a_factory_error_reaches_every_caller_and_caches_nothing(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = ["Car:1", "Car:2", "Car:3"]
    failing = Loader(error=RuntimeError("database down"), hold=True)
    batch = asyncio.create_task(cache.get_or_create_many(keys, failing))
    await failing.started()
    follower = asyncio.create_task(cache.get_or_create(keys[1], One("not me")))
    await asyncio.sleep(0)
    failing.release.set()
    with pytest.raises(RuntimeError, match="database down"):
        await batch
    with pytest.raises(RuntimeError, match="database down"):
        await follower
    assert cache.stats().factory_errors == 3
    loader = Loader({key: key for key in keys})
    assert await cache.get_or_create_many(keys, loader) == {key: key for key in keys}
    assert loader.calls == [keys], "the failure was cached"


async def test_fail_safe_serves_stale_values_when_the_factory_fails(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = ["Car:1", "Car:2"]
    await cache.get_or_create_many(keys, Loader(dict.fromkeys(keys, "old")), ttl=0.2, fail_safe=True)
    await asyncio.sleep(0.3)  # past the TTL: only a fail-safe fallback is left (L1 keeps it, and L2 if present)
    down = Loader(error=RuntimeError("database down"))
    assert await cache.get_or_create_many(keys, down, ttl=0.2, fail_safe=True) == dict.fromkeys(keys, "old")
    assert cache.stats().fail_safe_activations == 2
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_create_many(["Car:1", "Car:3"], down, ttl=0.2, fail_safe=True)  # Car:3 has nothing


async def test_a_hard_timeout_raises_and_the_late_result_is_stored(make_cache: MakeCache) -> None:
    cache = await make_cache()
    slow = Loader({"Car:1": "late"}, hold=True)
    with pytest.raises(FactoryTimeoutError, match="hard timeout"):
        await cache.get_or_create_many(["Car:1"], slow, hard_timeout=0.05)
    slow.release.set()
    await wait_until(
        lambda: not cache.internals.filler.background, timeout=5.0, message="the late store never finished"
    )
    assert await cache.get_many(["Car:1"]) == {"Car:1": "late"}
    assert cache.stats().factory_timeouts == 1


async def test_keys_past_their_refresh_point_are_refreshed_by_one_background_call(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = [f"Car:{n}" for n in range(4)]
    db = dict.fromkeys(keys, 1)
    loader = Loader(db)
    await cache.get_or_create_many(keys, loader, ttl=2.0, eager_refresh=0.5)
    await asyncio.sleep(1.1)  # past half of the TTL, well before its end
    db.update(dict.fromkeys(keys, 2))
    assert await cache.get_or_create_many(keys, loader, ttl=2.0, eager_refresh=0.5) == dict.fromkeys(keys, 1)
    await wait_until(lambda: len(loader.calls) == 2, timeout=5.0, message="no refresh")
    await wait_until(lambda: not cache.internals.filler.background, timeout=5.0, message="refresh never ended")
    assert loader.calls[1] == keys, "one refresh call for every key due"
    assert await cache.get_or_create_many(keys, loader, ttl=2.0, eager_refresh=0.5) == dict.fromkeys(keys, 2)
    assert len(loader.calls) == 2
    assert cache.stats().eager_refreshes == 4


async def test_cancelling_a_batch_does_not_cancel_its_load_for_joined_callers(make_cache: MakeCache) -> None:
    cache = await make_cache()
    keys = ["Car:1", "Car:2"]
    loader = Loader({key: key for key in keys}, hold=True)
    batch = asyncio.create_task(cache.get_or_create_many(keys, loader))
    await loader.started()
    follower = asyncio.create_task(cache.get_or_create("Car:2", One("not me")))
    await asyncio.sleep(0)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    loader.release.set()
    assert await follower == "Car:2"
    assert await cache.get_or_create_many(keys, Loader()) == {key: key for key in keys}, "the load was not stored"


async def test_enabled_false_passes_through(cache_env: CacheEnv, start_cache: StartCache) -> None:
    cache = await start_cache(cache_env.settings(enabled=False))
    loader = Loader({"Car:1": 1})
    assert await cache.get_or_create_many(["Car:1", "Car:2"], loader) == {"Car:1": 1, "Car:2": None}
    assert await cache.get_or_create_many(["Car:1"], loader) == {"Car:1": 1}
    assert len(loader.calls) == 2
    await cache.set_many({"Car:1": 5})
    assert await cache.get_many(["Car:1"], default="d") == {"Car:1": "d"}
    await cache.remove_many(["Car:1"])


async def test_a_batch_is_traced_as_one_l2_read_and_one_factory_run(
    cache_env: CacheEnv, start_cache: StartCache
) -> None:
    cache = await start_cache(cache_env.settings())
    tracer = RecordingTracer()
    cache.tracer = tracer
    keys = ["Dealership:1", "Dealership:2", "Dealership:3"]
    await cache.get_or_create_many(keys, Loader({key: key for key in keys}), type_=str)
    assert tracer.operations == [("l2_read", "Dealership:1", False), ("factory", "Dealership:1", None)]
    tracer.operations.clear()
    await cache.remove_many(keys)
    assert await cache.get_many(keys) == dict.fromkeys(keys)
    assert tracer.operations == [
        ("invalidation", "Dealership:1,Dealership:2,Dealership:3", None),
        ("l2_read", "Dealership:1", False),
    ]


class RecordingTracer:
    def __init__(self) -> None:
        self.operations: list[tuple[str, str, bool | None]] = []

    def l2_read(self, key: str) -> Span:
        return Span(self.operations, "l2_read", key)

    def factory(self, key: str) -> Span:
        return Span(self.operations, "factory", key)

    def invalidation(self, keys: Sequence[str], prefixes: Sequence[str], tags: Sequence[str]) -> Span:
        return Span(self.operations, "invalidation", ",".join(keys))


class Span:
    def __init__(self, operations: list[tuple[str, str, bool | None]], kind: str, key: str) -> None:
        self._operations, self._kind, self._key = operations, kind, key
        self._hit: bool | None = None

    def set_hit(self, hit: bool) -> None:
        self._hit = hit

    def set_error(self, kind: str) -> None:
        pass

    def __enter__(self) -> Span:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._operations.append((self._kind, self._key, self._hit))


async def test_a_server_without_the_scripts_loads_them(redis_server: RedisServer, namespace: str, admin: Redis) -> None:
    """``SCRIPT FLUSH`` (as after a restart): the pipelined captures and stores answer ``NOSCRIPT``; the scripts are
    loaded and the calls sent again, and the batch is stored."""
    settings = CacheSettings(service_name=namespace, configuration=redis_server.url)
    async with HybridCache(settings) as cache, HybridCache(settings) as reader:
        await admin.script_flush()
        keys = ["Car:1", "Car:2", "Car:3"]
        assert await cache.get_or_create_many(keys, Loader({key: key for key in keys})) == {k: k for k in keys}
        assert cache.stats().l2_errors == 0
        assert await reader.get_many(keys) == {key: key for key in keys}
        assert reader.stats().l2_hits == 3


@pytest.mark.all_topologies
async def test_remove_many_is_one_message(
    cache_mode: str, make_cache: MakeCache, cache_env: CacheEnv, raw_redis: RawRedis
) -> None:
    if cache_mode == L1_ONLY:
        pytest.skip("no other instance to tell")
    writer, other = await make_cache(), await make_cache()
    keys = [f"Car:{n}" for n in range(20)]
    await writer.set_many({key: key for key in keys})
    assert await raw_redis.exists(*(cache_env.redis_key(key) for key in keys[:1])) == 1
    received = other.stats().invalidations_received
    await writer.remove_many(keys)
    await wait_until(lambda: other.stats().invalidations_received > received, timeout=1.0, message="not received")
    assert other.stats().invalidations_received == received + 1
    for key in keys:
        assert await raw_redis.exists(cache_env.redis_key(key)) == 0, key
    assert await other.get_many(keys, default="gone") == dict.fromkeys(keys, "gone")
