"""The eligibility policy: which instances may serve a request, and which of them gets it.

A request pinned to an instance (a pagination cursor it made, a subscription it holds) runs there and
nowhere else. Otherwise only the instances that serve the session's context may run it (router/contexts.py:
a filter applied before any strategy), and among them it depends on the strategy (`loadBalancing.strategy`):

- `least_connections`: the least busy ready instance below the per-instance cap.
- `session_affinity`: the instance the session was pinned to at its first request (the one with the fewest
  sessions then), so a server that keeps state in its process sees one session's calls in one place; an
  instance may serve several sessions. A session whose instance is lost is pinned again and told.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from mcpmux.router.contexts import ContextRules
from mcpmux.router.dispatch import LeastConnections
from mcpmux.router.instances import Instance, Pool
from mcpmux.router.session import Pending, Session

Strategy = Literal["least_connections", "session_affinity"]


class PinnedInstanceGone(Exception):
    """The one instance that may serve this request is gone: the request cannot be served anywhere."""

    def __init__(self, slot: str) -> None:
        super().__init__(f"the instance that made this cursor ({slot}) is gone")
        self.slot = slot


class Eligibility:
    def __init__(self, cap: int, strategy: Strategy = "least_connections",
                 contexts: ContextRules | None = None) -> None:
        self.balancer = LeastConnections(cap)
        self.strategy = strategy
        self.contexts = contexts or ContextRules()
        self.pins: dict[bytes, str] = {}  # session -> slot, under session_affinity

    @property
    def cap(self) -> int:
        return self.balancer.cap

    def choose(self, pending: Pending, pool: Pool) -> Instance | None:
        """The instance to run `pending` on now, or None if it must wait; PinnedInstanceGone if it never can."""
        if pending.pinned_slot is not None:
            instance = pool.get(pending.pinned_slot)
            if instance is None or not instance.ready:
                raise PinnedInstanceGone(pending.pinned_slot)
            return instance if instance.in_flight < self.cap else None
        serving = self.serving(pending.session, pool)
        if self.strategy == "session_affinity":
            return self._affine(pending.session, serving, pool)
        # Instances already bound to the session's context first, while one has room: a spare is bound
        # to a context only when that context needs it.
        return self.balancer.pick([i for i in serving if i.bound and i.in_flight < self.cap] or serving)

    def serving(self, session: Session, pool: Pool) -> list[Instance]:
        """The context filter: the ready instances that may serve this session now."""
        return [instance for instance in pool.ready() if self.contexts.usable(instance, session)]

    def has_room(self, pool: Pool) -> bool:
        """Whether any ready instance is below its cap (else no waiting request can start)."""
        return any(instance.in_flight < self.cap for instance in pool.ready())

    def session_closed(self, session: bytes) -> None:
        self.pins.pop(session, None)

    def instance_lost(self, slot: str) -> list[bytes]:
        """Unpin the sessions of a lost instance; they are pinned again at their next request."""
        moved = [session for session, pinned in self.pins.items() if pinned == slot]
        for session in moved:
            del self.pins[session]
        return moved

    def sessions_of(self, slot: str) -> list[bytes]:
        return [session for session, pinned in self.pins.items() if pinned == slot]

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
            instance = self._least_pinned(serving)
            if instance is None:
                return None
            self.pins[session.identity] = instance.slot
        assert instance is not None
        if instance.in_flight >= self.cap:
            return None
        instance.last_pick = self.balancer.turn()
        return instance

    def _least_pinned(self, serving: list[Instance]) -> Instance | None:
        pinned = Counter(self.pins.values())
        return min(serving, key=lambda i: (pinned[i.slot], i.in_flight, i.last_pick), default=None)
