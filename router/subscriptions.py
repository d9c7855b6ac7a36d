"""Resource subscriptions: each lives on one instance, however many sessions asked for it.

The table says where each subscription is held and who hears its updates; the switchboard sends the
subscribe and unsubscribe requests it implies. A subscription whose instance is lost waits unplaced until
another instance is ready to hold it.

When instances are not shared (the dedicated strategy), each session's subscription lives on its own
instance, apart from another session's to the same uri.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Subscription:
    slot: str | None  # the instance holding it; None while no instance does
    sessions: set[bytes] = field(default_factory=set)


Key = tuple[str, bytes | None]  # the uri, and the session when instances are not shared


class Subscriptions:
    def __init__(self, *, shared: bool = True) -> None:
        self.shared = shared
        self._by_key: dict[Key, Subscription] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def _key(self, uri: str, session: bytes) -> Key:
        return (uri, None if self.shared else session)

    def holder(self, uri: object, session: bytes) -> str | None:
        """The instance holding a subscription to `uri` that `session` may hear, if one does."""
        subscription = self._by_key.get(self._key(uri, session)) if isinstance(uri, str) else None
        return subscription.slot if subscription is not None else None

    def join(self, uri: str, session: bytes) -> None:
        """Another session hears a subscription an instance holds already."""
        self._by_key[self._key(uri, session)].sessions.add(session)

    def confirmed(self, uri: str, slot: str, session: bytes) -> None:
        """An instance accepted a session's subscribe."""
        subscription = self._by_key.setdefault(self._key(uri, session), Subscription(slot))
        subscription.slot = subscription.slot or slot
        subscription.sessions.add(session)

    def has(self, uri: object, session: bytes) -> bool:
        subscription = self._by_key.get(self._key(uri, session)) if isinstance(uri, str) else None
        return subscription is not None and session in subscription.sessions

    def leave(self, uri: str, session: bytes) -> str | None:
        """A session unsubscribes; the slot to unsubscribe on if it was the last one (then it is gone)."""
        key = self._key(uri, session)
        subscription = self._by_key[key]
        subscription.sessions.discard(session)
        if subscription.sessions:
            return None
        del self._by_key[key]
        return subscription.slot

    def drop_session(self, session: bytes) -> list[tuple[str, str | None]]:
        """A session ends: (uri, slot) of each subscription it was the last to hear, now gone."""
        dropped = []
        for key in [key for key, s in self._by_key.items() if session in s.sessions]:
            slot = self.leave(key[0], session)
            if key not in self._by_key:
                dropped.append((key[0], slot))
        return dropped

    def listeners(self, uri: object, slot: str) -> set[bytes]:
        """Who hears an update of `uri` from instance `slot` (nobody if another instance holds it)."""
        if self.shared:
            subscription = self._by_key.get((uri, None)) if isinstance(uri, str) else None
            return set(subscription.sessions) if subscription is not None and subscription.slot == slot else set()
        return {session for (held, _), subscription in self._by_key.items()
                if held == uri and subscription.slot == slot for session in subscription.sessions}

    def unplace(self, slot: str) -> list[str]:
        """The instance `slot` is lost: the uris it held, now held by nobody."""
        orphaned = [s for s in self._by_key.values() if s.slot == slot]
        for subscription in orphaned:
            subscription.slot = None
        return [uri for (uri, _), s in self._by_key.items() if s in orphaned]

    def place_unplaced(self, slot: str, only: Collection[bytes] | None = None) -> Iterator[str]:
        """Give every subscription held by nobody (of the sessions `only`, if given) to instance `slot`; the
        uris to subscribe there."""
        for (uri, _), subscription in self._by_key.items():
            if subscription.slot is None and (only is None or not subscription.sessions.isdisjoint(only)):
                subscription.slot = slot
                yield uri
