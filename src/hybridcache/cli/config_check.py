"""``hybridcache config check``: load the configuration as the service would and print the effective settings."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from pydantic.alias_generators import to_pascal

from hybridcache.cli.exits import EXIT_OK
from hybridcache.cli.redis_session import redis_session
from hybridcache.cli.settings_loading import load_settings
from hybridcache.connection import mask_configuration
from hybridcache.keys import namespace


async def run_config_check(args: argparse.Namespace, out: TextIO) -> int:
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
        async with redis_session(settings, args.section, "config check --connect") as clients:
            print(f"redis answers ({clients.topology})", file=out)
    return EXIT_OK


def _environment_overrides(section: str) -> list[str]:
    prefix = section.replace(":", "__").lower() + "__"
    return sorted(name for name in os.environ if name.lower().startswith(prefix))


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
