"""The mediator on its own: routing, scopes, behavior order and caching of chains, notifications, and the
response type read from ``Query[R]``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import pytest

from hybridcache.cqrs import (
    CallNext,
    Command,
    HandlerNotFoundError,
    Mediator,
    Notification,
    NotificationHandler,
    PipelineBehavior,
    Query,
    Request,
    RequestHandler,
    response_type_of,
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Double(Query[int]):
    value: int


@dataclass(frozen=True)
class Rename(Command[bool]):
    name: str


class DoubleHandler(RequestHandler[Double, int]):
    def __init__(self, runs: list[int]) -> None:
        self.runs = runs

    async def handle(self, request: Double) -> int:
        self.runs.append(request.value)
        return request.value * 2


class RenameHandler(RequestHandler[Rename, bool]):
    async def handle(self, request: Rename) -> bool:
        if not request.name:
            raise ValueError("empty name")
        return True


class Recorder(PipelineBehavior):
    """Records when it is entered and left, into a log shared by every behavior of a test."""

    def __init__(self, name: str, log: list[str], only: type[Request[Any]] | None = None) -> None:
        self.name, self.log, self.only = name, log, only
        self.applies_to_calls = 0

    def applies_to(self, request_type: type[Request[Any]]) -> bool:
        self.applies_to_calls += 1
        return self.only is None or issubclass(request_type, self.only)

    async def handle(self, request: Request[R], call_next: CallNext[R]) -> R:
        self.log.append(f"{self.name}>")
        try:
            return await call_next()
        finally:
            self.log.append(f"<{self.name}")


class ShortCircuit(PipelineBehavior):
    async def handle(self, request: Request[R], call_next: CallNext[R]) -> R:
        return cast(R, -1)  # never calls call_next


def make_mediator(runs: list[int], behaviors: Sequence[PipelineBehavior] = ()) -> Mediator:
    mediator = Mediator(behaviors)
    mediator.register(Double, lambda _: DoubleHandler(runs))
    mediator.register(Rename, lambda _: RenameHandler())
    return mediator


async def test_send_routes_to_the_handler_of_the_exact_type() -> None:
    runs: list[int] = []
    mediator = make_mediator(runs)

    assert await mediator.send(Double(21)) == 42
    assert await mediator.send(Rename("x")) is True
    assert runs == [21]


async def test_a_request_without_handler_names_its_type() -> None:
    @dataclass(frozen=True)
    class Orphan(Query[str]):
        pass

    mediator = make_mediator([])
    with pytest.raises(HandlerNotFoundError, match=r"No handler registered for .*Orphan") as caught:
        await mediator.send(Orphan())
    assert caught.value.request_type is Orphan
    assert isinstance(caught.value, LookupError)


async def test_registering_a_second_handler_for_a_type_is_refused() -> None:
    mediator = make_mediator([])
    with pytest.raises(ValueError, match="Double already has a handler"):
        mediator.register(Double, lambda _: DoubleHandler([]))


async def test_each_send_builds_its_handler_from_the_scope_it_was_given() -> None:
    @dataclass
    class Scope:
        name: str

    seen: list[str] = []

    class Echo(Query[str]):
        pass

    class EchoHandler(RequestHandler[Echo, str]):
        def __init__(self, scope: Scope) -> None:
            self.scope = scope

        async def handle(self, request: Echo) -> str:
            return self.scope.name

    def factory(scope: Scope) -> EchoHandler:
        seen.append(scope.name)
        return EchoHandler(scope)

    mediator = Mediator[Scope]()
    mediator.register(Echo, factory)

    assert await mediator.send(Echo(), Scope("a")) == "a"
    assert await mediator.send(Echo(), Scope("b")) == "b"
    assert await mediator.scoped(Scope("c")).send(Echo()) == "c"
    assert seen == ["a", "b", "c"]


async def test_first_registered_behavior_is_outermost() -> None:
    log: list[str] = []
    runs: list[int] = []
    mediator = make_mediator(runs, [Recorder("a", log), Recorder("b", log)])
    mediator.add_behavior(Recorder("c", log))

    assert await mediator.send(Double(1)) == 2
    assert log == ["a>", "b>", "c>", "<c", "<b", "<a"]
    assert [type(b).__name__ for b in mediator.behaviors] == ["Recorder"] * 3


async def test_a_behavior_may_short_circuit_and_then_no_handler_is_built() -> None:
    log: list[str] = []
    built: list[int] = []

    def factory(_: None) -> DoubleHandler:
        built.append(1)
        return DoubleHandler([])

    mediator = Mediator([Recorder("outer", log), ShortCircuit(), Recorder("inner", log)])
    mediator.register(Double, factory)

    assert await mediator.send(Double(5)) == -1
    assert log == ["outer>", "<outer"]
    assert built == []


async def test_chains_are_built_once_per_type_over_the_behaviors_that_apply() -> None:
    log: list[str] = []
    everywhere = Recorder("all", log)
    commands_only = Recorder("cmd", log, only=Command)
    mediator = make_mediator([], [everywhere, commands_only])

    for _ in range(3):
        await mediator.send(Double(1))
    assert log == ["all>", "<all"] * 3
    log.clear()
    await mediator.send(Rename("x"))
    assert log == ["all>", "cmd>", "<cmd", "<all"]

    assert mediator.behaviors_for(Double) == (everywhere,)
    # asked once for Double and once for Rename when their chains were built (plus behaviors_for above)
    assert commands_only.applies_to_calls == 3


async def test_adding_a_behavior_after_sending_rebuilds_the_chains() -> None:
    log: list[str] = []
    mediator = make_mediator([])
    await mediator.send(Double(1))
    mediator.add_behavior(Recorder("late", log))

    await mediator.send(Double(1))
    assert log == ["late>", "<late"]


async def test_handler_exceptions_propagate_through_behaviors_unchanged() -> None:
    log: list[str] = []
    mediator = make_mediator([], [Recorder("a", log)])

    with pytest.raises(ValueError, match="empty name"):
        await mediator.send(Rename(""))
    assert log == ["a>", "<a"]


# -- notifications ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Happened(Notification):
    what: str


@dataclass(frozen=True)
class HappenedAgain(Happened):
    pass


class Collect(NotificationHandler[Happened]):
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def handle(self, notification: Happened) -> None:
        self.log.append(f"{self.name}:{notification.what}")
        if self.fail:
            raise RuntimeError(f"{self.name} failed")


def collector(name: str, log: list[str], fail: bool = False) -> Callable[[None], Collect]:
    return lambda _: Collect(name, log, fail)


async def test_publish_reaches_every_subscriber_in_order_including_base_class_ones() -> None:
    log: list[str] = []
    mediator = Mediator()
    mediator.subscribe(Happened, lambda _: Collect("base", log))
    mediator.subscribe(HappenedAgain, lambda _: Collect("sub", log))

    assert await mediator.publish(HappenedAgain("x")) == ()
    assert await mediator.publish(Happened("y")) == ()
    assert log == ["base:x", "sub:x", "base:y"]


async def test_a_failing_notification_handler_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    for strategy in ("sequential", "concurrent"):
        log: list[str] = []
        mediator = Mediator()
        mediator.subscribe(Happened, collector("one", log, fail=True))
        mediator.subscribe(Happened, collector("two", log))

        with caplog.at_level(logging.ERROR, logger="hybridcache.cqrs"):
            failures = await mediator.publish(Happened("z"), strategy=strategy)

        assert sorted(log) == ["one:z", "two:z"]
        assert [str(f) for f in failures] == ["one failed"]
        assert "Notification handler failed for Happened" in caplog.text
        caplog.clear()


async def test_concurrent_publish_runs_handlers_at_the_same_time() -> None:
    # Each handler waits for the other to have started: sequential delivery could never finish.
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    class Rendezvous(NotificationHandler[Happened]):
        def __init__(self, me: str, other: str) -> None:
            self.me, self.other = me, other

        async def handle(self, notification: Happened) -> None:
            started[self.me].set()
            await started[self.other].wait()

    mediator = Mediator()
    mediator.subscribe(Happened, lambda _: Rendezvous("a", "b"))
    mediator.subscribe(Happened, lambda _: Rendezvous("b", "a"))

    async with asyncio.timeout(5):
        assert await mediator.publish(Happened("go"), strategy="concurrent") == ()


async def test_publish_without_subscribers_is_fine_and_a_bad_strategy_is_not() -> None:
    mediator = Mediator()
    assert await mediator.publish(Happened("nobody")) == ()
    with pytest.raises(ValueError, match="unknown publish strategy"):
        await mediator.publish(Happened("x"), strategy="random")  # type: ignore[call-overload]


async def test_cancellation_of_a_notification_handler_is_not_swallowed() -> None:
    class Cancelled(NotificationHandler[Happened]):
        async def handle(self, notification: Happened) -> None:
            raise asyncio.CancelledError

    mediator = Mediator()
    mediator.subscribe(Happened, lambda _: Cancelled())
    with pytest.raises(asyncio.CancelledError):
        await mediator.publish(Happened("x"), strategy="concurrent")
    with pytest.raises(asyncio.CancelledError):
        await mediator.publish(Happened("x"), strategy="sequential")


# -- response types -----------------------------------------------------------------------------------------


class Page(Query[list[T]], Generic[T]):
    pass


class Dto:
    pass


class DtoPage(Page[Dto]):
    pass


class DerivedWithoutSubscript(DtoPage):
    pass


class MaybeDto(Query[Dto | None]):
    pass


class Unbound(Query):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    ("request_type", "expected"),
    [
        (Double, int),
        (Rename, bool),
        (MaybeDto, Dto | None),
        (DtoPage, list[Dto]),
        (DerivedWithoutSubscript, list[Dto]),
        (Unbound, Any),
    ],
)
def test_response_type_is_read_from_the_generic_base(request_type: type[Request[Any]], expected: Any) -> None:
    assert response_type_of(request_type) == expected
    assert response_type_of(request_type) == expected  # second call: from the cache
