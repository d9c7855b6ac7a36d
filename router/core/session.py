"""One client session (one door) and the state MCP keeps per session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcpmux.jsonrpc import RequestId
from mcpmux.router.core.queue import Priority
from mcpmux.stateless import Era

if TYPE_CHECKING:
    from mcpmux.router.core.contexts import ClientContext
    from mcpmux.router.core.requests import Pending

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

# Which list request clears which list_changed notification, so that one change reaches a session once.
LIST_CHANGED_BY_LIST_METHOD = {
    "tools/list": "notifications/tools/list_changed",
    "prompts/list": "notifications/prompts/list_changed",
    "resources/list": "notifications/resources/list_changed",
    "resources/templates/list": "notifications/resources/list_changed",
}


@dataclass(eq=False)
class ServerRequest:
    """A request an instance sent to the client (sampling, elicitation, roots), under a client-facing id."""

    slot: str
    backend_id: Any


@dataclass(eq=False)
class Session:
    identity: bytes
    initialize_params: dict[str, Any] | None = None
    log_level: str | None = None
    pending: dict[RequestId, Pending] = field(default_factory=dict)
    server_requests: dict[int, ServerRequest] = field(default_factory=dict)
    list_changed_sent: set[str] = field(default_factory=set)
    last_seen: float = 0.0  # on the switchboard's clock, from when it opens
    last_request: float = 0.0
    held: bool = False  # its door takes no more for now (a slow client): start nothing new for it
    priority: Priority | None = None  # the session's own level (mcpmux-router --priority)
    cwd: str | None = None  # its door's working directory (the client's)
    env: dict[str, str] | None = None  # its client's values of server.passEnv (router/core/contexts.py)
    context: ClientContext | None = None  # what the server may observe of its client (router/core/contexts.py)
    roots_known: bool = False  # its context has the client's current roots (or it declares none)
    roots_ask: int | None = None  # the id of mcpmux's own roots/list to its client, while unanswered
    era: Era | None = None  # the protocol era its client opened with, once it has (router/core/eras.py)
    initialized: bool = False  # its client sent notifications/initialized: it hears the server's notifications
    transport: str = "stdio"  # stdio (a door of its own) or http (a session of the HTTP endpoint)
    remote: str | None = None  # an HTTP client's address
    tenant: str | None = None  # the name of the token an HTTP session came with

    @property
    def share(self) -> bytes:
        """Whose turn its queued requests take, and whose queue share they count against: the token's, for
        the sessions of one token (one member's runaway agent cannot starve the others), else its own."""
        return b"token:" + self.tenant.encode() if self.tenant is not None else self.identity

    @property
    def name(self) -> str:
        return self.identity.decode(errors="replace")

    def supports(self, capability: str) -> bool:
        """Whether the client declared a capability (sampling, elicitation, roots) in its initialize."""
        if self.initialize_params is None:
            return False
        return capability in (self.initialize_params.get("capabilities") or {})

    @property
    def hears_notifications(self) -> bool:
        """Whether a server's notification may reach it now: after its initialized (the stateless era has none)."""
        return self.initialized or self.era is Era.STATELESS

    def admits_log(self, level: str) -> bool:
        """Whether it set a logging level and `level` is at least that."""
        return self.log_level is not None and self.wants_log(level)

    def wants_log(self, level: str) -> bool:
        if self.log_level is None:
            return True
        return _rank(level) >= _rank(self.log_level)


def _rank(level: str) -> int:
    return LOG_LEVELS.index(level) if level in LOG_LEVELS else 0


def most_verbose(levels: list[str]) -> str | None:
    return min(levels, key=_rank) if levels else None
