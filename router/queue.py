"""The order policy: which waiting request goes next. Today first come, first served, within one bound.

Requests wait here when no eligible instance has room. Priorities and fair sharing between sessions replace
this order; the switchboard only peeks, pushes and removes by key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    pass


class RequestQueue(Generic[T]):
    """FIFO with removal by key, since a queued request can be cancelled or time out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        """The waiting requests, next first."""
        return iter(self._items.values())

    def push(self, key: Hashable, item: T) -> None:
        if len(self._items) >= self.limit:
            raise QueueFull(f"the queue holds its limit of {self.limit} requests")
        self._items[key] = item

    def push_front(self, key: Hashable, item: T) -> None:
        """For a request that already waited its turn and lost its instance: no limit, first in line."""
        self._items[key] = item
        self._items.move_to_end(key, last=False)

    def peek(self) -> T | None:
        return next(iter(self._items.values()), None)

    def pop(self) -> T:
        return self._items.popitem(last=False)[1]

    def remove(self, key: Hashable) -> T | None:
        return self._items.pop(key, None)
