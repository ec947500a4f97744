"""Short human-readable durations (``90s``, ``5m``, ``3h``, ``2d``) for the CLI's tables and entries."""

from __future__ import annotations


def short_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
