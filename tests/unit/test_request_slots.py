"""RequestSlots: the gate that bounds concurrent L2 calls. Limit, FIFO hand-over, timeouts and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from hybridcache._resilience import RequestSlots


async def test_takes_up_to_the_limit_then_refuses_at_once() -> None:
    slots = RequestSlots(2)
    assert slots.try_take()
    assert slots.try_take()
    assert not slots.try_take()
    slots.give_back()
    assert slots.free == 1
    assert slots.try_take()


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestSlots(0)


async def test_a_released_slot_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    slots = RequestSlots(1)
    assert slots.try_take()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.take(5.0)
        order.append(name)

    first = asyncio.ensure_future(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(wait("second"))
    await asyncio.sleep(0)
    assert slots.waiting == 2
    slots.give_back()
    assert not slots.try_take(), "a newcomer overtook the queue"
    await first
    assert order == ["first"]
    slots.give_back()
    await second
    assert order == ["first", "second"]
    slots.give_back()
    assert slots.free == 1
    assert slots.waiting == 0


async def test_a_waiter_that_times_out_holds_nothing_and_leaves_the_queue() -> None:
    slots = RequestSlots(1)
    assert slots.try_take()
    with pytest.raises(TimeoutError):
        await slots.take(0.01)
    assert slots.waiting == 0
    slots.give_back()
    assert slots.free == 1


async def test_a_slot_handed_to_a_waiter_that_is_cancelled_passes_on() -> None:
    """The slot reaches a waiter in the same loop turn as its cancellation: it must go to the next one."""
    slots = RequestSlots(1)
    assert slots.try_take()
    doomed = asyncio.ensure_future(slots.take(5.0))
    patient = asyncio.ensure_future(slots.take(5.0))
    await asyncio.sleep(0)
    slots.give_back()  # hands the slot to `doomed`…
    doomed.cancel()  # …which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(patient, 1.0)  # got the slot `doomed` passed on
    slots.give_back()
    assert slots.free == 1
    assert slots.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = RequestSlots(1)
    assert slots.try_take()
    waiter = asyncio.ensure_future(slots.take(5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting == 0
    slots.give_back()
    assert slots.free == 1
