"""The client requests instances run now, by the id each instance sees, and which sessions each instance
serves at this moment: what attributes an instance's request to a client (router/core/server_requests.py) and
what keeps an instance that asks its clients to one session at a time (router/core/eligibility.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import ItemsView, Iterator, ValuesView
from typing import TYPE_CHECKING, Any

from mcpmux.router.core import listen

if TYPE_CHECKING:
    from mcpmux.router.core.requests import Pending


class Running:
    def __init__(self) -> None:
        self._by_id: dict[Any, Pending] = {}  # ints: any other id an instance names is nobody's
        self._slot_of: dict[Any, str] = {}  # where each went: a lost instance's requests lose their slot
        self._sessions: dict[str, Counter[bytes]] = {}  # per instance, its sessions' requests running there

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._by_id)

    def __contains__(self, backend_id: object) -> bool:
        return backend_id in self._by_id

    def get(self, backend_id: Any) -> Pending | None:
        return self._by_id.get(backend_id)

    def values(self) -> ValuesView[Pending]:
        return self._by_id.values()

    def items(self) -> ItemsView[Any, Pending]:
        return self._by_id.items()

    def add(self, backend_id: int, pending: Pending) -> None:
        assert pending.slot is not None
        self._by_id[backend_id] = pending
        if listen.is_stream(pending):
            return  # a stream lasts as long as its client wants and causes no request to the client
        self._slot_of[backend_id] = pending.slot
        self._sessions.setdefault(pending.slot, Counter())[pending.session.identity] += 1

    def pop(self, backend_id: Any) -> Pending | None:
        pending = self._by_id.pop(backend_id, None)
        slot = self._slot_of.pop(backend_id, None)
        if pending is None or slot is None:
            return pending
        counts = self._sessions[slot]
        counts[pending.session.identity] -= 1
        if counts[pending.session.identity] <= 0:
            del counts[pending.session.identity]
        if not counts:
            del self._sessions[slot]
        return pending

    def sessions_on(self, slot: str) -> set[bytes]:
        """The sessions whose requests the instance runs now (streams aside)."""
        return set(self._sessions.get(slot, ()))
