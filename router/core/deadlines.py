"""Request deadlines kept by the switchboard itself, so that it needs no event loop: the I/O loop asks when
the next one falls due and tells the switchboard the time.

Every deadline is an arrival time plus one of a few fixed timeouts (request, startup), so within one timeout
arrival order is deadline order: one insertion-ordered dict per timeout gives O(1) arming, cancelling and
finding the next due, with nothing left behind by requests answered in time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Deadlines(Generic[T]):
    def __init__(self) -> None:
        self._by_timeout: dict[float, OrderedDict[Hashable, tuple[float, T]]] = {}
        self._timeout_of: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._timeout_of)

    def arm(self, key: Hashable, start: float, timeout: float, item: T) -> None:
        """Due at start + timeout; `start` never later than that of the deadlines armed before with `timeout`."""
        self.cancel(key)
        self._by_timeout.setdefault(timeout, OrderedDict())[key] = (start + timeout, item)
        self._timeout_of[key] = timeout

    def cancel(self, key: Hashable) -> None:
        timeout = self._timeout_of.pop(key, None)
        if timeout is not None:
            del self._by_timeout[timeout][key]

    def next(self) -> float | None:
        soonest = None
        for queue in self._by_timeout.values():  # a few timeouts at most; asked on every turn of the loop
            if queue:
                due = next(iter(queue.values()))[0]
                soonest = due if soonest is None or due < soonest else soonest
        return soonest

    def pop_due(self, now: float) -> list[tuple[float, T]]:
        """Every (timeout, item) due by `now`, removed; in deadline order within a timeout."""
        due = []
        for timeout, queue in self._by_timeout.items():
            while queue:
                key, (when, item) = next(iter(queue.items()))
                if when > now:
                    break
                del queue[key]
                del self._timeout_of[key]
                due.append((timeout, item))
        return due
