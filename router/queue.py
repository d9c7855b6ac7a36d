"""The order policy: which waiting request goes next.

Requests wait here when no eligible instance has room. The order, strongest rule first:

1. A request that lost its instance after waiting its turn goes first (it is being failed over).
2. Higher priority levels first (`high`, `normal`, `low`), with ageing: every `ageing` seconds of waiting
   raises a request one level, so low work is never starved by a stream of high.
3. Within a level, sessions take turns: one session's burst cannot hold back another session's single call.
   The session served longest ago goes first; within a session, first come first served.

The queue is bounded as a whole and per session, so one session cannot fill it for everyone.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Priority(enum.IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def named(cls, name: object) -> Priority | None:
        """The level a configuration or a request's `_meta` names, or None if it names none."""
        return cls.__members__.get(name.upper()) if isinstance(name, str) else None


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    session: bytes
    level: Priority
    arrived: float
    order: int
    failed_over: bool = False


class RequestQueue(Generic[T]):
    def __init__(self, limit: int, *, per_session: int | None = None, ageing: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.limit = limit
        self.per_session = per_session if per_session is not None else limit
        self._ageing = ageing
        self._clock = clock
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._order = itertools.count()
        self._turns = itertools.count(1)
        self._last_served: dict[bytes, int] = {}  # session -> when one of its requests last left to run

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, key: Hashable, item: T, *, session: bytes, arrived: float,
             level: Priority = Priority.NORMAL) -> None:
        if len(self._entries) >= self.limit:
            raise QueueFull(f"the queue holds its limit of {self.limit} requests")
        if sum(1 for entry in self._entries.values() if entry.session == session) >= self.per_session:
            raise QueueFull(f"this session already has {self.per_session} requests waiting")
        self._entries[key] = _Entry(item, session, level, arrived, next(self._order))

    def push_front(self, key: Hashable, item: T, *, session: bytes, arrived: float) -> None:
        """For a request that already waited its turn and lost its instance: no bound, first in line."""
        self._entries[key] = _Entry(item, session, Priority.HIGH, arrived, next(self._order), failed_over=True)

    def remove(self, key: Hashable, *, served: bool = False) -> T | None:
        """Take a request out (cancelled, timed out, answered); `served`: it leaves to run, its session's turn."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        if served:
            self._last_served[entry.session] = next(self._turns)
        return entry.item

    def took_turn(self, session: bytes) -> None:
        """One of the session's requests started without waiting: that was its turn too."""
        self._last_served[session] = next(self._turns)

    def forget_session(self, session: bytes) -> None:
        self._last_served.pop(session, None)

    def __iter__(self) -> Iterator[T]:
        """The waiting requests, next first."""
        entries = sorted(self._entries.values(), key=lambda entry: entry.order)
        yield from (entry.item for entry in entries if entry.failed_over)
        now = self._clock() if self._clock is not None else None
        by_level: dict[int, list[_Entry[T]]] = {}
        for entry in entries:
            if not entry.failed_over:
                by_level.setdefault(self._effective(entry, now), []).append(entry)
        for level in sorted(by_level):
            yield from self._taking_turns(by_level[level])

    def _effective(self, entry: _Entry[T], now: float | None) -> int:
        if now is None or self._ageing <= 0:
            return int(entry.level)
        waited = max(0.0, now - entry.arrived)
        return max(int(Priority.HIGH), int(entry.level) - int(waited // self._ageing))

    def _taking_turns(self, entries: list[_Entry[T]]) -> Iterator[T]:
        """One request of each session in turn, the session served longest ago first."""
        by_session: dict[bytes, list[_Entry[T]]] = {}
        for entry in entries:
            by_session.setdefault(entry.session, []).append(entry)
        sessions = sorted(by_session, key=lambda s: (self._last_served.get(s, 0), by_session[s][0].order))
        for round_ in itertools.zip_longest(*(by_session[s] for s in sessions)):
            yield from (entry.item for entry in round_ if entry is not None)
