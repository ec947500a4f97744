"""``hybridcache``: operate the caches of a running service from the command line.

Reads the same configuration as the service (``appsettings.json``, section ``TheTechLoopCache``, then the
``TheTechLoopCache__…`` environment) and talks to the same Redis. Invalidations go through the cache's own path
(generation counters + the invalidation channel), so every running instance drops what was invalidated.

Exit codes: 0 success; 1 the operation failed (Redis unreachable, invalidation not published, no such entry);
2 usage or configuration error. Passwords are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import orjson
from pydantic.alias_generators import to_pascal
from redis.exceptions import RedisError

from hybridcache.cache import HybridCache
from hybridcache.clients import RedisClients, connect
from hybridcache.connection import mask_configuration
from hybridcache.errors import CacheConfigurationError
from hybridcache.generations import fields_for
from hybridcache.instances import InstanceKeys, LiveInstance, live_instances
from hybridcache.keys import namespace, normalize_prefix, validate_key
from hybridcache.redis import L2UnavailableError, RedisL2
from hybridcache.resilience import CircuitBreaker
from hybridcache.serialization import CorruptEntryError, decode_entry
from hybridcache.settings import SECTION, BackplaneSettings, CacheSettings, MemoryCacheSettings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "load_settings", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
DEFAULT_CONFIG: Final = Path("appsettings.json")
# An operator's one-off command may wait longer than the service's request path would.
_MIN_TIMEOUT: Final = 2.0

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


class _Failure(Exception):
    """The operation was attempted and failed (exit 1)."""


class _UsageError(Exception):
    """The command cannot run as given (exit 2)."""


# ---------------------------------------------------------------------------------------------------- parser


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


# ---------------------------------------------------------------------------------------------------- entry


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
    except (CacheConfigurationError, _UsageError) as exc:
        print(f"hybridcache: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as exc:
        print(f"hybridcache: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "config":
        return await _config_check(args, out)
    _check_arguments(args)  # before loading anything: a usage error is reported as such
    settings, _ = load_settings(args.config, args.section)
    async with _redis(settings, args.section, args.command) as clients:
        if args.command == "stats":
            return await _stats(settings, clients, args.json, out)
        if args.command == "get":
            return await _get(settings, clients, args.key, args.json, out)
        if args.command == "invalidate":
            return await _invalidate(settings, clients, args.keys, args.prefix, args.tag, out)
        return await _invalidate(settings, clients, [], [""], [], out)


def _check_arguments(args: argparse.Namespace) -> None:
    try:
        if args.command == "get":
            validate_key(args.key)
        elif args.command == "invalidate":
            if not (args.keys or args.prefix or args.tag):
                raise _UsageError("invalidate needs at least one KEY, --prefix or --tag")
            for key in args.keys:
                validate_key(key)
            for prefix in args.prefix:
                normalize_prefix(prefix)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


def load_settings(config: Path | None, section: str = SECTION) -> tuple[CacheSettings, str]:
    """The settings the service would load, and a description of their source.

    ``config`` ``None``: ``./appsettings.json`` when it exists, else defaults plus the environment. Raises
    :class:`CacheConfigurationError` (one line, no password) for a missing file or an invalid value.
    """
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is None:
        return CacheSettings.from_env(section=section), f"environment only (no {DEFAULT_CONFIG} here)"
    return CacheSettings.from_json(config, section=section), f"{config}, section {section}"


def _environment_overrides(section: str) -> list[str]:
    prefix = section.replace(":", "__").lower() + "__"
    return sorted(name for name in os.environ if name.lower().startswith(prefix))


@contextlib.asynccontextmanager
async def _redis(settings: CacheSettings, section: str, command: str) -> AsyncIterator[RedisClients]:
    endpoint = settings.redis_endpoint
    if endpoint is None:
        raise _UsageError(f"{section}:Configuration is not set: '{command}' needs the service's Redis")
    try:
        clients = await connect(
            endpoint,
            operation_timeout=max(endpoint.operation_timeout or 0.0, _MIN_TIMEOUT),
            connect_timeout=max(endpoint.connect_timeout or 0.0, _MIN_TIMEOUT),
            request_pool_size=4,
            protocol=settings.protocol,
        )
    except (RedisError, OSError, ValueError) as exc:
        raise _Failure(f"cannot connect to Redis at {endpoint}: {exc.__class__.__name__}: {exc}") from exc
    try:
        try:
            await clients.request.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise _Failure(f"cannot reach Redis at {endpoint}: {exc.__class__.__name__}: {exc}") from exc
        yield clients
    finally:
        await clients.aclose()


# ---------------------------------------------------------------------------------------------------- stats

_COLUMNS = (
    ("l1Hits", "L1 HITS"),
    ("l2Hits", "L2 HITS"),
    ("misses", "MISSES"),
    ("handlerRuns", "HANDLER RUNS"),
    ("invalidationsPublished", "INV SENT"),
    ("invalidationsReceived", "INV RECV"),
    ("pendingInvalidations", "PENDING"),
)


async def _stats(settings: CacheSettings, clients: RedisClients, as_json: bool, out: TextIO) -> int:
    try:
        instances = await live_instances(clients.background, settings)
    except (RedisError, OSError) as exc:
        raise _Failure(f"cannot read the instance reports: {exc.__class__.__name__}: {exc}") from exc
    name = InstanceKeys.for_settings(settings).namespace
    if as_json:
        document = {"namespace": name, "instances": [instance.as_dict() for instance in instances]}
        print(json.dumps(document, indent=2), file=out)
        return EXIT_OK
    if not instances:
        print(f"no running instance of {name} has reported in the last 15 s", file=out)
        return EXIT_OK
    print(f"{len(instances)} running instance(s) of {name}", file=out)
    print(_table(instances), file=out)
    return EXIT_OK


def _table(instances: Sequence[LiveInstance]) -> str:
    now = time.time()
    header = ["INSTANCE", "HOST", "PID", "UP", "SEEN", *(title for _, title in _COLUMNS)]
    header += ["CIRCUIT", "REDIS", "BACKPLANE"]
    rows = [header]
    for instance in instances:
        stats = instance.stats
        rows.append(
            [
                instance.instance_id,
                instance.host,
                str(instance.pid),
                _duration(now - instance.started_at),
                f"{instance.age:.0f}s ago",
                *(str(stats.get(field, "-")) for field, _ in _COLUMNS),
                str(stats.get("circuit", "-")),
                str(stats.get("redis", "-")),
                str(stats.get("backplane", "-")),
            ]
        )
    totals = ["total", "", "", "", ""]
    totals += [str(sum(int(i.stats.get(field, 0)) for i in instances)) for field, _ in _COLUMNS]
    rows.append([*totals, "", "", ""])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    numeric = set(range(5, 5 + len(_COLUMNS))) | {2}
    lines = [
        "  ".join(
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# ---------------------------------------------------------------------------------------------------- get


async def _get(settings: CacheSettings, clients: RedisClients, key: str, as_json: bool, out: TextIO) -> int:
    name = namespace(settings.service_name, settings.cache_version)
    l2 = RedisL2(
        clients.request,
        instance_name=settings.instance_name,
        namespace=name,
        breaker=CircuitBreaker(enabled=False),
        cluster=clients.is_cluster,
    )
    full_key = name + key
    try:
        raw = await l2.get(full_key)
        ttl_ms = await clients.request.pttl(l2.redis_key(full_key))
    except L2UnavailableError as exc:
        raise _Failure(str(exc)) from exc
    if raw is None:
        raise _Failure(f"no entry for {key!r} (Redis key {l2.redis_key(full_key)!r})")
    try:
        header, body = decode_entry(raw)
    except CorruptEntryError as exc:
        raise _Failure(f"the entry under {l2.redis_key(full_key)!r} is not a hybridcache entry: {exc}") from exc
    fields = fields_for(full_key, len(name), header.tags)
    try:
        epoch, counters = await l2.current_generations(fields)
    except L2UnavailableError as exc:
        raise _Failure(str(exc)) from exc
    reasons = []
    if epoch != header.epoch:
        reasons.append(f"generation epoch changed ({header.epoch} → {epoch or 'none'}): Redis lost or replaced it")
    else:
        for field, generation in sorted(counters.items()):
            recorded = header.generations.get(field, 0)
            if generation > recorded:
                reasons.append(f"{_describe(field)} invalidated since (generation {recorded} → {generation})")
    now = time.time()
    if reasons:
        status = "stale: never served"
    elif now >= header.expires:
        status = "expired: kept only as a fail-safe fallback"
    else:
        status = "current"
    value: Any = None
    if body is not None:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = body[:2000].decode("utf-8", "replace")
    if as_json:
        document = {
            "key": key,
            "redisKey": l2.redis_key(full_key),
            "status": status.split(":")[0],
            "current": not reasons and now < header.expires,
            "reasons": reasons,
            "created": header.created,
            "expires": header.expires,
            "retainUntil": header.retain,
            "ttlMilliseconds": ttl_ms,
            "epoch": header.epoch,
            "generations": dict(header.generations),
            "tags": list(header.tags),
            "isNone": header.is_none,
            "value": value,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    generations = ", ".join(f"{f}={g}" for f, g in sorted(header.generations.items())) or "-"
    lines = [
        f"key:          {key}",
        f"redis key:    {l2.redis_key(full_key)}",
        f"status:       {status}",
        *(f"              - {reason}" for reason in reasons),
        f"created:      {_when(header.created, now)}",
        f"expires:      {_when(header.expires, now)}",
    ]
    if header.retain > header.expires:
        lines.append(f"fail-safe:    until {_when(header.retain, now)}")
    lines += [
        f"redis ttl:    {ttl_ms / 1000:.1f}s" if ttl_ms >= 0 else "redis ttl:    none",
        f"epoch:        {header.epoch}",
        f"generations:  {generations}",
        f"tags:         {', '.join(header.tags) or '-'}",
        "value:        None (a cached absence)"
        if header.is_none
        else "value:\n" + json.dumps(value, indent=2, ensure_ascii=False),
    ]
    print("\n".join(lines), file=out)
    return EXIT_OK


def _describe(field: str) -> str:
    kind, _, what = field.partition(":")
    if kind == "t":
        return f"tag {what!r}"
    return f"prefix {what!r}" if what else "the whole namespace (clear)"


def _when(timestamp: float, now: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    delta = timestamp - now
    return f"{moment} (in {_duration(delta)})" if delta >= 0 else f"{moment} ({_duration(-delta)} ago)"


# ---------------------------------------------------------------------------------------------------- invalidate


async def _invalidate(
    settings: CacheSettings,
    clients: RedisClients,
    keys: Sequence[str],
    prefixes: Sequence[str],
    tags: Sequence[str],
    out: TextIO,
) -> int:
    # The publishing cache needs no L1, no subscription and no instance report: it only runs the invalidation.
    quiet = settings.model_copy(
        update={
            "enabled": True,
            "backplane": BackplaneSettings(enabled=False),
            "memory_cache": MemoryCacheSettings(enabled=False),
        }
    )
    cache = HybridCache(quiet, redis=clients.request, register_instance=False)
    await cache.start()
    try:
        await cache.invalidate(keys=keys, prefixes=prefixes, tags=tags)
        stats = cache.stats()
    finally:
        await cache.close()
    name = namespace(settings.service_name, settings.cache_version)
    if stats.invalidation_failures or stats.pending_invalidations or not stats.invalidations_published:
        raise _Failure(f"the invalidation was not published to {name} (Redis error; run with -v for details)")
    what = [f"key {k!r}" for k in keys] + [f"prefix {p!r}" if p else "everything" for p in prefixes]
    what += [f"tag {t!r}" for t in tags]
    print(f"invalidated {', '.join(what)} in {name} on every running instance", file=out)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- config


async def _config_check(args: argparse.Namespace, out: TextIO) -> int:
    settings, source = load_settings(args.file or args.config, args.section)
    environment = _environment_overrides(args.section)
    name = namespace(settings.service_name, settings.cache_version)
    endpoint = settings.redis_endpoint
    effective = _effective(settings)
    if args.json:
        document = {
            "source": source,
            "environment": environment,
            "namespace": name,
            "redis": None if endpoint is None else str(endpoint),
            "settings": effective,
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        lines = [
            f"configuration is valid ({source})",
            f"environment:  {', '.join(environment) or 'no overrides'}",
            f"namespace:    {name}   (Redis keys: {settings.instance_name}{name}<key>)",
            f"redis:        {endpoint if endpoint is not None else 'none: L1 only'}",
            "",
            *_flatten(args.section, effective),
        ]
        print("\n".join(lines), file=out)
    if args.connect:
        async with _redis(settings, args.section, "config check --connect") as clients:
            print(f"redis answers ({clients.topology})", file=out)
    return EXIT_OK


def _effective(settings: Any) -> dict[str, Any]:
    """The settings as a nested dict of PascalCase keys, the connection string's password masked."""
    result: dict[str, Any] = {}
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if hasattr(type(value), "model_fields"):
            value = _effective(value)
        elif field == "configuration" and isinstance(value, str):
            value = mask_configuration(value)
        result[to_pascal(field)] = value
    return result


def _flatten(path: str, values: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines += _flatten(f"{path}:{key}", value)
        else:
            lines.append(f"{path}:{key} = {json.dumps(value)}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
