"""Test support: private redis-server processes, throwaway PostgreSQL databases, deadline-based waiting."""

from tests.support.postgres import PostgresUnavailableError, postgres_database
from tests.support.redis_server import RedisServer, RedisServerError, find_free_port
from tests.support.waiting import wait_until, wait_until_sync

__all__ = [
    "PostgresUnavailableError",
    "RedisServer",
    "RedisServerError",
    "find_free_port",
    "postgres_database",
    "wait_until",
    "wait_until_sync",
]
