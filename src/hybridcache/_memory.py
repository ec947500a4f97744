"""L1: a bounded in-process store with per-entry expiry and SIEVE eviction.

SIEVE (Zhang et al., NSDI '24) keeps entries in insertion order and a *visited* bit per entry. A hit only sets the
bit (no list reordering: one attribute written where LRU relinks a node), and eviction moves a hand from the oldest
entry towards the newest, clearing bits until it finds an unvisited entry. On skewed (Zipf) traffic it keeps
popular entries better than LRU; ``benchmarks/bench_hit_rates.py`` measures both (``l1_policy.json``).

Entries are evicted when the store is full and dropped lazily when found expired; no background thread.
All operations are O(1) (eviction is amortised O(1)). Not thread-safe: it belongs to one event loop, and every
method but :meth:`MemoryStore.find` must be called from that loop's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class L1Entry:
    """One cached value with what the cache needs to decide whether it may still be served."""

    __slots__ = (
        "checked",
        "created",
        "epoch",
        "expires_at",
        "fields",
        "generations",
        "key",
        "newer",
        "older",
        "refresh_at",
        "retain_until",
        "value",
        "visited",
    )

    def __init__(
        self,
        key: str,
        value: Any,
        expires_at: float,
        created: float,
        epoch: str,
        generations: Mapping[str, int],
        fields: tuple[str, ...],
        checked: int,
        refresh_at: float = float("inf"),
        retain_until: float = 0.0,
    ) -> None:
        self.key = key
        self.value = value
        self.expires_at = expires_at  # monotonic clock
        self.created = created  # monotonic clock
        self.epoch = epoch  # the generation epoch the value was computed under
        self.generations = generations  # generation per field when the value was computed
        self.fields = fields  # the generation fields (prefixes, tags) the entry depends on
        self.checked = checked  # the generation-table version the entry was last validated against
        self.refresh_at = refresh_at  # monotonic time after which a hit starts a background refresh
        self.retain_until = retain_until  # kept (not served) until then, as a fail-safe fallback
        self.visited = False
        self.newer: L1Entry | None = None
        self.older: L1Entry | None = None


class MemoryStore:
    """A size-bounded map of full key → :class:`L1Entry`."""

    def __init__(self, size_limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if size_limit < 1:
            raise ValueError(f"size_limit must be at least 1, got {size_limit}")
        self.size_limit = size_limit
        self._clock = clock
        self._entries: dict[str, L1Entry] = {}
        self._newest: L1Entry | None = None
        self._oldest: L1Entry | None = None
        self._hand: L1Entry | None = None
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[L1Entry]:
        return iter(list(self._entries.values()))

    def get(self, key: str, now: float) -> L1Entry | None:
        """The live entry for ``key``, marking it visited.

        An expired entry is reported absent; it is dropped unless it is retained as a fail-safe fallback
        (``retain_until``), in which case :meth:`peek` still finds it.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            if entry.retain_until <= now:
                self._unlink(entry)
            return None
        entry.visited = True
        return entry

    def find(self, key: str, now: float) -> L1Entry | None:
        """The entry for ``key`` if it has not expired, marking it visited; safe from any thread.

        The read path of other threads (``hybridcache.sync``), while the owning loop's thread may be inserting,
        evicting and removing entries: it never changes the map or the list, and leaves expired entries for
        :meth:`get` (on the owning thread) to drop. Its one lookup, ``dict.get``, is atomic under the GIL
        (string keys: no Python ``__eq__`` or ``__hash__`` runs inside it), so it sees the map before or after
        any concurrent change, never in between; an entry, once built, changes only in ``checked``,
        ``refresh_at``, ``visited`` and its list links, each a single attribute store. The one write here, the
        ``visited`` bit, may race with the eviction hand clearing it: either outcome only decides which entry is
        evicted next. (CPython with the GIL: the free-threaded build would need a lock here.)
        """
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            return None
        entry.visited = True
        return entry

    def peek(self, key: str) -> L1Entry | None:
        """The entry for ``key`` even if expired, without marking it visited."""
        return self._entries.get(key)

    def put(self, entry: L1Entry) -> None:
        """Insert or replace ``entry``; evicts one entry when the store is full."""
        existing = self._entries.get(entry.key)
        if existing is not None:
            self._unlink(existing)
        elif len(self._entries) >= self.size_limit:
            self._evict()
        self._entries[entry.key] = entry
        entry.older = self._newest
        entry.newer = None
        if self._newest is not None:
            self._newest.newer = entry
        self._newest = entry
        if self._oldest is None:
            self._oldest = entry

    def remove(self, key: str) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._unlink(entry)
        return True

    def remove_where(self, predicate: Callable[[L1Entry], bool]) -> int:
        """Remove every entry matching ``predicate``; O(size). Only for rare, local-only invalidation paths."""
        doomed = [entry for entry in self._entries.values() if predicate(entry)]
        for entry in doomed:
            self._unlink(entry)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self._newest = self._oldest = self._hand = None

    def _evict(self) -> None:
        now = self._clock()
        node = self._hand or self._oldest
        # Each pass clears a visited bit, so this ends within two sweeps of the list.
        while node is not None and node.visited and max(node.expires_at, node.retain_until) > now:
            node.visited = False
            node = node.newer or self._oldest
        if node is None:
            return
        self._hand = node.newer
        self._unlink(node)
        self.evictions += 1

    def _unlink(self, entry: L1Entry) -> None:
        del self._entries[entry.key]
        if self._hand is entry:
            self._hand = entry.newer
        if entry.newer is not None:
            entry.newer.older = entry.older
        else:
            self._newest = entry.older
        if entry.older is not None:
            entry.older.newer = entry.newer
        else:
            self._oldest = entry.newer
        entry.newer = entry.older = None
