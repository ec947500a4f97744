"""JSON as .NET configuration reads it: ``//`` and ``/* */`` comments and trailing commas are allowed.

.NET's JSON configuration provider parses ``appsettings.json`` with ``CommentHandling.Skip`` and
``AllowTrailingCommas = true``, so real files (the seed's own troubleshooting snippets among them) carry comments
such as ``"SizeLimit": 512  // Reduce from 1024``. :func:`to_strict_json` turns such text into strict JSON for
:func:`json.loads`, touching nothing inside string literals and keeping every other character at its line and
column, so a genuinely malformed file is still reported where its author sees the mistake.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads", "to_strict_json"]

# JSON's own whitespace (RFC 8259); anything else outside a string is left for json.loads to judge.
_WHITESPACE = frozenset(" \t\n\r")
# A comma right after one of these is not a trailing comma after a value ("[,]", "{,}", "[1,,]"): .NET rejects
# those, so it is kept for json.loads to reject too.
_NO_VALUE_BEFORE = frozenset("{[,")


def to_strict_json(text: str) -> str:
    """``text`` with comments and trailing commas replaced by spaces; same length, same line breaks.

    Outside string literals: ``//`` up to (not including) the next ``\\n`` or ``\\r``, and ``/*`` through ``*/``
    (line breaks inside kept) become spaces, as does a comma followed (after whitespace and comments) by ``}`` or
    ``]`` when a value precedes it. String literals, escapes included, are copied unchanged, and so is anything
    else, valid or not. Character ``i`` of the result sits at the same line and column as character ``i`` of
    ``text``. Raises :class:`json.JSONDecodeError` ("Unterminated comment", positioned at its ``/*``) for a block
    comment that never ends.
    """
    out: list[str] = []
    last_significant = ""  # the last character outside strings and comments that is not whitespace
    pending_comma: int | None = None  # index in ``out`` of a comma that is trailing if ``}`` or ``]`` comes next
    length = len(text)
    i = 0
    while i < length:
        char = text[i]
        if char == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            last_significant, pending_comma = '"', None
            i = end
        elif char == "/" and text.startswith("//", i):
            end = _line_end(text, i)
            out.append(" " * (end - i))
            i = end
        elif char == "/" and text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close < 0:
                raise json.JSONDecodeError("Unterminated comment", text, i)
            end = close + 2
            out.append("".join(c if c in "\r\n" else " " for c in text[i:end]))
            i = end
        else:
            if char in _WHITESPACE:
                out.append(char)
            else:
                if char in "}]" and pending_comma is not None:
                    out[pending_comma] = " "
                pending_comma = len(out) if char == "," and last_significant not in _NO_VALUE_BEFORE else None
                out.append(char)
                last_significant = char
            i += 1
    return "".join(out)


def loads(text: str) -> Any:
    """Parse .NET-flavoured JSON (comments, trailing commas) like :func:`json.loads` parses strict JSON.

    Raises :class:`json.JSONDecodeError` whose ``doc``, ``pos``, ``lineno`` and ``colno`` refer to ``text``
    itself, for malformed JSON and for an unterminated block comment alike.
    """
    strict = to_strict_json(text)
    try:
        return json.loads(strict)
    except json.JSONDecodeError as exc:
        # Same positions by construction; re-raised so the error quotes the caller's text, not ours.
        raise json.JSONDecodeError(exc.msg, text, exc.pos) from None


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at ``text[start] == '"'`` (``len(text)`` if it never closes)."""
    i = start + 1
    length = len(text)
    while i < length:
        quote = text.find('"', i)
        backslash = text.find("\\", i, quote if quote >= 0 else length)
        if backslash >= 0:
            i = backslash + 2  # the escaped character, whatever it is, cannot close the string
        elif quote >= 0:
            return quote + 1
        else:
            break
    return length


def _line_end(text: str, start: int) -> int:
    """Index of the first ``\\n`` or ``\\r`` at or after ``start`` (``len(text)`` if none)."""
    ends = [found for found in (text.find("\n", start), text.find("\r", start)) if found >= 0]
    return min(ends, default=len(text))
