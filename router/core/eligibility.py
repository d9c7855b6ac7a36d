"""The eligibility policy: which instances may serve a request, and which of them gets it.

Each instance runs at most its limit of requests at once (router/core/limits.py: fixed, or found from its
latency). A request pinned to an instance (a pagination cursor it made, a subscription it holds) runs there
and nowhere else. Otherwise only the instances that serve the session's context may run it (router/core/contexts.py:
a filter applied before the reserve and any strategy), and among them it depends on the strategy
(`loadBalancing.strategy`):

- `least_connections`: the least busy ready instance below its limit.
- `session_affinity`: the instance the session was pinned to at its first request (the one with the fewest
  sessions then), so a server that keeps state in its process sees one session's calls in one place; an
  instance may serve several sessions. A session whose instance is lost is pinned again and told.
- `dedicated`: an instance of the session's own, nobody else's, recycled when the session ends
  (router/core/dedicated.py).

Under every strategy, once any instance has asked a client anything (sampling, elicitation), every
instance (`asks_clients`, marked pool-wide) runs the requests of one session at a time, as many as its limit
allows: another session's wait, or go to another instance. stdio does not say which request a server's
request is for, so this is how each of its requests to a client has one possible owner
(router/core/server_requests.py).

With `loadBalancing.highReserve`, a share of the pool's free slots is kept for `high` requests: others start
only while more than that many slots are free, so an urgent call need not wait for a slow one to finish.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection
from typing import Literal

from mcpmux.envelope import Flag
from mcpmux.router.core.contexts import ContextRules
from mcpmux.router.core.dedicated import Dedicated
from mcpmux.router.core.instances import Instance, InstanceState, Pool
from mcpmux.router.core.least_connections import LeastConnections
from mcpmux.router.core.limits import Limits
from mcpmux.router.core.queue import Priority
from mcpmux.router.core.requests import Pending
from mcpmux.router.core.session import Session

Strategy = Literal["least_connections", "session_affinity", "dedicated"]
STARTING = frozenset({InstanceState.STARTING, InstanceState.PROBING})


class PinnedInstanceGone(Exception):
    """The one instance that may serve this request is gone: the request cannot be served anywhere."""

    def __init__(self, slot: str, why: str = "is gone", what: str = "cursor") -> None:
        advice = "; call again without requestState and inputResponses" if what == "requestState" else ""
        super().__init__(f"the instance that made this {what} ({slot}) {why}{advice}")
        self.slot = slot


class Eligibility:
    def __init__(self, limits: Limits, strategy: Strategy = "least_connections", high_reserve: float = 0.0,
                 max_instances: int = 1, contexts: ContextRules | None = None,
                 occupants: Callable[[str], Collection[bytes]] = lambda slot: ()) -> None:
        self.limits = limits
        self.occupants = occupants  # the sessions whose requests an instance runs now
        self.balancer = LeastConnections(self.cap)
        self.strategy = strategy
        self.high_reserve = high_reserve
        self.contexts = contexts or ContextRules()
        self.pins: dict[bytes, str] = {}  # session -> slot, under session_affinity
        self.dedicated = Dedicated(max_instances)  # session <-> slot, under dedicated

    def cap(self, instance: Instance) -> int:
        """How many requests this instance may run at once, now."""
        return self.limits.of(instance.slot)

    @property
    def pins_sessions(self) -> bool:
        """Whether a session keeps to the instance it first used (so sessions opening while the pool starts
        must find every instance starting, or they all keep to the first ready)."""
        return self.strategy != "least_connections"

    @property
    def shares_instances(self) -> bool:
        """Whether an instance may serve several sessions (all strategies but dedicated)."""
        return self.strategy != "dedicated"

    def choose(self, pending: Pending, pool: Pool) -> Instance | None:
        """The instance to run `pending` on now, or None if it must wait; PinnedInstanceGone if it never can."""
        if pending.pinned_slot is not None:
            instance = pool.get(pending.pinned_slot)
            pin = pending.message.pin  # a requestState's: the instance itself, not its slot's replacement
            if instance is None or not instance.ready or (pin is not None and pin[1] != instance.pid):
                raise PinnedInstanceGone(pending.pinned_slot,
                                         what="requestState" if pending.message.flags & Flag.STATE else "cursor")
            if self.strategy == "dedicated" and not self.dedicated.may_run(pending.session.identity, instance.slot):
                raise PinnedInstanceGone(pending.pinned_slot, "is not this session's own instance now")
            admitted = self._has_room(instance) and self.admits(instance, pending.session)
            return instance if admitted and self._reserve_allows(pending, pool) else None
        serving = self.serving(pending.session, pool)
        if not self._reserve_allows(pending, pool):
            return None
        if self.strategy == "session_affinity":
            return self._affine(pending.session, serving, pool)
        if self.strategy == "dedicated":
            return self.dedicated.choose(pending.session.identity, serving, pool, self.cap)
        # Instances already bound to the session's context first, while one has room: a spare is bound
        # to a context only when that context needs it.
        serving = [i for i in serving if self.admits(i, pending.session)]
        return self.balancer.pick([i for i in serving if i.bound and self._has_room(i)] or serving)

    def admits(self, instance: Instance, session: Session) -> bool:
        """Whether the instance may take this session's requests now: an instance that asks its clients
        runs one session's at a time."""
        return not instance.asks_clients or set(self.occupants(instance.slot)) <= {session.identity}

    def kept_apart(self, session: Session, pool: Pool) -> bool:
        """Whether instances with room for more are there for this session, and every one of them runs
        another session's requests while it asks its clients: only another instance would serve it now."""
        with_room = [instance for instance in self.serving(session, pool) if self._has_room(instance)]
        return bool(with_room) and not any(self.admits(instance, session) for instance in with_room)

    def home(self, session: Session, pool: Pool) -> Instance | None:
        """Where what the session keeps on a server (its subscriptions) goes when it has nowhere: its own
        instance (dedicated), the one it is pinned to, pinning it now if need be (session_affinity), or the
        least busy instance that serves it; never an instance of another client context."""
        serving = self.serving(session, pool)
        if self.strategy == "dedicated":
            slot = self.dedicated.slot_of(session.identity)
            return next((instance for instance in serving if instance.slot == slot), None)
        if self.strategy == "session_affinity":
            pinned = pool.get(self.pins.get(session.identity, ""))
            if pinned is not None and pinned in serving:
                return pinned
            instance = self._least_pinned(serving)
            if instance is not None:
                self.pins[session.identity] = instance.slot
            return instance
        # A subscribe is the router's own request, outside the cap: a busy instance may take it.
        return min([i for i in serving if i.bound] or serving, key=lambda i: (i.in_flight, i.last_pick), default=None)

    def serving(self, session: Session, pool: Pool) -> list[Instance]:
        """The context filter: the ready instances that may serve this session now."""
        return [instance for instance in pool.ready() if self.contexts.usable(instance, session)]

    def has_room(self, pool: Pool) -> bool:
        """Whether any ready instance is below its limit (else no waiting request can start)."""
        return any(instance.ready and instance.in_flight < self.cap(instance) for instance in pool)

    def reserved(self, pool: Pool) -> int:
        """Free slots kept for high requests: highReserve of the ready slots, rounded down, never all of them."""
        slots = sum(self.cap(instance) for instance in pool.ready())
        return min(slots - 1, math.floor(self.high_reserve * slots)) if slots else 0

    def session_closed(self, session: bytes) -> str | None:
        """Forget the session; the instance it had to itself (dedicated), which must be recycled."""
        self.pins.pop(session, None)
        return self.dedicated.session_closed(session)

    def instance_lost(self, slot: str) -> list[bytes]:
        """Unpin the sessions of a lost instance; they are pinned again at their next request."""
        self.limits.forget(slot)
        moved = [session for session, pinned in self.pins.items() if pinned == slot]
        for session in moved:
            del self.pins[session]
        return moved + self.dedicated.instance_lost(slot)

    def sessions_of(self, slot: str) -> list[bytes]:
        owner = self.dedicated.owner(slot)
        return [session for session, pinned in self.pins.items() if pinned == slot] + ([owner] if owner else [])

    def assignment(self) -> dict[str, bytes] | None:
        """Under dedicated, each instance's one session (what it sends on its own is for that session)."""
        return self.dedicated.assignment() if self.strategy == "dedicated" else None

    def waiting_reason(self, pending: Pending, pool: Pool) -> str | None:
        """Why a request still waits for an instance, if the strategy is the cause."""
        if self.strategy == "dedicated" and pending.pinned_slot is None:
            return self.dedicated.waiting_reason(pending.session.identity)
        pinned = pool.get(pending.pinned_slot) if pending.pinned_slot is not None else None
        candidates = [pinned] if pinned is not None else self.serving(pending.session, pool)
        if any(not self.admits(instance, pending.session) for instance in candidates):
            return ("waiting for an instance: an instance that asks its clients (sampling, elicitation) serves "
                    "one session at a time, and another session's requests run there")
        return None

    def _has_room(self, instance: Instance) -> bool:
        return instance.in_flight < self.cap(instance)

    def _reserve_allows(self, pending: Pending, pool: Pool) -> bool:
        if self.high_reserve <= 0 or pending.level is Priority.HIGH:
            return True
        free = sum(max(0, self.cap(instance) - instance.in_flight) for instance in pool.ready())
        return free > self.reserved(pool)

    def _affine(self, session: Session, serving: list[Instance], pool: Pool) -> Instance | None:
        slot = self.pins.get(session.identity)
        instance = None if slot is None else pool.get(slot)
        if slot is not None:
            if instance is None or not instance.ready:
                return None  # starting, or being replaced: the session waits for its own instance
            if instance not in serving:
                if self.contexts.serves(instance, session):
                    return None  # settling: it serves again in a moment
                slot = None  # the session's context moved: pin it again
        if slot is None:
            instance = self._placement(session, serving, pool)
            if instance is None:
                return None
            self.pins[session.identity] = instance.slot
            if not instance.ready:
                return None  # it waits for an instance of its own rather than crowd a busy one for good
        assert instance is not None
        if not self._has_room(instance) or not self.admits(instance, session):
            return None
        instance.last_pick = self.balancer.turn()
        return instance

    def _placement(self, session: Session, serving: list[Instance], pool: Pool) -> Instance | None:
        """Where a session is pinned: the ready instance with the fewest sessions, unless one still starting
        would have fewer. Sessions that open together while the pool starts (as a client's windows do at
        launch) would otherwise all be pinned to the first instance ready, and block each other as long as
        they live on a server that runs one call at a time."""
        ready = self._least_pinned(serving)
        starting = self._least_pinned([i for i in pool if i.state in STARTING and self.contexts.serves(i, session)])
        pinned = Counter(self.pins.values())
        if starting is not None and (ready is None or pinned[starting.slot] < pinned[ready.slot]):
            return starting
        return ready

    def _least_pinned(self, serving: list[Instance]) -> Instance | None:
        pinned = Counter(self.pins.values())
        return min(serving, key=lambda i: (pinned[i.slot], i.in_flight, i.last_pick), default=None)
