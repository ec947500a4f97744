"""The loads running in this process, by key, and the L2 reads leading them: one owner for both.

A read that misses L1 either *leads* (reads L2 for everyone, then starts the load) or follows the current lead;
the load itself runs once per key (:class:`~hybridcache._resilience.SingleFlight`). Invalidations *detach* what
they cover: the running load keeps serving the callers that joined it (they asked before the write), but nobody
arriving afterwards joins it or its lead. The read path and the write path both act on these through the methods
below, never on the dictionaries themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hybridcache._resilience import SingleFlight
from hybridcache.keys import SEPARATOR

__all__ = ["InFlightLoads"]


class InFlightLoads:
    """Per key: the lead (a future holding the leader's L2 hit or the load it started) and the load."""

    __slots__ = ("_flights", "_leads")

    def __init__(self) -> None:
        self._flights: SingleFlight[str, Any] = SingleFlight()
        self._leads: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        """Loads in flight (leads not counted: each is attached to a load or ends with its leader's L2 read)."""
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        return key in self._flights

    # -- loads

    def run(self, key: str, load: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """Join ``key``'s load, or start ``load()`` as it; await the result."""
        return self._flights.run(key, load)

    def flight_of(self, key: str) -> asyncio.Future[Any] | None:
        """``key``'s load in flight, or None."""
        return self._flights.current(key)

    def adopt(self, key: str, load: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Make ``load`` (a future settled elsewhere: one key of a batch's load) ``key``'s load, unless one is in
        flight already; returns the load now in flight, to be awaited through ``asyncio.shield``."""
        return self._flights.start(key, lambda: load)

    # -- leads

    def lead_of(self, key: str) -> asyncio.Future[Any] | None:
        return self._leads.get(key)

    def open_lead(self, key: str) -> asyncio.Future[Any]:
        """Make the caller ``key``'s leader: followers wait on the returned future."""
        lead: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._leads[key] = lead
        return lead

    def hand_over(self, key: str, lead: asyncio.Future[Any], load: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Start ``key``'s load for the lead and publish it to the followers; the lead lasts as long as the load."""
        flight = self._flights.start(key, load)
        lead.set_result(flight)
        leads = self._leads
        flight.add_done_callback(lambda _: leads.pop(key, None) if leads.get(key) is lead else None)
        return flight

    def close_lead(self, key: str, lead: asyncio.Future[Any]) -> None:
        """The leader is done without handing a load over (an L2 hit, or it failed): drop its lead if current."""
        if self._leads.get(key) is lead:
            del self._leads[key]

    # -- invalidations

    def detach(self, full_keys: Sequence[str], full_prefixes: Sequence[str], tags: Sequence[str]) -> None:
        """Detach the loads and leads an invalidation covers (loads do not say their tags: a tag detaches all)."""
        flights, leads = self._flights, self._leads
        if not (len(flights) or leads):
            return
        for full_key in full_keys:
            flights.forget(full_key)
            leads.pop(full_key, None)
        if tags:
            self.detach_all()
        elif full_prefixes:
            flights.forget_where(lambda key: any(_covers(prefix, key) for prefix in full_prefixes))
            for key in [k for k in leads if any(_covers(prefix, k) for prefix in full_prefixes)]:
                del leads[key]

    def cancel_all(self) -> None:
        """Cancel every load in flight (their callers get ``CancelledError``)."""
        self._flights.cancel_all()

    def detach_all(self) -> None:
        """After a resync: anything started before it may have missed an invalidation."""
        self._flights.forget_where(lambda _: True)
        self._leads.clear()


def _covers(full_prefix: str, full_key: str) -> bool:
    """Whether ``full_prefix`` covers ``full_key`` at ``:`` boundaries (the namespace itself ends with ``:``)."""
    if full_prefix.endswith(SEPARATOR):
        return full_key.startswith(full_prefix)
    return full_key == full_prefix or full_key.startswith(full_prefix + SEPARATOR)
