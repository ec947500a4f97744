"""memory.py: the SIEVE L1 store. Size bound, expiry, which entry is evicted, and a differential property test."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridcache._memory import L1Entry, MemoryStore

FOREVER = math.inf


class Clock:
    """A settable monotonic clock, shared by the store (eviction) and the test (reads)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(key: str, value: Any = None, expires_at: float = FOREVER) -> L1Entry:
    return L1Entry(key, key if value is None else value, expires_at, 0.0, "epoch", {}, (), 1)


def filled(size_limit: int, *keys: str, clock: Clock | None = None) -> MemoryStore:
    store = MemoryStore(size_limit, clock=clock or Clock())
    for key in keys:
        store.put(entry(key))
    return store


def keys_of(store: MemoryStore) -> set[str]:
    return {e.key for e in store}


# ---------------------------------------------------------------------------------------------- examples


def test_size_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size_limit"):
        MemoryStore(0)


def test_the_store_never_holds_more_than_its_size_limit() -> None:
    store = MemoryStore(8, clock=Clock())
    for i in range(100):
        store.put(entry(f"k{i}"))
        assert len(store) <= 8
    assert len(store) == 8
    assert store.evictions == 92
    assert "k99" in store, "the entry just put is never the one evicted"


def test_get_returns_the_live_entry_and_marks_it_visited() -> None:
    store = filled(4, "a")
    found = store.get("a", 0.0)
    assert found is not None
    assert found.value == "a"
    assert found.visited
    assert store.get("missing", 0.0) is None


def test_an_expired_entry_is_reported_absent_and_dropped() -> None:
    store = MemoryStore(4, clock=Clock())
    store.put(entry("a", expires_at=10.0))
    assert store.get("a", 9.999) is not None
    assert store.get("a", 10.0) is None
    assert len(store) == 0
    assert "a" not in store
    assert store.peek("a") is None


def test_peek_sees_an_expired_entry_without_visiting_it() -> None:
    store = MemoryStore(4, clock=Clock())
    store.put(entry("a", expires_at=1.0))
    peeked = store.peek("a")
    assert peeked is not None
    assert not peeked.visited
    assert len(store) == 1


def test_replacing_a_key_updates_it_without_evicting() -> None:
    store = filled(2, "a", "b")
    store.put(entry("a", value="new"))
    assert len(store) == 2
    assert store.evictions == 0
    found = store.get("a", 0.0)
    assert found is not None
    assert found.value == "new"


def test_eviction_keeps_visited_entries() -> None:
    store = filled(3, "a", "b", "c")
    assert store.get("a", 0.0) is not None
    store.put(entry("d"))
    assert keys_of(store) == {"a", "c", "d"}, "the oldest unvisited entry (b) goes, not the visited a"
    store.put(entry("e"))
    assert keys_of(store) == {"a", "d", "e"}, "the hand moved on from b to c"


def test_a_hot_entry_survives_a_scan_of_one_hit_wonders() -> None:
    store = filled(10, "hot")
    for i in range(1_000):
        assert store.get("hot", 0.0) is not None, f"hot entry evicted after {i} cold inserts"
        store.put(entry(f"cold{i}"))
    assert store.evictions == 1_000 - 9


def test_when_every_entry_was_visited_the_hand_clears_bits_and_evicts_the_oldest() -> None:
    store = filled(3, "a", "b", "c")
    for key in ("a", "b", "c"):
        store.get(key, 0.0)
    store.put(entry("d"))
    assert keys_of(store) == {"b", "c", "d"}
    assert store.evictions == 1
    survivors = [store.peek(k) for k in ("b", "c")]
    assert all(e is not None and not e.visited for e in survivors), "the sweep cleared the visited bits"


def test_an_expired_entry_is_evicted_even_if_visited() -> None:
    clock = Clock()
    store = MemoryStore(3, clock=clock)
    store.put(entry("a"))
    store.put(entry("b", expires_at=5.0))
    store.put(entry("c"))
    store.get("a", 0.0)
    store.get("b", 0.0)
    clock.now = 6.0
    store.put(entry("d"))
    assert keys_of(store) == {"a", "c", "d"}


def test_remove() -> None:
    store = filled(3, "a", "b")
    assert store.remove("a") is True
    assert store.remove("a") is False
    assert keys_of(store) == {"b"}
    assert store.evictions == 0


def test_removing_the_entry_under_the_hand_moves_the_hand_on() -> None:
    store = filled(3, "a", "b", "c")
    store.get("a", 0.0)
    store.put(entry("d"))  # clears a, evicts b, leaves the hand on c
    store.remove("c")
    store.put(entry("e"))  # fills the free slot: no eviction
    store.put(entry("f"))  # the hand is now on d (c's successor): d is unvisited and goes
    assert keys_of(store) == {"a", "e", "f"}


def test_clear_empties_the_store_and_it_works_afterwards() -> None:
    store = filled(3, "a", "b", "c")
    store.get("a", 0.0)
    store.put(entry("d"))
    store.clear()
    assert len(store) == 0
    assert store.get("a", 0.0) is None
    for key in ("x", "y", "z", "w"):
        store.put(entry(key))
    assert keys_of(store) == {"y", "z", "w"}


def test_remove_where() -> None:
    store = filled(10, "Dealership:1", "Dealership:2", "Other:1")
    assert store.remove_where(lambda e: e.key.startswith("Dealership:")) == 2
    assert keys_of(store) == {"Other:1"}


def test_iteration_is_safe_while_removing() -> None:
    store = filled(5, "a", "b", "c")
    for e in store:
        store.remove(e.key)
    assert len(store) == 0


# ---------------------------------------------------------------------------------------------- property test


@dataclass
class ModelSieve:
    """An obviously-correct (list-based, O(n)) SIEVE with the same expiry rules, used as the oracle."""

    size_limit: int
    order: list[str] = field(default_factory=list)  # oldest first
    visited: dict[str, bool] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    hand: str | None = None
    evictions: int = 0

    def _newer(self, key: str) -> str | None:
        index = self.order.index(key)
        return self.order[index + 1] if index + 1 < len(self.order) else None

    def _unlink(self, key: str) -> None:
        if self.hand == key:
            self.hand = self._newer(key)
        self.order.remove(key)
        del self.visited[key], self.expires[key], self.values[key]

    def get(self, key: str, now: float) -> int | None:
        if key not in self.values:
            return None
        if self.expires[key] <= now:
            self._unlink(key)
            return None
        self.visited[key] = True
        return self.values[key]

    def put(self, key: str, value: int, expires: float, now: float) -> None:
        if key in self.values:
            self._unlink(key)
        elif len(self.order) >= self.size_limit:
            self._evict(now)
        self.order.append(key)
        self.visited[key], self.expires[key], self.values[key] = False, expires, value

    def _evict(self, now: float) -> None:
        node = self.hand if self.hand is not None else self.order[0]
        while self.visited[node] and self.expires[node] > now:
            self.visited[node] = False
            node = self._newer(node) or self.order[0]
        self.hand = self._newer(node)
        self._unlink(node)
        self.evictions += 1

    def remove(self, key: str) -> bool:
        if key not in self.values:
            return False
        self._unlink(key)
        return True

    def clear(self) -> None:
        self.order.clear()
        self.visited.clear()
        self.expires.clear()
        self.values.clear()
        self.hand = None


KEYS = [f"k{i}" for i in range(8)]
TTLS = [0.5, 2.0, FOREVER, FOREVER, FOREVER]


def decode_operation(raw: tuple[int, int, int]) -> tuple[Any, ...]:
    """Weighted operations: mostly puts and gets, so that long eviction sequences happen; clears are rare."""
    kind, key, ttl = raw
    if kind < 45:
        return ("put", KEYS[key], TTLS[ttl])
    if kind < 85:
        return ("get", KEYS[key])
    if kind < 92:
        return ("remove", KEYS[key])
    if kind < 98:
        return ("tick", (0.25, 1.0)[ttl % 2])
    return ("clear",)


operations = st.lists(
    st.tuples(st.integers(0, 99), st.integers(0, len(KEYS) - 1), st.integers(0, len(TTLS) - 1)).map(decode_operation),
    min_size=10,
    max_size=150,
)


@settings(max_examples=400)
@given(st.integers(min_value=1, max_value=5), operations)
def test_store_behaves_like_the_model(size_limit: int, ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    store = MemoryStore(size_limit, clock=clock)
    model = ModelSieve(size_limit)
    latest: dict[str, int] = {}  # the last value put per key: what a hit may return
    for step, op in enumerate(ops):
        name = op[0]
        if name == "put":
            _, key, ttl = op
            store.put(entry(key, value=step, expires_at=clock.now + ttl))
            model.put(key, step, clock.now + ttl, clock.now)
            latest[key] = step
        elif name == "get":
            found = store.get(op[1], clock.now)
            expected = model.get(op[1], clock.now)
            assert (None if found is None else found.value) == expected, f"step {step}: {op}"
            if found is not None:
                assert found.value == latest[op[1]]
                assert found.expires_at > clock.now, "served an expired entry"
        elif name == "remove":
            assert store.remove(op[1]) == model.remove(op[1])
        elif name == "tick":
            clock.now += op[1]
        else:
            store.clear()
            model.clear()
        assert len(store) <= size_limit
        assert keys_of(store) == set(model.values), f"step {step}: {op}"
        assert store.evictions == model.evictions
