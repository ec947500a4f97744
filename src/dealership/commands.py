"""The service's writes, each declaring what it makes stale (the seed's invalidations).

| command | keys | prefixes |
|---|---|---|
| :class:`CreateDealership` | ``Dealership:{new id}`` | ``Dealership:List``, ``Dealership:Search`` |
| :class:`UpdateDealership` | ``Dealership:{id}`` | ``Dealership:Search``, ``Dealership:List`` |
| :class:`DeleteDealership` | ``Dealership:{id}`` | ``Dealership:Search``, ``Dealership:List`` |

Unlike the seed, a command declares these only once its handler *made a change* (the handler calls
:meth:`DealershipCommand.record_change` just before committing it, so the outbox row written by that commit
carries it; the invalidation behavior reads the declarations after the handler returned). So a ``PUT`` or
``DELETE`` of a missing id — free for any client to send — does not wipe every cached list and search, and a
create can invalidate its new id, which is known only after the insert: a ``GET`` of that id before it existed
cached ``None``. A failing handler (or commit) invalidates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dealership.dto import DealershipDto
from hybridcache.cqrs import Command, InvalidatesCache

__all__ = ["CreateDealership", "DealershipCommand", "DeleteDealership", "UnknownZipCodeError", "UpdateDealership"]

_LIST_AND_SEARCH = ("Dealership:List", "Dealership:Search")


class UnknownZipCodeError(LookupError):
    """The ``business_zip_code_id`` of a write names no zip code. Nothing was written."""

    def __init__(self, zip_code_id: int) -> None:
        super().__init__(f"zip code {zip_code_id} does not exist")
        self.zip_code_id = zip_code_id


@dataclass(frozen=True)
class DealershipCommand(InvalidatesCache):
    """A write to dealerships: invalidates ``Dealership:{id}`` for each id its handler reported changed, and
    every ``Dealership:List`` and ``Dealership:Search`` entry if there was any change."""

    _changed_ids: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def record_change(self, dealership_id: int) -> None:
        """Called by the handler once it changed ``dealership_id``, before it commits."""
        self._changed_ids.append(dealership_id)

    @property
    def changed_ids(self) -> tuple[int, ...]:
        """The ids the handler reported changed (empty before it ran, or when nothing changed)."""
        return tuple(self._changed_ids)

    @property
    def cache_keys_to_invalidate(self) -> Sequence[str]:
        return [f"Dealership:{dealership_id}" for dealership_id in self._changed_ids]

    @property
    def cache_prefixes_to_invalidate(self) -> Sequence[str]:
        return _LIST_AND_SEARCH if self._changed_ids else ()


@dataclass(frozen=True)
class CreateDealership(Command[DealershipDto], DealershipCommand):
    """Create a dealership with a fresh ``unique_key``; answers the created dealership. Raises
    :class:`UnknownZipCodeError` when ``business_zip_code_id`` names no zip code."""

    name: str
    business_address: str
    business_zip_code_id: int


@dataclass(frozen=True)
class UpdateDealership(Command[bool], DealershipCommand):
    """Set name and address of dealership ``id``; answers ``False`` when it does not exist (nothing written)."""

    id: int
    name: str
    business_address: str


@dataclass(frozen=True)
class DeleteDealership(Command[bool], DealershipCommand):
    """Delete dealership ``id``; answers ``False`` when it does not exist."""

    id: int
