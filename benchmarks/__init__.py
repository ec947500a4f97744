"""Benchmarks for hybridcache. ``python -m benchmarks`` runs every ``bench_*.py`` here; see docs/benchmarks.md."""
