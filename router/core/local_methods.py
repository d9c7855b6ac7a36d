"""The methods the switchboard answers itself, or routes by rules of their own rather than by the strategy:
ping; initialize and server/discover (from what the pool's backends said); the stateless era's listen stream;
logging/setLevel (one level for the pool: the most verbose any session asked for); resources/subscribe and
unsubscribe (to the instance holding the subscription); and tasks/* (to the task's instance, by the task table).

Each is a function of the switchboard (the `Board` it needs), the session and the request; anything else a
client asks goes through `Board.admit` to an instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope
from mcpmux.router.core import eras, listen, tasks
from mcpmux.router.core.contexts import ContextRules, refused_answer
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.outbox import Outbox, Outgoing
from mcpmux.router.core.requests import Pending, Requests
from mcpmux.router.core.session import LOG_LEVELS, Session
from mcpmux.router.core.subscriptions import Subscriptions
from mcpmux.stateless import Era


class Board(Protocol):
    """What these methods use of the switchboard; called only while it handles an event."""

    outbox: Outbox
    pool: Pool
    contexts: ContextRules
    eras: eras.Eras
    subscriptions: Subscriptions
    tasks: tasks.TaskTable
    requests: Requests
    request_timeout: float

    def now(self) -> float: ...
    def admit(self, pending: Pending) -> None: ...
    def start(self, pending: Pending, instance: Instance) -> None: ...
    def finish(self, pending: Pending, response: Outgoing) -> None: ...
    def await_backend(self, session: Session, pending: Pending) -> None: ...
    def update_log_level(self) -> None: ...
    def backends_offer(self, capability: str) -> bool: ...


def ping(board: Board, session: Session, message: Envelope) -> None:
    board.outbox.answer_local(session, jsonrpc.result(message.id, {}))


def discover(board: Board, session: Session, message: Envelope) -> None:
    """Answered from what the pool's instances speak (router/core/eras.py); while nobody knows yet, it waits
    for an instance opened in the stateless era."""
    answer = board.eras.discover(session, message)
    if answer is None or "result" in answer:
        board.contexts.open_stateless(session, message)
    if answer is not None:
        board.outbox.answer_local(session, answer)
        return
    board.await_backend(session, Pending(session, message.id, message, received=board.now()))


def listen_stream(board: Board, session: Session, message: Envelope) -> None:
    """A stateless session's listen stream holds no slot and has no deadline (router/core/listen.py)."""
    stream = eras.era_of(session) is Era.STATELESS
    board.admit(Pending(session, message.id, message, received=board.now(), capped=not stream))


def initialize(board: Board, session: Session, message: Envelope) -> None:
    params = message.member("params")
    if not isinstance(params, dict):
        board.outbox.answer_local(session, jsonrpc.error(
            message.id, jsonrpc.INVALID_PARAMS, "Invalid params: initialize needs params"))
        return
    if session.initialize_params is not None:  # its context is the session's for good: instances serve it by it
        board.outbox.answer_local(session, jsonrpc.error(
            message.id, jsonrpc.INVALID_REQUEST, "Invalid Request: this session is initialized already; a new "
            "session begins with initialize"))
        return
    session.initialize_params = params
    board.contexts.open(session)
    refusal = board.contexts.refusal(session)
    if refusal is not None:  # a backend refused these params before: no instance is opened to hear it again
        board.contexts.forget(session)
        board.outbox.answer_local(session, refused_answer(message.id, refusal))
        return
    pending = Pending(session, message.id, message, received=board.now())
    # Answered by a backend initialized as this client would have initialized it.
    result = board.contexts.initialize_result(session)
    if result is not None:
        board.finish(pending, jsonrpc.result(message.id, result))
        return
    board.await_backend(session, pending)


def set_level(board: Board, session: Session, message: Envelope) -> None:
    level = message.params().get("level")
    if not board.backends_offer("logging"):
        board.admit(Pending(session, message.id, message, received=board.now()))
        return
    if level not in LOG_LEVELS:
        board.outbox.answer_local(session, jsonrpc.error(
            message.id, jsonrpc.INVALID_PARAMS, f"Invalid params: unknown logging level {level!r}"))
        return
    session.log_level = level
    board.update_log_level()
    board.outbox.answer_local(session, jsonrpc.result(message.id, {}))


def subscribe(board: Board, session: Session, message: Envelope) -> None:
    """Every subscribe reaches a server, as it would the session's own: the instance holding the session's
    subscription to that uri already, else wherever the strategy sends the session's requests."""
    uri = message.params().get("uri")
    slot = board.subscriptions.slot_of(session.identity, uri) if isinstance(uri, str) else None
    board.admit(Pending(session, message.id, message, pinned_slot=slot, received=board.now()))


def unsubscribe(board: Board, session: Session, message: Envelope) -> None:
    """Reaches the instance holding the subscription, unless other sessions are subscribed to that uri
    there too: their subscription stays, so the session's ends here."""
    uri = message.params().get("uri")
    if not isinstance(uri, str) or not board.subscriptions.has(session.identity, uri):
        board.admit(Pending(session, message.id, message, received=board.now()))
        return
    slot = board.subscriptions.leave(session.identity, uri)
    if slot is None:  # others still listen there, or no instance holds it now
        board.outbox.answer_local(session, jsonrpc.result(message.id, {}))
        return
    board.admit(Pending(session, message.id, message, pinned_slot=slot, received=board.now()))


def task_request(board: Board, session: Session, message: Envelope) -> None:
    """tasks/get, result, cancel and list, by the task table: to the task's instance at once, outside
    the queue and the cap, or answered here. A server without tasks answers them itself."""
    backend = board.pool.any_initialize_result()
    if backend is not None and "tasks" not in (backend.get("capabilities") or {}):
        board.admit(Pending(session, message.id, message, received=board.now()))
        return
    route = board.tasks.route(session.identity, message, board.now(), {i.slot for i in board.pool.ready()})
    if isinstance(route, tasks.Reply):
        board.outbox.answer_local(session, route.response)
        return
    instance = board.pool.get(route.slot)
    assert instance is not None, "the table routes only to ready instances"
    pending = Pending(session, message.id, Envelope.of(route.message), pinned_slot=route.slot,
                      received=board.now(), capped=False)
    board.start(pending, instance)
    if pending.method != "tasks/result":  # that one lasts as long as its task
        board.requests.arm(pending, board.request_timeout)


HANDLERS: dict[str, Callable[[Board, Session, Envelope], None]] = {
    "ping": ping,
    eras.DISCOVER: discover,
    listen.METHOD: listen_stream,
    "initialize": initialize,
    "logging/setLevel": set_level,
    "resources/subscribe": subscribe,
    "resources/unsubscribe": unsubscribe,
    **dict.fromkeys(tasks.METHODS, task_request),
}
