"""The request and handler examples in the docs run as written.

The code blocks of docs/getting-started.md (steps 3 and 4) and docs/cqrs.md are executed against the reference
service's models on a real, seeded SQLite database, through a real mediator and cache. A snippet that calls a
missing helper or forgets an eager load (the models refuse lazy loads) fails here instead of in a reader's hands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import event
from sqlalchemy.orm import joinedload, selectinload

from dealership.database import create_engine, prepare_database
from dealership.dto import DealershipDto
from dealership.models import Dealership, ZipCode
from hybridcache import CacheSettings, HybridCache
from hybridcache.cqrs import (
    Cacheable,
    CacheInvalidationBehavior,
    CachingBehavior,
    Command,
    InvalidatesCache,
    Mediator,
    Query,
    RequestHandler,
)
from hybridcache.keys import CacheKey
from hybridcache.persistence import ReadRepository, create_session_factory, in_unit_of_work

DOCS = Path(__file__).resolve().parents[2] / "docs"
SEEDED = 10
# What a reader has imported when they reach the examples (each page lists these imports or names the module).
_IMPORTED: dict[str, Any] = {
    "dataclass": dataclass,
    "ClassVar": ClassVar,
    "Sequence": Sequence,
    "timedelta": timedelta,
    "Query": Query,
    "Command": Command,
    "Cacheable": Cacheable,
    "InvalidatesCache": InvalidatesCache,
    "RequestHandler": RequestHandler,
    "ReadRepository": ReadRepository,
    "CacheKey": CacheKey,
    "Dealership": Dealership,
    "ZipCode": ZipCode,
    "DealershipDto": DealershipDto,
    "joinedload": joinedload,
    "selectinload": selectinload,
}


def _python_block(page: str, containing: str) -> str:
    """The first ```python block of ``page`` whose text contains ``containing``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), flags=re.DOTALL)
    matching = [block for block in blocks if containing in block]
    assert matching, f"docs/{page} has no python block containing {containing!r}"
    return matching[0]


def _run(page: str, containing: str, **given: Any) -> dict[str, Any]:
    """Execute the block; ``given`` are the names the page says come from the reader's own code (an engine)."""
    namespace = {"__name__": f"docs_{page.replace('.', '_').replace('-', '_')}", **_IMPORTED, **given}
    # dont_inherit: evaluate the snippet's annotations as a reader's module would, not under this file's
    # ``from __future__ import annotations``.
    code = compile(_python_block(page, containing), f"docs/{page}", "exec", dont_inherit=True)
    exec(code, namespace)
    return namespace


@pytest.fixture
async def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"
    assert await prepare_database(url, seed_count=SEEDED)
    return url


@pytest.mark.parametrize("page", ["getting-started.md", "cqrs.md"])
async def test_the_documented_query_handler_reads_a_dealership_through_the_cache(
    page: str, database_url: str, namespace: str
) -> None:
    example = _run(page, "class GetDealershipByIdHandler")
    query_type, handler_type = example["GetDealershipById"], example["GetDealershipByIdHandler"]
    engine = create_engine(database_url)
    runs = 0

    def handler(uow: Any) -> Any:
        nonlocal runs
        runs += 1
        return handler_type(uow.reads(Dealership))

    try:
        async with HybridCache.from_settings(CacheSettings(service_name=namespace)) as cache:
            mediator: Mediator[None] = Mediator([CachingBehavior(cache), CacheInvalidationBehavior(cache)])
            mediator.register(query_type, in_unit_of_work(create_session_factory(engine), handler))

            found = await mediator.send(query_type(1))
            again = await mediator.send(query_type(1))
            missing = await mediator.send(query_type(SEEDED + 1))
    finally:
        await engine.dispose()

    assert isinstance(found, DealershipDto)
    assert found.id == 1
    assert found.business_zip_code.state_province.code, "the state was not loaded with the zip code"
    assert again == found
    assert missing is None
    assert runs == 2, "the second read of id 1 should have been served by the cache"


def test_the_documented_command_declares_what_it_invalidates() -> None:
    example = _run("getting-started.md", "class UpdateDealership")
    command = example["UpdateDealership"](id=7, name="Renamed", business_address="1 Main St")
    assert isinstance(command, Command)
    assert isinstance(command, InvalidatesCache)
    assert list(command.cache_keys_to_invalidate) == ["Dealership:7"]
    assert list(command.cache_prefixes_to_invalidate) == ["Dealership:Search", "Dealership:List"]


async def test_the_documented_page_of_dealerships_is_one_query_for_the_missing_ids(
    database_url: str, namespace: str
) -> None:
    engine = create_engine(database_url)
    selects: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        example = _run("getting-started.md", "get_or_create_many", engine=engine)
        page = example["dealership_page"]
        async with HybridCache.from_settings(CacheSettings(service_name=namespace)) as cache:
            first = await page(cache, [3, 1, SEEDED + 5, 2])
            after_first = len(selects)
            second = await page(cache, [2, 4, 1, SEEDED + 5])
            after_second = len(selects)
    finally:
        await engine.dispose()

    assert [d.id if d else None for d in first] == [3, 1, None, 2]
    assert [d.id if d else None for d in second] == [2, 4, 1, None]
    assert all(d.business_zip_code.state_province.code for d in first if d), "the state was not loaded"
    assert after_first == 1, f"the first page took {after_first} queries"
    assert after_second == 2, "the second page queried more than the one id it had not seen (4)"
    assert "IN" in selects[1].upper()
