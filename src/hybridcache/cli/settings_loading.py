"""The settings the CLI operates on, loaded as the service loads them (file, section, then environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from hybridcache.settings import SECTION, CacheSettings

DEFAULT_CONFIG: Final = Path("appsettings.json")


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
