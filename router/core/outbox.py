"""What the switchboard's parts say, in the order they say it: messages to clients and instances, and the
other actions the core carries out (router/core/actions.py). Also mcpmux's own requests to instances (a health
ping, tools/list, a roots probe): their ids, and what follows their answer.

Every part of the switchboard writes here and none reads another's actions back; the core takes them all
once the event is handled (`take`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.actions import Action, ToClient, ToInstance
from mcpmux.router.core.eras import Eras
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.session import Session

log = logging.getLogger("mcpmux.core")

Outgoing = Envelope | JsonObject  # a message passed on, or one mcpmux built (wrapped as it is queued)
OnAnswer = Callable[[Instance, Envelope], None]


class Outbox:
    def __init__(self, pool: Pool, eras: Eras, metrics: Metrics, first_id: int | None = None) -> None:
        self.actions: list[Action] = []
        self._pool = pool
        self._eras = eras
        self._metrics = metrics
        # Unique across instances and across core restarts, so a late answer never matches a new request.
        self.first_id = time.time_ns() // 1000 if first_id is None else first_id
        self._ids = itertools.count(self.first_id)
        # mcpmux's own requests, by id: the instance they went to, and their follow-up.
        self._asked: dict[int, tuple[str, OnAnswer | None]] = {}

    def take(self) -> list[Action]:
        """What the core must now do, in order; the outbox forgets them."""
        actions, self.actions = self.actions, []
        return actions

    def next_id(self) -> int:
        """An id nobody has used: for a request mcpmux sends, under its own id, to a client or an instance."""
        return next(self._ids)

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def to_client(self, session: Session, message: Outgoing) -> None:
        self.actions.append(ToClient(session.identity, Envelope.of(message)))

    def to_instance(self, instance: Instance, message: Outgoing) -> None:
        self.actions.append(ToInstance(instance.slot, Envelope.of(message)))

    def answer_local(self, session: Session, response: JsonObject) -> None:
        """A response mcpmux gives itself (ping, setLevel, refusals): counted like any other."""
        if "error" in response:
            self._metrics.requests_failed += 1
        else:
            self._metrics.requests_succeeded += 1
        self._metrics.observe_latency(0.0)
        self.to_client(session, response)

    # --- mcpmux's own requests to instances ------------------------------------------------------------

    def ask(self, slot: str | None, method: str, params: JsonObject, follow_up: OnAnswer | None = None, *,
            allow_unready: bool = False) -> int | None:
        """Send an instance a request of mcpmux's own, as an instance of its era takes it; its id, or None if
        it was not sent (no such instance, not ready, or the method is not of its era)."""
        instance = self._pool.get(slot or "")
        if instance is None or not (instance.ready or allow_unready):
            return None
        as_sent = self._eras.internal(instance, method, params)
        if as_sent is None:
            return None
        method, params = as_sent
        backend_id = self.next_id()
        self._asked[backend_id] = (instance.slot, follow_up)
        self.to_instance(instance, {"jsonrpc": "2.0", "id": backend_id, "method": method, "params": params})
        return backend_id

    def answered(self, instance: Instance, message: Envelope) -> bool:
        """Whether `message` answers one of mcpmux's own requests to this instance; its follow-up runs."""
        asked = self._asked.get(message.id)
        if asked is None or asked[0] != instance.slot:
            return False
        del self._asked[message.id]
        follow_up = asked[1]
        if follow_up is not None:
            follow_up(instance, message)
        elif message.kind is Kind.ERROR:
            log.warning("%s refused an mcpmux request: %s", instance.slot, message.error())
        return True

    def asked_elsewhere(self, backend_id: object) -> bool:
        """Whether mcpmux sent this id to some instance (so another instance answering it is lying)."""
        return backend_id in self._asked

    def forget(self, backend_id: int) -> None:
        """Its answer no longer matters (a ping that took too long)."""
        self._asked.pop(backend_id, None)
