"""HTTP routes. They only translate: HTTP in → a query or command to the mediator → HTTP out. Caching,
invalidation and data access all happen behind the mediator.

Every error is JSON: ``{"detail": "..."}`` for 400 (a body whose bytes are not UTF-8) and 404/503, FastAPI's
validation list for 422 (each entry's ``loc`` names the offending field, e.g. ``["body", "businessZipCodeId"]`` or
``["query", "size"]``; malformed JSON is ``json_invalid`` at ``["body", offset]``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, TypeAdapter

from dealership.commands import CreateDealership, DeleteDealership, UnknownZipCodeError, UpdateDealership
from dealership.dto import (
    MAX_ID,
    CreateDealershipRequest,
    DealershipDto,
    UpdateDealershipRequest,
    validation_error,
)
from dealership.queries import GetDealershipById, GetDealershipsList, SearchDealerships
from hybridcache.fastapi import CacheDep, MediatorDep

__all__ = [
    "MAX_PAGE",
    "ErrorBody",
    "HealthBody",
    "dealership_router",
    "operations_router",
]

#: Highest page number accepted: keeps ``(page - 1) * size`` far inside every database's OFFSET range.
MAX_PAGE = 1_000_000
#: Search terms: 1..100 characters, no control characters.
TERM_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class ErrorBody(BaseModel):
    """The body of a 400, 404 or 503 answer."""

    detail: str


class HealthBody(BaseModel):
    """``GET /health``: the service answers (``status``), and the state of its Redis and circuit breaker."""

    status: str
    redis: str
    circuit: str


# No lower bound: as with the seed's ``{id:int}``, 0 and negative ids reach the route and are simply not found
# (404, see _known_id). Above MAX_ID, or not an integer, is a 422 naming ``["path", "id"]``.
DealershipId = Annotated[
    int, Path(le=MAX_ID, description="Dealership id (ids are 1 or more: 0 and negative ids are not found, 404)")
]
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Items per page (1-100)")]
SearchTerm = Annotated[
    str, Query(min_length=1, max_length=100, pattern=TERM_PATTERN, description="Text the name must contain")
]

_DEALERSHIP = TypeAdapter(DealershipDto)
_DEALERSHIPS = TypeAdapter(tuple[DealershipDto, ...])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No dealership has this id"}}
# What FastAPI does with a JSON body: bytes that do not decode as text are a 400; text that is not JSON is a 422
# json_invalid (loc ["body", offset]), like any other invalid body.
_UNREADABLE_BODY: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "The body's bytes are not text: not valid UTF-8 (JSON's encoding detection also reads "
        "UTF-16 and UTF-32). Text that is not valid JSON is a 422 `json_invalid` instead.",
    }
}


def _header(description: str, type_: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


def _json(content: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status_code=status_code, headers=headers, media_type="application/json")


def _not_found(dealership_id: int) -> HTTPException:
    return HTTPException(status_code=404, detail=f"Dealership {dealership_id} not found")


def _known_id(dealership_id: int) -> int:
    """``dealership_id`` if some dealership could have it; otherwise (0 or negative: ids start at 1) the same
    404 as any missing id, raised at once — no database query, no cache entry."""
    if dealership_id < 1:
        raise _not_found(dealership_id)
    return dealership_id


dealership_router = APIRouter(prefix="/api/dealership", tags=["dealership"])


# Declared before "/{id}" so that "/search" is never taken for an id.
@dealership_router.get("/search", response_model=list[DealershipDto], summary="Search dealerships by name")
async def search_dealerships(mediator: MediatorDep, term: SearchTerm, size: PageSize = 10) -> Response:
    """Up to ``size`` dealerships whose name contains ``term`` (case-insensitive), ordered by name.
    Cached 5 minutes under ``Dealership:Search:{term}:{size}``."""
    found = await mediator.send(SearchDealerships(term, size))
    return _json(_DEALERSHIPS.dump_json(found, by_alias=True))


@dealership_router.get(
    "",
    response_model=list[DealershipDto],
    summary="List dealerships",
    responses={
        200: {"headers": {"X-Total-Count": {"description": "Number of dealerships", "schema": {"type": "integer"}}}}
    },
)
async def list_dealerships(mediator: MediatorDep, page: PageNumber = 1, size: PageSize = 10) -> Response:
    """Page ``page`` of ``size`` dealerships ordered by id; the total count is in ``X-Total-Count``.
    Cached 10 minutes under ``Dealership:List:{page}:{size}``."""
    result = await mediator.send(GetDealershipsList(page, size))
    return _json(_DEALERSHIPS.dump_json(result.items, by_alias=True), headers={"X-Total-Count": str(result.total)})


@dealership_router.get("/{id}", response_model=DealershipDto, responses=_NOT_FOUND, summary="Get a dealership")
async def get_dealership(mediator: MediatorDep, id: DealershipId) -> Response:
    """One dealership with its zip code and state. Cached 30 minutes under ``Dealership:{id}``."""
    found = await mediator.send(GetDealershipById(_known_id(id)))
    if found is None:
        raise _not_found(id)
    return _json(_DEALERSHIP.dump_json(found, by_alias=True))


@dealership_router.post(
    "",
    status_code=201,
    response_model=DealershipDto,
    summary="Create a dealership",
    responses={201: {"headers": {"Location": _header("Path of the new dealership", "string")}}, **_UNREADABLE_BODY},
)
async def create_dealership(mediator: MediatorDep, body: CreateDealershipRequest) -> Response:
    """Creates the dealership (422 naming ``businessZipCodeId`` if that zip code does not exist) and
    invalidates every cached list and search."""
    command = CreateDealership(body.name, body.business_address, body.business_zip_code_id)
    try:
        created = await mediator.send(command)
    except UnknownZipCodeError as exc:
        raise RequestValidationError(
            [validation_error("businessZipCodeId", str(exc), exc.zip_code_id)], body=body
        ) from exc
    return _json(
        _DEALERSHIP.dump_json(created, by_alias=True),
        status_code=201,
        headers={"Location": f"/api/dealership/{created.id}"},
    )


@dealership_router.put(
    "/{id}", status_code=204, responses={**_NOT_FOUND, **_UNREADABLE_BODY}, summary="Update a dealership"
)
async def update_dealership(mediator: MediatorDep, id: DealershipId, body: UpdateDealershipRequest) -> Response:
    """Sets name and address; invalidates ``Dealership:{id}`` and every cached list and search."""
    if not await mediator.send(UpdateDealership(_known_id(id), body.name, body.business_address)):
        raise _not_found(id)
    return Response(status_code=204)


@dealership_router.delete("/{id}", status_code=204, responses=_NOT_FOUND, summary="Delete a dealership")
async def delete_dealership(mediator: MediatorDep, id: DealershipId) -> Response:
    """Deletes the dealership; invalidates ``Dealership:{id}`` and every cached list and search."""
    if not await mediator.send(DeleteDealership(_known_id(id))):
        raise _not_found(id)
    return Response(status_code=204)


operations_router = APIRouter(tags=["operations"])


@operations_router.get("/api/cache/stats", summary="Cache counters of this instance")
async def cache_stats(cache: CacheDep) -> dict[str, Any]:
    """``l1Hits``, ``l2Hits``, ``misses``, ``handlerRuns``, ``invalidationsPublished``,
    ``invalidationsReceived``, ``circuit`` and the cache's other counters, since this process started."""
    return cache.stats().as_dict()


@operations_router.get("/health", response_model=HealthBody, summary="Liveness and cache state")
async def health(cache: CacheDep) -> HealthBody:
    """Always 200 while the process serves; ``redis`` is ``up``, ``down`` or ``disabled`` (no Redis
    configured) and ``circuit`` the breaker's state: the service keeps answering from L1 and the database."""
    state = cache.health()
    return HealthBody(status="ok", redis=state["redis"], circuit=state["circuit"])


@operations_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Cache counters (``hybridcache_*``) and HTTP request counts and latency, in Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
