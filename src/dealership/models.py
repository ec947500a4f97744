"""Persistence model of the dealership service (SQLAlchemy 2 declarative, async-safe).

Relationships are declared ``lazy="raise"``: under asyncio an implicit lazy load cannot run, so every query
that needs a zip code or a state must ask for it explicitly (``selectinload``/``joinedload``), and a forgotten
eager load fails loudly in tests instead of silently issuing N+1 queries.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Dealership", "StateProvince", "ZipCode"]


class Base(DeclarativeBase):
    """Declarative base whose metadata holds every table of the service."""


class StateProvince(Base):
    """A US state (or district): two-letter ``code`` and full ``name``."""

    __tablename__ = "state_province"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(2), unique=True)
    name: Mapped[str] = mapped_column(String(100))


class ZipCode(Base):
    """A postal code with its city, belonging to one :class:`StateProvince`."""

    __tablename__ = "zip_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(10), unique=True)
    city: Mapped[str] = mapped_column(String(100))
    state_province_id: Mapped[int] = mapped_column(ForeignKey("state_province.id"), index=True)

    state_province: Mapped[StateProvince] = relationship(lazy="raise")


class Dealership(Base):
    """A dealership: the aggregate the REST API reads and writes.

    ``unique_key`` is a GUID assigned at creation (the .NET model's ``UniqueKey``) and never changes.
    """

    __tablename__ = "dealership"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    business_address: Mapped[str] = mapped_column(String(500))
    business_zip_code_id: Mapped[int] = mapped_column(ForeignKey("zip_code.id"), index=True)
    unique_key: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)

    business_zip_code: Mapped[ZipCode] = relationship(lazy="raise")
