"""Test-only support: deadline-based waiting, and each Redis topology seen as one endpoint (``redis_topology``).
The private processes (redis-server, Cluster, Sentinel, PostgreSQL databases, the service) live in the top-level
``harness`` package, shared with the benchmarks."""

from tests.support.waiting import wait_until, wait_until_sync

__all__ = ["wait_until", "wait_until_sync"]
