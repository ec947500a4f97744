"""The ``hybridcache`` argument parser: the commands, their options, help texts and examples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybridcache.settings import SECTION

_EXAMPLES = """\
examples:
  hybridcache --config src/dealership/appsettings.json stats
  hybridcache get Dealership:42
  hybridcache invalidate --prefix Dealership:Search
  hybridcache invalidate Dealership:42 Dealership:43 --tag dealerships
  hybridcache clear
  hybridcache config check appsettings.json
  TheTechLoopCache__Configuration=redis.internal:6379 hybridcache stats --json

configuration: --config FILE (default: ./appsettings.json if present, else only the environment), section
--section (default TheTechLoopCache), then TheTechLoopCache__Key__SubKey environment variables, as the service
reads them. Keys are logical keys (Dealership:42): the {ServiceName}:{CacheVersion}: namespace is added.

exit codes: 0 ok, 1 operation failed, 2 usage or configuration error
"""


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line descriptions; keeps multi-line texts (examples) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    """The ``hybridcache`` command line. Global options may also follow the command (``stats --config f``)."""
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="hybridcache",
        description="Operate hybridcache: live instance counters, entries, invalidation, configuration.",
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    _add_common(parser)
    # The same options after the command; SUPPRESS keeps an absent one from overwriting the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stats = commands.add_parser(
        "stats",
        parents=[common],
        formatter_class=formatter,
        help="counters of every running instance",
        description="Counters of every running instance of this service version, as each last reported them "
        "to Redis (every 5 s; an instance that stops reporting disappears after 15 s).",
        epilog="examples:\n  hybridcache stats\n  hybridcache stats --json | jq '.instances[].stats.handlerRuns'",
    )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    get = commands.add_parser(
        "get",
        parents=[common],
        formatter_class=formatter,
        help="show the L2 entry of a key: header, body, whether it is current",
        description="Show the L2 (Redis) entry of KEY: when it was created and expires, the generation epoch and "
        "counters it was computed under, its tags and body, and whether it is current against the generation "
        "table (a stale entry is never served). Exit 1 when there is no entry.",
        epilog="examples:\n  hybridcache get Dealership:42\n  hybridcache get 'Dealership:Search:ford:10' --json",
    )
    get.add_argument("key", metavar="KEY", help="logical key, e.g. Dealership:42")
    get.add_argument("--json", action="store_true", help="print JSON")

    invalidate = commands.add_parser(
        "invalidate",
        parents=[common],
        formatter_class=formatter,
        help="invalidate keys, prefixes or tags on every instance",
        description="Invalidate exact keys, prefixes (matching whole ':' segments) and tags, as one message: "
        "L2 entries are removed or made stale and every running instance drops them from its L1.",
        epilog="examples:\n  hybridcache invalidate Dealership:42\n"
        "  hybridcache invalidate --prefix Dealership:Search --prefix Dealership:List\n"
        "  hybridcache invalidate --tag dealerships",
    )
    invalidate.add_argument("keys", nargs="*", metavar="KEY", help="exact logical keys")
    invalidate.add_argument(
        "--prefix", action="append", default=[], metavar="P", help="a key prefix (repeatable), e.g. Dealership:Search"
    )
    invalidate.add_argument("--tag", action="append", default=[], metavar="T", help="a tag (repeatable)")

    commands.add_parser(
        "clear",
        parents=[common],
        formatter_class=formatter,
        help="invalidate every entry of this service version",
        description="Invalidate every entry under {ServiceName}:{CacheVersion}: on every running instance "
        "(O(1): one generation counter; old entries age out of Redis by their TTL).",
    )

    config = commands.add_parser(
        "config",
        parents=[common],
        help="configuration tools",
        description="Configuration tools.",
        formatter_class=formatter,
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser(
        "check",
        parents=[common],
        formatter_class=formatter,
        help="load the configuration and print the effective settings",
        description="Load the configuration as the service would (file, then environment) and print the "
        "effective settings, password masked. Exit 2 with a one-line error when it is invalid.",
        epilog="examples:\n  hybridcache config check appsettings.json\n"
        "  TheTechLoopCache__MemoryCache__SizeLimit=512 hybridcache config check --json\n"
        "  hybridcache config check --connect     # also check that Redis answers (exit 1 if not)",
    )
    check.add_argument("file", nargs="?", type=Path, metavar="FILE", help="configuration file (overrides --config)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--connect", action="store_true", help="also connect to Redis and PING it")
    return parser


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    def pick(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--config",
        type=Path,
        default=pick(None),
        metavar="FILE",
        help="appsettings JSON file (default: ./appsettings.json if present, else the environment only)",
    )
    parser.add_argument(
        "--section", default=pick(SECTION), help=f"configuration section, ':' nests (default: {SECTION})"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=pick(0), help="log the cache's INFO (-v) or DEBUG (-vv) lines"
    )
