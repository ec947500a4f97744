"""``python -m dealership``: run the service with uvicorn.

Flags override the environment (``DATABASE_URL``, ``SEED_COUNT``, ``TheTechLoopCache__…``), which overrides
``appsettings.json`` beside the package. The defaults give a SQLite file under ``./var`` seeded on first start
and the Redis on 127.0.0.1:6379 if one answers (the service runs without it).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from dealership.app import create_app
from dealership.bootstrap import APPSETTINGS_PATH, ServiceConfig
from dealership.database import DEFAULT_DATABASE_URL
from dealership.seed import DEFAULT_SEED_COUNT

__all__ = ["build_parser", "main"]


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dealership``."""
    parser = argparse.ArgumentParser(prog="python -m dealership", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db "
        "(default: $DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--seed-count",
        type=_non_negative,
        default=_non_negative(os.environ.get("SEED_COUNT", str(DEFAULT_SEED_COUNT))),
        help="dealerships to create when the database is empty (default: $SEED_COUNT or %(default)s)",
    )
    parser.add_argument(
        "--appsettings",
        type=Path,
        default=APPSETTINGS_PATH,
        help="cache configuration file, section TheTechLoopCache (default: the one beside the package)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv``, configure logging and serve until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    config = ServiceConfig(
        database_url=args.database_url, seed_count=args.seed_count, appsettings_path=args.appsettings
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,
        access_log=args.access_log,
    )


if __name__ == "__main__":
    main()
