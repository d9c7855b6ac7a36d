"""Who is still there, judged on the switchboard's clock: the heartbeats of shims and doors, instances late
to start, and the health pings of idle instances.

It only judges: what follows (an instance lost, a circuit opened, a session closed) is the switchboard's and
the core's to do.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from mcpmux.envelope import Envelope
from mcpmux.router.core.instances import Instance, InstanceState, Pool
from mcpmux.router.core.outbox import Outbox
from mcpmux.router.core.session import Session

Clock = Callable[[], float]


class Liveness:
    def __init__(self, pool: Pool, sessions: dict[bytes, Session], outbox: Outbox, clock: Clock) -> None:
        self._pool = pool
        self._sessions = sessions
        self._outbox = outbox
        self._now = clock
        self._pings: dict[str, tuple[int, float]] = {}  # health pings awaiting an answer: id and deadline, by slot
        self._ejected: set[str] = set()  # slots taken out for not answering, until they connect again

    def heard_from(self, peer: Instance | Session) -> None:
        """A shim or a door beat (or said anything)."""
        peer.last_seen = self._now()

    def forgive_silence(self) -> None:
        """The core did not run for a while: everyone gets a fresh chance to beat before being judged (their
        heartbeats could not be heard while nothing listened), and pings sent meanwhile are judged afresh."""
        now = self._now()
        for peer in [*self._pool, *self._sessions.values()]:
            peer.last_seen = max(peer.last_seen, now)
        self._pings.clear()

    def silent_instances(self, limit: float) -> list[Instance]:
        """The instances whose shims have not been heard from for more than `limit` seconds."""
        now = self._now()
        return [instance for instance in self._pool if now - instance.last_seen > limit]

    def silent_sessions(self, limit: float) -> list[Session]:
        """The sessions whose doors have not been heard from for more than `limit` seconds."""
        now = self._now()
        return [session for session in self._sessions.values() if now - session.last_seen > limit]

    def late_to_start(self, limit: float, uninitialized: Collection[str]) -> list[Instance]:
        """The instances sent their initialize more than `limit` seconds ago and not ready yet (those not
        initialized at all have nothing to be late for)."""
        now = self._now()
        return [instance for instance in self._pool if instance.slot not in uninitialized
                and instance.state in (InstanceState.STARTING, InstanceState.PROBING)
                and now - instance.started > limit]

    # --- health pings ----------------------------------------------------------------------------------

    def unanswered_pings(self, interval: float, timeout: float) -> list[Instance]:
        """Ping idle instances every `interval`; the ones that did not answer within `timeout`.

        Busy instances are not pinged: a server that runs one call at a time cannot answer until it is
        done, and its requests' deadlines already watch it.
        """
        now, unanswered = self._now(), []
        for instance in self._pool.ready():
            outstanding = self._pings.get(instance.slot)
            if outstanding is not None:
                if now > outstanding[1]:
                    self._outbox.forget(outstanding[0])
                    del self._pings[instance.slot]
                    unanswered.append(instance)
                continue
            if instance.in_flight == 0 and now - instance.last_ping >= interval:
                instance.last_ping = now
                backend_id = self._outbox.ask(instance.slot, "ping", {}, self._pong)
                if backend_id is not None:
                    self._pings[instance.slot] = (backend_id, now + timeout)
        return unanswered

    def may_eject(self) -> bool:
        """Whether one more instance may be taken out for not answering: never half the pool or more (when
        many go silent at once the cause is rarely theirs, and a pool with nobody left serves nobody)."""
        counted = len(self._pool) + len(self._ejected - {instance.slot for instance in self._pool})
        return len(self._ejected) < max(1, counted // 2)

    def ejected(self, slot: str) -> None:
        """The instance was taken out for not answering; it counts as out until its slot connects again."""
        self._ejected.add(slot)

    def connected(self, slot: str) -> None:
        self._ejected.discard(slot)

    def forget(self, slot: str) -> None:
        self._pings.pop(slot, None)

    def _pong(self, instance: Instance, message: Envelope) -> None:
        self._pings.pop(instance.slot, None)
        instance.last_ping = self._now()

