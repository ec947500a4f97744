"""``python -m hybridcache.cli``: the same program as the ``hybridcache`` console script."""

import sys

from hybridcache.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
