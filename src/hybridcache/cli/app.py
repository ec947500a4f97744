"""``main``: parse the command line, run the chosen command, turn its outcome into an exit code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from hybridcache.cli.config_check import run_config_check
from hybridcache.cli.exits import EXIT_FAILED, EXIT_USAGE, CommandFailed, UsageError
from hybridcache.cli.get import run_get
from hybridcache.cli.invalidate import run_invalidate
from hybridcache.cli.parser import build_parser
from hybridcache.cli.redis_session import redis_session
from hybridcache.cli.settings_loading import load_settings
from hybridcache.cli.stats import run_stats
from hybridcache.errors import CacheConfigurationError
from hybridcache.keys import normalize_prefix, validate_key


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed by argparse)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(_run(args, sys.stdout))
    except (CacheConfigurationError, UsageError) as exc:
        print(f"hybridcache: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"hybridcache: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "config":
        return await run_config_check(args, out)
    _check_arguments(args)  # before loading anything: a usage error is reported as such
    settings, _ = load_settings(args.config, args.section)
    async with redis_session(settings, args.section, args.command) as clients:
        if args.command == "stats":
            return await run_stats(settings, clients, args.json, out)
        if args.command == "get":
            return await run_get(settings, clients, args.key, args.json, out)
        if args.command == "invalidate":
            return await run_invalidate(settings, clients, args.keys, args.prefix, args.tag, out)
        return await run_invalidate(settings, clients, [], [""], [], out)


def _check_arguments(args: argparse.Namespace) -> None:
    try:
        if args.command == "get":
            validate_key(args.key)
        elif args.command == "invalidate":
            if not (args.keys or args.prefix or args.tag):
                raise UsageError("invalidate needs at least one KEY, --prefix or --tag")
            for key in args.keys:
                validate_key(key)
            for prefix in args.prefix:
                normalize_prefix(prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
