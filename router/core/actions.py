"""What the switchboard asks its I/O loop to do. The switchboard only returns these; the core carries them out.

Nothing here is awaited or called back into the switchboard while it changes its state: a send that fails
comes back as a new event (a door gone, an instance lost) after the current one is finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcpmux.envelope import Envelope
from mcpmux.router.core.contexts import ClientContext


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send a JSON-RPC message to the client of a session, through its door."""

    session: bytes
    message: Envelope


@dataclass(frozen=True, slots=True)
class ToInstance:
    """Send a JSON-RPC message to an instance's backend, through its shim."""

    slot: str
    message: Envelope


@dataclass(frozen=True, slots=True)
class RestartInstance:
    """An instance's circuit opened: restart it through supervisord."""

    slot: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecycleInstance:
    """A dedicated instance's session ended: restart it (a planned restart, not a failure) so the next
    session starts fresh. The shim `pid` is the one on its way out: ignore it if it says hello again."""

    slot: str
    pid: int
    reason: str


@dataclass(frozen=True, slots=True)
class InstanceReady:
    slot: str


@dataclass(frozen=True, slots=True)
class ContextWanted:
    """A session waits for an instance of a client context that no instance runs: the scaler places one
    (`Switchboard.unmet_handshakes`)."""


@dataclass(frozen=True, slots=True)
class InstanceBound:
    """An instance is now bound to one client context (its roots): its shim keeps it for a restarted core."""

    slot: str
    context: ClientContext


@dataclass(frozen=True, slots=True)
class SafeToolsChanged:
    """Which tools are safe to run again changed: the doors retry these if the core dies."""

    names: list[str]


Action = (ToClient | ToInstance | RestartInstance | RecycleInstance | InstanceReady | ContextWanted | InstanceBound
          | SafeToolsChanged)
