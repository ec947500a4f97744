"""The demo data and first-start preparation: deterministic, plausible, inserted once even when several
instances start at the same moment (SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dealership.database import create_engine, prepare_database
from dealership.models import Dealership, StateProvince, ZipCode
from dealership.seed import generate


def test_generate_is_deterministic_and_a_prefix_of_larger_seeds() -> None:
    small, again, large = generate(100), generate(100), generate(2000)

    assert small == again
    assert list(small.dealerships) == list(large.dealerships[:100])
    assert generate(100, random_seed=1) != small


def test_generated_rows_are_plausible() -> None:
    data = generate(500)
    state_codes = [state["code"] for state in data.states]
    zip_codes = [columns["code"] for _, columns in data.zip_codes]
    names = [str(columns["name"]) for _, columns in data.dealerships]
    keys = [columns["unique_key"] for _, columns in data.dealerships]

    assert len(state_codes) == len(set(state_codes)) == 51
    assert 250 <= len(zip_codes) == len(set(zip_codes))
    assert all(re.fullmatch(r"\d{5}", code) for code in zip_codes)
    assert len(set(keys)) == len(keys)
    assert all(1 <= len(name) <= 200 for name in names)
    assert any(re.fullmatch(r"Ford of [A-Z][a-z]+( [A-Z][a-z]+)?", name) for name in names)


def test_a_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="seed count"):
        generate(-1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'folder' / 'dealership.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _counts(database_url: str) -> tuple[int, int, int]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            states = await connection.scalar(select(func.count()).select_from(StateProvince))
            zips = await connection.scalar(select(func.count()).select_from(ZipCode))
            dealerships = await connection.scalar(select(func.count()).select_from(Dealership))
    finally:
        await engine.dispose()
    return int(states or 0), int(zips or 0), int(dealerships or 0)


async def test_concurrent_first_starts_seed_exactly_once(database_url: str) -> None:
    outcomes = await asyncio.gather(*(prepare_database(database_url, seed_count=300) for _ in range(4)))

    assert sorted(outcomes) == [False, False, False, True]
    data = generate(300)
    assert await _counts(database_url) == (len(data.states), len(data.zip_codes), 300)


async def test_a_second_start_keeps_the_data_it_finds(database_url: str) -> None:
    assert await prepare_database(database_url, seed_count=20)
    assert not await prepare_database(database_url, seed_count=500)

    assert (await _counts(database_url))[2] == 20


async def test_seeded_ids_follow_the_generated_order(database_url: str) -> None:
    await prepare_database(database_url, seed_count=50)
    data = generate(50)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(select(Dealership.id, Dealership.name).order_by(Dealership.id))).all()
    finally:
        await engine.dispose()

    assert [(row.id, row.name) for row in rows] == [(i + 1, c["name"]) for i, (_, c) in enumerate(data.dealerships)]
