"""The Redis adapters: the only package that imports redis-py (clients, L2, scripts, backplane, lease, registry)."""
