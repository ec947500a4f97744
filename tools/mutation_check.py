"""Remove one protection at a time and check that some test fails without it.

Every guarantee in docs/invalidation.md rests on a handful of protections in the read, fill and write paths and in
the Lua scripts. A protection whose removal leaves every test green is not protected by the suite: this script
finds them. For each mutation below it copies ``src/``, ``tests/`` and ``harness/`` to a scratch directory (the
work tree is never touched), applies the one edit, runs the tests named for it there with the repository's
interpreter, and reports whether they failed (the mutation was *caught*) or passed (it *survived*).

Usage (from the repository root, with the dev environment installed)::

    .venv/bin/python tools/mutation_check.py [--json PATH] [NAME ...]

With no NAME every mutation runs. Exit status 1 when a mutation survived or an edit no longer applies (the code
moved: update the mutation). The table it prints is the one in docs/invalidation.md §6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """One protection removed: ``find`` (which must occur exactly once in ``path``) replaced by ``replace``."""

    name: str
    what: str
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "conditional-set",
        "L2 store is a plain SET instead of the conditional script",
        "src/hybridcache/_core/fill_path.py",
        "                if self._stale_set_protection:\n                    stored = await self._l2.set_if_current(",
        "                if False:\n                    stored = await self._l2.set_if_current(",
        (
            "tests/integration/test_backplane_faults.py::test_a_restart_changes_the_epoch_and_old_stamps_never_become_current",
        ),
    ),
    Mutation(
        "l1-store-log-check",
        "a computed value enters L1 although an invalidation covering it was applied during the load",
        "src/hybridcache/_core/fill_path.py",
        "        if self._stale_set_protection and self._coherence.log.covers_since(\n            capture.mark,",
        "        if False and self._coherence.log.covers_since(\n            capture.mark,",
        (
            "tests/integration/test_write_path_races.py",
            "tests/integration/test_batch_races.py::test_without_redis_a_batch_load_that_overlapped_a_removal_does_not_enter_l1",
        ),
    ),
    Mutation(
        "l1-put-stamp-check",
        "put_l1 does not re-check the stamp against the trusted table",
        "src/hybridcache/_core/fill_path.py",
        '            if not table.is_current(epoch or "", generations, fields):\n                return',
        "            if False:\n                return",
        ("tests/integration/test_write_path_races.py",),
    ),
    Mutation(
        "l2-promotion-log-check",
        "an L2 hit is promoted to L1 although an invalidation of it was applied while its GET was in flight",
        "src/hybridcache/_core/read_path.py",
        "        if self._l1 is not None and not self._coherence.log.covers_since(\n",
        "        if self._l1 is not None and True or self._coherence.log.covers_since(\n",
        (
            "tests/integration/test_write_path_races.py",
            "tests/integration/test_batch_races.py::test_a_batch_l2_hit_that_raced_a_received_removal_is_not_promoted_to_l1",
        ),
    ),
    Mutation(
        "l2-stamp-check",
        "an L2 entry is served without checking its stamp against the generations",
        "src/hybridcache/_core/read_path.py",
        "        if not current:\n            self.counters.stale_reads_rejected += 1",
        "        if False:\n            self.counters.stale_reads_rejected += 1",
        ("tests/integration/test_invalidation.py",),
    ),
    Mutation(
        "untrusted-l1-age-limit",
        "while untrusted, L1 serves entries of any age",
        "src/hybridcache/_core/read_path.py",
        "            return entry.created >= self._clock() - self._disconnected_ttl",
        "            return True",
        ("tests/integration/test_backplane_faults.py",),
    ),
    Mutation(
        "untrusted-known-stale",
        "while untrusted, L1 serves entries the table knows are stale (item 2)",
        "src/hybridcache/_core/read_path.py",
        "            if table.known_stale(entry.epoch, entry.generations, entry.fields):",
        "            if False:",
        ("tests/integration/test_untrusted_table.py",),
    ),
    Mutation(
        "detach-loads-on-invalidation",
        "an invalidation does not detach in-flight loads of the keys it covers",
        "src/hybridcache/_core/loads.py",
        "            flights.forget(full_key)\n            leads.pop(full_key, None)",
        "            pass",
        (
            "tests/integration/test_invalidation.py",
            "tests/integration/test_batch_races.py::test_a_read_starting_after_an_invalidation_does_not_join_an_older_batch_load",
        ),
    ),
    Mutation(
        "second-local-apply",
        "the writer does not apply its invalidation again after the script returned",
        "src/hybridcache/_core/coherence.py",
        '        self.apply_locally(\n            full_keys, [f[2:] for f in fields if f.startswith("p:")],',
        '        (lambda *_: None)(\n            full_keys, [f[2:] for f in fields if f.startswith("p:")],',
        ("tests/integration/test_write_path_races.py",),
    ),
    Mutation(
        "queued-skips-l2",
        "with invalidations queued, L2 is read without publishing them first",
        "src/hybridcache/_core/read_path.py",
        "        if self._coherence.pending and not await self._coherence.pending.flush():",
        "        if False:",
        ("tests/integration/test_write_path_races.py",),
    ),
    Mutation(
        "retry-past-breaker",
        "queued invalidations wait for the circuit breaker (item 1)",
        "src/hybridcache/_core/pending.py",
        "            if await self.flush(past_breaker=True):\n                return",
        "            if await self.flush(past_breaker=False):\n                return",
        (
            "tests/integration/test_backplane_faults.py::test_a_write_during_a_3s_freeze_reaches_another_instance_within_the_pause_plus_1_5s",
        ),
    ),
    Mutation(
        "close-flush",
        "close() drops queued invalidations (item 9)",
        "src/hybridcache/_core/pending.py",
        "                while self._queue:\n                    if await self.flush(past_breaker=True):",
        "                while False:\n                    if await self.flush(past_breaker=True):",
        (
            "tests/integration/test_backplane_faults.py::test_close_publishes_queued_invalidations_when_redis_answers_within_its_deadline",
        ),
    ),
    Mutation(
        "resync-detaches-loads",
        "a resync leaves in-flight loads attached (item 3)",
        "src/hybridcache/_core/coherence.py",
        "        self._loads.detach_all()\n        if self._l1",
        "        if self._l1",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "resync-distrusts-first",
        "the table stays trusted while a gap is resynchronised (item 11)",
        "src/hybridcache/_redis/backplane.py",
        "        self._lose_trust()\n        await self._follow_master(pubsub)\n",
        "        await self._follow_master(pubsub)\n",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "resync-trusts-redis",
        "a same-epoch resync keeps counters above Redis's (item 12)",
        "src/hybridcache/_generations.py",
        "        fresh = dict(counters)\n",
        "        fresh = dict(counters) if changed else {\n"
        "            f: max(counters.get(f, 0), self._counters.get(f, 0)) for f in {**self._counters, **counters}\n"
        "        }\n",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "resync-keeps-concurrent-bumps",
        "a resync answered before this instance's own invalidation undoes its counters",
        "src/hybridcache/_redis/backplane.py",
        "        self._table.begin_resync()\n",
        "",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "gap-message-counters-dropped",
        "the message that revealed a gap is applied with its own counters (item 12)",
        "src/hybridcache/_redis/backplane.py",
        '                payload = {**payload, "g": dict.fromkeys(payload["g"], 0)}',
        "                pass",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "sequence-went-back",
        "a message counter below the last number received goes unnoticed (item 7)",
        "src/hybridcache/_redis/backplane.py",
        "                if published < seen:",
        "                if False:",
        ("tests/integration/test_resync.py",),
    ),
    Mutation(
        "capture-token-compare",
        "the conditional set does not compare the key's capture token (item 4)",
        "src/hybridcache/_redis/scripts.py",
        "if redis.call('GET', KEYS[2]) ~= ARGV[3] or string.sub(ARGV[3], -(#server + 1)) ~= '@' .. server then",
        "if false then",
        ("tests/integration/test_vanished_meta_keys.py", "tests/integration/test_restored_snapshot.py"),
    ),
    Mutation(
        "epoch-server-check",
        "scripts accept a generation hash written by another server (item 5)",
        "src/hybridcache/_redis/scripts.py",
        "  if not epoch or stored[2] ~= server then",
        "  if not epoch then",
        ("tests/integration/test_restored_snapshot.py",),
    ),
    Mutation(
        "recent-removals",
        "an L2 entry written before this instance removed the key is served when Redis lost the DEL (item 15)",
        "src/hybridcache/_core/read_path.py",
        "        if current and removals and removals.refuses(",
        "        if False and removals.refuses(",
        ("tests/integration/test_restored_snapshot.py",),
    ),
    Mutation(
        "new-epoch-resync",
        "a capture that finds a new epoch in Redis does not ask for a resync (item 6)",
        "src/hybridcache/_core/fill_path.py",
        "            self._backplane.request_resync()",
        "            pass",
        ("tests/integration/test_vanished_meta_keys.py",),
    ),
    Mutation(
        "resync-follows-master",
        "a resync trusts the table without moving the subscription to the master the sentinels name (item 15)",
        "src/hybridcache/_redis/backplane.py",
        "        self._lose_trust()\n        await self._follow_master(pubsub)\n",
        "        self._lose_trust()\n",
        (
            "tests/integration/test_sentinel.py::"
            "test_a_resync_after_a_failover_moves_the_subscription_to_the_new_master",
        ),
    ),
    Mutation(
        "generations-are-times",
        "a bump adds one instead of taking the server's time, so a swept field comes back low (item 8)",
        "src/hybridcache/_redis/scripts.py",
        "math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') + 1, now)",
        "tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') + 1",
        ("tests/integration/test_generation_retention.py",),
    ),
    Mutation(
        "retention-cuts-lifetime",
        "an L2 entry keeps its full TTL, outliving a bump the sweep forgets (item 8)",
        "src/hybridcache/_core/fill_path.py",
        "        if ttl_ms > life_ms:\n",
        "        if False:\n",
        ("tests/integration/test_generation_retention.py",),
    ),
    Mutation(
        "stamp-floor",
        "a stamp records no floor: an entry stored after Redis forgot a field looks stale to a mirror that has it",
        "src/hybridcache/_redis/l2.py",
        "        if floor > 0:\n            stamp[FLOOR_FIELD] = floor\n",
        "",
        ("tests/integration/test_generation_retention.py",),
    ),
    Mutation(
        "batch-conditional-set",
        "a batch stores its values with plain SETs instead of the conditional script (issue 16)",
        "src/hybridcache/_core/fill_path.py",
        "                if self._stale_set_protection:\n"
        "                    stored = await self._l2.set_many_if_current(",
        "                if False:\n                    stored = await self._l2.set_many_if_current(",
        ("tests/integration/test_batch_races.py::test_a_batch_load_overtaken_by_an_invalidation_is_not_stored",),
    ),
    Mutation(
        "batch-capture-before-factory",
        "a batch captures its keys' generations after its factory ran instead of before (issue 16)",
        "src/hybridcache/_core/batch.py",
        "        captures = await self._filler.capture_many(plans)\n"
        "        self.counters.handler_runs += len(plans)\n"
        "        mapping = await self._factory(plans, keys, captures, factory_many, fallback)\n",
        "        self.counters.handler_runs += len(plans)\n"
        "        mapping = await self._factory(plans, keys, [], factory_many, fallback)\n"
        "        captures = await self._filler.capture_many(plans)\n",
        ("tests/integration/test_batch_races.py::test_a_batch_load_overtaken_by_an_invalidation_is_not_stored",),
    ),
    Mutation(
        "batch-joins-loads",
        "a batch loads a key again although a load of it is in flight in this process (issue 16)",
        "src/hybridcache/_core/batch.py",
        "            elif (flight := loads.flight_of(full_key)) is not None:",
        "            elif False and (flight := loads.flight_of(full_key)) is not None:",
        ("tests/integration/test_batch.py::test_overlapping_batches_and_single_keys_load_each_key_once",),
    ),
    Mutation(
        "batch-publishes-loads",
        "a batch's loads are not published as the keys' loads, so single-key callers load again (issue 16)",
        "src/hybridcache/_core/batch.py",
        "                loads.adopt(full_key, load)",
        "                pass",
        ("tests/integration/test_batch.py::test_overlapping_batches_and_single_keys_load_each_key_once",),
    ),
    Mutation(
        "batch-queued-skips-l2",
        "with invalidations queued, a batch reads L2 without publishing them first (issue 16)",
        "src/hybridcache/_core/read_path.py",
        "        if pending and not await pending.flush():",
        "        if False:",
        (
            "tests/integration/test_batch_races.py::"
            "test_a_batch_read_while_a_queued_invalidation_cannot_be_published_skips_l2",
        ),
    ),
    Mutation(
        "batch-untrusted-check",
        "while untrusted, a batch serves its L2 entries without checking their stamps against Redis (issue 16)",
        "src/hybridcache/_core/read_path.py",
        "            verdicts = await self._are_current_remotely(",
        "            verdicts = [True] * len(entries) or await self._are_current_remotely(",
        ("tests/integration/test_batch_races.py::test_while_untrusted_a_batch_checks_its_entries_against_redis",),
    ),
    Mutation(
        "outbox-in-transaction",
        "a unit of work commits without writing the staged invalidations to the outbox (issue 15)",
        "src/hybridcache/persistence/unit_of_work.py",
        "        record = await staged.write(self.session) if staged is not None else None\n",
        "        record = None\n",
        (
            "tests/integration/test_outbox.py::test_a_committed_command_writes_its_row_in_the_transaction_and_marks_it_published",
        ),
    ),
    Mutation(
        "outbox-skip-locked",
        "the PostgreSQL relay reads due rows without locking them, so two relays publish the same rows",
        "src/hybridcache/persistence/outbox.py",
        "                due = due.with_for_update(skip_locked=True)\n",
        "                pass\n",
        ("tests/integration/test_outbox.py::test_relays_sharing_a_database_publish_each_row_once",),
    ),
    Mutation(
        "outbox-sqlite-write-lock",
        "the SQLite relay does not take the write lock first, so two relays publish the same rows",
        "src/hybridcache/persistence/outbox.py",
        '                await connection.exec_driver_sql("BEGIN IMMEDIATE")\n',
        "                pass\n",
        ("tests/integration/test_outbox.py::test_relays_sharing_a_database_publish_each_row_once",),
    ),
    Mutation(
        "outbox-relay-past-breaker",
        "the relay's publication waits for an open circuit breaker to close",
        "src/hybridcache/_core/coherence.py",
        "past_breaker=not queue",
        "past_breaker=False",
        (
            "tests/integration/test_outbox.py::test_the_relay_publishes_as_soon_as_redis_answers_even_with_the_breaker_open",
        ),
    ),
    Mutation(
        "outbox-relay",
        "no relay publishes what a dead writer left (the outbox is written but never read)",
        "src/hybridcache/persistence/outbox.py",
        "        if oldest is not None and oldest <= now - self.settings.grace_period_seconds:\n",
        "        if False:\n",
        ("tests/dealership/test_outbox_crash.py", "tests/integration/test_outbox.py"),
    ),
    # The sync API (docs/sync.md): the calling thread's read-only L1 hit, fork safety, and calls that must end.
    Mutation(
        "sync-thread-hit-version",
        "a calling thread is served an L1 entry the loop has not validated against the current table version",
        "src/hybridcache/cache.py",
        "        if entry is None or now >= entry.refresh_at or entry.checked != self._table.version:\n",
        "        if entry is None or now >= entry.refresh_at:\n",
        (
            "tests/unit/test_thread_reads.py::test_after_a_prefix_invalidation_a_thread_is_not_served_until_the_loop_revalidated",
            "tests/integration/test_sync_consistency.py::test_no_read_through_the_sync_api_is_older_than_a_propagated_invalidation",
        ),
    ),
    Mutation(
        "sync-thread-hit-refresh",
        "a calling thread is served an entry due for an eager refresh (so the refresh never starts)",
        "src/hybridcache/cache.py",
        "        if entry is None or now >= entry.refresh_at or entry.checked != self._table.version:\n",
        "        if entry is None or entry.checked != self._table.version:\n",
        (
            "tests/unit/test_thread_reads.py::test_an_entry_due_for_refresh_or_expired_is_left_to_the_loop_and_not_removed",
        ),
    ),
    Mutation(
        "sync-find-expiry",
        "MemoryStore.find returns expired entries to other threads",
        "src/hybridcache/_memory.py",
        "        if entry is None or entry.expires_at <= now:\n            return None\n        entry.visited = True",
        "        if entry is None:\n            return None\n        entry.visited = True",
        ("tests/unit/test_thread_reads.py",),
    ),
    Mutation(
        "sync-fork-hook",
        "no at-fork hook: a forked child uses the parent's cache, loop and sockets",
        "src/hybridcache/sync.py",
        "            os.register_at_fork(after_in_child=_after_fork_in_child)\n",
        "            pass\n",
        (
            "tests/integration/test_sync_fork.py::test_prefork_workers_get_their_own_loop_and_connections_and_see_each_others_invalidations",
        ),
    ),
    Mutation(
        "sync-fork-pid-check",
        "a child forked without Python's hooks is not repaired by its first miss",
        "src/hybridcache/sync.py",
        "        if runner is None or self._pid != os.getpid():\n",
        "        if runner is None:\n",
        (
            "tests/integration/test_sync_fork.py::test_a_fork_that_skips_pythons_hooks_is_repaired_by_after_fork_or_by_the_first_miss",
        ),
    ),
    Mutation(
        "sync-abandoned-request",
        "a factory request an interrupted caller never read is left unanswered (its load waits for ever)",
        "src/hybridcache/sync.py",
        "            if not done and not item.done():\n                _run_in_own_thread(",
        "            if False:\n                _run_in_own_thread(",
        ("tests/unit/test_sync_handoff.py::test_a_request_an_interrupted_caller_never_read_is_run_elsewhere",),
    ),
    Mutation(
        "sync-stopping-refusal",
        "a call that reaches a stopping loop is started anyway (it may outlive the loop and hang its caller)",
        "src/hybridcache/sync.py",
        "        if self._runner.stopping:  # close() began",
        "        if False:  # close() began",
        ("tests/unit/test_sync_handoff.py::test_a_call_that_reaches_a_stopping_loop_is_refused_not_left_pending",),
    ),
    Mutation(
        "epoch-moved-distrusts",
        "a publication answered in a new epoch leaves the writer's table trusted until its message comes back",
        "src/hybridcache/_core/coherence.py",
        "            if self._epoch_moved is not None:\n                self._epoch_moved()\n",
        "",
        (
            "tests/integration/test_vanished_meta_keys.py::"
            "test_a_writer_does_not_read_back_what_it_invalidated_when_redis_drew_a_new_epoch",
        ),
    ),
)


@dataclass(frozen=True)
class Outcome:
    name: str
    what: str
    result: str  # "caught", "survived" or "does not apply"
    seconds: float
    tests: tuple[str, ...]


def run(mutation: Mutation, python: str) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hc-mutation-") as scratch:
        work = Path(scratch)
        for part in ("src", "tests", "harness"):
            shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        target = work / mutation.path
        text = target.read_text(encoding="utf-8")
        if text.count(mutation.find) != 1:
            return Outcome(mutation.name, mutation.what, "does not apply", 0.0, mutation.tests)
        target.write_text(text.replace(mutation.find, mutation.replace), encoding="utf-8")
        environment = {**os.environ, "PYTHONPATH": f"{work / 'src'}{os.pathsep}{work}"}
        command = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests]
        completed = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True, check=False)
    result = "caught" if completed.returncode == 1 else "survived" if completed.returncode == 0 else "error"
    if result == "error":
        print(completed.stdout[-2000:], completed.stderr[-2000:], sep="\n", file=sys.stderr)
    return Outcome(mutation.name, mutation.what, result, time.monotonic() - started, mutation.tests)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    arguments = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not arguments.names or m.name in arguments.names]
    outcomes = []
    print(f"{'mutation':32} {'result':15} {'seconds':>8}  what it removes")
    for mutation in chosen:
        outcome = run(mutation, sys.executable)
        outcomes.append(outcome)
        print(f"{outcome.name:32} {outcome.result:15} {outcome.seconds:8.1f}  {outcome.what}", flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2) + "\n", encoding="utf-8")
    caught = sum(o.result == "caught" for o in outcomes)
    print(f"{caught} of {len(outcomes)} mutations caught")
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
