"""Policy: which protocol era each session and each instance speaks, and what mcpmux answers of the era itself.

A backend connection is locked to the era of its first message (mcpmux/stateless.py), so each instance is of
one era: a handshake instance was opened with `initialize`, a stateless one (2026-07-28) with
`server/discover` (instance_shim/opening.py). A session is of the era its client opened with: `initialize`
makes it a handshake session, a successful `server/discover` or any request carrying the 2026-07-28 `_meta`
a stateless one. The era is part of the client context (router/core/contexts.py), so a session is served only
by instances of its era; every stateless request carries its own client context, so every stateless session
shares one context and can use every stateless instance.

What the pool's backend speaks is learned from the instances, never by a probe a handshake-only backend
could choke on: the first instance opened in the stateless era either succeeds (its discover result is
kept, and answers the clients' `server/discover`) or falls back to the handshake and says why (the backend
speaks only the handshake era: `server/discover` gets -32601 and clients fall back to `initialize`).
"""

from __future__ import annotations

from mcpmux import jsonrpc, stateless
from mcpmux.envelope import Envelope, Flag
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.contexts import ContextRules
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.requests import Pending
from mcpmux.router.core.session import Session
from mcpmux.stateless import Era

DISCOVER = "server/discover"
HANDSHAKE_ONLY_METHODS = frozenset({"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


def era_of(session: Session) -> Era:
    """A session whose client has not said yet is served as the handshake era always was."""
    return session.era or Era.HANDSHAKE


class Eras:
    def __init__(self) -> None:
        self.discover_result: JsonObject | None = None  # the latest a stateless instance gave
        self.handshake_only: str | None = None  # why the backend refused the stateless era, once it has
        self.handshake_version = "2025-11-25"  # the version handshake instances negotiated, once one has

    @property
    def known(self) -> bool:
        """Whether the pool knows if its backend speaks the stateless era."""
        return self.discover_result is not None or self.handshake_only is not None

    def era_to_open(self, wanted: Era) -> Era:
        """The era to open a new instance in: never the stateless one for a backend known to refuse it."""
        return Era.HANDSHAKE if self.handshake_only is not None else wanted

    # --- sessions ------------------------------------------------------------------------------------

    @staticmethod
    def note_era(session: Session, message: Envelope) -> None:
        """A session's era is that of its first word: initialize, or a request carrying the 2026-07-28
        `_meta` (server/discover is of both eras, and says nothing)."""
        if session.era is not None:
            return
        if message.method == "initialize":
            session.era = Era.HANDSHAKE
        elif message.flags & Flag.ENVELOPED and message.method != DISCOVER:
            session.era = Era.STATELESS

    def refused(self, session: Session, message: Envelope) -> JsonObject | None:
        """The error a request of the other era than its session's gets (the one the SDK's own server gives
        on a connection of the other era), or None."""
        method = message.method
        enveloped = bool(message.flags & Flag.ENVELOPED)
        if session.era is Era.STATELESS and method == "initialize":
            params = message.params()
            return jsonrpc.error(message.id, stateless.UNSUPPORTED_VERSION,
                                 "this session speaks the 2026-07-28 protocol; the initialize handshake is not "
                                 "accepted", {"supported": list(stateless.VERSIONS),
                                              "requested": params.get("protocolVersion")})
        if session.era is Era.HANDSHAKE and enveloped and method != DISCOVER:  # that one is unknown there
            return jsonrpc.error(message.id, jsonrpc.INVALID_REQUEST,
                                 "this session speaks the handshake protocol era; requests carrying the "
                                 "2026-07-28 _meta are not accepted on it")
        if session.era is Era.STATELESS and method in HANDSHAKE_ONLY_METHODS:  # ping too, as a server says
            return jsonrpc.error(message.id, jsonrpc.METHOD_NOT_FOUND,
                                 f"Method not found: {method} is not part of the 2026-07-28 protocol")
        if session.era is Era.STATELESS and self.handshake_only is not None:
            return self._unsupported(message.id, _requested(message), handshake_versions=True)
        return None

    def discover(self, session: Session, message: Envelope) -> JsonObject | None:
        """The answer to a client's `server/discover`, or None while the pool does not know yet."""
        if session.era is Era.HANDSHAKE:  # after its initialize, as a server of either era answers it
            return jsonrpc.error(message.id, jsonrpc.METHOD_NOT_FOUND,
                                 "Method not found: server/discover (this session opened with initialize)")
        if self.handshake_only is not None:
            return jsonrpc.error(message.id, jsonrpc.METHOD_NOT_FOUND,
                                 "Method not found: server/discover (this server speaks only the handshake "
                                 "protocol era; use initialize)")
        if self.discover_result is None:
            return None
        requested = _requested(message)
        if requested not in stateless.VERSIONS:
            return self._unsupported(message.id, requested, handshake_versions=False)
        session.era = Era.STATELESS
        return jsonrpc.result(message.id, self.discover_result)

    def discover_answer(self, pending: Pending) -> JsonObject | None:
        """The answer to a discover that waited for the pool to know what its backend speaks, once it does."""
        return self.discover(pending.session, pending.message) if self.known else None

    def _unsupported(self, request_id: object, requested: object, *, handshake_versions: bool) -> JsonObject:
        supported = [self.handshake_version] if handshake_versions else list(stateless.VERSIONS)
        return jsonrpc.error(request_id, stateless.UNSUPPORTED_VERSION, "Unsupported protocol version",
                             {"supported": supported, "requested": requested})

    # --- instances -----------------------------------------------------------------------------------

    def opened(self, instance: Instance, era: Era, fallback: str | None) -> None:
        """An instance's backend connection is open: learn what the backend speaks."""
        instance.era = era
        result = instance.initialize_result or {}
        if era is Era.STATELESS:
            self.discover_result, self.handshake_only = result, None
            return
        if isinstance(result.get("protocolVersion"), str):
            self.handshake_version = result["protocolVersion"]
        if fallback is not None:
            self.handshake_only = fallback

    @staticmethod
    def internal(instance: Instance, method: str, params: JsonObject) -> tuple[str, JsonObject] | None:
        """An mcpmux request (a health ping, tools/list, a log level) as an instance of its era takes it:
        a stateless instance has no ping (discover stands in) nor setLevel, and needs the `_meta` on each
        request. None if the request means nothing in the instance's era."""
        if instance.era is Era.HANDSHAKE:
            return method, params
        if method == "ping":
            method = DISCOVER
        elif method in HANDSHAKE_ONLY_METHODS:
            return None
        return method, {**params, "_meta": stateless.envelope()}


def pin_retry(pending: Pending, pool: Pool, contexts: ContextRules) -> str | None:
    """Pin a request carrying a `requestState` to the instance that issued it (the door read which, from
    the state mcpmux wrapped: mcpmux/request_state.py); why it cannot go there, or None. A state the client
    could not have had from an instance of its own context is gone as well."""
    assert pending.message.pin is not None
    slot, pid = pending.message.pin
    instance = pool.get(slot)
    mine = instance is not None and instance.pid == pid and contexts.serves(instance, pending.session)
    if instance is None or not mine or not instance.ready:
        return (f"Invalid params: the instance that made this requestState ({slot}) is gone; call again without "
                "requestState and inputResponses")
    pending.pinned_slot = slot
    return None


def _requested(message: Envelope) -> object:
    return message.meta().get(stateless.PROTOCOL_VERSION_KEY)
