"""CircuitBreaker: every transition, the single-probe rule, and call() — on an injected clock, no sleeping."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hybridcache._resilience import CircuitBreaker, CircuitState
from hybridcache.errors import CircuitOpenError, HybridCacheError
from tests.support.waiting import wait_until


class FakeClock:
    """A monotonic clock the test moves by hand; counts reads so the hot path can be shown not to read it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    pass


def state(breaker: CircuitBreaker) -> CircuitState:
    # A call, not the property, so mypy does not carry a narrowed state across the breaker's own methods.
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, break_duration=10.0, probe_timeout=2.0, clock=clock)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow_request()
        breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN


def test_closed_allows_without_reading_the_clock(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(1000):
        assert breaker.allow_request()
        breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert f"{state(breaker)}" == "closed"
    assert clock.reads == 0


def test_opens_at_the_threshold_of_consecutive_failures(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allow_request()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.allow_request()
    assert breaker.transitions == {"open": 1, "half-open": 0, "closed": 0}


def test_a_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0


def test_open_refuses_until_the_break_elapses_then_lets_one_probe_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _open(breaker)
    clock.advance(9.999)
    assert not breaker.allow_request()
    assert state(breaker) is CircuitState.OPEN

    clock.advance(0.001)
    assert breaker.allow_request()  # the probe
    assert state(breaker) is CircuitState.HALF_OPEN
    assert [breaker.allow_request() for _ in range(100)] == [False] * 100


def test_successful_probe_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    assert breaker.allow_request()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert all(breaker.allow_request() for _ in range(10))
    assert breaker.transitions == {"open": 1, "half-open": 1, "closed": 1}
    # The count restarted: it takes a full threshold of new failures to open again.
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED


def test_failed_probe_reopens_for_a_new_break_period(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    assert breaker.allow_request()
    clock.advance(1)
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.transitions == {"open": 2, "half-open": 1, "closed": 0}
    clock.advance(9.9)  # 10.9 s after the first opening, but only 9.9 s after the second
    assert not breaker.allow_request()
    clock.advance(0.1)
    assert breaker.allow_request()
    assert state(breaker) is CircuitState.HALF_OPEN


def test_a_silent_probe_stops_blocking_after_probe_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    assert breaker.allow_request()  # this probe never reports
    clock.advance(1.999)
    assert not breaker.allow_request()
    clock.advance(0.001)
    assert breaker.allow_request()  # a second probe
    assert not breaker.allow_request()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED


def test_released_probe_lets_the_next_caller_probe_at_once(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    assert breaker.allow_request()
    breaker.release_probe()
    assert breaker.allow_request()
    assert not breaker.allow_request()
    assert state(breaker) is CircuitState.HALF_OPEN


def test_release_probe_outside_half_open_changes_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.release_probe()
    assert state(breaker) is CircuitState.CLOSED
    _open(breaker)
    breaker.release_probe()
    assert not breaker.allow_request()


def test_late_outcomes_while_open_neither_close_nor_extend(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(5)
    breaker.record_success()  # a call that started before the circuit opened
    assert state(breaker) is CircuitState.OPEN
    breaker.record_failure()
    clock.advance(5)
    assert breaker.allow_request()  # the break still counts from the first opening
    assert breaker.transitions["open"] == 1


def test_disabled_breaker_never_opens(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, enabled=False, clock=clock)
    for _ in range(100):
        assert breaker.allow_request()
        breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.transitions == {"open": 0, "half-open": 0, "closed": 0}


def test_reset_closes_an_open_circuit(breaker: CircuitBreaker) -> None:
    _open(breaker)
    breaker.reset()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allow_request()


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"break_duration": 0}, {"probe_timeout": -1.0}])
def test_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_transitions_are_logged_and_reported(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[CircuitState, CircuitState]] = []
    breaker.on_transition = lambda old, new: seen.append((old, new))
    caplog.set_level(logging.INFO, logger="hybridcache.resilience")

    _open(breaker)
    clock.advance(10)
    breaker.allow_request()
    breaker.record_failure()
    clock.advance(10)
    breaker.allow_request()
    breaker.record_success()

    assert seen == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records[0] == (
        logging.WARNING,
        "Circuit breaker 'redis' opened after 3 consecutive failures; L2 skipped for 10s",
    )
    levels = [level for level, _ in records]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING, logging.INFO, logging.INFO]
    assert records[1][1].startswith("Circuit breaker 'redis' half-open")
    assert records[2][1].startswith("Circuit breaker 'redis' opened again")
    assert records[4][1].startswith("Circuit breaker 'redis' closed")


def test_a_failing_transition_callback_does_not_break_the_breaker(
    breaker: CircuitBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("observer bug")

    breaker.on_transition = explode
    _open(breaker)
    assert not breaker.allow_request()
    assert "on_transition callback failed" in caplog.text


# -- call() ------------------------------------------------------------------------------------------------


async def test_call_records_success_and_failure(breaker: CircuitBreaker) -> None:
    async def ok() -> int:
        return 7

    async def fail() -> int:
        raise Boom

    assert await breaker.call(ok) == 7
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert state(breaker) is CircuitState.OPEN


async def test_call_refuses_without_calling_fn_while_open(breaker: CircuitBreaker) -> None:
    _open(breaker)
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(fn)
    assert calls == 0
    assert isinstance(info.value, HybridCacheError)
    assert info.value.name == "redis"
    assert str(info.value) == "Circuit breaker 'redis' is open; call not attempted"


async def test_call_counts_only_failure_types(breaker: CircuitBreaker) -> None:
    async def key_error() -> None:
        raise KeyError("not a resource failure")

    for _ in range(5):
        with pytest.raises(KeyError):
            await breaker.call(key_error, failure_types=(Boom, OSError))
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0


async def test_non_failure_exception_from_the_probe_releases_it(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)

    async def key_error() -> None:
        raise KeyError("decode bug")

    with pytest.raises(KeyError):
        await breaker.call(key_error, failure_types=(Boom,))
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow_request()  # the next caller probes without waiting for probe_timeout


async def test_cancelled_probe_is_released_not_counted(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    probe = asyncio.create_task(breaker.call(hang))
    await asyncio.wait_for(started.wait(), timeout=5)
    assert not breaker.allow_request()  # the probe is outstanding
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.transitions["open"] == 1
    assert breaker.allow_request()


async def test_concurrent_callers_after_the_break_run_exactly_one_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _open(breaker)
    clock.advance(10)
    release = asyncio.Event()
    runs = 0

    async def probe() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return "pong"

    tasks = [asyncio.create_task(breaker.call(probe)) for _ in range(200)]
    await wait_until(lambda: runs == 1, timeout=5, message="the probe started")
    await wait_until(lambda: sum(t.done() for t in tasks) == 199, timeout=5, message="every other caller was refused")
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert runs == 1
    assert results.count("pong") == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 199
    assert state(breaker) is CircuitState.CLOSED
    assert await asyncio.gather(*(breaker.call(probe) for _ in range(50))) == ["pong"] * 50
    assert runs == 51


def test_a_success_past_the_gate_that_began_while_open_closes_the_circuit(breaker: CircuitBreaker) -> None:
    """A queued invalidation's retry does not ask the gate; when it reaches Redis during the break, Redis has
    answered after the circuit opened, which is what a probe would have shown."""
    _open(breaker)
    openings = breaker.openings
    breaker.record_success_past_gate(openings)
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allow_request()


def test_a_success_past_the_gate_that_began_before_the_circuit_opened_proves_nothing(
    breaker: CircuitBreaker,
) -> None:
    openings = breaker.openings  # the call starts while closed...
    _open(breaker)  # ...and the circuit opens while it is in flight
    breaker.record_success_past_gate(openings)
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.allow_request()


def test_a_success_past_the_gate_while_closed_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold - 1):
        breaker.record_failure()
    breaker.record_success_past_gate(breaker.openings)
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
