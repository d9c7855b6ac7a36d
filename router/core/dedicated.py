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

from mcpmux.router.core.instances import Instance, Pool


class Dedicated:
    def __init__(self, max_instances: int) -> None:
        self.max_instances = max_instances
        self._slot_of: dict[bytes, str] = {}  # session -> its instance
        self._recycling: set[str] = set()  # instances whose session ended: nobody's until they restart

    def choose(self, session: bytes, serving: list[Instance], pool: Pool,
               cap: Callable[[Instance], int]) -> Instance | None:
        """The session's own instance if it can take a request now; one is assigned at its first request,
        among the ready instances that may serve the session (`serving`: those of its client context)."""
        slot = self._slot_of.get(session)
        if slot is None:
            instance = min(self.spares(serving), key=lambda spare: spare.slot, default=None)
            if instance is None:
                return None  # every instance is someone's: wait for one to start or to be recycled
            self._slot_of[session] = instance.slot
        else:
            instance = pool.get(slot)
            # Its own instance serves it unless the session's context is settling (its roots asked again):
            # it waits for it, never for another.
            if instance is None or instance not in serving:
                return None
        return instance if instance.in_flight < cap(instance) else None

    def spares(self, instances: list[Instance]) -> list[Instance]:
        """The free ones among `instances`: ready, nobody's, running nothing. The lowest slot is taken first:
        the scaler stops the highest, so spares left over are the ones it stops."""
        taken = set(self._slot_of.values()) | self._recycling
        return [i for i in instances if i.ready and i.slot not in taken and i.in_flight == 0]

    def has_instance(self, session: bytes) -> bool:
        return session in self._slot_of

    def slot_of(self, session: bytes) -> str | None:
        return self._slot_of.get(session)

    def may_run(self, session: bytes, slot: str) -> bool:
        """Whether a request of `session` pinned to `slot` (a cursor, a subscription, a requestState) may run
        there: only on the session's own instance. One that nobody has yet is not the one that made the pin
        (that one was recycled since, or the pin is not this session's), and once it ran a request of this
        session it could never serve another."""
        return self.owner(slot) == session

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
