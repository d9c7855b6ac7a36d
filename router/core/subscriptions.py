"""Resource subscriptions: each is one session's, on the instance that accepted its subscribe.

A subscription belongs to the session that made it, as it would with a server of its own: the instance sees
every subscribe (the switchboard forwards each one), and an update of a uri from an instance reaches only the
sessions subscribed to that uri on that instance. Two sessions subscribed to one uri on one instance share
the server's subscription there, so it is unsubscribed only when the last of them leaves. A subscription whose
instance is lost waits unplaced until the switchboard places it again on an instance that serves its session
(never one of another client context).
"""

from __future__ import annotations

from collections.abc import Callable


class Subscriptions:
    def __init__(self) -> None:
        self._by_session: dict[bytes, dict[str, str | None]] = {}  # session -> uri -> slot (None: unplaced)
        self._by_place: dict[tuple[str, str], set[bytes]] = {}  # (slot, uri) -> the sessions subscribed there

    def __len__(self) -> int:
        return sum(len(uris) for uris in self._by_session.values())

    def has(self, session: bytes, uri: object) -> bool:
        return isinstance(uri, str) and uri in self._by_session.get(session, {})

    def slot_of(self, session: bytes, uri: str) -> str | None:
        """The instance holding the session's subscription to `uri` (None if it has none, or it is unplaced)."""
        return self._by_session.get(session, {}).get(uri)

    def confirmed(self, session: bytes, uri: str, slot: str) -> None:
        """An instance accepted the session's subscribe: the subscription lives there now."""
        self._unplace_one(session, uri)
        self._place(session, uri, slot)

    def leave(self, session: bytes, uri: str) -> str | None:
        """The session unsubscribes: the instance to unsubscribe on, if the session was the last one
        subscribed to `uri` there."""
        slot = self._unplace_one(session, uri)
        del self._by_session[session][uri]
        if not self._by_session[session]:
            del self._by_session[session]
        return slot

    def drop_session(self, session: bytes) -> list[tuple[str, str]]:
        """The session ends: (uri, slot) of each subscription it was the last to hold on its instance."""
        dropped = []
        for uri in list(self._by_session.get(session, {})):
            slot = self.leave(session, uri)
            if slot is not None:
                dropped.append((uri, slot))
        return dropped

    def listeners(self, uri: object, slot: str) -> set[bytes]:
        """Who hears an update of `uri` from instance `slot`: the sessions subscribed to it there."""
        return set(self._by_place.get((slot, uri), ())) if isinstance(uri, str) else set()

    def unplace(self, slot: str) -> set[bytes]:
        """The instance `slot` is lost: its subscriptions are held by nobody now; the sessions they are of."""
        orphaned: set[bytes] = set()
        for place in [place for place in self._by_place if place[0] == slot]:
            for session in self._by_place.pop(place):
                self._by_session[session][place[1]] = None
                orphaned.add(session)
        return orphaned

    def move_off(self, session: bytes, keeps: Callable[[str], bool]) -> list[tuple[str, str]]:
        """Unplace the session's subscriptions held by instances that `keeps` says no longer serve it; the
        (uri, slot) to unsubscribe, where it was the last one subscribed."""
        left = []
        for uri, slot in list(self._by_session.get(session, {}).items()):
            if slot is not None and not keeps(slot) and self._unplace_one(session, uri) is not None:
                left.append((uri, slot))
        return left

    def place_unplaced(self, session: bytes, slot: str) -> list[str]:
        """Give the session's unplaced subscriptions to instance `slot`: the uris to subscribe there (those it
        does not hold for another session already)."""
        return [uri for uri in self.unplaced(session) if self._place(session, uri, slot)]

    def unplaced(self, session: bytes) -> list[str]:
        """The uris of the session's subscriptions that no instance holds now."""
        return [uri for uri, held in self._by_session.get(session, {}).items() if held is None]

    def unplaced_sessions(self) -> list[bytes]:
        return [session for session, uris in self._by_session.items() if None in uris.values()]

    def _place(self, session: bytes, uri: str, slot: str) -> bool:
        """True if the instance held no subscription to `uri` before (it must be sent a subscribe)."""
        self._by_session.setdefault(session, {})[uri] = slot
        listeners = self._by_place.setdefault((slot, uri), set())
        listeners.add(session)
        return len(listeners) == 1

    def _unplace_one(self, session: bytes, uri: str) -> str | None:
        """Take the session off its subscription's instance: that slot, if nobody else is subscribed there."""
        slot = self._by_session.get(session, {}).get(uri)
        if slot is None:
            return None
        self._by_session[session][uri] = None
        listeners = self._by_place[(slot, uri)]
        listeners.discard(session)
        if listeners:
            return None
        del self._by_place[(slot, uri)]
        return slot
