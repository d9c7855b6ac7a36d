"""The eligibility policy: which instances may serve a request, and which of them gets it.

A request pinned to an instance (a pagination cursor it made, a subscription it holds) runs there and
nowhere else. Otherwise it depends on the strategy (`loadBalancing.strategy`):

- `least_connections`: the least busy ready instance below the per-instance cap.
- `session_affinity`: the instance the session was pinned to at its first request (the one with the fewest
  sessions then), so a server that keeps state in its process sees one session's calls in one place; an
  instance may serve several sessions. A session whose instance is lost is pinned again and told.
- `dedicated`: an instance of the session's own, nobody else's, recycled when the session ends
  (router/dedicated.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from mcpmux.router.dedicated import Dedicated
from mcpmux.router.dispatch import LeastConnections
from mcpmux.router.instances import Instance, Pool
from mcpmux.router.session import Pending

Strategy = Literal["least_connections", "session_affinity", "dedicated"]


class PinnedInstanceGone(Exception):
    """The one instance that may serve this request is gone: the request cannot be served anywhere."""

    def __init__(self, slot: str, why: str = "is gone") -> None:
        super().__init__(f"the instance that made this cursor ({slot}) {why}")
        self.slot = slot


class Eligibility:
    def __init__(self, cap: int, strategy: Strategy = "least_connections", max_instances: int = 1) -> None:
        self.balancer = LeastConnections(cap)
        self.strategy = strategy
        self.pins: dict[bytes, str] = {}  # session -> slot, under session_affinity
        self.dedicated = Dedicated(max_instances)  # session <-> slot, under dedicated

    @property
    def cap(self) -> int:
        return self.balancer.cap

    @property
    def shares_instances(self) -> bool:
        """Whether an instance may serve several sessions (all strategies but dedicated)."""
        return self.strategy != "dedicated"

    def choose(self, pending: Pending, pool: Pool) -> Instance | None:
        """The instance to run `pending` on now, or None if it must wait; PinnedInstanceGone if it never can."""
        if pending.pinned_slot is not None:
            instance = pool.get(pending.pinned_slot)
            if instance is None or not instance.ready:
                raise PinnedInstanceGone(pending.pinned_slot)
            if not self.dedicated.may_run(pending.session.identity, instance.slot):
                raise PinnedInstanceGone(pending.pinned_slot, "is dedicated to another session now")
            return instance if instance.in_flight < self.cap else None
        if self.strategy == "session_affinity":
            return self._affine(pending.session.identity, pool)
        if self.strategy == "dedicated":
            return self.dedicated.choose(pending.session.identity, pool, self.cap)
        return self.balancer.pick(pool.ready())

    def has_room(self, pool: Pool) -> bool:
        """Whether any ready instance is below its cap (else no waiting request can start)."""
        return any(instance.in_flight < self.cap for instance in pool.ready())

    def session_closed(self, session: bytes) -> str | None:
        """Forget the session; the instance it had to itself (dedicated), which must be recycled."""
        self.pins.pop(session, None)
        return self.dedicated.session_closed(session)

    def instance_lost(self, slot: str) -> list[bytes]:
        """Unpin the sessions of a lost instance; they are pinned again at their next request."""
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

    def waiting_reason(self, pending: Pending) -> str | None:
        """Why a request still waits for an instance, if the strategy is the cause."""
        if self.strategy == "dedicated" and pending.pinned_slot is None:
            return self.dedicated.waiting_reason(pending.session.identity)
        return None

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
