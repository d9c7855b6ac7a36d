"""A client request's life: the stage it is in, and the tables that say so.

Every client request the switchboard takes on is in one stage at a time::

                 ┌──────────────► AWAITING_BACKEND ──────────────┐
                 │   (initialize, server/discover: until an      │
                 │    instance of its handshake is ready)        ▼
    NEW ─────────┼──────────────► QUEUED ◄───────► RUNNING ───► DONE
      (admitted) │                     (room)   (its instance    ▲
                 │                               was lost: tried │
                 └──────────────► RUNNING         again first)   │
                 └───────────────────────────────────────────────┘  (answered at once, or refused)

Each stage but NEW and DONE has a table: the requests awaiting a backend (in arrival order), the queue
(router/core/queue.py: the order they run in) and the running table (router/core/running.py: by the id the
instance sees). A live request (not NEW, not DONE) is also in its session's `pending`, by its client's id,
and may have a deadline. `Requests.move` is the one place that changes a request's stage, and it changes
every table with it, so no two tables can disagree about where a request is. What a move means for the
client or the instance (an answer, a cancellation) is the switchboard's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import RequestId
from mcpmux.router.core.deadlines import Deadlines
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.queue import Priority, RequestQueue
from mcpmux.router.core.running import Running

if TYPE_CHECKING:
    from mcpmux.router.core.session import Session


class Stage(enum.Enum):
    NEW = "new"  # built from the client's message, in no table yet
    AWAITING_BACKEND = "awaiting a backend"  # an initialize or discover, answered once an instance is ready
    QUEUED = "queued"  # waiting for room on an instance it may run on
    RUNNING = "running"  # sent to an instance, under an id of mcpmux's
    DONE = "done"  # answered or forgotten: in no table

    allowed: tuple[Stage, ...]  # the stages it may move to, set below


# Plain names for the hot path: an Enum member costs ~60 ns to look up on its class and ~100 ns to hash,
# twice per request at least; a tuple's `in` compares by identity.
NEW, AWAITING_BACKEND, QUEUED, RUNNING, DONE = Stage

# The moves a request can make; any other is a bug in the switchboard, refused before a table changes.
MOVES: dict[Stage, tuple[Stage, ...]] = {
    NEW: (RUNNING, QUEUED, DONE, AWAITING_BACKEND),
    AWAITING_BACKEND: (DONE,),
    QUEUED: (RUNNING, DONE),
    RUNNING: (DONE, QUEUED),  # queued again: failed over from a lost instance
    DONE: (),
}
for _stage, _allowed in MOVES.items():
    _stage.allowed = _allowed


class StageError(RuntimeError):
    """A move the diagram above does not allow."""


@dataclass(eq=False)
class Pending:
    """A client request from the moment it arrives until its one response is sent."""

    session: Session
    client_id: RequestId
    message: Envelope
    received: float  # on the switchboard's clock
    stage: Stage = NEW  # changed by Requests.move only
    backend_id: int | None = None  # while RUNNING: the id its instance sees
    slot: str | None = None  # while RUNNING: the instance running it
    dispatched: float = 0.0
    pinned_slot: str | None = None  # an instance it must run on (cursor, subscription, task)
    attempts: int = 0
    level: Priority = Priority.NORMAL
    concurrency: int = 0  # requests its instance ran when it was sent there, itself included
    capped: bool = True  # counts against its instance's cap (tasks/* requests do not: router/core/tasks.py)
    listening: dict[str, Any] | None = None  # a listen stream's acknowledged filter (router/core/listen.py)

    @property
    def method(self) -> str:
        return self.message.method or ""  # a request's: the header always has it

    @property
    def key(self) -> tuple[bytes, RequestId]:
        return (self.session.identity, self.client_id)

    @property
    def waiting(self) -> bool:
        """Live and not on an instance: queued, or awaiting a backend."""
        return self.stage is QUEUED or self.stage is AWAITING_BACKEND


class Requests:
    """The live requests, by stage."""

    def __init__(self, queue: RequestQueue[Pending], pool: Pool) -> None:
        self.queue = queue
        self.running = Running()
        self.deadlines: Deadlines[Pending] = Deadlines()
        self._awaiting: dict[tuple[bytes, RequestId], Pending] = {}
        self._pool = pool

    def awaiting_backend(self) -> list[Pending]:
        """The initialize and discover requests waiting for a backend, first come first."""
        return list(self._awaiting.values())

    def running_on(self, slot: str) -> list[Pending]:
        return [pending for pending in self.running.values() if pending.slot == slot]

    def arm(self, pending: Pending, seconds: float) -> None:
        """Answer it with a timeout `seconds` after it arrived, unless it is done by then."""
        assert pending.stage is not NEW and pending.stage is not DONE, pending.stage
        self.deadlines.arm(pending.key, pending.received, seconds, pending)

    def move(self, pending: Pending, to: Stage, *, instance: Instance | None = None,
             backend_id: int | None = None) -> None:
        """The one change of a request's stage. To RUNNING it needs its `instance` and `backend_id`. To
        QUEUED from NEW it may raise QueueFull (router/core/queue.py), before anything changed."""
        origin = pending.stage
        if to not in origin.allowed:
            raise StageError(f"request {pending.client_id!r} of {pending.session.name}: {origin.name} -> {to.name}")
        if to is QUEUED:
            self._enqueue(pending, failed_over=origin is RUNNING)
        if origin is not NEW:
            self._leave(pending, to)
        pending.stage = to
        if to is RUNNING:
            assert instance is not None and backend_id is not None
            self._run(pending, instance, backend_id)
        elif to is AWAITING_BACKEND:
            self._awaiting[pending.key] = pending
        if origin is NEW:
            if to is not DONE:
                pending.session.pending[pending.client_id] = pending
        elif to is DONE:
            self.deadlines.cancel(pending.key)
            if pending.session.pending.get(pending.client_id) is pending:
                del pending.session.pending[pending.client_id]

    def _enqueue(self, pending: Pending, *, failed_over: bool) -> None:
        if failed_over:  # it waited its turn once already: first in line, beyond the bounds
            self.queue.push_front(pending.key, pending, session=pending.session.share, arrived=pending.received)
        else:
            self.queue.push(pending.key, pending, session=pending.session.share, arrived=pending.received,
                            level=pending.level)

    def _leave(self, pending: Pending, to: Stage) -> None:
        if pending.stage is RUNNING:
            self.running.pop(pending.backend_id)
            instance = self._pool.get(pending.slot or "")  # gone already if it was lost
            if instance is not None and pending.capped:
                instance.in_flight -= 1
            pending.backend_id = pending.slot = None
        elif pending.stage is QUEUED:
            self.queue.remove(pending.key, served=to is RUNNING)
        elif pending.stage is AWAITING_BACKEND:
            del self._awaiting[pending.key]

    def _run(self, pending: Pending, instance: Instance, backend_id: int) -> None:
        pending.backend_id, pending.slot = backend_id, instance.slot
        pending.attempts += 1
        if pending.capped:
            instance.in_flight += 1
        pending.concurrency = instance.in_flight
        self.running.add(backend_id, pending)
