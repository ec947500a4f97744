"""hybridcache: a two-level cache (L1 memory, L2 Redis) for CQRS pipelines."""
