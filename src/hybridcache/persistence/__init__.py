"""Persistence for CQRS handlers over SQLAlchemy 2 async: untracked reads, tracked writes, unit of work, and the
transactional outbox that makes invalidations survive a crash."""

from hybridcache.persistence.handlers import InUnitOfWork, in_unit_of_work
from hybridcache.persistence.outbox import Outbox, OutboxRecord, create_outbox_table, outbox_table
from hybridcache.persistence.repositories import ReadRepository, WriteRepository
from hybridcache.persistence.unit_of_work import AbstractUnitOfWork, UnitOfWork, create_session_factory

__all__ = [
    "AbstractUnitOfWork",
    "InUnitOfWork",
    "Outbox",
    "OutboxRecord",
    "ReadRepository",
    "UnitOfWork",
    "WriteRepository",
    "create_outbox_table",
    "create_session_factory",
    "in_unit_of_work",
    "outbox_table",
]
