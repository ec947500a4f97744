"""What bench_peers, bench_hit_rates and bench_memory share beyond ``benchmarks._common`` (timing, tables,
result files): the Dealership DTO every workload caches, a private redis-server, and percentiles.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import os
from collections.abc import Iterator, Sequence

from dealership.dto import DealershipDto, StateProvinceDto, ZipCodeDto
from dealership.seed import generate
from harness.redis_server import RedisServer

SEED_ROWS = 2000  # the service's default seed count; ids beyond it reuse rows with their own id


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port (never the system one), killed on exit."""
    with RedisServer() as server:
        yield server


@functools.cache
def _seed_rows() -> list[tuple[dict[str, object], ZipCodeDto]]:
    data = generate(SEED_ROWS)
    states = [StateProvinceDto(id=i + 1, code=s["code"], name=s["name"]) for i, s in enumerate(data.states)]
    zips = [
        ZipCodeDto(
            id=i + 1,
            code=columns["code"],
            city=columns["city"],
            state_province_id=state_index + 1,
            state_province=states[state_index],
        )
        for i, (state_index, columns) in enumerate(data.zip_codes)
    ]
    return [(columns, zips[zip_index]) for zip_index, columns in data.dealerships]


def dealership_dto(dealership_id: int) -> DealershipDto:
    """A typical cached value: one dealership of the service's deterministic seed, with zip code and state."""
    rows = _seed_rows()
    columns, zip_code = rows[(dealership_id - 1) % len(rows)]
    return DealershipDto(
        id=dealership_id,
        name=str(columns["name"]),
        business_address=str(columns["business_address"]),
        business_zip_code_id=zip_code.id,
        unique_key=columns["unique_key"],
        business_zip_code=zip_code,
    )


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages a result depends on beyond those ``_common.machine_info`` lists."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now: the figures are only as quiet as the machine was."""
    return [round(x, 2) for x in os.getloadavg()]
