"""Generation counters: how prefix and tag invalidation stays O(1) and how a stale set is detected.

Every prefix (at ``:`` boundaries) and every tag has a generation counter, a *field* named ``p:<prefix>`` or
``t:<tag>``. Invalidating a prefix or tag increments its counter; nothing is scanned or deleted. Each entry
records the generations of the fields it depends on (its key's ancestors and its tags) when its value was
*computed*, and is served only while none of those counters has moved past what it recorded. The counters live
in a Redis hash (authoritative, shared by all instances) together with a random *epoch*; each process mirrors
them in a :class:`GenerationTable`, kept current by the invalidation messages, so validating an entry is a few
dict lookups and no I/O. If Redis loses the hash (restart without persistence), a new epoch is drawn and every
entry stamped with the old one is rejected, so a reset counter can never make an old stamp current again.

**Generations are times.** A bump sets a field to ``max(old + 1, now)`` in milliseconds of the server's clock, so a
field that was dropped and is bumped again comes back higher than anything it held before. That is what lets the
hash forget: a field whose last bump is older than the *retention* (``GenerationRetentionHours``) is deleted (a
few fields per invalidation, see ``_redis.scripts.INVALIDATE``), and no entry lives longer than the retention after
its capture, so no entry made stale by that bump is left to be judged by it. A stamp also records a *floor*
(:data:`FLOOR_FIELD`): the capture time minus the retention. A field the stamp does not name was at most the floor
when captured — it was absent, or old enough to be forgotten — and any later bump lands above the floor.
Counters written by older releases (small integers, below :data:`FIRST_TIMESTAMP`) are never forgotten; their next
bump turns them into times.

:class:`InvalidationLog` is the in-process complement for the stale-set race on L1: a factory that started before
an invalidation of its key (exact, prefix or tag) must not put its result into L1 afterwards.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from hybridcache.keys import ancestors

EPOCH_FIELD = "__epoch__"
# In a stamp: the capture time minus the retention, the value recorded for every field the stamp does not name.
FLOOR_FIELD = "~"
# Generations at or above this are times in milliseconds (2001-09-09); below it, counters of older releases.
FIRST_TIMESTAMP = 10**12
# A mirror forgets a field this long after Redis may: late is harmless (a stamp's floor covers what Redis dropped),
# early is not, so the margin absorbs clock differences between this host and the Redis server.
MIRROR_MARGIN_MS = 15 * 60 * 1000


def prefix_field(prefix: str) -> str:
    return f"p:{prefix}"


def tag_field(tag: str) -> str:
    return f"t:{tag}"


@functools.lru_cache(maxsize=1024)
def fields_for(full_key: str, namespace_length: int, tags: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The generation fields an entry under ``full_key`` depends on: every ancestor prefix, then its tags.

    Memoized (bounded): it is computed on every L2 hit and store, and keys repeat.
    """
    logical = full_key[namespace_length:]
    return tuple(prefix_field(p) for p in ancestors(logical)) + tuple(tag_field(t) for t in tags)


def new_epoch() -> str:
    return secrets.token_hex(8)


def next_generation(current: int, now_ms: int) -> int:
    """What a bump makes of ``current``: the clock's time, or one more when the field is already there."""
    return max(current + 1, now_ms)


def is_behind(stamp: Mapping[str, int], current: Mapping[str, int]) -> bool:
    """True when some counter in ``current`` moved past what ``stamp`` recorded for it."""
    floor = stamp.get(FLOOR_FIELD, 0)
    return any(stamp.get(field, floor) < generation for field, generation in current.items())


class GenerationTable:
    """This process's mirror of the generation counters, plus whether it may be trusted right now.

    ``version`` increases on every change (new counters, new epoch, trust lost or regained), so an L1 entry that
    was validated at the current version needs no further check: that is the whole cost of an L1 hit.
    """

    __slots__ = ("_clock", "_counters", "_during_resync", "_keep_ms", "epoch", "trusted", "version")

    def __init__(
        self,
        epoch: str | None = None,
        *,
        trusted: bool = True,
        retention_ms: int | None = None,
        margin_ms: int = MIRROR_MARGIN_MS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``retention_ms``: forget fields whose last bump is older than this (plus ``margin_ms``); None: never."""
        # Insertion-ordered by last change, so the fields to forget first are at the front (after a resync, which
        # loads in Redis's order, they drain within the retention).
        self._counters: dict[str, int] = {}
        # Counters applied since the resync in flight read Redis (None when no resync is in flight).
        self._during_resync: dict[str, int] | None = None
        self._keep_ms = None if retention_ms is None else retention_ms + margin_ms
        self._clock = wall_clock
        self.epoch = epoch
        self.trusted = trusted
        self.version = 1

    def current(self, field: str) -> int:
        return self._counters.get(field, 0)

    def snapshot(self, fields: Iterable[str]) -> dict[str, int]:
        """The non-zero counters among ``fields``: what a value computed now records."""
        counters = self._counters
        return {f: counters[f] for f in fields if f in counters}

    def is_current(self, epoch: str, generations: Mapping[str, int], fields: Iterable[str]) -> bool:
        """True when no counter in ``fields`` has moved past what ``generations`` recorded under ``epoch``."""
        return epoch == self.epoch and not self._moved_past(generations, fields)

    def known_stale(self, epoch: str, generations: Mapping[str, int], fields: Iterable[str]) -> bool:
        """True when this table itself knows a counter in ``fields`` moved past what ``generations`` recorded.

        Unlike :meth:`is_current`, an epoch other than the table's is no evidence either way. This is the check
        that still holds while the table is not trusted: it may have missed bumps, but the bumps it did apply
        (this instance's own invalidations, messages received before trust was lost) are facts, so an entry
        they made stale is never served, whatever else says it may be.
        """
        return epoch == self.epoch and self._moved_past(generations, fields)

    def _moved_past(self, generations: Mapping[str, int], fields: Iterable[str]) -> bool:
        counters = self._counters
        floor = generations.get(FLOOR_FIELD, 0)
        for field in fields:
            now = counters.get(field)
            if now is not None and generations.get(field, floor) < now:
                return True
        return False

    def advance(self, updates: Mapping[str, int]) -> None:
        """Merge counters learnt from an invalidation (they only ever grow, so replays are harmless)."""
        counters, during = self._counters, self._during_resync
        for field, generation in updates.items():
            if generation > counters.get(field, 0):
                counters.pop(field, None)  # to the back: the front holds the oldest changes
                counters[field] = generation
            if during is not None and generation > during.get(field, 0):
                during[field] = generation  # kept by replace() where higher than Redis's (older) answer
        self.version += 1
        self._forget_old()

    def bump_locally(self, fields: Iterable[str]) -> dict[str, int]:
        """Bump counters in this process only (L1-only mode, where this table is the authority)."""
        counters = self._counters
        now_ms = int(self._clock() * 1000)
        result = {}
        for field in fields:
            generation = next_generation(counters.pop(field, 0), now_ms)
            counters[field] = result[field] = generation
        self.version += 1
        self._forget_old()
        return result

    def _forget_old(self) -> None:
        """Drop fields last bumped more than the retention (plus the margin) ago, oldest first.

        No version change: an entry that a forgotten bump made stale has expired (entries live at most the
        retention), and forgetting makes no current entry stale.
        """
        if self._keep_ms is None:
            return
        counters = self._counters
        horizon = int(self._clock() * 1000) - self._keep_ms
        while counters:
            field, generation = next(iter(counters.items()))
            if not FIRST_TIMESTAMP <= generation < horizon:
                return
            del counters[field]

    def begin_resync(self) -> None:
        """Note that a resync is about to read Redis: counters applied from now until :meth:`replace` (this
        instance's own invalidations, whose replies may arrive after Redis answered the resync) are kept."""
        self._during_resync = {}

    def replace(self, epoch: str, counters: Mapping[str, int]) -> bool:
        """Load the authoritative state (after a (re)subscribe or a gap). Returns True when the epoch changed.

        Redis's counters replace ours even in the same epoch: a counter above Redis's can only come from a forged
        or foreign message, and keeping it would make every entry under its field look stale for good. The one
        exception is a counter applied after the resync read Redis (see :meth:`begin_resync`): Redis's answer is
        older than it, so it is kept, or this instance would serve what its own invalidation had just covered.
        """
        changed = epoch != self.epoch
        fresh = dict(counters)
        during, self._during_resync = self._during_resync, None
        if during and not changed:
            for field, generation in during.items():
                if generation > fresh.get(field, 0):
                    fresh[field] = generation
        self._counters = fresh
        self.epoch = epoch
        self.version += 1
        self._forget_old()
        return changed

    def set_trusted(self, trusted: bool) -> None:
        if trusted != self.trusted:
            self.trusted = trusted
            self.version += 1

    def __len__(self) -> int:
        return len(self._counters)


class InvalidationLog:
    """A bounded record of recent invalidations applied in this process, numbered by a local sequence.

    A factory notes :attr:`sequence` before it runs; afterwards :meth:`covers_since` says whether anything that
    touches its key was invalidated meanwhile. When the record has overflowed past that point the answer is a
    conservative yes (the value is returned to its caller but not kept in L1).
    """

    __slots__ = ("_records", "sequence")

    def __init__(self, capacity: int = 4096) -> None:
        self._records: deque[tuple[int, frozenset[str], frozenset[str], frozenset[str]]] = deque(maxlen=capacity)
        self.sequence = 0

    def record(self, keys: Iterable[str], prefixes: Iterable[str], tags: Iterable[str]) -> None:
        """Note an invalidation of full keys, full prefixes (namespace included) and tags."""
        self.sequence += 1
        self._records.append((self.sequence, frozenset(keys), frozenset(prefixes), frozenset(tags)))

    def covers_since(self, since: int, full_key: str, namespace_length: int, tags: Iterable[str]) -> bool:
        if since == self.sequence:
            return False
        records = self._records
        if not records or records[0][0] > since + 1:
            return True  # overflowed: we cannot prove nothing relevant happened
        namespace_part = full_key[:namespace_length]
        key_prefixes = {namespace_part + p for p in ancestors(full_key[namespace_length:])}
        key_tags = set(tags)
        for sequence, keys, prefixes, record_tags in reversed(records):
            if sequence <= since:
                break
            if full_key in keys or not prefixes.isdisjoint(key_prefixes) or not record_tags.isdisjoint(key_tags):
                return True
        return False


class RecentRemovals:
    """Exact keys removed in the last ``window`` seconds, with the wall time each was removed here.

    An exact key has no generation in an entry's stamp: its invalidation is the ``DEL`` of the entry. If Redis loses
    that ``DEL`` — a failover to a replica that had not received it, or the split brain of a failover, where the old
    master took it and the promoted replica never will — the old entry is back in L2 with a stamp that still looks
    current, until the backplane resyncs against the new server (which draws a new epoch). For ``window`` seconds
    after a key was removed here (or its removal received), an L2 entry of that key *created* before the removal is
    refused. Creation times come from the storing instance's wall clock, so clock skew between instances can only
    refuse a fresh entry (an extra miss), within the skew. At most ``capacity`` keys are remembered.
    """

    __slots__ = ("_removed", "capacity", "window")

    def __init__(self, window: float = 10.0, capacity: int = 100_000) -> None:
        self._removed: dict[str, float] = {}  # insertion-ordered: the oldest removal first
        self.window = window
        self.capacity = capacity

    def record(self, keys: Iterable[str], now: float) -> None:
        removed = self._removed
        for key in keys:
            removed.pop(key, None)
            removed[key] = now
        horizon = now - self.window
        while removed:
            oldest, at = next(iter(removed.items()))
            if at >= horizon and len(removed) <= self.capacity:
                break
            del removed[oldest]

    def refuses(self, key: str, created: float, now: float) -> bool:
        """True when ``key`` was removed here after ``created`` and less than ``window`` seconds ago."""
        at = self._removed.get(key)
        return at is not None and created <= at and now - at < self.window

    def __len__(self) -> int:
        return len(self._removed)
