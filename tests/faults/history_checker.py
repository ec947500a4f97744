"""A multi-process history checker for the "never stale" guarantee (docs/invalidation.md §1), under real faults.

One run:

* starts a private ``redis-server`` (:class:`harness.redis_server.RedisServer`; never the system Redis) and a
  SQLite file in WAL mode that is the **source of truth**: ``items(key, version)``;
* spawns :data:`WORKERS` OS processes (this module with ``--worker``), each with its own :class:`HybridCache` at
  default settings except ``service_name`` (shared) and ``configuration`` (the private server). Each runs
  :data:`READERS_PER_WORKER` reader tasks and one writer task for a bounded time and a bounded number of operations:

  - a **reader** calls ``get_or_create(key, factory, tags=...)``; the factory reads the key's version from SQLite
    when it *starts*, then awaits 0-5 ms before returning it, so a write racing a slow factory makes the classic
    cache-aside stale set possible. Each read records the key, the worker, when the read *started*, the version
    returned and where it came from (the cache's counters before and after);
  - the **writer** (about :data:`WRITE_SHARE` of the operations) increments a key's version in SQLite, commits,
    then invalidates it by key, by its group's prefix or by its tag, and records when the invalidation *returned*;
  - a **health monitor** records every change of the cache's backplane state, pending invalidations and resyncs;

* injects the chosen fault mid-run (:data:`FAULTS`), merges the workers' histories (JSON lines; ``time.monotonic``
  is CLOCK_MONOTONIC, system-wide on Linux, so the timestamps of all processes are comparable) and checks them.

The contract checked (:func:`find_violations`): a read that started at or after ``write.done + bound`` returns a
version at least as new as that write's. The bound is 0 on the worker that wrote, and on the others the bound that
docs/invalidation.md §1 gives for the situation, per fault, in :data:`FAULTS` (:class:`BoundPolicy`). For every
violating read the report gives its staleness, ``read.started - write.done``.

``--self-check`` makes worker 0's writer skip the invalidation (it still commits to SQLite): the checker must then
report violations, or it is broken.

Run as a script (a table per run, and a JSON result in :data:`RESULTS_DIRECTORY` or at ``--json``; exit status 0
when no read was stale, or with ``--self-check`` when stale reads were found)::

    .venv/bin/python -m tests.faults.history_checker --fault sigstop --seconds 20 --seed 7
    .venv/bin/python -m tests.faults.history_checker --fault none --self-check
    .venv/bin/python -m tests.faults.history_checker --fault all --seconds 15

Everything is bounded: worker start-up, every loop (time and count), every fault, and the wait for the workers.
The parent kills the workers and the server on the way out, error or not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.redis_server import RedisServer
from hybridcache import CacheSettings, HybridCache
from hybridcache.settings import BackplaneSettings

REPO_ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------------ the bounds

# docs/invalidation.md §1, at default settings: the values are read from the library's own defaults so the bounds
# follow them (1 s interval, 2 s timeout, 1 s disconnected expiration when this was written).
_DEFAULT_BACKPLANE = BackplaneSettings()
HEARTBEAT_INTERVAL = _DEFAULT_BACKPLANE.heartbeat_interval_seconds
HEARTBEAT_TIMEOUT = _DEFAULT_BACKPLANE.heartbeat_timeout_seconds
DISCONNECTED_EXPIRATION = _DEFAULT_BACKPLANE.disconnected_expiration_seconds

# Row "backplane connected": until the message is delivered and handled. 50 ms is the deadline the integration
# suites hold other instances to (PROPAGATION_BOUND in tests/integration/test_consistency.py).
PROPAGATION_BOUND = 0.05
# "Handled" needs the reading process to run: a process whose event loop was held (CPU starvation on a busy 2-core
# machine, a long GC pause) cannot handle a message that is waiting in its socket. Each worker measures how late its
# health sampler wakes; a wake later than STALL_THRESHOLD is recorded as a stall, and a read that starts during a
# stall of its own process, or within PROPAGATION_BOUND after it, is held to PROPAGATION_BOUND + the stall (rounded
# up to STALL_QUANTUM). Stalls are reported with every run.
STALL_THRESHOLD = 0.02
STALL_QUANTUM = 0.01
# Row "connection dropped visibly (CLIENT KILL, restart, ...)": L1 entries younger than
# DisconnectedExpirationSeconds until the resync; none after. Defaults column: 1 s.
VISIBLE_DROP_BOUND = DISCONNECTED_EXPIRATION
# Row "connection silently dead (frozen server, partition)":
# HeartbeatIntervalSeconds + HeartbeatTimeoutSeconds + DisconnectedExpirationSeconds = 1 + 2 + 1 = 4 s.
SILENT_DEATH_BOUND = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + DISCONNECTED_EXPIRATION
# Row "the writer could not publish (Redis unreachable from it, circuit open)": "within the outage + 1.5 s", i.e.
# served everywhere by the end of the outage + 1.5 s (measured in that row from Redis resuming).
PUBLISH_RETRY_BOUND = 1.5

# How long after a fault's action the workers' own health reports may still extend its window (a resync, trust
# regained, the last queued invalidation published): recovery that takes longer is reported, not waited for.
RECOVERY_LIMIT = 10.0

# ------------------------------------------------------------------------------------------------------ the shape

WORKERS = 3
READERS_PER_WORKER = 6
WRITE_SHARE = 0.05  # writes as a share of all operations, per worker
MAX_OPERATIONS_PER_WORKER = 250_000  # the count bound; the time bound (--seconds) normally ends a run first
FACTORY_DELAY = (0.0, 0.005)  # seconds a factory awaits after reading SQLite
HEALTH_SAMPLE_INTERVAL = 0.01
WORKER_START_TIMEOUT = 60.0  # for all workers to connect (imports on a busy 2-core machine are slow)
WORKER_EXIT_GRACE = 45.0  # after the run's deadline: closing the caches, writing the histories
DEFAULT_SECONDS = 20.0
RESULTS_DIRECTORY = Path(tempfile.gettempdir()) / "hybridcache-history-checker"  # JSON results without --json


def key_of(group: int, item: int) -> str:
    return f"Item:g{group}:{item}"


def prefix_of(group: int) -> str:
    return f"Item:g{group}"


def tag_of(item: int) -> str:
    return f"item-{item % 4}"


# -------------------------------------------------------------------------------------------------- the records


@dataclass(frozen=True, slots=True)
class Read:
    """One completed ``get_or_create``: ``started`` is ``time.monotonic()`` just before the call."""

    key: str
    worker: int
    started: float
    version: int
    source: str = ""  # where the value came from, as far as the counters tell: a hint for reports


@dataclass(frozen=True, slots=True)
class Write:
    """One committed version bump; ``done`` is ``time.monotonic()`` when the invalidation call returned."""

    key: str
    version: int
    worker: int
    done: float
    kind: str = ""  # key | prefix | tag | skipped (self-check)


@dataclass(frozen=True, slots=True)
class Violation:
    """A read that returned an older version than ``write``, a write it was bound to see."""

    read: Read
    write: Write
    bound: float

    @property
    def staleness(self) -> float:
        """How long after the write's invalidation returned the read started, in seconds."""
        return self.read.started - self.write.done

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.read.key,
            "worker": self.read.worker,
            "version_read": self.read.version,
            "version_expected": self.write.version,
            "source": self.read.source,
            "staleness_ms": round(1000 * self.staleness, 1),
            "bound_ms": round(1000 * self.bound, 1),
            "writer": self.write.worker,
            "write_kind": self.write.kind,
            "read_started": self.read.started,
            "write_done": self.write.done,
        }

    def __str__(self) -> str:
        r, w = self.read, self.write
        return (
            f"{r.key}: worker {r.worker} read v{r.version} (from {r.source}), expected >= v{w.version}; the read "
            f"started {1000 * self.staleness:.1f} ms after worker {w.worker}'s invalidation ({w.kind}) returned "
            f"(bound {1000 * self.bound:.0f} ms)"
        )


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A worker's cache state when it changed (sampled every :data:`HEALTH_SAMPLE_INTERVAL`)."""

    worker: int
    at: float
    backplane: str  # "connected" (table trusted) or "disconnected"
    pending: int  # invalidations queued for retry
    resyncs: int
    circuit: str

    @property
    def recovery_state(self) -> tuple[str, int, int]:
        """What recovering from a fault changes (the circuit may stay open for its whole break: not included)."""
        return self.backplane, self.pending, self.resyncs


@dataclass(frozen=True, slots=True)
class Stall:
    """A span in which a worker's event loop did not run (its health sampler woke this late)."""

    worker: int
    start: float
    end: float


# -------------------------------------------------------------------------------------------------- the checker


@dataclass(frozen=True, slots=True)
class BoundPolicy:
    """When a read must reflect a write: :meth:`visible_from`. Built per run from the fault's row of :data:`FAULTS`.

    * On the worker that wrote: at once (bound 0; docs §1, "the writer itself is fresh at once").
    * On another worker: ``propagation`` after the write, unless
      - the read started inside a ``read_window`` (a fault until every worker reported recovery): then
        ``outage_allowance``, the L1 bound of the fault's connection situation;
      - the write's invalidation returned inside a ``publish_window`` (the writer may not have been able to
        publish): then not before that window's ``deadline`` (the outage's end + :data:`PUBLISH_RETRY_BOUND`).
      When both apply the later time counts: each is a separately documented allowance.
    * A read that started during a stall of its own worker, or within ``propagation`` after it: ``propagation`` +
      the stall's length (rounded up to :data:`STALL_QUANTUM`), at least; the message could not be handled sooner.
    """

    propagation: float = PROPAGATION_BOUND
    outage_allowance: float = 0.0
    read_windows: tuple[tuple[float, float], ...] = ()
    publish_windows: tuple[tuple[float, float, float], ...] = ()  # (from, to, deadline) over write.done
    stalls: tuple[Stall, ...] = ()
    _stall_starts: dict[int, list[float]] = field(default_factory=dict, compare=False, repr=False)
    _stall_lists: dict[int, list[Stall]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_worker: dict[int, list[Stall]] = defaultdict(list)
        for stall in sorted(self.stalls, key=lambda s: s.start):
            by_worker[stall.worker].append(stall)
        self._stall_lists.update(by_worker)
        self._stall_starts.update({w: [s.start for s in stalls] for w, stalls in by_worker.items()})

    def read_allowance(self, read: Read) -> float:
        """The bound for ``read`` against another worker's write, before any publish deadline."""
        allowance = max(self.propagation, self.stall_allowance(read))
        for start, end in self.read_windows:
            if start <= read.started <= end:
                return max(allowance, self.outage_allowance)
        return allowance

    def stall_allowance(self, read: Read) -> float:
        """``propagation`` + the longest stall of the reading worker that the read started in or just after; 0 if
        none."""
        stalls = self._stall_lists.get(read.worker)
        if not stalls:
            return 0.0
        longest = 0.0
        index = bisect.bisect_right(self._stall_starts[read.worker], read.started) - 1
        while index >= 0 and stalls[index].end + self.propagation >= read.started:
            longest = max(longest, stalls[index].end - stalls[index].start)
            index -= 1
        if longest == 0.0:
            return 0.0
        return self.propagation + STALL_QUANTUM * math.ceil(round(longest / STALL_QUANTUM, 6))

    def publish_deadline(self, write: Write) -> float | None:
        """The documented deadline for a write whose invalidation may not have been published, else None."""
        for start, end, deadline in self.publish_windows:
            if start <= write.done <= end:
                return deadline
        return None

    def visible_from(self, read: Read, write: Write) -> float:
        """The monotonic time from which a read on ``read.worker`` must return at least ``write.version``."""
        if read.worker == write.worker:
            return write.done
        return _visible_from(write, self.read_allowance(read), self.publish_deadline(write))

    def bound(self, read: Read, write: Write) -> float:
        """``visible_from - write.done``: the staleness allowed for this read of this write."""
        return self.visible_from(read, write) - write.done


def _visible_from(write: Write, allowance: float, deadline: float | None) -> float:
    own = write.done + allowance
    return own if deadline is None else max(own, deadline)


def find_violations_naive(reads: Iterable[Read], writes: Sequence[Write], policy: BoundPolicy) -> list[Violation]:
    """The contract, literally: for every read, the newest write it had to see; flag it if it read older.

    Quadratic per key; :func:`find_violations` computes the same list fast and the unit tests compare the two.
    """
    by_key: dict[str, list[Write]] = defaultdict(list)
    for write in writes:
        by_key[write.key].append(write)
    violations = []
    for read in reads:
        newest: Write | None = None
        for write in by_key[read.key]:
            if policy.visible_from(read, write) <= read.started and (newest is None or write.version > newest.version):
                newest = write
        if newest is not None and read.version < newest.version:
            violations.append(Violation(read, newest, policy.bound(read, newest)))
    return violations


class _Newest:
    """Writes sorted by the time they become visible, with the newest (highest version) write up to each point."""

    def __init__(self, writes: Iterable[tuple[float, Write]]) -> None:
        ordered = sorted(writes, key=lambda pair: pair[0])
        self.times = [at for at, _ in ordered]
        self.best: list[Write] = []
        for _, write in ordered:
            self.best.append(write if not self.best or write.version > self.best[-1].version else self.best[-1])

    def newest_visible_at(self, at: float) -> Write | None:
        index = bisect.bisect_right(self.times, at)  # every write visible at or before ``at``
        return self.best[index - 1] if index else None


def find_violations(reads: Iterable[Read], writes: Sequence[Write], policy: BoundPolicy) -> list[Violation]:
    """Every read that returned an older version than a write that :meth:`BoundPolicy.visible_from` says it had to
    see (compared with the newest such write), in read order. Same result as :func:`find_violations_naive`.

    For a read on worker ``r`` with allowance ``a``, a write by ``r`` is visible from ``done``, and one by another
    worker from ``max(done + a, deadline)``: both orders are precomputed per (key, worker, allowance), so a read
    costs one binary search per worker.
    """
    by_key_worker: dict[tuple[str, int], list[Write]] = defaultdict(list)
    workers: set[int] = set()
    for write in writes:
        by_key_worker[(write.key, write.worker)].append(write)
        workers.add(write.worker)
    indexes: dict[tuple[str, int, float | None], _Newest] = {}

    def index_for(key: str, writer: int, allowance: float | None) -> _Newest:
        """``allowance`` None: as seen by the writer itself."""
        found = indexes.get((key, writer, allowance))
        if found is None:
            group = by_key_worker.get((key, writer), [])
            if allowance is None:
                found = _Newest((w.done, w) for w in group)
            else:
                found = _Newest((_visible_from(w, allowance, policy.publish_deadline(w)), w) for w in group)
            indexes[(key, writer, allowance)] = found
        return found

    violations = []
    for read in reads:
        allowance = policy.read_allowance(read)
        newest: Write | None = None
        for writer in workers:
            candidate = index_for(read.key, writer, None if writer == read.worker else allowance).newest_visible_at(
                read.started
            )
            if candidate is not None and (newest is None or candidate.version > newest.version):
                newest = candidate
        if newest is not None and read.version < newest.version:
            violations.append(Violation(read, newest, policy.bound(read, newest)))
    return violations


# --------------------------------------------------------------------------------------------------- the faults


@dataclass
class Injection:
    """One fault event. ``start``/``end`` bracket the fault's action (``end`` is set once it is over); ``outage``
    is False for preparation steps that break nothing by themselves (the ``SAVE`` before a restart)."""

    name: str
    start: float
    end: float | None = None
    outage: bool = True
    note: str = ""
    thread: threading.Thread | None = None
    error: str = ""

    def finish(self, timeout: float) -> None:
        """Wait (bounded) for an action running in a thread; raise if it did not end or failed."""
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise RuntimeError(f"fault action {self.name} still running after {timeout}s")
        if self.error:
            raise RuntimeError(f"fault action {self.name} failed: {self.error}")
        if self.end is None:
            self.end = time.monotonic()


Action = Callable[[RedisServer], Injection]


def _admin(server: RedisServer) -> Any:
    """A short-lived blocking client for the parent's own commands (the caller closes it)."""
    return server.sync_client(socket_timeout=10, socket_connect_timeout=5)


def kill_pubsub(server: RedisServer) -> Injection:
    """``CLIENT KILL TYPE pubsub``: every worker's subscriber connection is closed (a visible drop)."""
    start = time.monotonic()
    with _admin(server) as admin:
        killed = admin.client_kill_filter(_type="pubsub")
    return Injection("kill-pubsub", start, time.monotonic(), note=f"killed {killed} subscriber connections")


def restart(server: RedisServer) -> Injection:
    """Kill the server and start a fresh one on the same port (no persistence: empty data, new run_id)."""
    start = time.monotonic()
    server.restart()
    return Injection("restart", start, time.monotonic())


def save(server: RedisServer) -> Injection:
    """``SAVE`` a snapshot into the server's directory, for a later :func:`restart_from_snapshot` to load."""
    start = time.monotonic()
    with _admin(server) as admin:
        admin.save()
        keys = admin.dbsize()
    return Injection("save", start, time.monotonic(), outage=False, note=f"saved {keys} keys")


def restart_from_snapshot(server: RedisServer) -> Injection:
    """Kill the server and start it on the same directory: it loads the older dump (counters and entries from
    before every write since the ``SAVE``)."""
    start = time.monotonic()
    server.restart()
    end = time.monotonic()
    with _admin(server) as admin:
        restored = admin.dbsize()
    if not restored:
        raise RuntimeError("the restart loaded no keys: the snapshot was not restored, so this fault tests nothing")
    return Injection("restart-from-snapshot", start, end, note=f"restored {restored} keys from the dump")


def sigstop_3s(server: RedisServer) -> Injection:
    """SIGSTOP the server for 3 s (sockets stay open, nothing answers: a silently dead connection), then SIGCONT."""
    start = time.monotonic()
    server.pause()
    try:
        time.sleep(3.0)
    finally:
        server.resume()
    return Injection("sigstop", start, time.monotonic())


def client_pause_2s(server: RedisServer) -> Injection:
    """``CLIENT PAUSE 2000 WRITE``: writes, scripts and PUBLISH wait 2 s; reads and PING go on. Redis lifts it."""
    with _admin(server) as admin:
        start = time.monotonic()
        admin.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    return Injection("client-pause", start, start + 2.0)


def debug_sleep_2s(server: RedisServer) -> Injection:
    """``DEBUG SLEEP 2`` from a connection of its own, in a thread (the parent does not block): the server is busy
    for 2 s and answers nobody. :meth:`Injection.finish` waits for it (bounded)."""
    admin = _admin(server)
    admin.ping()  # connect first, so the start below is when the sleep was sent
    injection = Injection("debug-sleep", time.monotonic())

    def sleep_server() -> None:
        try:
            admin.execute_command("DEBUG", "SLEEP", "2")
        except Exception as exc:  # reported through finish()
            injection.error = repr(exc)
        finally:
            injection.end = time.monotonic()
            admin.close()

    injection.start = time.monotonic()
    injection.thread = threading.Thread(target=sleep_server, name="debug-sleep", daemon=True)
    injection.thread.start()
    return injection


def flushall(server: RedisServer) -> Injection:
    """``FLUSHALL``: entries, capture tokens, the generation hash and the message counter vanish at once."""
    start = time.monotonic()
    with _admin(server) as admin:
        admin.flushall()
    return Injection("flushall", start, time.monotonic())


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault: what it does, when, and which row of docs/invalidation.md §1 bounds the staleness it may cause.

    ``outage_allowance``: the bound for reads on other workers while the fault lasts (from its action until every
    worker reported recovery), or None when the connection situation stays "backplane connected".
    ``writer_may_not_publish``: the fault makes Redis unreachable to writers, so writes whose invalidation
    returned between the action's start and its end + :data:`PUBLISH_RETRY_BOUND` count from the deadline
    "outage + 1.5 s" (as a deadline, a write late in that span gets less than 1.5 s).
    """

    name: str
    doc_rows: str
    outage_allowance: float | None = None
    writer_may_not_publish: bool = False
    schedule: tuple[tuple[float, Action], ...] = ()  # (fraction of the run, action)
    server_args: tuple[str, ...] = ()
    groups: int = 4
    items_per_group: int = 8
    payload_bytes: int = 32
    expects_evictions: bool = False


# The idle server uses about 1 MB and the workers' ~45 connections hold another 1.2-1.4 MB of query buffers (24 kB
# values): at 3 MB Redis refused writes (OOM, l2Errors and failed publishes: "the writer could not publish", another
# situation); at 4 MB it evicts about 2,000 keys a second and refuses nothing. The message counter and the generation
# hash carry a TTL, so allkeys-lru and volatile-lru evict them too (hundreds of resyncs per run); LFU keeps them.
_MAXMEMORY = "4mb"

# The per-fault bounds, from the rows of docs/invalidation.md §1 ("how long another instance may still serve the old
# value") at default settings. Always 0 on the worker that wrote ("the writer itself is fresh at once").
#
#   fault                  reads on other workers during       writes returned during the      §1 row(s)
#                          the fault (until all recovered)     fault (+1.5 s): visible from
#   none                   50 ms                               -                               backplane connected
#   kill-pubsub            1 s    VISIBLE_DROP_BOUND           -                               dropped visibly
#   restart(-persistent)   1 s    VISIBLE_DROP_BOUND           the outage's end + 1.5 s        dropped visibly;
#                                                                                              writer could not publish
#   sigstop, debug-sleep   4 s    SILENT_DEATH_BOUND           the outage's end + 1.5 s        silently dead;
#                                                                                              writer could not publish
#   client-pause           50 ms                               the outage's end + 1.5 s        writer could not publish
#   flushall, evict-*      50 ms                               -                               backplane connected
#
# Outside a fault's window every read is held to 50 ms (PROPAGATION_BOUND) again.
FAULTS: dict[str, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec("none", doc_rows="backplane connected: 50 ms"),
        FaultSpec(
            "kill-pubsub",
            doc_rows="connection dropped visibly (CLIENT KILL): DisconnectedExpirationSeconds = 1 s until the resync",
            outage_allowance=VISIBLE_DROP_BOUND,
            schedule=((0.3, kill_pubsub), (0.65, kill_pubsub)),
        ),
        FaultSpec(
            "restart",
            doc_rows="connection dropped visibly (restart): 1 s until the resync; "
            "the writer could not publish: within the outage + 1.5 s",
            outage_allowance=VISIBLE_DROP_BOUND,
            writer_may_not_publish=True,
            schedule=((0.3, restart), (0.65, restart)),
        ),
        FaultSpec(
            "restart-persistent",
            doc_rows="as restart (§3: a server restored from a snapshot is a new epoch)",
            outage_allowance=VISIBLE_DROP_BOUND,
            writer_may_not_publish=True,
            schedule=((0.15, save), (0.35, restart_from_snapshot), (0.55, save), (0.75, restart_from_snapshot)),
        ),
        FaultSpec(
            "sigstop",
            doc_rows="connection silently dead (frozen server): interval + timeout + disconnected expiration = 4 s; "
            "the writer could not publish: within the outage + 1.5 s",
            outage_allowance=SILENT_DEATH_BOUND,
            writer_may_not_publish=True,
            schedule=((0.2, sigstop_3s), (0.6, sigstop_3s)),
        ),
        FaultSpec(
            "client-pause",
            doc_rows="the writer could not publish (scripts and PUBLISH paused): within the outage + 1.5 s; "
            "subscriber connections stay up and answer PING: backplane connected, 50 ms",
            writer_may_not_publish=True,
            schedule=((0.3, client_pause_2s), (0.65, client_pause_2s)),
        ),
        FaultSpec(
            "debug-sleep",
            doc_rows="connection silently dead (server busy 2 s): 4 s; "
            "the writer could not publish: within the outage + 1.5 s",
            outage_allowance=SILENT_DEATH_BOUND,
            writer_may_not_publish=True,
            schedule=((0.3, debug_sleep_2s), (0.65, debug_sleep_2s)),
            server_args=("--enable-debug-command", "yes"),
        ),
        FaultSpec(
            "flushall",
            doc_rows="backplane connected, 50 ms: no connection drops and every message is delivered "
            "(§3: the vanished hash means a new epoch; a message of another epoch or a number that jumps resyncs)",
            schedule=((0.3, flushall), (0.65, flushall)),
        ),
        *(
            FaultSpec(
                f"evict-{policy}",
                doc_rows=f"backplane connected, 50 ms, with Redis evicting all run long (maxmemory {_MAXMEMORY}, "
                f"{policy}; §3 and §4.1: an evicted hash, counter or capture token is a new epoch, a resync or a "
                "refused store)",
                server_args=("--maxmemory", _MAXMEMORY, "--maxmemory-policy", policy),
                expects_evictions=True,
                groups=8,  # 128 keys x 24 kB ~ 3 MB of values: more than the server may hold
                items_per_group=16,
                payload_bytes=24_000,
            )
            for policy in ("allkeys-lru", "allkeys-lfu", "volatile-lru")
        ),
    )
}


def policy_for(
    spec: FaultSpec,
    injections: Sequence[Injection],
    health: Sequence[HealthEvent],
    run_end: float,
    stalls: Sequence[Stall] = (),
) -> tuple[BoundPolicy, list[dict[str, Any]]]:
    """The run's :class:`BoundPolicy` and, per outage, its window: from the action's start until the last change
    of any worker's recovery state (trust, queued invalidations, resyncs) before the next outage, the run's end,
    or :data:`RECOVERY_LIMIT` after the action, whichever comes first."""
    outages = [i for i in injections if i.outage]
    by_worker: dict[int, list[HealthEvent]] = defaultdict(list)
    for event in sorted(health, key=lambda e: e.at):
        by_worker[event.worker].append(event)
    changes: list[HealthEvent] = []
    for events in by_worker.values():
        changes += [b for a, b in itertools.pairwise(events) if a.recovery_state != b.recovery_state]

    read_windows: list[tuple[float, float]] = []
    publish_windows: list[tuple[float, float, float]] = []
    described = []
    for n, injection in enumerate(outages):
        assert injection.end is not None
        limit = min(injection.end + RECOVERY_LIMIT, run_end)
        if n + 1 < len(outages):
            limit = min(limit, outages[n + 1].start)
        moved = [c.at for c in changes if injection.start <= c.at <= limit]
        recovered = max([injection.end, *moved])
        unhealthy_at_limit = [
            w
            for w, events in by_worker.items()
            if (last := _last_before(events, limit)) is not None and (last.backplane != "connected" or last.pending)
        ]
        if spec.outage_allowance is not None:
            read_windows.append((injection.start, recovered))
        deadline = injection.end + PUBLISH_RETRY_BOUND
        if spec.writer_may_not_publish:
            publish_windows.append((injection.start, deadline, deadline))
        described.append(
            {
                "fault": injection.name,
                "start": injection.start,
                "action_seconds": round(injection.end - injection.start, 3),
                "recovered_seconds_after_action": round(recovered - injection.end, 3),
                "workers_not_recovered": unhealthy_at_limit,
                "note": injection.note,
            }
        )
    policy = BoundPolicy(
        propagation=PROPAGATION_BOUND,
        outage_allowance=spec.outage_allowance or 0.0,
        read_windows=tuple(read_windows),
        publish_windows=tuple(publish_windows),
        stalls=tuple(stalls),
    )
    return policy, described


def _last_before(events: Sequence[HealthEvent], at: float) -> HealthEvent | None:
    last = None
    for event in events:
        if event.at > at:
            break
        last = event
    return last


# --------------------------------------------------------------------------------------------------- the worker


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the parent tells one worker process (a JSON file named on its command line)."""

    worker: int
    redis_url: str
    service_name: str
    database: str
    directory: str
    seed: int
    groups: int
    items_per_group: int
    payload_bytes: int
    skip_invalidation: bool

    @property
    def ready_file(self) -> Path:
        return Path(self.directory) / f"ready-{self.worker}"

    @property
    def go_file(self) -> Path:
        return Path(self.directory) / "go"

    @property
    def history_file(self) -> Path:
        return Path(self.directory) / f"history-{self.worker}.jsonl"


class Worker:
    """One process's readers, writer and health monitor over its own :class:`HybridCache`; records everything."""

    def __init__(self, config: WorkerConfig, cache: HybridCache, database: sqlite3.Connection) -> None:
        self.config = config
        self.cache = cache
        self.database = database
        self.keys = [(g, i) for g in range(config.groups) for i in range(config.items_per_group)]
        self.padding = _padding(config.seed, config.payload_bytes)
        self.reads: list[Read] = []
        self.writes: list[Write] = []
        self.health: list[HealthEvent] = []
        self.stalls: list[Stall] = []
        self.errors: list[str] = []
        self.factory_runs = 0
        self.deadline = 0.0
        self.stopping = False

    def _rng(self, role: str) -> random.Random:
        return random.Random(f"{self.config.seed}:{self.config.worker}:{role}")

    def _done(self) -> bool:
        return (
            self.stopping
            or time.monotonic() >= self.deadline
            or len(self.reads) + len(self.writes) >= MAX_OPERATIONS_PER_WORKER
        )

    async def run(self, deadline: float) -> None:
        self.deadline = deadline
        health = asyncio.ensure_future(self._monitor())
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + 30.0):
                async with asyncio.TaskGroup() as group:
                    for n in range(READERS_PER_WORKER):
                        group.create_task(self._reader(self._rng(f"reader-{n}")))
                    group.create_task(self._writer(self._rng("writer")))
        finally:
            self.stopping = True
            await health

    # -- the source of truth

    def _read_version(self, key: str) -> int:
        row = self.database.execute("SELECT version FROM items WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def _bump_version(self, key: str) -> int:
        self.database.execute("BEGIN IMMEDIATE")
        try:
            row = self.database.execute(
                "UPDATE items SET version = version + 1 WHERE key = ? RETURNING version", (key,)
            ).fetchone()
            self.database.execute("COMMIT")
        except BaseException:
            self.database.execute("ROLLBACK")
            raise
        return int(row[0])

    # -- the tasks

    async def _reader(self, rng: random.Random) -> None:
        counters = self.cache.counters
        while not self._done():
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            ran = [False]
            before = (counters.l1_hits, counters.l2_hits, counters.handler_runs)
            started = time.monotonic()
            try:
                value = await self.cache.get_or_create(key, self._factory(key, rng, ran), tags=(tag_of(item),))
                version = _version_of(value)
            except Exception as exc:  # recorded and reported: get_or_create should not raise
                self.errors.append(f"read {key} at {started:.3f}: {exc!r}")
                await asyncio.sleep(0.01)
                continue
            after = (counters.l1_hits, counters.l2_hits, counters.handler_runs)
            self.reads.append(Read(key, self.config.worker, started, version, _source_of(before, after, ran[0])))
            # An L1 hit never yields to the loop: this lets the backplane, the writer and the other readers run.
            await asyncio.sleep(0 if rng.random() < 0.5 else rng.uniform(0, 0.002))

    def _factory(self, key: str, rng: random.Random, ran: list[bool]) -> Callable[[], Any]:
        async def load() -> dict[str, Any]:
            ran[0] = True
            self.factory_runs += 1
            version = self._read_version(key)  # read when the factory starts: a racing write makes it stale
            await asyncio.sleep(rng.uniform(*FACTORY_DELAY))
            return {"v": version, "pad": self.padding}

        return load

    async def _writer(self, rng: random.Random) -> None:
        while not self._done():
            if len(self.writes) >= WRITE_SHARE * (len(self.reads) + len(self.writes) + 1):
                await asyncio.sleep(0.001)
                continue
            group, item = rng.choice(self.keys)
            key = key_of(group, item)
            version = self._bump_version(key)
            draw = rng.random()
            kind = "key" if draw < 0.5 else "prefix" if draw < 0.75 else "tag"
            try:
                if self.config.skip_invalidation:
                    kind = "skipped (self-check)"
                elif kind == "key":
                    await self.cache.remove(key)
                elif kind == "prefix":
                    await self.cache.remove_by_prefix(prefix_of(group))
                else:
                    await self.cache.remove_by_tag(tag_of(item))
            except Exception as exc:  # invalidate should never raise for Redis trouble
                self.errors.append(f"invalidate {key} ({kind}) raised {exc!r}")
                kind += " (raised)"
            self.writes.append(Write(key, version, self.config.worker, time.monotonic(), kind))
            await asyncio.sleep(rng.uniform(0, 0.002))

    async def _monitor(self) -> None:
        last: tuple[str, int, int, str] | None = None
        woke = time.monotonic()
        while True:
            now = time.monotonic()
            due = woke + HEALTH_SAMPLE_INTERVAL
            if now - due > STALL_THRESHOLD:
                self.stalls.append(Stall(self.config.worker, due, now))
            woke = now
            stats = self.cache.stats()
            state = (stats.backplane, stats.pending_invalidations, stats.backplane_resyncs, stats.circuit)
            if state != last:
                self.health.append(HealthEvent(self.config.worker, time.monotonic(), *state))
                last = state
            if self.stopping:
                return
            await asyncio.sleep(HEALTH_SAMPLE_INTERVAL)

    # -- the history

    def write_history(self) -> None:
        """JSON lines: every read, write and health event, then one summary line."""
        stats = self.cache.stats().as_dict()
        with self.config.history_file.open("w") as out:
            for r in self.reads:
                out.write(json.dumps(["r", r.key, r.started, r.version, r.source]) + "\n")
            for w in self.writes:
                out.write(json.dumps(["w", w.key, w.version, w.done, w.kind]) + "\n")
            for h in self.health:
                out.write(json.dumps(["h", h.at, h.backplane, h.pending, h.resyncs, h.circuit]) + "\n")
            for p in self.stalls:
                out.write(json.dumps(["p", p.start, p.end]) + "\n")
            summary = {"stats": stats, "errors": self.errors[:50], "error_count": len(self.errors)}
            summary["factory_runs"] = self.factory_runs
            out.write(json.dumps(["s", summary]) + "\n")


def _padding(seed: int, size: int) -> str:
    """An incompressible string of about ``size`` characters (values large enough to force evictions)."""
    raw = random.Random(seed).randbytes(max(0, size * 3 // 4))
    return base64.b64encode(raw).decode("ascii")


def _version_of(value: object) -> int:
    if isinstance(value, dict) and isinstance(value.get("v"), int):
        return int(value["v"])
    raise TypeError(f"unexpected cached value {value!r:.80}")


def _source_of(before: tuple[int, int, int], after: tuple[int, int, int], ran: bool) -> str:
    """Where a read's value came from, as far as the counters can tell (other tasks move them while a read waits)."""
    if ran:
        return "factory"
    l1, l2, handler = (a - b for a, b in zip(after, before, strict=True))
    if (l1, l2, handler) == (1, 0, 0):
        return "L1"  # an L1 hit does not yield, so nothing else can have moved a counter meanwhile
    if l2 and not handler:
        return "L2"
    if handler and not l2:
        return "shared load"
    return "L2 or shared load"


async def worker_main(config: WorkerConfig) -> int:
    """A worker process: connect, say ready, wait for the parent's go (bounded), run, write the history."""
    database = sqlite3.connect(config.database, isolation_level=None, timeout=10.0)
    database.execute("PRAGMA synchronous=NORMAL")
    settings = CacheSettings(service_name=config.service_name, configuration=config.redis_url)
    try:
        async with HybridCache(settings) as cache:
            if not await cache.wait_until_connected(WORKER_START_TIMEOUT / 2):
                print(f"worker {config.worker}: backplane not connected", file=sys.stderr)
                return 2
            config.ready_file.write_text("ready")
            go_deadline = time.monotonic() + WORKER_START_TIMEOUT
            while not config.go_file.exists():
                if time.monotonic() > go_deadline:
                    print(f"worker {config.worker}: no go from the parent", file=sys.stderr)
                    return 3
                await asyncio.sleep(0.01)
            start_at, deadline = (float(x) for x in config.go_file.read_text().split())
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            worker = Worker(config, cache, database)
            try:
                await worker.run(deadline)
            finally:
                worker.write_history()
    finally:
        database.close()
    return 0


# --------------------------------------------------------------------------------------------------- the parent


@dataclass
class RunResult:
    """What one run found; :meth:`as_dict` is the JSON result file."""

    fault: str
    seed: int
    seconds: float
    self_check: bool
    reads: int
    writes: int
    violations: list[Violation]
    evicted_keys: int | None
    windows: list[dict[str, Any]]
    sources: dict[str, int]
    violation_sources: dict[str, int]
    write_kinds: dict[str, int]
    workers: list[dict[str, Any]]
    server: dict[str, Any]
    doc_rows: str
    policy: dict[str, Any]
    duration: float
    command: str
    stalls: dict[str, Any] = field(default_factory=dict)  # see _stall_facts
    # Reads (within their bound or not) that returned an older version than a write that had returned before they
    # started on another worker, and the longest such lag: what the bounds were actually needed for.
    lagging_reads: int = 0
    worst_lag_ms: float = 0.0
    contexts: dict[int, dict[str, Any]] = field(default_factory=dict)  # by id() of a violation: see _Context
    json_path: str = ""

    @property
    def stale_reads(self) -> int:
        return len(self.violations)

    @property
    def worst_staleness_ms(self) -> float:
        return max((1000 * v.staleness for v in self.violations), default=0.0)

    @property
    def label(self) -> str:
        return f"{self.fault} (self-check)" if self.self_check else self.fault

    def describe(self, violation: Violation) -> dict[str, Any]:
        return {**violation.as_dict(), **self.contexts.get(id(violation), {})}

    def examples(self, count: int = 3) -> list[Violation]:
        """The worst violation first, then the first ones of the run (by read start)."""
        if not self.violations:
            return []
        worst = max(self.violations, key=lambda v: v.staleness)
        rest = [v for v in sorted(self.violations, key=lambda v: v.read.started) if v is not worst]
        return [worst, *rest[: count - 1]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "self_check": self.self_check,
            "seed": self.seed,
            "seconds": self.seconds,
            "command": self.command,
            "reads": self.reads,
            "writes": self.writes,
            "stale_reads": self.stale_reads,
            "worst_staleness_ms": round(self.worst_staleness_ms, 1),
            "lagging_reads": self.lagging_reads,
            "worst_lag_ms": self.worst_lag_ms,
            "evicted_keys": self.evicted_keys,
            "doc_rows": self.doc_rows,
            "policy": self.policy,
            "windows": self.windows,
            "stalls": self.stalls,
            "read_sources": self.sources,
            "violation_sources": self.violation_sources,
            "write_kinds": self.write_kinds,
            "examples": [self.describe(v) for v in self.examples(5)],
            "violations": [self.describe(v) for v in self.violations[:_DESCRIBED]],
            "workers": self.workers,
            "server": self.server,
            "duration_seconds": round(self.duration, 1),
        }

    def summary(self) -> str:
        lines = [format_table([self])]
        for window in self.windows:
            lines.append(
                f"  {window['fault']}: action {window['action_seconds']:.2f} s, recovered "
                f"{window['recovered_seconds_after_action']:.2f} s after it"
                + (
                    f", NOT recovered: workers {window['workers_not_recovered']}"
                    if window["workers_not_recovered"]
                    else ""
                )
                + (f"; {window['note']}" if window["note"] else "")
            )
        if self.stalls.get("count"):
            lines.append(
                f"  stalls: {self.stalls['count']} (longest {self.stalls['longest_ms']} ms); "
                f"{self.stalls['reads_extended']} reads held to 50 ms + a stall of their own process"
            )
        for worker in self.workers:
            stats = worker["stats"]
            lines.append(
                f"  worker {worker['worker']}: l1Hits={stats['l1Hits']} l2Hits={stats['l2Hits']} "
                f"handlerRuns={stats['handlerRuns']} staleSetsPrevented={stats['staleSetsPrevented']} "
                f"invalidationFailures={stats['invalidationFailures']} l2Errors={stats['l2Errors']} "
                f"resyncs={stats['backplaneResyncs']} gaps={stats['backplaneGaps']} circuit={stats['circuit']} "
                f"errors={worker['error_count']}"
            )
        for violation in self.examples(3):
            lines.append(f"  stale: {violation}")
            context = self.contexts.get(id(violation))
            if context:
                lines.append(
                    f"    reader's longest pause {context['reader_longest_pause_ms']} ms "
                    f"({context['reader_reads_in_between']} reads in between), "
                    f"it had read the new version before: {context['reader_saw_new_before']}, "
                    f"another worker had: {context['other_workers_saw_new_before']}; "
                    f"writer: {context['writer_state']}; reader: {context['reader_state']}"
                )
        if self.json_path:
            lines.append(f"  result: {self.json_path}")
        return "\n".join(lines)


_DESCRIBED = 500  # violations written to the JSON result with their context

TABLE_HEADER = (
    f"{'fault':<30} {'reads':>8} {'writes':>7} {'stale reads':>11} {'worst ms':>9} "
    f"{'lagging':>8} {'lag ms':>8} {'evicted':>8}  seed"
)


def format_table(results: Iterable[RunResult], *, header: bool = True) -> str:
    rows = [TABLE_HEADER] if header else []
    for r in results:
        evicted = "-" if r.evicted_keys is None else str(r.evicted_keys)
        rows.append(
            f"{r.label:<30} {r.reads:>8} {r.writes:>7} {r.stale_reads:>11} {r.worst_staleness_ms:>9.1f} "
            f"{r.lagging_reads:>8} {r.worst_lag_ms:>8.1f} {evicted:>8}  {r.seed}"
        )
    return "\n".join(rows)


@dataclass
class _History:
    reads: list[Read] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    health: list[HealthEvent] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)


def _load_histories(paths: Sequence[Path]) -> _History:
    history = _History()
    for worker, path in enumerate(paths):
        summary: dict[str, Any] | None = None
        with path.open() as lines:
            for line in lines:
                record = json.loads(line)
                tag = record[0]
                if tag == "r":
                    history.reads.append(Read(record[1], worker, record[2], record[3], record[4]))
                elif tag == "w":
                    history.writes.append(Write(record[1], record[2], worker, record[3], record[4]))
                elif tag == "h":
                    history.health.append(HealthEvent(worker, *record[1:]))
                elif tag == "p":
                    history.stalls.append(Stall(worker, record[1], record[2]))
                elif tag == "s":
                    summary = {"worker": worker, **record[1]}
        if summary is None:
            raise RuntimeError(f"worker {worker}'s history has no summary line: it did not finish ({path})")
        history.summaries.append(summary)
    return history


class _Context:
    """What the merged history says around a violation, to tell a missed invalidation from a stalled process."""

    def __init__(self, history: _History) -> None:
        self.reads: dict[int, list[Read]] = defaultdict(list)
        for read in sorted(history.reads, key=lambda r: r.started):
            self.reads[read.worker].append(read)
        self.starts = {worker: [r.started for r in reads] for worker, reads in self.reads.items()}
        self.health: dict[int, list[HealthEvent]] = defaultdict(list)
        for event in sorted(history.health, key=lambda e: e.at):
            self.health[event.worker].append(event)

    def describe(self, violation: Violation) -> dict[str, Any]:
        """``reader_longest_pause_ms``: the longest time between read starts on the reading worker from the write's
        return to this read (a long one means its event loop or process did not run: a stall, not a lost message);
        ``reader_saw_new_before``: that worker had already read the new version of this key in that span (it then
        went back: no stall explains that); the writer's and the reader's recorded cache state at the time."""
        read, write = violation.read, violation.write
        starts = self.starts.get(read.worker, [])
        low = bisect.bisect_left(starts, write.done)
        high = bisect.bisect_left(starts, read.started)
        span = [write.done, *starts[low:high], read.started]
        between = self.reads[read.worker][low:high]
        others = [
            r
            for worker, reads in self.reads.items()
            if worker != read.worker
            for r in reads[
                bisect.bisect_left(self.starts[worker], write.done) : bisect.bisect_left(
                    self.starts[worker], read.started
                )
            ]
            if r.key == read.key
        ]
        return {
            "reader_longest_pause_ms": round(1000 * max(b - a for a, b in itertools.pairwise(span)), 1),
            "reader_reads_in_between": len(between),
            "reader_saw_new_before": any(r.key == read.key and r.version >= write.version for r in between),
            "other_workers_saw_new_before": any(r.version >= write.version for r in others),
            "writer_state": _state(_last_before(self.health.get(write.worker, []), write.done)),
            "reader_state": _state(_last_before(self.health.get(read.worker, []), read.started)),
        }


def _state(event: HealthEvent | None) -> str:
    if event is None:
        return "unknown"
    return f"backplane {event.backplane}, {event.pending} pending, {event.resyncs} resyncs, circuit {event.circuit}"


def _create_database(path: Path, keys: Iterable[str]) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as database:
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE items (key TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        database.executemany("INSERT INTO items VALUES (?, 0)", ((k,) for k in keys))


def _worker_environment() -> dict[str, str]:
    """This environment, with the repository first on ``PYTHONPATH`` so ``-m tests.faults...`` imports."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes; every one still running on the way out is killed and reaped."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


def run_history(
    fault: str,
    *,
    seconds: float = DEFAULT_SECONDS,
    seed: int | None = None,
    self_check: bool = False,
    json_path: Path | None = None,
    keep: bool = False,
    verbose: bool = True,
) -> RunResult:
    """One run of :data:`WORKERS` processes against a private server with ``fault`` injected; checks the merged
    history and writes the JSON result (to ``json_path``, else into :data:`RESULTS_DIRECTORY`). The run's own temp
    dir (SQLite file, histories, worker logs) is removed afterwards, even on error, unless ``keep``.

    Raises on a harness failure (a worker that did not start or finish, a fault that could not be injected); stale
    reads are results, not errors."""
    spec = FAULTS[fault]
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    command = (
        f".venv/bin/python -m tests.faults.history_checker --fault {fault} --seconds {seconds:g} --seed {seed}"
        + (" --self-check" if self_check else "")
    )
    directory = Path(tempfile.mkdtemp(prefix=f"hc-history-{fault}-"))
    try:
        result = _run_in(directory, spec, seconds=seconds, seed=seed, self_check=self_check, command=command)
    finally:
        if keep:
            print(f"  histories and worker logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    label = f"{fault}-self-check" if self_check else fault
    target = json_path or RESULTS_DIRECTORY / f"{label}-{seed}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.as_dict(), indent=1))
    result.json_path = str(target)
    if verbose:
        print(result.summary(), flush=True)
    return result


def _run_in(
    directory: Path, spec: FaultSpec, *, seconds: float, seed: int, self_check: bool, command: str
) -> RunResult:
    """:func:`run_history` in ``directory`` (the SQLite file, the workers' configs, logs and histories)."""
    began = time.monotonic()
    keys = [key_of(g, i) for g in range(spec.groups) for i in range(spec.items_per_group)]
    database = directory / "truth.sqlite"
    _create_database(database, keys)
    server = RedisServer(extra_args=spec.server_args)
    try:
        server.start()
        with _processes() as processes:
            service_name = f"hist-{uuid.uuid4().hex[:8]}"  # one namespace (and channel) for every worker
            configs = [
                WorkerConfig(
                    worker=n,
                    redis_url=server.url,
                    service_name=service_name,
                    database=str(database),
                    directory=str(directory),
                    seed=seed,
                    groups=spec.groups,
                    items_per_group=spec.items_per_group,
                    payload_bytes=spec.payload_bytes,
                    skip_invalidation=self_check and n == 0,
                )
                for n in range(WORKERS)
            ]
            logs = [directory / f"worker-{c.worker}.log" for c in configs]
            for config, log in zip(configs, logs, strict=True):
                config_file = directory / f"worker-{config.worker}.json"
                config_file.write_text(json.dumps(dataclasses.asdict(config)))
                with log.open("wb") as out:
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "tests.faults.history_checker", "--worker", str(config_file)],
                            cwd=REPO_ROOT,
                            env=_worker_environment(),
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )

            def check_alive(what: str) -> None:
                for n, process in enumerate(processes):
                    if process.poll() is not None and process.returncode != 0:
                        raise RuntimeError(
                            f"worker {n} exited with {process.returncode} {what}; log tail:\n{_tail(logs[n])}"
                        )

            ready_deadline = time.monotonic() + WORKER_START_TIMEOUT
            while not all(c.ready_file.exists() for c in configs):
                check_alive("before it was ready")
                if time.monotonic() > ready_deadline:
                    raise RuntimeError(f"workers not ready within {WORKER_START_TIMEOUT}s")
                time.sleep(0.02)
            start_at = time.monotonic() + 0.1
            deadline = start_at + seconds
            go = directory / "go.tmp"
            go.write_text(f"{start_at} {deadline}")
            go.rename(configs[0].go_file)  # atomically: a worker never reads half a file

            injections: list[Injection] = []
            try:
                for fraction, action in spec.schedule:
                    at = start_at + fraction * seconds
                    while time.monotonic() < at:
                        check_alive("during the run")
                        time.sleep(min(0.05, max(0.0, at - time.monotonic())))
                    for earlier in injections:
                        earlier.finish(timeout=15.0)
                    injections.append(action(server))
            finally:
                for injection in injections:
                    injection.finish(timeout=15.0)

            for n, process in enumerate(processes):
                try:
                    code = process.wait(max(0.1, deadline + WORKER_EXIT_GRACE - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"worker {n} did not finish; log tail:\n{_tail(logs[n])}") from None
                if code != 0:
                    raise RuntimeError(f"worker {n} exited with {code}; log tail:\n{_tail(logs[n])}")
        server_info = _server_facts(server, spec)
    finally:
        server.close()

    history = _load_histories([c.history_file for c in configs])
    policy, windows = policy_for(spec, injections, history.health, run_end=deadline, stalls=history.stalls)
    violations = find_violations(history.reads, history.writes, policy)
    lagging = find_violations(history.reads, history.writes, BoundPolicy(propagation=0.0))
    context = _Context(history)
    result = RunResult(
        fault=spec.name,
        seed=seed,
        seconds=seconds,
        self_check=self_check,
        reads=len(history.reads),
        writes=len(history.writes),
        violations=violations,
        evicted_keys=server_info.get("evicted_keys") if spec.expects_evictions else None,
        windows=windows,
        sources=dict(Counter(r.source for r in history.reads)),
        violation_sources=dict(Counter(v.read.source for v in violations)),
        write_kinds=dict(Counter(w.kind for w in history.writes)),
        workers=history.summaries,
        server=server_info,
        doc_rows=spec.doc_rows,
        policy={
            "propagation_s": policy.propagation,
            "outage_allowance_s": spec.outage_allowance,
            "publish_retry_s": PUBLISH_RETRY_BOUND if spec.writer_may_not_publish else None,
            "read_windows": policy.read_windows,
            "publish_windows": policy.publish_windows,
            "stall_threshold_s": STALL_THRESHOLD,
        },
        stalls=_stall_facts(history, policy),
        lagging_reads=len(lagging),
        worst_lag_ms=round(max((1000 * v.staleness for v in lagging), default=0.0), 1),
        duration=time.monotonic() - began,
        command=command,
    )
    result.contexts = {id(v): context.describe(v) for v in [*violations[:_DESCRIBED], *result.examples(5)]}
    return result


def _stall_facts(history: _History, policy: BoundPolicy) -> dict[str, Any]:
    """How often the workers' event loops were held, and how many reads that gave a longer allowance."""
    longest = max((s.end - s.start for s in history.stalls), default=0.0)
    extended = sum(1 for r in history.reads if policy.stall_allowance(r) > policy.propagation)
    return {"count": len(history.stalls), "longest_ms": round(1000 * longest, 1), "reads_extended": extended}


def _server_facts(server: RedisServer, spec: FaultSpec) -> dict[str, Any]:
    with _admin(server) as admin:
        stats = admin.info("stats")
        memory = admin.info("memory")
        return {
            "evicted_keys": int(stats.get("evicted_keys", 0)),
            "keys": int(admin.dbsize()),
            "used_memory_peak": memory.get("used_memory_peak_human"),
            "maxmemory": memory.get("maxmemory_human"),
            "maxmemory_policy": memory.get("maxmemory_policy"),
            "args": list(spec.server_args),
            "note": "INFO stats restarts with the server: counts are since the last restart",
        }


# ----------------------------------------------------------------------------------------------------- the script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.history_checker", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--fault", action="append", choices=[*FAULTS, "all"], help="repeatable; 'all' runs every one")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--seed", type=int, default=None, help="random per run when omitted (printed)")
    parser.add_argument("--self-check", action="store_true", help="worker 0 skips invalidation: must find violations")
    parser.add_argument("--json", type=Path, default=None, help="result file (one run) or directory (several)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the histories and worker logs")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        config = WorkerConfig(**json.loads(args.worker.read_text()))
        return asyncio.run(worker_main(config))

    faults = args.fault or ["none"]
    names = list(FAULTS) if "all" in faults else faults
    results = []
    for name in names:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
        json_path = args.json
        if json_path is not None and len(names) > 1:
            json_path = json_path / f"{name}-{seed}.json"
        results.append(
            run_history(
                name, seconds=args.seconds, seed=seed, self_check=args.self_check, json_path=json_path, keep=args.keep
            )
        )
    if len(results) > 1:
        print(format_table(results))
    if args.self_check:
        return 0 if all(r.stale_reads for r in results) else 1  # the self-check passes when it finds stale reads
    return 0 if not any(r.stale_reads for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
