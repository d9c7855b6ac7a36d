"""The eligibility policy: which instances may serve a request, and which of them gets it.

A request pinned to an instance (a pagination cursor it made, a subscription it holds) runs there and
nowhere else. Otherwise it depends on the strategy (`loadBalancing.strategy`):

- `least_connections`: the least busy ready instance below the per-instance cap.
- `session_affinity`: the instance the session was pinned to at its first request (the one with the fewest
  sessions then), so a server that keeps state in its process sees one session's calls in one place; an
  instance may serve several sessions. A session whose instance is lost is pinned again and told.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from mcpmux.router.dispatch import LeastConnections
from mcpmux.router.instances import Instance, Pool
from mcpmux.router.session import Pending

Strategy = Literal["least_connections", "session_affinity"]


class PinnedInstanceGone(Exception):
    """The one instance that may serve this request is gone: the request cannot be served anywhere."""

    def __init__(self, slot: str) -> None:
        super().__init__(f"the instance that made this cursor ({slot}) is gone")
        self.slot = slot


class Eligibility:
    def __init__(self, cap: int, strategy: Strategy = "least_connections") -> None:
        self.balancer = LeastConnections(cap)
        self.strategy = strategy
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
        if self.strategy == "session_affinity":
            return self._affine(pending.session.identity, pool)
        return self.balancer.pick(pool.ready())

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

    def _affine(self, session: bytes, pool: Pool) -> Instance | None:
        slot = self.pins.get(session)
        if slot is None:
            instance = self._least_pinned(pool)
            if instance is None:
                return None
            self.pins[session] = instance.slot
        else:
            instance = pool.get(slot)
            if instance is None or not instance.ready:
                return None  # starting, or being replaced: the session waits for its own instance
        if instance.in_flight >= self.cap:
            return None
        instance.last_pick = self.balancer.turn()
        return instance

    def _least_pinned(self, pool: Pool) -> Instance | None:
        pinned = Counter(self.pins.values())
        ready = pool.ready()
        return min(ready, key=lambda i: (pinned[i.slot], i.in_flight, i.last_pick), default=None)
