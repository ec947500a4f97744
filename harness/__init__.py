"""Private processes for tests and benchmarks: redis-server, Redis Cluster, Sentinel, throwaway PostgreSQL
databases and the dealership service, each on free loopback ports (never the system Redis on 6379).

Repository tooling shared by ``tests/`` and ``benchmarks/``; not part of the wheel. Everything that starts a
process is built on :class:`harness.process.ManagedProcess`.
"""
