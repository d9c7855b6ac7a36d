"""The dedicated strategy: each session has an instance of its own for as long as it lasts.

A session is given a free instance (ready, nobody's, running no client request) at its first request and
keeps it; no other session's request runs there. When the session ends its instance is recycled (restarted)
before anyone else may have it, so every session starts from a fresh server. A session with no instance waits
in the queue, within its deadline; the scaler counts every session as needing an instance of its own.

Because an instance serves one session, whatever it sends on its own (sampling, elicitation, roots, log
messages) belongs to that session: the assignment says so, with no guessing.
"""

from __future__ import annotations

from collections.abc import Callable

from mcpmux.router.instances import Instance, Pool


class Dedicated:
    def __init__(self, max_instances: int) -> None:
        self.max_instances = max_instances
        self._slot_of: dict[bytes, str] = {}  # session -> its instance
        self._recycling: set[str] = set()  # instances whose session ended: nobody's until they restart

    def choose(self, session: bytes, pool: Pool, cap: Callable[[Instance], int],
               ready: list[Instance]) -> Instance | None:
        """The session's own instance if it can take a request now; one of the `ready` ones (of its protocol
        era) is assigned at its first request."""
        slot = self._slot_of.get(session)
        if slot is None:
            instance = self._free(ready)
            if instance is None:
                return None  # every instance is someone's: wait for one to start or to be recycled
            self._slot_of[session] = instance.slot
        else:
            instance = pool.get(slot)
            if instance is None or not instance.ready:
                return None
        return instance if instance.in_flight < cap(instance) else None

    def _free(self, ready: list[Instance]) -> Instance | None:
        taken = set(self._slot_of.values()) | self._recycling
        free = [i for i in ready if i.slot not in taken and i.in_flight == 0]
        # The lowest slot first: the scaler stops the highest, so spares left over are the ones it stops.
        return min(free, key=lambda instance: instance.slot, default=None)

    def may_run(self, session: bytes, slot: str) -> bool:
        """Whether a request of `session` pinned to `slot` (a cursor, a subscription) may run there."""
        return self.owner(slot) in (None, session)

    def owner(self, slot: str) -> bytes | None:
        return next((session for session, mine in self._slot_of.items() if mine == slot), None)

    def assignment(self) -> dict[str, bytes]:
        """Each assigned instance's session."""
        return {slot: session for session, slot in self._slot_of.items()}

    def session_closed(self, session: bytes) -> str | None:
        """The session ends: the instance it had, to be recycled before anyone else uses it."""
        slot = self._slot_of.pop(session, None)
        if slot is not None:
            self._recycling.add(slot)
        return slot

    def instance_lost(self, slot: str) -> list[bytes]:
        """The instance leaves the pool (lost, or recycled); its session gets another at its next request."""
        self._recycling.discard(slot)
        moved = [session for session, mine in self._slot_of.items() if mine == slot]
        for session in moved:
            del self._slot_of[session]
        return moved

    def waiting_reason(self, session: bytes) -> str | None:
        """Why a request of `session` is still waiting, if this strategy is the cause."""
        if session in self._slot_of:
            return None
        if len(self._slot_of) >= self.max_instances:
            return (f"waiting for an instance of its own: every instance is dedicated to another session and "
                    f"maxInstances ({self.max_instances}) is reached")
        return "waiting for an instance of its own to start or to be recycled"
