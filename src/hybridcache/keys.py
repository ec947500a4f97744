"""Key building: namespacing, prefix ancestry and sanitizing user text. Pure functions, no I/O.

A *logical* key is what a caller passes (``Dealership:42``). The cache namespaces it as
``{ServiceName}:{CacheVersion}:{key}`` (the *full* key, used in L1 and in log lines) and Redis stores it under
``{InstanceName}{full key}``. Segments are separated by ``:``; prefix invalidation matches whole segments only.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

SEPARATOR = ":"
_GLOB_CHARACTERS = frozenset("*?[]")


def namespace(service_name: str, cache_version: str) -> str:
    """The prefix every full key of one service version starts with: ``company-svc:v1:``."""
    return f"{service_name}{SEPARATOR}{cache_version}{SEPARATOR}"


def ancestors(key: str) -> tuple[str, ...]:
    """Every prefix that covers ``key`` at segment boundaries, from the empty prefix to the key itself.

    ``ancestors("Dealership:Search:ford")`` is ``("", "Dealership", "Dealership:Search", "Dealership:Search:ford")``.
    The empty prefix is the whole namespace (what :meth:`HybridCache.clear` invalidates).
    """
    result = [""]
    start = 0
    while True:
        cut = key.find(SEPARATOR, start)
        if cut < 0:
            break
        if cut > 0:
            result.append(key[:cut])
        start = cut + 1
    if key:
        result.append(key)
    return tuple(result)


def normalize_prefix(prefix: str) -> str:
    """Validate a prefix given to ``remove_by_prefix`` and drop one trailing separator.

    Raises ``ValueError`` for glob characters: prefixes match whole segments, never patterns.
    """
    if any(ch in _GLOB_CHARACTERS for ch in prefix):
        raise ValueError(
            f"cache prefix {prefix!r} contains a glob character; prefixes match whole ':' segments "
            "(pass 'Dealership:Search', not 'Dealership:Search*')"
        )
    return prefix[:-1] if prefix.endswith(SEPARATOR) else prefix


def validate_key(key: str) -> str:
    """Reject keys that cannot be stored: empty, or with control characters (they corrupt log lines)."""
    if not key:
        raise ValueError("cache key must not be empty")
    if not key.isprintable():
        raise ValueError(f"cache key {key!r} contains control characters; pass user text through CacheKey.sanitize")
    return key


class CacheKey:
    """Helpers for putting user input inside a key."""

    DEFAULT_MAX_LENGTH = 64
    _HASH_MARK = "~"
    _HASH_HEX = 16

    @classmethod
    def sanitize(cls, term: str, max_length: int = DEFAULT_MAX_LENGTH) -> str:
        """Make ``term`` safe as one key segment, keeping distinct inputs distinct.

        Letters, digits and ``-._`` pass through; every other character (including ``:`` ``*`` ``?`` ``[`` ``]``,
        spaces, ``%``, ``~`` and control characters) is percent-encoded as UTF-8, which is injective. When the
        encoded form is longer than ``max_length``, it is cut and a ``~`` plus 16 hex digits of a BLAKE2b hash of
        the original term is appended, so the result is at most ``max_length`` long; ``~`` never appears
        otherwise, so a shortened key cannot equal an unshortened one.
        """
        minimum = cls._HASH_HEX + 2
        if max_length < minimum:
            raise ValueError(f"max_length must be at least {minimum}, got {max_length}")
        # surrogatepass: a lone surrogate (json.loads can produce one) is encoded, not an exception; still injective.
        encoded = quote(term.encode("utf-8", "surrogatepass"), safe="-._").replace(cls._HASH_MARK, "%7E")
        if len(encoded) <= max_length:
            return encoded
        digest = hashlib.blake2b(term.encode("utf-8", "surrogatepass"), digest_size=cls._HASH_HEX // 2).hexdigest()
        keep = max_length - cls._HASH_HEX - 1
        head = encoded[:keep]
        # Never cut a %XX escape in half: the dangling '%' would make the head ambiguous to a reader.
        tail_percent = head.rfind("%", max(0, keep - 2))
        if tail_percent >= 0:
            head = head[:tail_percent]
        return f"{head}{cls._HASH_MARK}{digest}"
