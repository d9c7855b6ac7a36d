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
from collections import Counter, OrderedDict
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
    key: Hashable
    item: T
    session: bytes
    level: Priority
    arrived: float
    order: int
    failed_over: bool = False


LineKey = tuple[bytes, Priority]


class RequestQueue(Generic[T]):
    """Waiting requests in lines, one per session and level (first come, first served in each), merged
    lazily in the policy's order: taking the next request costs one look at each line's head, however long
    the queue, so a large backlog does not slow every answer down."""

    def __init__(self, limit: int, *, per_session: int | None = None, ageing: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.limit = limit
        self.per_session = per_session if per_session is not None else limit
        self._ageing = ageing
        self._clock = clock
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._failed_over: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._lines: dict[LineKey, OrderedDict[Hashable, _Entry[T]]] = {}
        self._waiting: Counter[bytes] = Counter()  # session -> its requests waiting
        self._order = itertools.count()
        self._turns = itertools.count(1)
        self._last_served: dict[bytes, int] = {}  # session -> when one of its requests last left to run

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, key: Hashable, item: T, *, session: bytes, arrived: float,
             level: Priority = Priority.NORMAL) -> None:
        if len(self._entries) >= self.limit:
            raise QueueFull(f"the queue holds its limit of {self.limit} requests")
        if self._waiting[session] >= self.per_session:
            raise QueueFull(f"this session already has {self.per_session} requests waiting")
        entry = _Entry(key, item, session, level, arrived, next(self._order))
        self._lines.setdefault((session, level), OrderedDict())[key] = entry
        self._add(entry)

    def push_front(self, key: Hashable, item: T, *, session: bytes, arrived: float) -> None:
        """For a request that already waited its turn and lost its instance: no bound, first in line."""
        entry = _Entry(key, item, session, Priority.HIGH, arrived, next(self._order), failed_over=True)
        self._failed_over[key] = entry
        self._add(entry)

    def _add(self, entry: _Entry[T]) -> None:
        self._entries[entry.key] = entry
        self._waiting[entry.session] += 1

    def remove(self, key: Hashable, *, served: bool = False) -> T | None:
        """Take a request out (cancelled, timed out, answered); `served`: it leaves to run, its session's turn."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        if entry.failed_over:
            del self._failed_over[key]
        else:
            line = self._lines[(entry.session, entry.level)]
            del line[key]
            if not line:
                del self._lines[(entry.session, entry.level)]
        self._waiting[entry.session] -= 1
        if not self._waiting[entry.session]:
            del self._waiting[entry.session]
        if served:
            self._last_served[entry.session] = next(self._turns)
        return entry.item

    def waiting_sessions(self) -> list[bytes]:
        """The sessions with requests waiting."""
        return list(self._waiting)

    def took_turn(self, session: bytes) -> None:
        """One of the session's requests started without waiting: that was its turn too."""
        self._last_served[session] = next(self._turns)

    def forget_session(self, session: bytes) -> None:
        self._last_served.pop(session, None)

    def __iter__(self) -> Iterator[T]:
        """The waiting requests, next first, computed as they are taken: the caller may remove each one it
        takes (it left to run) before asking for the next. A request pushed meanwhile may wait for the next pass."""
        yield from [entry.item for entry in self._failed_over.values()]
        if len(self._lines) == 1:  # one session at one level, the usual backlog: its line is the order
            yield from self._one_line(next(iter(self._lines.values())))
            return
        now = self._clock() if self._clock is not None else None
        heads = {line: _Head(entries) for line, entries in self._lines.items()}
        turns = dict(self._last_served)
        later = itertools.count(max(turns.values(), default=0) + 1)
        while True:
            ranked = [(self._rank(entry, now, turns), entry) for head in heads.values()
                      if (entry := head.entry(self._entries)) is not None]
            if not ranked:
                return
            _, best = min(ranked, key=lambda pair: pair[0])
            heads[(best.session, best.level)].taken(best)
            turns[best.session] = next(later)  # a session that had its turn here goes after the others
            yield best.item

    def _one_line(self, line: OrderedDict[Hashable, _Entry[T]]) -> Iterator[T]:
        head = _Head(line)
        while (entry := head.entry(self._entries)) is not None:
            head.taken(entry)
            yield entry.item

    def _rank(self, entry: _Entry[T], now: float | None, turns: dict[bytes, int]) -> tuple[int, int, int]:
        return self._effective(entry, now), turns.get(entry.session, 0), entry.order

    def _effective(self, entry: _Entry[T], now: float | None) -> int:
        if now is None or self._ageing <= 0:
            return int(entry.level)
        waited = max(0.0, now - entry.arrived)
        return max(int(Priority.HIGH), int(entry.level) - int(waited // self._ageing))


class _Head(Generic[T]):
    """Where a pass over the queue stands in one line. While each request taken leaves the line (it went to
    run), the next is the line's live first, found at once; once one is passed over (it stays, waiting), the
    pass goes on over a snapshot of the line taken then."""

    def __init__(self, line: OrderedDict[Hashable, _Entry[T]]) -> None:
        self._line = line
        self._taken: _Entry[T] | None = None
        self._snapshot: list[_Entry[T]] | None = None
        self._at = 0

    def entry(self, waiting: dict[Hashable, _Entry[T]]) -> _Entry[T] | None:
        """The line's next request still waiting (one taken out meanwhile, cancelled say, is passed)."""
        if self._snapshot is None:
            first = next(iter(self._line.values()), None)
            if first is None or first is not self._taken:
                return first
            self._snapshot, self._at = list(self._line.values()), 1
        while self._at < len(self._snapshot):
            entry = self._snapshot[self._at]
            if waiting.get(entry.key) is entry:
                return entry
            self._at += 1
        return None

    def taken(self, entry: _Entry[T]) -> None:
        self._taken = entry
        if self._snapshot is not None:
            self._at += 1
