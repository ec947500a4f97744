"""``hybridcache stats``: the counters every running instance last reported, as a table or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TextIO

from hybridcache._redis.clients import RedisClients, RedisError
from hybridcache._redis.registry import InstanceKeys, LiveInstance, live_instances
from hybridcache.cli.durations import short_duration
from hybridcache.cli.exits import EXIT_OK, CommandFailed
from hybridcache.settings import CacheSettings

_COLUMNS = (
    ("l1Hits", "L1 HITS"),
    ("l2Hits", "L2 HITS"),
    ("misses", "MISSES"),
    ("handlerRuns", "HANDLER RUNS"),
    ("invalidationsPublished", "INV SENT"),
    ("invalidationsReceived", "INV RECV"),
    ("pendingInvalidations", "PENDING"),
)


async def run_stats(settings: CacheSettings, clients: RedisClients, as_json: bool, out: TextIO) -> int:
    try:
        instances = await live_instances(clients.background, settings)
    except (RedisError, OSError) as exc:
        raise CommandFailed(f"cannot read the instance reports: {exc.__class__.__name__}: {exc}") from exc
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
    # The outbox is one table shared by every instance: its figures are the same for all, so the total is the max.
    header += ["CIRCUIT", "REDIS", "BACKPLANE", "OUTBOX", "OUTBOX LAG"]
    rows = [header]
    for instance in instances:
        stats = instance.stats
        rows.append(
            [
                instance.instance_id,
                instance.host,
                str(instance.pid),
                short_duration(now - instance.started_at),
                f"{instance.age:.0f}s ago",
                *(str(stats.get(field, "-")) for field, _ in _COLUMNS),
                str(stats.get("circuit", "-")),
                str(stats.get("redis", "-")),
                str(stats.get("backplane", "-")),
                str(stats.get("outboxDepth", "-")),
                f"{float(stats.get('outboxLagSeconds', 0.0)):.1f}s",
            ]
        )
    totals = ["total", "", "", "", ""]
    totals += [str(sum(int(i.stats.get(field, 0)) for i in instances)) for field, _ in _COLUMNS]
    depth = max(int(i.stats.get("outboxDepth", 0)) for i in instances)
    lag = max(float(i.stats.get("outboxLagSeconds", 0.0)) for i in instances)
    rows.append([*totals, "", "", "", str(depth), f"{lag:.1f}s"])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    numeric = set(range(5, 5 + len(_COLUMNS))) | {2, len(header) - 2, len(header) - 1}
    lines = [
        "  ".join(
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)
