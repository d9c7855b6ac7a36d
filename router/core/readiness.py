"""An instance from its shim's hello until it serves: its backend's handshake result, the ping that lets
a server ask for roots before it serves, what is read from it first (its tools, for what is safe to retry),
and the sessions that waited for a backend of its handshake. A backend that fails to start tells those
waiting why, rather than letting them wait.
"""

from __future__ import annotations

from typing import Protocol

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import eras
from mcpmux.router.core.actions import InstanceReady, SafeToolsChanged
from mcpmux.router.core.binding import Binding
from mcpmux.router.core.contexts import ClientContext, ContextRules, refused_answer
from mcpmux.router.core.instances import Instance, InstanceState, Pool
from mcpmux.router.core.liveness import Liveness
from mcpmux.router.core.outbox import Outbox, Outgoing
from mcpmux.router.core.requests import QUEUED, Pending, Requests
from mcpmux.router.core.retry import RetryPolicy
from mcpmux.router.core.session import Session
from mcpmux.router.core.subscriptions import Subscriptions
from mcpmux.stateless import Era


class Board(Protocol):
    """What readiness uses of the switchboard; called only while it handles an event."""

    outbox: Outbox
    pool: Pool
    sessions: dict[bytes, Session]
    contexts: ContextRules
    eras: eras.Eras
    requests: Requests
    binding: Binding
    liveness: Liveness
    retry: RetryPolicy
    subscriptions: Subscriptions
    log_level: str | None
    startup_cause: str | None

    def now(self) -> float: ...
    def finish(self, pending: Pending, response: Outgoing) -> None: ...
    def fail(self, pending: Pending, code: int, text: str) -> None: ...
    def open_circuit(self, instance: Instance, reason: str) -> None: ...
    def rehome_subscriptions(self, identity: bytes) -> None: ...


class Readiness:
    def __init__(self, board: Board) -> None:
        self._board = board

    def connected(self, slot: str, pid: int, backend_pid: int) -> Instance:
        """A shim said hello: its instance joins the pool, starting, stamped with the switchboard's clock."""
        board = self._board
        instance = Instance(slot, pid, backend_pid, started=board.now())
        board.pool.add(instance)
        board.liveness.connected(slot)
        return instance

    def ready(self, instance: Instance, result: JsonObject, *, probe: bool = False,
              era: Era = Era.HANDSHAKE, fallback: str | None = None, backend_pid: int = 0) -> None:
        """A backend finished its handshake (or its discover, in the stateless era), in process
        `backend_pid` if its shim knows it by now. After failures it is half-open: one ping decides."""
        board = self._board
        instance.initialize_result = result
        instance.backend_pid = backend_pid or instance.backend_pid
        board.eras.opened(instance, era, fallback)
        if instance.context is not None:  # a stateless context whose backend refused the era: its fallback's
            instance.context = board.contexts.as_opened(instance.context, era)
        if fallback is not None:
            self._refuse_stateless_waiting()
        # A server that wants roots asks right after its handshake: let it ask before it serves, so that
        # it is bound at its first use and its first request finds its roots in place.
        if probe or board.contexts.may_ask_roots(instance):
            instance.state = InstanceState.PROBING
            board.outbox.ask(instance.slot, "ping", {}, self._probe_answered, allow_unready=True)
            return
        self._become_ready(instance)

    def _refuse_stateless_waiting(self) -> None:
        """The backend refuses the stateless era: the stateless requests waiting for an instance never run."""
        board = self._board
        for session in list(board.sessions.values()):
            queued = [pending for pending in session.pending.values() if pending.stage is QUEUED]
            for pending in queued:
                refused = board.eras.refused(session, pending.message)
                if refused is not None:
                    board.finish(pending, refused)

    def _probe_answered(self, instance: Instance, message: Envelope) -> None:
        if message.kind is Kind.RESULT:
            self._become_ready(instance)
        else:
            self._board.open_circuit(instance, f"failed its probe: {message.error()}")

    def _become_ready(self, instance: Instance) -> None:
        board = self._board
        board.startup_cause = None
        instance.state = InstanceState.READY
        instance.consecutive_failures = 0
        board.outbox.act(InstanceReady(instance.slot))
        if board.log_level is not None:
            board.outbox.ask(instance.slot, "logging/setLevel", {"level": board.log_level})
        if "tools" in ((instance.initialize_result or {}).get("capabilities") or {}):
            # Which tools are safe to retry comes from their annotations: read them before any failure.
            board.outbox.ask(instance.slot, "tools/list", {}, self._learn_tools)
        else:
            board.binding.no_tools(instance)
        for identity in board.subscriptions.unplaced_sessions():
            board.rehome_subscriptions(identity)
        self._answer_initialize(instance)

    def _answer_initialize(self, instance: Instance) -> None:
        """The sessions waiting for a backend of this one's handshake get its InitializeResult; those waiting
        to know which eras the pool speaks (their discover), the answer once it is known."""
        board = self._board
        board.contexts.learned(instance)
        for pending in board.requests.awaiting_backend():
            response = self._waiter_response(pending)
            if response is not None:
                board.finish(pending, response)

    def _waiter_response(self, pending: Pending) -> JsonObject | None:
        board = self._board
        if pending.method == eras.DISCOVER:
            return board.eras.discover_answer(pending)
        result = board.contexts.initialize_result(pending.session)
        return None if result is None else jsonrpc.result(pending.client_id, result)

    def _learn_tools(self, instance: Instance, message: Envelope) -> None:
        board = self._board
        result = message.result()
        if not isinstance(result, dict):
            board.binding.no_tools(instance)
            return
        cursor = result.get("nextCursor")
        board.binding.tools_listed(instance, result.get("tools"), last_page=not isinstance(cursor, str))
        known = board.retry.safe_tools
        board.retry.observe_tools(result)
        if board.retry.safe_tools != known:
            board.outbox.act(SafeToolsChanged(board.retry.safe_tools))
        if isinstance(cursor, str):
            board.outbox.ask(instance.slot, "tools/list", {"cursor": cursor}, self._learn_tools)

    def initializing(self, instance: Instance, context: ClientContext) -> None:
        """The core sends the instance's backend its initialize, as a client of `context`: its startup
        timeout runs from now."""
        instance.started = self._board.now()
        instance.context = context

    def adopt_context(self, instance: Instance, context: ClientContext) -> None:
        """A shim from before this core says whom its backend was initialized for (and bound to)."""
        board = self._board
        instance.context = context.handshake()
        if context.roots is not None:
            board.contexts.bind(instance, context)
            board.contexts.roots_observed = True

    def initialize_refused(self, instance: Instance, error: JsonObject) -> None:
        """The instance's backend answered its initialize with an error: the clients of its handshake get
        that error as their initialize's answer, as from a server of their own. Not for a handshake taken
        before, nor the stateless era's, which every stateless client shares: a fault, then."""
        board = self._board
        context = instance.context
        if context is None or context.era is not Era.HANDSHAKE:
            return
        handshake = context.handshake()
        if not board.contexts.refuse(handshake, error):
            return
        for pending in board.requests.awaiting_backend():
            session = pending.session
            if session.context is not None and session.context.handshake() == handshake:
                board.contexts.forget(session)
                board.finish(pending, refused_answer(pending.client_id, error))

    def startup_failed(self, reason: str, stderr_tail: str) -> None:
        """A backend died in its handshake: tell the clients waiting for one, rather than let them wait."""
        board = self._board
        last_words = stderr_tail.strip()[-500:]
        board.startup_cause = f"{reason}; its last words: {last_words}" if last_words else reason
        waiters = [pending for pending in board.requests.awaiting_backend()
                   if not any(board.contexts.serves(instance, pending.session) for instance in board.pool.ready())]
        for pending in waiters:
            board.fail(pending, jsonrpc.INSTANCE_FAILED, f"The MCP server failed to start: {board.startup_cause}")
