"""Wire models: what the API returns, what it accepts, and what the cache stores.

Output is camelCase exactly as ASP.NET serialises the .NET model (``businessAddress``, ``businessZipCode``,
``stateProvince``…); input accepts both the camelCase aliases and the snake_case field names. The same DTOs
are the cached values, so they are immutable (``frozen``) and round-trip through JSON without loss.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_ID",
    "TEXT_PATTERN",
    "ApiModel",
    "CreateDealershipRequest",
    "DealershipDto",
    "DealershipPage",
    "StateProvinceDto",
    "UpdateDealershipRequest",
    "ZipCodeDto",
]

#: Largest id the API accepts: ids are 32-bit integers in every supported database.
MAX_ID = 2_147_483_647

#: Free text must contain a visible character and no control characters (PostgreSQL rejects NUL in text, and
#: control characters in names are never intended).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"

DealershipName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=TEXT_PATTERN)]
BusinessAddress = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=TEXT_PATTERN)]


def _json_number(value: Any) -> Any:
    # A JSON true/false or "42" is not an integer (System.Text.Json rejects both); pydantic's lax mode would
    # coerce them. Integral floats such as 42.0 stay accepted: JSON Schema's "integer" includes them.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


ZipCodeId = Annotated[int, BeforeValidator(_json_number), Field(ge=1, le=MAX_ID)]


class ApiModel(BaseModel):
    """Base of every wire model: camelCase aliases, snake_case names accepted too, built from ORM rows."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        from_attributes=True,
        frozen=True,
    )


class StateProvinceDto(ApiModel):
    """A state as the API shows it: ``{"id", "code", "name"}``."""

    id: int
    code: str
    name: str


class ZipCodeDto(ApiModel):
    """A zip code with its state: ``{"id", "code", "city", "stateProvinceId", "stateProvince"}``."""

    id: int
    code: str
    city: str
    state_province_id: int
    state_province: StateProvinceDto


class DealershipDto(ApiModel):
    """A dealership with its zip code and state, the body of ``GET /api/dealership/{id}``."""

    id: int
    name: str
    business_address: str
    business_zip_code_id: int
    unique_key: uuid.UUID
    business_zip_code: ZipCodeDto


class DealershipPage(ApiModel):
    """One page of dealerships plus the total row count (the route sends ``total`` as ``X-Total-Count``).

    Cached as a unit so that the array and the count can never disagree.
    """

    items: tuple[DealershipDto, ...]
    total: int


class CreateDealershipRequest(ApiModel):
    """Body of ``POST /api/dealership``; ``businessZipCodeId`` must name an existing zip code."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "Ford of Springfield", "businessAddress": "12 Main St", "businessZipCodeId": 1}]
        }
    )

    name: DealershipName
    business_address: BusinessAddress
    business_zip_code_id: ZipCodeId


class UpdateDealershipRequest(ApiModel):
    """Body of ``PUT /api/dealership/{id}``: the fields the .NET ``UpdateDealershipCommand`` changes."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Ford of Shelbyville", "businessAddress": "34 Elm St"}]}
    )

    name: DealershipName
    business_address: BusinessAddress


def validation_error(field: str, message: str, value: Any, *, location: str = "body") -> dict[str, Any]:
    """One entry of a 422 ``detail`` list shaped like FastAPI's own (``loc`` names the camelCase field)."""
    return {"type": "value_error", "loc": [location, field], "msg": message, "input": value}
