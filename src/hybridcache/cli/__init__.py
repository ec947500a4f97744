"""``hybridcache``: operate the caches of a running service from the command line.

Reads the same configuration as the service (``appsettings.json``, section ``TheTechLoopCache``, then the
``TheTechLoopCache__…`` environment) and talks to the same Redis. Invalidations go through the cache's own path
(generation counters + the invalidation channel), so every running instance drops what was invalidated.

Exit codes: 0 success; 1 the operation failed (Redis unreachable, invalidation not published, no such entry);
2 usage or configuration error. Passwords are never printed.
"""

from hybridcache.cli.app import main
from hybridcache.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from hybridcache.cli.parser import build_parser
from hybridcache.cli.settings_loading import load_settings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "load_settings", "main"]
