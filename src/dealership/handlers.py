"""Handlers: the business logic of each query and command, written against the repositories only.

No handler touches the cache — the pipeline's behaviors read through it and invalidate it. Query handlers use
a :class:`ReadRepository` (untracked, detached results, zip code and state eager-loaded); command handlers use
a :class:`WriteRepository` and commit through the unit of work before they return.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from sqlalchemy import Select
from sqlalchemy.orm import joinedload

from dealership.commands import CreateDealership, DeleteDealership, UnknownZipCodeError, UpdateDealership
from dealership.dto import DealershipDto, DealershipPage
from dealership.models import Dealership, ZipCode
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from hybridcache.cqrs import RequestHandler
from hybridcache.persistence import ReadRepository, WriteRepository

__all__ = [
    "Committer",
    "CreateDealershipHandler",
    "DeleteDealershipHandler",
    "GetDealershipByIdHandler",
    "GetDealershipsListHandler",
    "SearchDealershipsHandler",
    "UpdateDealershipHandler",
]

# Every dealership leaves the database with its zip code and that zip code's state (many-to-one joins: one row
# per dealership, no duplication).
_WITH_ZIP_AND_STATE = joinedload(Dealership.business_zip_code).joinedload(ZipCode.state_province)


class Committer(Protocol):
    """The part of the unit of work a command handler needs: send changes early, make them durable."""

    async def flush(self) -> None:
        """Send the pending changes without committing (a new row gets its generated id)."""
        ...

    async def commit(self) -> int:
        """Commit; the number of rows inserted, updated or deleted (the seed's ``SaveChangesAsync``)."""
        ...


def _to_dto(row: Dealership) -> DealershipDto:
    return DealershipDto.model_validate(row)


def _dealerships(repository: ReadRepository[Dealership]) -> Select[Dealership]:
    return repository.query.options(_WITH_ZIP_AND_STATE)


class GetDealershipByIdHandler(RequestHandler[GetDealershipById, DealershipDto | None]):
    """Loads one dealership with its zip code and state; ``None`` when the id does not exist."""

    def __init__(self, dealerships: ReadRepository[Dealership]) -> None:
        self._dealerships = dealerships

    async def handle(self, request: GetDealershipById) -> DealershipDto | None:
        row = await self._dealerships.first(_dealerships(self._dealerships).where(Dealership.id == request.id))
        return None if row is None else _to_dto(row)


class GetDealershipsListHandler(RequestHandler[GetDealershipsList, DealershipPage]):
    """Page ``page`` of ``size`` dealerships ordered by id, plus the total count (one transaction)."""

    def __init__(self, dealerships: ReadRepository[Dealership]) -> None:
        self._dealerships = dealerships

    async def handle(self, request: GetDealershipsList) -> DealershipPage:
        statement = (
            _dealerships(self._dealerships)
            .order_by(Dealership.id)
            .offset((request.page - 1) * request.size)
            .limit(request.size)
        )
        rows = await self._dealerships.list(statement)
        total = await self._dealerships.count()
        return DealershipPage(items=tuple(_to_dto(row) for row in rows), total=total)


class SearchDealershipsHandler(RequestHandler[SearchDealerships, tuple[DealershipDto, ...]]):
    """Dealerships whose name contains the term, case-insensitively and literally, ordered by name then id."""

    def __init__(self, dealerships: ReadRepository[Dealership]) -> None:
        self._dealerships = dealerships

    async def handle(self, request: SearchDealerships) -> tuple[DealershipDto, ...]:
        statement = (
            _dealerships(self._dealerships)
            .where(Dealership.name.icontains(request.term, autoescape=True))
            .order_by(Dealership.name, Dealership.id)
            .limit(request.size)
        )
        return tuple(_to_dto(row) for row in await self._dealerships.list(statement))


class CreateDealershipHandler(RequestHandler[CreateDealership, DealershipDto]):
    """Inserts a dealership with a new GUID and commits; raises :class:`UnknownZipCodeError` (writing
    nothing) when the zip code does not exist. Answers the stored dealership as a reader would see it."""

    def __init__(
        self,
        dealerships: WriteRepository[Dealership],
        zip_codes: ReadRepository[ZipCode],
        reader: ReadRepository[Dealership],
        unit_of_work: Committer,
    ) -> None:
        self._dealerships = dealerships
        self._zip_codes = zip_codes
        self._reader = reader
        self._unit_of_work = unit_of_work

    async def handle(self, request: CreateDealership) -> DealershipDto:
        if await self._zip_codes.get_by_id(request.business_zip_code_id) is None:
            raise UnknownZipCodeError(request.business_zip_code_id)
        entity = Dealership(
            name=request.name,
            business_address=request.business_address,
            business_zip_code_id=request.business_zip_code_id,
            unique_key=uuid.uuid4(),
        )
        await self._dealerships.add(entity)
        await self._unit_of_work.flush()
        request.record_change(entity.id)  # before the commit, so the outbox row (if any) carries it
        await self._unit_of_work.commit()
        created = await self._reader.first(_dealerships(self._reader).where(Dealership.id == entity.id))
        if created is None:  # deleted by another request between our commit and this read
            raise LookupError(f"dealership {entity.id} vanished right after it was created")
        return _to_dto(created)


class UpdateDealershipHandler(RequestHandler[UpdateDealership, bool]):
    """Changes name and address and commits; ``False`` (nothing written) when the id does not exist."""

    def __init__(self, dealerships: WriteRepository[Dealership], unit_of_work: Committer) -> None:
        self._dealerships = dealerships
        self._unit_of_work = unit_of_work

    async def handle(self, request: UpdateDealership) -> bool:
        entity = await self._dealerships.get_by_id(request.id)
        if entity is None:
            return False
        entity.name = request.name
        entity.business_address = request.business_address
        self._dealerships.update(entity)
        request.record_change(request.id)
        await self._unit_of_work.commit()
        return True


class DeleteDealershipHandler(RequestHandler[DeleteDealership, bool]):
    """Deletes the dealership and commits; ``False`` when the id does not exist."""

    def __init__(self, dealerships: WriteRepository[Dealership], unit_of_work: Committer) -> None:
        self._dealerships = dealerships
        self._unit_of_work = unit_of_work

    async def handle(self, request: DeleteDealership) -> bool:
        entity = await self._dealerships.get_by_id(request.id)
        if entity is None:
            return False
        await self._dealerships.remove(entity)
        request.record_change(request.id)
        await self._unit_of_work.commit()
        return True
