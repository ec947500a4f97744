"""``CompressionThresholdBytes``: L2 bodies at or above the threshold are stored zlib-compressed when that makes
them smaller, against a real redis-server; any instance reads them back, whatever its own setting."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio

from hybridcache import CacheSettings
from hybridcache._serialization import decode_entry
from hybridcache.errors import CacheConfigurationError
from tests.integration.conftest import CacheEnv, StartCache

# A search result's shape: repetitive JSON, which is what compression is for (bench_memory: about 60% saved).
RESULTS = [{"id": n, "name": f"Dealership {n}", "address": f"{n} Main Street, Springfield"} for n in range(40)]


async def _stored(raw: redis.asyncio.Redis, env: CacheEnv, key: str) -> tuple[bytes, dict[str, object]]:
    payload = await raw.get(env.redis_key(key))
    assert isinstance(payload, bytes), f"{key} was not stored in Redis"
    header_end = payload.index(b"\n")
    return payload, orjson.loads(payload[3:header_end])


async def test_a_large_value_is_stored_compressed_and_every_instance_reads_it(
    cache_env: CacheEnv, start_cache: StartCache, raw_redis: redis.asyncio.Redis
) -> None:
    writer = await start_cache(cache_env.settings(compression_threshold_bytes=512))
    reader = await start_cache(cache_env.settings(memory={"enabled": False}))  # no threshold of its own
    calls = 0

    async def search() -> list[dict[str, object]]:
        nonlocal calls
        calls += 1
        return RESULTS

    assert await writer.get_or_create("Dealership:Search:ford:40", search) == RESULTS
    payload, header = await _stored(raw_redis, cache_env, "Dealership:Search:ford:40")

    assert header.get("z") == 1
    assert len(payload) < len(orjson.dumps(RESULTS)) / 2, "compression did not pay on repetitive JSON"
    _, body = decode_entry(payload)
    assert body is not None
    assert orjson.loads(body) == RESULTS
    assert await reader.get_or_create("Dealership:Search:ford:40", search) == RESULTS
    assert reader.counters.l2_hits == 1
    assert calls == 1


@pytest.mark.parametrize(
    ("threshold", "value"),
    [
        (None, RESULTS),  # off by default
        (100_000, RESULTS),  # below the threshold
        (1, "a"),  # at the threshold, but zlib's own framing would make it larger
    ],
)
async def test_a_value_is_stored_plain_when_compression_is_off_or_would_not_pay(
    threshold: int | None,
    value: object,
    cache_env: CacheEnv,
    start_cache: StartCache,
    raw_redis: redis.asyncio.Redis,
) -> None:
    cache = await start_cache(cache_env.settings(compression_threshold_bytes=threshold))

    async def load() -> object:
        return value

    assert await cache.get_or_create("Dealership:1", load) == value
    payload, header = await _stored(raw_redis, cache_env, "Dealership:1")

    assert "z" not in header
    assert payload.endswith(orjson.dumps(value))


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_a_bad_threshold_names_the_key(bad: object) -> None:
    with pytest.raises(CacheConfigurationError, match="CompressionThresholdBytes"):
        CacheSettings.from_mapping({"CompressionThresholdBytes": bad}, environ={})


def test_the_threshold_loads_from_json_and_the_environment() -> None:
    section = {"CompressionThresholdBytes": 2048}
    assert CacheSettings.from_mapping(section, environ={}).compression_threshold_bytes == 2048
    environ = {"TheTechLoopCache__CompressionThresholdBytes": "1024"}
    assert CacheSettings.from_mapping(section, environ=environ).compression_threshold_bytes == 1024
    assert CacheSettings.from_mapping({}, environ={"TheTechLoopCache__CompressionThresholdBytes": ""}) == (
        CacheSettings()
    )
