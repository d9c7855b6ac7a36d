"""The pool's instances as the core sees them: one per shim slot, with its load and its backend's handshake."""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcpmux.stateless import Era
from mcpmux.status import SlotState

if TYPE_CHECKING:
    from mcpmux.router.core.contexts import ClientContext


class InstanceState(enum.StrEnum):
    """The states the core moves a connected instance through: a subset of the `SlotState`s it is shown in,
    spelled by them (busy is ready at the cap, stopped a slot with no shim: the status derives both)."""

    STARTING = SlotState.STARTING.value  # shim connected, backend not initialized yet
    PROBING = SlotState.PROBING.value  # half-open: restarted after failures, must answer a ping first
    READY = SlotState.READY.value
    OPEN = SlotState.OPEN_CIRCUIT.value  # failed too often: takes nothing new, being restarted
    FAILED = SlotState.FAILED.value  # backend gone; the slot will be restarted by supervisord

    @property
    def shown(self) -> SlotState:
        return SlotState(self.value)


@dataclass(eq=False)
class Instance:
    slot: str  # supervisord's group:name, also the shim's ZeroMQ routing id
    pid: int
    backend_pid: int
    started: float  # on the switchboard's clock: when it connected, then when its initialize was sent
    state: InstanceState = InstanceState.STARTING
    initialize_result: dict[str, Any] | None = None  # in the stateless era, its discover result
    era: Era = Era.HANDSHAKE  # the era its backend connection was opened in (router/core/eras.py)
    in_flight: int = 0
    served: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=512))
    last_ping: float = field(init=False)  # when it last answered or was sent a health ping
    last_pick: int = 0  # when the balancer last chose it, to break ties fairly
    last_seen: float = field(init=False)  # when its shim was last heard from
    context: ClientContext | None = None  # what it was initialized with; None until the core says
    bound: bool = False  # its roots are fixed: it serves exactly `context` (router/core/contexts.py)
    roots_request: Any = None  # the id of a roots/list it asked before it was bound, unanswered
    announced: set[str] = field(default_factory=set)  # the list_changed kinds it sent (router/core/switchboard.py)
    settling: bool = False  # just given its roots: takes nothing until it answers a ping after them
    asks_clients: bool = False  # it sent a client a request (sampling, elicitation): one session at a time

    def __post_init__(self) -> None:
        self.last_ping = self.last_seen = self.started

    @property
    def identity(self) -> bytes:
        return self.slot.encode()

    @property
    def ready(self) -> bool:
        return self.state is InstanceState.READY


class Pool:
    """Instances by slot, in a stable order so that ties are broken the same fair way every time."""

    def __init__(self) -> None:
        self._by_slot: dict[str, Instance] = {}
        # Every instance runs the same program: once one has asked a client anything, any may, so every
        # instance, present or to come, serves one session at a time (router/core/eligibility.py).
        self.asks_clients = False

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._by_slot.values())

    def __len__(self) -> int:
        return len(self._by_slot)

    def get(self, slot: str) -> Instance | None:
        return self._by_slot.get(slot)

    def add(self, instance: Instance) -> None:
        instance.asks_clients = instance.asks_clients or self.asks_clients
        self._by_slot[instance.slot] = instance

    def ask_clients(self) -> None:
        """One instance asked a client: every instance is marked, and every one added later."""
        self.asks_clients = True
        for instance in self._by_slot.values():
            instance.asks_clients = True

    def remove(self, slot: str) -> Instance | None:
        return self._by_slot.pop(slot, None)

    def ready(self) -> list[Instance]:
        return [instance for instance in self._by_slot.values() if instance.ready]

    def any_initialize_result(self) -> dict[str, Any] | None:
        """A handshake instance's InitializeResult: what the handshake era's clients are answered."""
        for instance in self.ready():
            if instance.era is Era.HANDSHAKE:
                return instance.initialize_result
        return None
