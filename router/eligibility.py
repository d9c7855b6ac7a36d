"""The eligibility policy: which instances may serve a request, and which of them gets it.

Today: a request pinned to an instance (a pagination cursor it made, a subscription it holds) runs there and
nowhere else; any other request goes to the least busy ready instance below the per-instance cap. Strategies
that keep a session on its instances, and a session's client context, narrow the candidates here.
"""

from __future__ import annotations

from mcpmux.router.dispatch import LeastConnections
from mcpmux.router.instances import Instance, Pool
from mcpmux.router.session import Pending


class PinnedInstanceGone(Exception):
    """The one instance that may serve this request is gone: the request cannot be served anywhere."""

    def __init__(self, slot: str) -> None:
        super().__init__(f"the instance that made this cursor ({slot}) is gone")
        self.slot = slot


class Eligibility:
    def __init__(self, cap: int) -> None:
        self.balancer = LeastConnections(cap)

    @property
    def cap(self) -> int:
        return self.balancer.cap

    def choose(self, pending: Pending, pool: Pool) -> Instance | None:
        """The instance to run `pending` on now, or None if it must wait; PinnedInstanceGone if it never can."""
        if pending.pinned_slot is not None:
            instance = pool.get(pending.pinned_slot)
            if instance is None or not instance.ready:
                raise PinnedInstanceGone(pending.pinned_slot)
            return instance
        return self.balancer.pick(pool.ready())

    def has_room(self, pool: Pool) -> bool:
        """Whether any ready instance is below its cap (else waiting requests stay where they are)."""
        return any(instance.in_flight < self.cap for instance in pool.ready())
