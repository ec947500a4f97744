"""Persistence for CQRS handlers over SQLAlchemy 2 async: untracked reads, tracked writes, unit of work."""

from hybridcache.persistence.handlers import InUnitOfWork, in_unit_of_work
from hybridcache.persistence.repositories import ReadRepository, WriteRepository
from hybridcache.persistence.unit_of_work import AbstractUnitOfWork, UnitOfWork, create_session_factory

__all__ = [
    "AbstractUnitOfWork",
    "InUnitOfWork",
    "ReadRepository",
    "UnitOfWork",
    "WriteRepository",
    "create_session_factory",
    "in_unit_of_work",
]
