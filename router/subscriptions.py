"""Resource subscriptions: each lives on one instance, however many sessions asked for it.

The table says where each subscription is held and who hears its updates; the switchboard sends the
subscribe and unsubscribe requests it implies. A subscription whose instance is lost waits unplaced until
another instance is ready to hold it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Subscription:
    slot: str | None  # the instance holding it; None while no instance does
    sessions: set[bytes] = field(default_factory=set)


class Subscriptions:
    def __init__(self) -> None:
        self._by_uri: dict[str, Subscription] = {}

    def __len__(self) -> int:
        return len(self._by_uri)

    def holder(self, uri: object) -> str | None:
        """The instance holding a subscription to `uri`, if one does."""
        subscription = self._by_uri.get(uri) if isinstance(uri, str) else None
        return subscription.slot if subscription is not None else None

    def join(self, uri: str, session: bytes) -> None:
        """Another session hears a subscription an instance holds already."""
        self._by_uri[uri].sessions.add(session)

    def confirmed(self, uri: str, slot: str, session: bytes) -> None:
        """An instance accepted a session's subscribe."""
        subscription = self._by_uri.setdefault(uri, Subscription(slot))
        subscription.slot = subscription.slot or slot
        subscription.sessions.add(session)

    def has(self, uri: object, session: bytes) -> bool:
        subscription = self._by_uri.get(uri) if isinstance(uri, str) else None
        return subscription is not None and session in subscription.sessions

    def leave(self, uri: str, session: bytes) -> str | None:
        """A session unsubscribes; the slot to unsubscribe on if it was the last one (then it is gone)."""
        subscription = self._by_uri[uri]
        subscription.sessions.discard(session)
        if subscription.sessions:
            return None
        del self._by_uri[uri]
        return subscription.slot

    def drop_session(self, session: bytes) -> list[tuple[str, str | None]]:
        """A session ends: (uri, slot) of each subscription it was the last to hear, now gone."""
        dropped = []
        for uri in [uri for uri, s in self._by_uri.items() if session in s.sessions]:
            slot = self.leave(uri, session)
            if uri not in self._by_uri:
                dropped.append((uri, slot))
        return dropped

    def listeners(self, uri: object, slot: str) -> set[bytes]:
        """Who hears an update of `uri` from instance `slot` (nobody if another instance holds it)."""
        subscription = self._by_uri.get(uri) if isinstance(uri, str) else None
        if subscription is None or subscription.slot != slot:
            return set()
        return set(subscription.sessions)

    def unplace(self, slot: str) -> list[str]:
        """The instance `slot` is lost: the uris it held, now held by nobody."""
        orphaned = [uri for uri, s in self._by_uri.items() if s.slot == slot]
        for uri in orphaned:
            self._by_uri[uri].slot = None
        return orphaned

    def place_unplaced(self, slot: str) -> Iterator[str]:
        """Give every subscription held by nobody to instance `slot`; the uris to subscribe there."""
        for uri, subscription in self._by_uri.items():
            if subscription.slot is None:
                subscription.slot = slot
                yield uri
