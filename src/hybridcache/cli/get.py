"""``hybridcache get``: one key's L2 entry (header, body) and whether it is current, as text or JSON."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from hybridcache._generations import FIRST_TIMESTAMP, FLOOR_FIELD, fields_for
from hybridcache._redis.clients import RedisClients
from hybridcache._redis.l2 import L2UnavailableError, RedisL2
from hybridcache._resilience import CircuitBreaker
from hybridcache._serialization import CorruptEntryError, decode_entry
from hybridcache.cli.durations import short_duration
from hybridcache.cli.exits import EXIT_OK, CommandFailed
from hybridcache.keys import namespace
from hybridcache.settings import CacheSettings


async def run_get(settings: CacheSettings, clients: RedisClients, key: str, as_json: bool, out: TextIO) -> int:
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
        raise CommandFailed(str(exc)) from exc
    if raw is None:
        raise CommandFailed(f"no entry for {key!r} (Redis key {l2.redis_key(full_key)!r})")
    try:
        header, body = decode_entry(raw)
    except CorruptEntryError as exc:
        raise CommandFailed(f"the entry under {l2.redis_key(full_key)!r} is not a hybridcache entry: {exc}") from exc
    fields = fields_for(full_key, len(name), header.tags)
    try:
        epoch, counters = await l2.current_generations(fields)
    except L2UnavailableError as exc:
        raise CommandFailed(str(exc)) from exc
    reasons = []
    if epoch != header.epoch:
        reasons.append(f"generation epoch changed ({header.epoch} → {epoch or 'none'}): Redis lost or replaced it")
    else:
        floor = header.generations.get(FLOOR_FIELD, 0)
        for field, generation in sorted(counters.items()):
            if generation > header.generations.get(field, floor):
                reasons.append(f"{_describe(field)} invalidated {_bump_time(generation)}, after the entry was computed")
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


def _bump_time(generation: int) -> str:
    """A generation as a reader wants it: the server time of the bump (older releases counted: generation N)."""
    if generation < FIRST_TIMESTAMP:
        return f"(generation {generation})"
    moment = datetime.fromtimestamp(generation / 1000, UTC)
    return "at " + moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _describe(field: str) -> str:
    kind, _, what = field.partition(":")
    if kind == "t":
        return f"tag {what!r}"
    return f"prefix {what!r}" if what else "the whole namespace (clear)"


def _when(timestamp: float, now: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    delta = timestamp - now
    return f"{moment} (in {short_duration(delta)})" if delta >= 0 else f"{moment} ({short_duration(-delta)} ago)"
