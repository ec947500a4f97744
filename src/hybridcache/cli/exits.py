"""The CLI's exit codes, and the two exceptions a command raises to end with exit 1 or 2."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class CommandFailed(Exception):
    """The operation was attempted and failed (exit 1)."""


class UsageError(Exception):
    """The command cannot run as given (exit 2)."""
