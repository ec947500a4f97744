"""Deterministic demo data: the US states, a few hundred zip codes and N dealerships.

The same ``random_seed`` and ``count`` always give the same rows in the same order, so on a fresh database
``GET /api/dealership/42`` names the same dealership on every machine. :func:`seed_database` inserts only
into empty tables; the caller provides the transaction and the cross-process lock
(see ``database.prepare_database``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from dealership.models import Dealership, StateProvince, ZipCode

__all__ = ["DEFAULT_RANDOM_SEED", "DEFAULT_SEED_COUNT", "SeedData", "generate", "seed_database"]

DEFAULT_SEED_COUNT = 2000
DEFAULT_RANDOM_SEED = 20_240_521
ZIP_CODES_PER_STATE = 6

# (code, name, a real three-digit zip prefix of the state)
_STATES: tuple[tuple[str, str, str], ...] = (
    ("AL", "Alabama", "350"), ("AK", "Alaska", "995"), ("AZ", "Arizona", "850"), ("AR", "Arkansas", "716"),
    ("CA", "California", "900"), ("CO", "Colorado", "800"), ("CT", "Connecticut", "060"),
    ("DE", "Delaware", "197"), ("DC", "District of Columbia", "200"), ("FL", "Florida", "320"),
    ("GA", "Georgia", "300"), ("HI", "Hawaii", "967"), ("ID", "Idaho", "832"), ("IL", "Illinois", "600"),
    ("IN", "Indiana", "460"), ("IA", "Iowa", "500"), ("KS", "Kansas", "660"), ("KY", "Kentucky", "400"),
    ("LA", "Louisiana", "700"), ("ME", "Maine", "039"), ("MD", "Maryland", "206"),
    ("MA", "Massachusetts", "010"), ("MI", "Michigan", "480"), ("MN", "Minnesota", "550"),
    ("MS", "Mississippi", "386"), ("MO", "Missouri", "630"), ("MT", "Montana", "590"),
    ("NE", "Nebraska", "680"), ("NV", "Nevada", "889"), ("NH", "New Hampshire", "030"),
    ("NJ", "New Jersey", "070"), ("NM", "New Mexico", "870"), ("NY", "New York", "100"),
    ("NC", "North Carolina", "270"), ("ND", "North Dakota", "580"), ("OH", "Ohio", "430"),
    ("OK", "Oklahoma", "730"), ("OR", "Oregon", "970"), ("PA", "Pennsylvania", "150"),
    ("RI", "Rhode Island", "028"), ("SC", "South Carolina", "290"), ("SD", "South Dakota", "570"),
    ("TN", "Tennessee", "370"), ("TX", "Texas", "750"), ("UT", "Utah", "840"), ("VT", "Vermont", "050"),
    ("VA", "Virginia", "220"), ("WA", "Washington", "980"), ("WV", "West Virginia", "247"),
    ("WI", "Wisconsin", "530"), ("WY", "Wyoming", "820"),
)  # fmt: skip

_CITIES = (
    "Springfield", "Franklin", "Greenville", "Bristol", "Clinton", "Fairview", "Salem", "Madison",
    "Georgetown", "Arlington", "Ashland", "Burlington", "Manchester", "Marion", "Oxford", "Clayton",
    "Jackson", "Milton", "Auburn", "Dayton", "Lexington", "Milford", "Riverside", "Cleveland", "Dover",
    "Hudson", "Kingston", "Mount Vernon", "Newport", "Oakland", "Centerville", "Winchester", "Jamestown",
    "Lebanon", "Troy", "Hamilton", "Columbia", "Florence", "Monroe", "Princeton", "Richmond", "Shelbyville",
    "Chester", "Warren", "Plymouth", "Lancaster", "Aurora", "Bloomington", "Glendale", "Hillsboro",
)  # fmt: skip

_BRANDS = (
    "Ford", "Toyota", "Honda", "Chevrolet", "Nissan", "Hyundai", "Kia", "Subaru", "Mazda", "Volkswagen",
    "BMW", "Mercedes-Benz", "Audi", "Lexus", "Jeep", "Ram", "Dodge", "Chrysler", "Buick", "GMC", "Cadillac",
    "Acura", "Infiniti", "Volvo", "Mitsubishi", "Lincoln",
)  # fmt: skip

_SURNAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Martin", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Allen",
    "Young", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Carter",
)  # fmt: skip

_STREETS = (
    "Main", "Oak", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Pine", "Sunset",
    "Highland", "Jefferson", "Ridge", "Church", "Market", "Commerce", "Industrial", "Motor", "Auto Center",
)  # fmt: skip
_STREET_KINDS = ("St", "Ave", "Blvd", "Rd", "Dr", "Pkwy", "Hwy", "Way")

_NAME_TEMPLATES = (
    "{brand} of {city}",
    "{city} {brand}",
    "{surname} {brand}",
    "{surname} {brand} of {city}",
    "{city} Auto Mall",
    "{surname} Motors",
    "{city} {brand} Center",
)


@dataclass(frozen=True, slots=True)
class SeedData:
    """Rows to insert, as column dictionaries; foreign keys are given by the parent's position (0-based)."""

    states: Sequence[dict[str, str]]
    zip_codes: Sequence[tuple[int, dict[str, str]]]  # (state index, columns)
    dealerships: Sequence[tuple[int, dict[str, object]]]  # (zip code index, columns)


def generate(count: int = DEFAULT_SEED_COUNT, random_seed: int = DEFAULT_RANDOM_SEED) -> SeedData:
    """Build the demo rows; pure and deterministic for a given ``(count, random_seed)``."""
    if count < 0:
        raise ValueError(f"seed count must be >= 0, got {count}")
    rng = random.Random(random_seed)
    states = [{"code": code, "name": name} for code, name, _ in _STATES]

    zip_codes: list[tuple[int, dict[str, str]]] = []
    zip_cities: list[str] = []
    for state_index, (_, _, prefix) in enumerate(_STATES):
        suffixes = rng.sample(range(100), ZIP_CODES_PER_STATE)
        cities = rng.sample(_CITIES, ZIP_CODES_PER_STATE)
        for suffix, city in zip(sorted(suffixes), cities, strict=True):
            zip_codes.append((state_index, {"code": f"{prefix}{suffix:02d}", "city": city}))
            zip_cities.append(city)

    dealerships: list[tuple[int, dict[str, object]]] = []
    for _ in range(count):
        zip_index = rng.randrange(len(zip_codes))
        name = rng.choice(_NAME_TEMPLATES).format(
            brand=rng.choice(_BRANDS), city=zip_cities[zip_index], surname=rng.choice(_SURNAMES)
        )
        address = f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}"
        unique_key = uuid.UUID(int=rng.getrandbits(128), version=4)
        dealerships.append((zip_index, {"name": name, "business_address": address, "unique_key": unique_key}))
    return SeedData(states=states, zip_codes=zip_codes, dealerships=dealerships)


async def seed_database(
    connection: AsyncConnection, count: int = DEFAULT_SEED_COUNT, random_seed: int = DEFAULT_RANDOM_SEED
) -> bool:
    """Insert the demo rows when the ``state_province`` table is empty; return whether anything was inserted.

    Runs inside the caller's transaction. Parents are inserted first and their generated ids read back by
    their natural keys, so the rows link correctly whatever ids the database hands out.
    """
    existing = await connection.scalar(select(func.count()).select_from(StateProvince))
    if existing:
        return False
    data = generate(count, random_seed)

    await connection.execute(insert(StateProvince), list(data.states))
    state_ids = dict((await connection.execute(select(StateProvince.code, StateProvince.id))).all())
    state_codes = [state["code"] for state in data.states]
    await connection.execute(
        insert(ZipCode),
        [{**columns, "state_province_id": state_ids[state_codes[index]]} for index, columns in data.zip_codes],
    )
    zip_ids = dict((await connection.execute(select(ZipCode.code, ZipCode.id))).all())
    zip_codes = [columns["code"] for _, columns in data.zip_codes]
    if data.dealerships:
        await connection.execute(
            insert(Dealership),
            [{**columns, "business_zip_code_id": zip_ids[zip_codes[index]]} for index, columns in data.dealerships],
        )
    return True
