"""The MCP semantics of the multiplexer: every message between client sessions and instances goes through here.

The switchboard owns the per-session state and decides, for each message, where it goes and under which
id; where each request is in its life is router/core/requests.py's, changed only by its `move`. It is a
synchronous state machine, as h11 is: each event (a message, a session or instance coming or going, the
time) changes its state and queues actions (router/core/actions.py) that the core takes with `take_actions()`
and carries out. It never awaits and never calls out, so nothing re-enters it half way through a change: a
send that fails comes back to it as a new event. Every input is a typed event through `handle`
(router/core/events.py), so a run can be recorded and replayed.

Here: sessions, a request's way from its client to an instance and back, failover. Its parts, each a module:
what it answers itself (local_methods.py), who hears what an instance says (audience.py), roots and binding
(binding.py), an instance from its hello until it serves (readiness.py), who is still there (liveness.py),
and what they all say, in order (outbox.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from mcpmux import jsonrpc
from mcpmux.config import Config
from mcpmux.envelope import Envelope, Flag, Kind
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import (
    cursors,
    elicitations,
    eras,
    events,
    listen,
    local_methods,
    rewrite,
    server_requests,
    tasks,
)
from mcpmux.router.core.actions import (
    Action,
    ContextWanted,
    RecycleInstance,
    RestartInstance,
    ToClient,
)
from mcpmux.router.core.audience import Audience
from mcpmux.router.core.binding import Binding
from mcpmux.router.core.breaker import CircuitBreaker, is_instance_failure
from mcpmux.router.core.contexts import ClientContext, ContextRules
from mcpmux.router.core.eligibility import Eligibility, PinnedInstanceGone
from mcpmux.router.core.instances import Instance, InstanceState, Pool
from mcpmux.router.core.limits import limits_for, request_kind
from mcpmux.router.core.liveness import Liveness
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.outbox import Outbox, Outgoing
from mcpmux.router.core.priorities import PriorityPolicy
from mcpmux.router.core.queue import Priority, QueueFull, RequestQueue
from mcpmux.router.core.readiness import Readiness
from mcpmux.router.core.requests import AWAITING_BACKEND, DONE, QUEUED, RUNNING, Pending, Requests
from mcpmux.router.core.retry import RetryPolicy
from mcpmux.router.core.session import LIST_CHANGED_BY_LIST_METHOD, ServerRequest, Session, most_verbose
from mcpmux.router.core.settling import Settling
from mcpmux.router.core.subscriptions import Subscriptions
from mcpmux.stateless import Era

log = logging.getLogger("mcpmux.core")

# The methods whose results the switchboard reads (the others' bodies pass through unopened):
OPENED = frozenset({"tools/list", "resources/subscribe"})

Clock = Callable[[], float]
P = ParamSpec("P")
R = TypeVar("R")


def event(handler: Callable[Concatenate[Switchboard, P], R]) -> Callable[Concatenate[Switchboard, P], R]:
    """A public entry of the switchboard. Once the event is handled, and only then, however deep the calls
    it made, the waiting requests go where it made room (`drain`): once per event, never half way through
    a change (an instance lost while a request expires, a session closing request by request)."""
    @functools.wraps(handler)
    def handle(board: Switchboard, /, *args: P.args, **kwargs: P.kwargs) -> R:
        board._depth += 1
        try:
            return handler(board, *args, **kwargs)
        finally:
            board._depth -= 1
            if not board._depth:
                board.drain()
    return handle



class Switchboard:
    def __init__(self, config: Config, metrics: Metrics, clock: Clock = time.monotonic,
                 first_id: int | None = None) -> None:
        settings = config.multiplexer
        self.pool = Pool()
        self.sessions: dict[bytes, Session] = {}
        # Every live request by stage (router/core/requests.py); the queue orders the waiting ones:
        self.requests = Requests(RequestQueue(
            settings.queue_size, per_session=min(settings.queue_per_session, max(1, settings.queue_size)),
            ageing=config.load_balancing.priority_ageing / 1000, clock=clock), self.pool)
        self.queue = self.requests.queue
        self.priorities = PriorityPolicy(config.load_balancing.priorities)
        # Which client contexts there are, and which instances serve which sessions:
        self.contexts = ContextRules(cwd_from_client=config.server.cwd_from_client, pass_env=config.server.pass_env)
        self._max_instances = settings.max_instances
        # Which instances may serve a request:
        self.eligibility = Eligibility(limits_for(settings.max_concurrent_requests), config.load_balancing.strategy,
                                       config.load_balancing.high_reserve, max_instances=settings.max_instances,
                                       contexts=self.contexts, occupants=self.requests.running.sessions_on)
        self.metrics = metrics
        self.eras = eras.Eras()  # what the pool's backend speaks
        self.outbox = Outbox(self.pool, self.eras, metrics, first_id)  # what the core is to do, in order
        self.breaker = CircuitBreaker(config.load_balancing.circuit_breaker_threshold,
                                      enabled=config.load_balancing.circuit_breaker_enabled)
        self.request_timeout = settings.request_timeout / 1000
        self._startup_timeout = settings.startup_timeout / 1000
        self.now = clock
        self._depth = 0  # how many events are being handled, one inside another (`event`)
        self.startup_cause: str | None = None  # why the last backend failed to start, until one starts
        self.subscriptions = Subscriptions()
        self.elicitations = elicitations.Elicitations()
        self.tasks = tasks.TaskTable()
        self.log_level: str | None = None
        # Who hears what an instance says:
        self.audience = Audience(self.sessions, self.pool, self.requests.running, self.tasks, self.elicitations,
                                 self.subscriptions, self.eligibility, self.contexts)
        self.retry = RetryPolicy()
        # Roots, and which context each instance is bound to (router/core/binding.py):
        self.binding = Binding(self.contexts, self.pool, self.requests, self.eligibility.dedicated,
                               Settling(config.server.roots_probe, config.server.roots_probe_timeout / 1000),
                               self.outbox, metrics, clock)
        self._recorder: events.Recorder | None = None  # a log of the events handled (record_to)
        self.readiness = Readiness(self)  # an instance from its shim's hello until it serves
        # Who is still there: heartbeats, startups and health pings:
        self.liveness = Liveness(self.pool, self.sessions, self.outbox, clock)

    # --- every input, typed (router/core/events.py) ----------------------------------------------------

    def record_to(self, recorder: events.Recorder) -> None:
        """From now on, every event goes to `recorder` before it is handled: a log to replay."""
        recorder(self.now(), events.Began(self.outbox.first_id))
        self._recorder = recorder

    def handle(self, event: events.Event) -> None:
        """The one entry for what happens: a message, a session or instance coming or going, the time."""
        if self._recorder is not None:
            self._recorder(self.now(), event)
        if isinstance(event, events.FromInstance):  # the two of every request first, before any match
            instance = self.pool.get(event.slot)
            if instance is not None:
                self.from_instance(instance, event.message)
        elif isinstance(event, events.FromClient):
            session = self.sessions.get(event.identity)
            if session is not None:
                self.from_client(session, event.message)
        else:
            self._handle_other(event)

    def _handle_other(self, event: events.Event) -> None:
        match event:
            case events.SessionOpened(identity, params, priority, cwd, env, transport, remote, tenant):
                session = self.open_session(identity, params, priority, cwd, env)
                session.transport, session.remote, session.tenant = transport, remote, tenant
            case events.SessionClosed(identity):
                self._with_session(identity, self.close_session)
            case events.SessionHeld(identity, held):
                self._with_session(identity, lambda session: self.hold_session(session, held))
            case events.InstanceConnected(slot, pid, backend_pid):
                self.readiness.connected(slot, pid, backend_pid)
            case events.InstanceInitializing(slot, context):
                self._with_instance(slot, lambda instance: self.readiness.initializing(instance, context))
            case events.ContextAdopted(slot, context):
                self._with_instance(slot, lambda instance: self.readiness.adopt_context(instance, context))
            case events.InstanceReady(slot, result, probe, era, fallback, backend_pid):
                self._with_instance(slot, lambda instance: self.instance_ready(
                    instance, result, probe=probe, era=era, fallback=fallback, backend_pid=backend_pid))
            case events.InstanceLost(slot, reason):
                self._with_instance(slot, lambda instance: self.instance_lost(instance, reason))
            case events.StartupFailed(reason, stderr_tail):
                self.readiness.startup_failed(reason, stderr_tail)
            case events.InitializeRefused(slot, error):
                self._with_instance(slot, lambda instance: self.readiness.initialize_refused(instance, error))
            case events.DeadlinesDue():
                self.expire_due()
            case events.HealthChecked(interval, timeout):
                self.health_check(interval, timeout)
            case events.SilenceForgiven():
                self.liveness.forgive_silence()
            case events.ClientsAsked():
                self.pool.ask_clients()
            case events.Stopped(reason):
                self.stop(reason)

    def _with_session(self, identity: bytes, then: Callable[[Session], object]) -> None:
        session = self.sessions.get(identity)
        if session is not None:
            then(session)

    def _with_instance(self, slot: str, then: Callable[[Instance], object]) -> None:
        instance = self.pool.get(slot)
        if instance is not None:
            then(instance)

    # --- sessions ------------------------------------------------------------------------------------

    @event
    def hold_session(self, session: Session, held: bool) -> None:
        """Backpressure: while a session's door is full, its new and waiting requests stay queued."""
        session.held = held  # let go: its requests go out once this event is handled

    def take_actions(self) -> list[Action]:
        """What the core must now do, in order; the switchboard forgets them."""
        return self.outbox.take()

    def open_session(self, identity: bytes, initialize_params: JsonObject | None,
                     priority: Priority | None = None, cwd: str | None = None,
                     env: dict[str, str] | None = None) -> Session:
        session = Session(identity, initialize_params, last_seen=self.now(), priority=priority, cwd=cwd, env=env)
        self.sessions[identity] = session
        if initialize_params is not None:  # a door introducing its session again, to a restarted core
            session.initialized = True
            self.contexts.open(session)
            self.binding.ask_roots(session)
        return session

    @event
    def close_session(self, session: Session) -> None:
        if self.sessions.get(session.identity) is not session:
            return
        del self.sessions[session.identity]
        own_instance = self.eligibility.session_closed(session.identity)
        if session.tenant is None or not any(other.share == session.share for other in self.sessions.values()):
            self.queue.forget_session(session.share)
        for pending in list(session.pending.values()):
            self._abandon(pending, "client session ended")
        for uri, slot in self.subscriptions.drop_session(session.identity):
            self.outbox.ask(slot, "resources/unsubscribe", {"uri": uri})
        self.elicitations.forget_session(session.identity)
        for task in self.tasks.drop_session(session.identity):  # nobody else may fetch them
            instance = self.pool.get(task.slot)
            if instance is not None and tasks.offers_cancel(instance.initialize_result):
                self.outbox.ask(task.slot, "tasks/cancel", {"taskId": task.task_id})
        self.update_log_level()
        if own_instance is not None:
            self._recycle(own_instance)

    # --- from the client -----------------------------------------------------------------------------

    @event
    def from_client(self, session: Session, message: Envelope) -> None:
        session.last_seen = self.now()
        before, queued = session.pending.get(message.id), len(self.outbox.actions)
        try:
            if message.kind is Kind.REQUEST:
                self._client_request(session, message)
            elif message.kind is Kind.NOTIFICATION:
                self._client_notification(session, message)
            else:
                self._client_response(session, message)
        except Exception as exc:
            self._contained(exc, f"session {session.name}", message)
            if message.kind is Kind.REQUEST:
                self._fail_unanswered(session, message.id, before, queued, exc)

    def _client_request(self, session: Session, message: Envelope) -> None:
        method, client_id = str(message.method), message.id
        session.last_request = now = self.now()
        self.metrics.requests_received += 1
        if client_id in session.pending:
            self.outbox.answer_local(session, jsonrpc.error(
                client_id, jsonrpc.INVALID_REQUEST, f"Invalid Request: id {client_id!r} is already in use"))
            return
        self.eras.note_era(session, message)
        refused = self.eras.refused(session, message)
        if refused is not None:
            self.outbox.answer_local(session, refused)
            return
        if method in LIST_CHANGED_BY_LIST_METHOD:
            session.list_changed_sent.discard(LIST_CHANGED_BY_LIST_METHOD[method])
        if session.era is Era.STATELESS and session.context is None:
            self.contexts.open_stateless(session, message)  # one context for every stateless client
        local = local_methods.HANDLERS.get(method)
        if local is not None:
            local(self, session, message)
            return
        self.admit(Pending(session, client_id, message, received=now))

    def _client_notification(self, session: Session, message: Envelope) -> None:
        method = message.method
        if method == "notifications/cancelled":
            request_id = message.params().get("requestId")
            pending = session.pending.get(request_id) if isinstance(request_id, str | int) else None
            if pending is not None:
                self._abandon(pending, message.params().get("reason") or "cancelled by client")
        elif method == "notifications/initialized":
            session.initialized = True
            for target, missed in self.audience.replayed(session):
                self.outbox.to_client(target, missed)
            self.binding.ask_roots(session)  # every backend had its own handshake when it started
        elif method == "notifications/roots/list_changed":
            self.contexts.roots_changed(session)  # the session moves to the context of its new roots
            self.binding.ask_roots(session)
        else:
            for instance in self.pool.ready():
                if self.contexts.serves(instance, session):
                    self.outbox.to_instance(instance, message)

    def _client_response(self, session: Session, message: Envelope) -> None:
        if session.roots_ask is not None and message.id == session.roots_ask:
            self._roots_answered(session, message)
            return
        request = session.server_requests.pop(message.id, None)
        instance = self.pool.get(request.slot) if request else None
        if request is None or instance is None:
            log.info("dropped a client response to %r: no instance waits for it", message.id)
            return
        self.outbox.to_instance(instance, message.with_id(request.backend_id))

    # --- the life of a request (admit, start, finish and await_backend serve router/core/local_methods.py too) ---

    def admit(self, pending: Pending) -> None:
        if pending.session.context is None:
            self.outbox.answer_local(pending.session, jsonrpc.error(
                pending.client_id, jsonrpc.INVALID_REQUEST,
                "Invalid Request: send initialize first (instances are initialized with their clients' context)"))
            return
        if pending.message.flags & Flag.CURSOR:  # only then is the body opened
            params = pending.message.params()
            unwrapped = cursors.unwrap(params["cursor"])
            if unwrapped is None:
                self.outbox.answer_local(pending.session, jsonrpc.error(
                    pending.client_id, jsonrpc.INVALID_PARAMS, "Invalid params: unknown pagination cursor"))
                return
            pending.pinned_slot, inner = unwrapped
            pending.message = pending.message.with_params({**params, "cursor": inner})
        gone = eras.pin_retry(pending, self.pool, self.contexts) if pending.message.flags & Flag.STATE else None
        if gone is not None:
            self.outbox.answer_local(pending.session, jsonrpc.error(pending.client_id, jsonrpc.INVALID_PARAMS, gone))
            return
        pending.level = self.priorities.level(pending.message, pending.session.priority)
        if self._dispatch(pending):
            self.queue.took_turn(pending.session.share)
        else:
            try:
                self.requests.move(pending, QUEUED)
            except QueueFull as full:
                self.fail(pending, jsonrpc.OVERLOADED, f"mcpmux is overloaded: {full}; retry later")
                return
            self._ask_instance_if_none_serves(pending.session)  # it waits: can anyone ever serve it?
        if pending.stage is not DONE and not listen.is_stream(pending):
            self.requests.arm(pending, self.request_timeout)

    def _dispatch(self, pending: Pending) -> bool:
        """Send the request to an instance now if one can take it (or answer it if none ever can); False if
        it must wait."""
        if pending.session.held:
            return False
        try:
            instance = self.eligibility.choose(pending, self.pool)
        except PinnedInstanceGone as gone:
            self.fail(pending, jsonrpc.INVALID_PARAMS, f"Invalid params: {gone}")
            return True
        if instance is None:
            return False
        if self.contexts.needs_binding(instance) and self.binding.bind(instance, pending.session):
            return False  # it settles first
        # Subscriptions that lost their instance follow the session to where it runs now (dedicated's new one).
        self._place_subscriptions(pending.session, instance)
        self.start(pending, instance)
        return True

    def start(self, pending: Pending, instance: Instance) -> None:
        backend_id = self.outbox.next_id()
        self.requests.move(pending, RUNNING, instance=instance, backend_id=backend_id)
        pending.dispatched = self.now()
        self.outbox.to_instance(instance, rewrite.for_instance(pending.message, backend_id))

    def await_backend(self, session: Session, pending: Pending) -> None:
        self.requests.move(pending, AWAITING_BACKEND)
        self.requests.arm(pending, self._startup_timeout)
        if self.contexts.needs_handshake(session, list(self.pool)):
            self.outbox.act(ContextWanted())

    def drain(self) -> None:
        """Hand waiting requests, in the order policy's order, to the instances eligible for them. A request
        whose instances are all busy lets later ones pass that can run elsewhere (a pinned session's)."""
        if not len(self.queue) or not self.eligibility.has_room(self.pool):
            return  # the common case, on every response: nothing to order
        for pending in self.queue:  # lazily: usually only the first is taken, however long the queue
            if not self.eligibility.has_room(self.pool):
                return
            self._dispatch(pending)  # if it went, it left the queue

    def finish(self, pending: Pending, response: Outgoing) -> None:
        """Send a request's one response, under the client's own id."""
        self.requests.move(pending, DONE)
        envelope = Envelope.of(response)
        if envelope.kind is Kind.ERROR:
            self.metrics.requests_failed += 1
        else:
            self.metrics.requests_succeeded += 1
        self.metrics.observe_latency(self.now() - pending.received)
        self.outbox.to_client(pending.session, envelope.with_id(pending.client_id))

    def fail(self, pending: Pending, code: int, text: str) -> None:
        self.finish(pending, jsonrpc.error(pending.client_id, code, text))

    def next_deadline(self) -> float | None:
        """When `expire_due` must next be called (on the switchboard's clock)."""
        due = [when for when in (self.requests.deadlines.next(), self.binding.next_due()) if when is not None]
        return min(due, default=None)

    @event
    def expire_due(self) -> None:
        """Answer every request whose deadline has passed with a timeout error."""
        for seconds, pending in self.requests.deadlines.pop_due(self.now()):
            self._expire(pending, seconds)
        self.binding.expire_due()

    def _expire(self, pending: Pending, seconds: float) -> None:
        if pending.stage is DONE:
            return  # answered meanwhile: by an earlier expiry's failover, say
        instance = self.pool.get(pending.slot or "")
        self._cancel_on_instance(pending, "request timed out")
        self.finish(pending, self._timeout_error(pending, seconds))
        self.metrics.requests_timed_out += 1
        if instance is not None:
            self._instance_failed(instance, "a request timed out")

    def _timeout_error(self, pending: Pending, seconds: float) -> JsonObject:
        """Where the request was when its time ran out; a request that waited because of its client's
        context says so (another client's is never used)."""
        took = f"Request timed out after {seconds * 1000:.0f} ms"
        if pending.stage is RUNNING:
            return jsonrpc.error(pending.client_id, jsonrpc.REQUEST_TIMEOUT,
                                 f"{took} (running on {pending.slot}); mcpmux cancelled it")
        unserved = self.contexts.why_waiting(pending.session, list(self.pool), self._max_instances,
                                             initializing=pending.method == "initialize")
        if unserved is not None:
            return jsonrpc.error(pending.client_id, unserved[0], f"{took}: {unserved[1]}")
        if pending.stage is AWAITING_BACKEND:
            where = "waiting for a backend to start" + (f"; the last start failed: {self.startup_cause}"
                                                       if self.startup_cause else "")
        else:
            where = self.eligibility.waiting_reason(pending, self.pool) or "waiting for an instance"
        return jsonrpc.error(pending.client_id, jsonrpc.REQUEST_TIMEOUT, f"{took} ({where}); mcpmux cancelled it")

    def _abandon(self, pending: Pending, reason: str) -> None:
        """Forget a request that will get no response (cancelled by the client or its session closed)."""
        self._cancel_on_instance(pending, reason)
        self.requests.move(pending, DONE)

    def _cancel_on_instance(self, pending: Pending, reason: str) -> None:
        """Tell the instance running the request, if one does, to stop working on it."""
        instance = self.pool.get(pending.slot or "") if pending.stage is RUNNING else None
        if instance is not None:
            self.outbox.to_instance(instance, jsonrpc.notification(
                "notifications/cancelled", {"requestId": pending.backend_id, "reason": reason}))

    # --- from an instance ----------------------------------------------------------------------------

    @event
    def from_instance(self, instance: Instance, message: Envelope) -> None:
        answered = self.requests.running.get(message.id) if message.kind in (Kind.RESULT, Kind.ERROR) else None
        try:
            if message.kind is Kind.RESULT or message.kind is Kind.ERROR:
                self._instance_response(instance, message)
            elif message.kind is Kind.REQUEST:
                self._instance_request(instance, message)
            else:
                self._instance_notification(instance, message)
        except Exception as exc:
            self._contained(exc, instance.slot, message)
            if answered is not None and answered.slot == instance.slot:
                self._fail_internally(answered, exc)

    # --- containment: a message that raises harms nobody but its own request -------------------------

    def _contained(self, exc: Exception, sender: str, message: Envelope) -> None:
        """Handling a message raised: a bug, or input that no check foresaw. It is logged with the message's
        header (never its body) and the switchboard goes on; only that message's request fails."""
        log.error("failed handling %r from %s", message, sender, exc_info=exc)
        self.metrics.event("error", f"mcpmux failed handling {message!r} from {sender}: "
                                    f"{type(exc).__name__}: {exc}")

    def _fail_unanswered(self, session: Session, client_id: Any, before: Pending | None, queued: int,
                         exc: Exception) -> None:
        """The request whose handling raised gets its one response: -32603, unless it got one already."""
        pending = session.pending.get(client_id)
        if pending is not None and pending is not before:
            self._fail_internally(pending, exc)
            return
        answered = any(isinstance(action, ToClient) and action.session == session.identity
                       and action.message.id == client_id and action.message.kind in (Kind.RESULT, Kind.ERROR)
                       for action in self.outbox.actions[queued:])
        if not answered:
            self.outbox.answer_local(session, _internal_error(client_id, exc))

    def _fail_internally(self, pending: Pending, exc: Exception) -> None:
        if pending.stage is DONE:
            return  # answered already
        self._cancel_on_instance(pending, "mcpmux failed handling it")
        self.finish(pending, _internal_error(pending.client_id, exc))

    def _instance_response(self, instance: Instance, message: Envelope) -> None:
        """An answer counts only from the instance its request went to: a server that answers an id it was
        never sent (another instance's) is dropped, never allowed to complete someone else's request."""
        backend_id = message.id
        if self.outbox.answered(instance, message):
            return
        pending = self.requests.running.get(backend_id)
        if pending is None or pending.slot != instance.slot:
            if pending is not None or self.outbox.asked_elsewhere(backend_id):
                log.warning("%s answered id %r, which it was never sent; dropped", instance.slot, backend_id)
            return  # else the answer to a request that timed out or was cancelled
        latency = self.now() - pending.dispatched
        if pending.capped:  # a tasks/* request holds no slot, and its latency is its task's
            instance.latencies.append(latency)
            self.eligibility.limits.observe(instance.slot, request_kind(pending.message), latency,
                                            pending.concurrency)
        instance.served += 1
        self.finish(pending, self._adapt_result(instance, pending, message))
        if is_instance_failure(message) and pending.method != "tasks/result":  # that error is its task's outcome
            self._instance_failed(instance, f"answered error {message.error_code}")
        else:
            self.breaker.success(instance)

    def _adapt_result(self, instance: Instance, pending: Pending, message: Envelope) -> Outgoing:
        if tasks.concerns(pending.message):
            return self.tasks.answered(pending.session.identity, instance.slot, pending.message, message,
                                       pending.backend_id, self.now())
        if message.flags & Flag.SUBSCRIPTION:  # a listen stream's closing result names the stream
            return message.with_token(pending.client_id)
        if message.kind is Kind.ERROR:
            self.elicitations.required(instance.slot, message, pending.session.identity)
        if message.kind is not Kind.RESULT or not (message.flags & Flag.NEXT_CURSOR or pending.method in OPENED):
            return message  # the common case: the body passes through unopened
        result = message.result()
        if not isinstance(result, dict):
            return message
        if isinstance(result.get("nextCursor"), str):
            wrapped = cursors.wrap(instance.slot, result["nextCursor"])
            message = message.with_result({**result, "nextCursor": wrapped})
        if pending.method == "tools/list":
            self.retry.observe_tools(result)
        elif pending.method == "resources/subscribe":
            uri = pending.message.params().get("uri")
            if isinstance(uri, str):
                self.subscriptions.confirmed(pending.session.identity, uri, instance.slot)
        return message

    def _instance_request(self, instance: Instance, message: Envelope) -> None:
        method = message.method or ""
        if method == "ping":
            self.outbox.to_instance(instance, jsonrpc.result(message.id, {}))
            return
        if method == "roots/list":
            self.binding.roots_request(instance, message)
            return
        # Whatever the answer, the server asks clients: from now on each instance serves one session at a
        # time, so that every later request of theirs has one possible owner (router/core/eligibility.py).
        self.pool.ask_clients()
        session = self.audience.owner(instance, message)
        refused = server_requests.why_refused(session, method)
        if refused is not None or session is None:
            code, text = refused or (jsonrpc.INTERNAL_ERROR, "no session")
            self.outbox.to_instance(instance, jsonrpc.error(message.id, code, text))
            return
        client_id = self.outbox.next_id()
        session.server_requests[client_id] = ServerRequest(instance.slot, message.id)
        if method == elicitations.CREATE:
            self.elicitations.asked(instance.slot, message, session.identity)
        self.outbox.to_client(session, message.with_id(client_id))

    def _instance_notification(self, instance: Instance, message: Envelope) -> None:
        for session, delivered in self.audience.of_notification(instance, message):
            self.outbox.to_client(session, delivered)

    def served_by(self, instance: Instance) -> list[Session]:
        return self.audience.served_by(instance)

    # --- instances coming and going ------------------------------------------------------------------

    @event
    def instance_ready(self, instance: Instance, result: JsonObject, *, probe: bool = False,
                       era: Era = Era.HANDSHAKE, fallback: str | None = None, backend_pid: int = 0) -> None:
        """A backend finished its handshake (or its discover, in the stateless era): router/core/readiness.py."""
        self.readiness.ready(instance, result, probe=probe, era=era, fallback=fallback, backend_pid=backend_pid)

    def _instance_failed(self, instance: Instance, reason: str) -> None:
        instance.failed += 1
        if self.breaker.failure(instance, self.pool):
            self.open_circuit(instance, f"{instance.consecutive_failures} failures in a row, last: {reason}")

    def open_circuit(self, instance: Instance, reason: str) -> None:
        if self.pool.get(instance.slot) is not instance or instance.state is InstanceState.OPEN:
            return
        instance.state = InstanceState.OPEN
        self.instance_lost(instance, f"circuit opened: {reason}")
        self.outbox.act(RestartInstance(instance.slot, reason))

    @event
    def health_check(self, interval: float, timeout: float) -> None:
        """Ping idle instances (router/core/liveness.py); one that does not answer in time is taken out, unless
        that would take out half the pool."""
        for instance in self.liveness.unanswered_pings(interval, timeout):
            if self.breaker.enabled and self.liveness.may_eject():
                self.liveness.ejected(instance.slot)
                self.open_circuit(instance, f"no answer to ping within {timeout:.0f} s")

    def stop(self, reason: str) -> None:
        """The core stops: every request gets its one answer now. What never started says so (-32050);
        what ran may have had effects (-32051)."""
        for session in self.sessions.values():
            waiting = [pending for pending in session.pending.values() if pending.waiting]
            running = [pending for pending in session.pending.values() if pending.stage is RUNNING]
            for pending in waiting:
                self.finish(pending, jsonrpc.error(pending.client_id, jsonrpc.OVERLOADED,
                                                    f"{reason}; this request never started"))
            for pending in running:
                self._cancel_on_instance(pending, reason)
                self.finish(pending, jsonrpc.error(pending.client_id, jsonrpc.INSTANCE_FAILED,
                                                    f"{reason} while this request ran; it may have had effects"))

    @event
    def instance_lost(self, instance: Instance, reason: str) -> None:
        """Fail over the requests an instance was running: retry the safe ones, answer the others."""
        if instance.state is not InstanceState.OPEN:
            instance.state = InstanceState.FAILED
        self.pool.remove(instance.slot)
        self.liveness.forget(instance.slot)
        for task in self.tasks.instance_lost(instance.slot, reason):
            owner = self.sessions.get(task.session)
            if owner is not None:
                self.outbox.to_client(owner, jsonrpc.notification("notifications/tasks/status", task.task))
        for pending in self.requests.running_on(instance.slot):
            lost_task = self.tasks.lost_answer(pending.session.identity, instance.slot, pending.message)
            if lost_task is not None:
                self.finish(pending, lost_task)
            elif listen.is_stream(pending):  # opened again elsewhere: the client keeps its stream
                self.requests.move(pending, QUEUED)
            elif pending.pinned_slot is None and self.retry.may_retry(pending.message, pending.attempts):
                self.metrics.requests_retried += 1
                self.requests.move(pending, QUEUED)
            else:
                instance.failed += 1
                self.fail(pending, jsonrpc.INSTANCE_FAILED, _not_retried(pending, reason))
        instance.in_flight = 0
        self.binding.instance_lost(instance)
        self.elicitations.forget_instance(instance.slot)
        for identity in self.eligibility.instance_lost(instance.slot):
            self._tell_state_reset(identity, instance.slot, reason)
        for identity in self.subscriptions.unplace(instance.slot):
            self.rehome_subscriptions(identity)

    def rehome_subscriptions(self, identity: bytes) -> None:
        """Place a session's unplaced subscriptions on an instance that serves it (router/core/eligibility.py's
        home: its own, its pinned one, or the least busy of its context), if one is ready."""
        session = self.sessions.get(identity)
        if session is None or not self.subscriptions.unplaced(identity):
            return
        target = self.eligibility.home(session, self.pool)
        if target is None:
            return
        if self.contexts.needs_binding(target):  # bound to the session's context first, as at a first use
            self.binding.bind(target, session)
        self._place_subscriptions(session, target)

    def _place_subscriptions(self, session: Session, instance: Instance) -> None:
        if instance.era is not Era.HANDSHAKE:  # resources/subscribe is of the handshake era
            return
        for uri in self.subscriptions.place_unplaced(session.identity, instance.slot):
            self.outbox.ask(instance.slot, "resources/subscribe", {"uri": uri})

    def _move_subscriptions(self, session: Session) -> None:
        """The session's context changed (new roots): its subscriptions leave the instances that no longer
        serve it, and are placed on one that does."""
        def keeps(slot: str) -> bool:
            instance = self.pool.get(slot)
            return instance is not None and self.contexts.serves(instance, session)

        for uri, slot in self.subscriptions.move_off(session.identity, keeps):
            self.outbox.ask(slot, "resources/unsubscribe", {"uri": uri})
        self.rehome_subscriptions(session.identity)

    def _recycle(self, slot: str) -> None:
        """A dedicated session ended: its instance leaves the pool and restarts before anyone else has it."""
        instance = self.pool.get(slot)
        if instance is None:  # lost already: it comes back fresh
            self.eligibility.instance_lost(slot)
            return
        reason = "its session ended; restarted so that the next session starts fresh"
        self.instance_lost(instance, reason)
        self.outbox.act(RecycleInstance(slot, instance.pid, reason))

    def _tell_state_reset(self, identity: bytes, slot: str, reason: str) -> None:
        """A session pinned to a lost instance continues elsewhere: say so on the logging channel, since
        whatever the server kept for it is gone."""
        session = self.sessions.get(identity)
        if session is None or not session.wants_log("warning"):
            return
        self.outbox.to_client(session, jsonrpc.notification("notifications/message", {
            "level": "warning", "logger": "mcpmux",
            "data": f"the server instance serving this session ({slot}) was lost ({reason}); the session "
                    "continues on another instance, and any state the server kept for it was reset"}))

    # --- client contexts (router/core/contexts.py) ---------------------------------------------------------

    def _roots_answered(self, session: Session, message: Envelope) -> None:
        """A session's new roots are its new context: its subscriptions follow it, and what it has waiting
        goes where it may run now (now, not after the event: what still waits needs an instance)."""
        self.binding.roots_answered(session, message)
        self._move_subscriptions(session)
        self.binding.give_asked_roots()
        self.drain()
        self._ask_instance_if_waiting(session)

    def sessions_without_instance(self) -> list[Session]:
        """Under dedicated: the sessions that have no instance of their own yet."""
        return [session for session in self.sessions.values()
                if not self.eligibility.dedicated.has_instance(session.identity)]

    def dedicated_spares(self) -> list[Instance]:
        """Under dedicated: the free instances (ready, nobody's, idle)."""
        return self.eligibility.dedicated.spares(self.pool.ready())

    def _ask_instance_if_waiting(self, session: Session) -> None:
        """Ask for an instance of the session's context if it has requests waiting and nothing can serve it."""
        if any(pending.waiting for pending in session.pending.values()):
            self._ask_instance_if_none_serves(session)

    def _ask_instance_if_none_serves(self, session: Session) -> None:
        """Ask for an instance of the session's context if none, ready or starting, can ever serve it."""
        if self.contexts.needs_instance(session, list(self.pool)):
            self.outbox.act(ContextWanted())

    def unmet_handshakes(self) -> list[ClientContext]:
        """What to initialize new instances with: one per context that sessions wait for and no instance,
        ready or starting, can serve."""
        initializing = [pending.session for pending in self.requests.awaiting_backend()]
        unmet = self.contexts.unmet(list(self.sessions.values()), initializing, list(self.pool))
        return [context for context in unmet if self.eras.era_to_open(context.era) is context.era]

    def busiest_handshake(self) -> ClientContext | None:
        return self.contexts.busiest(list(self.sessions.values()))

    # --- helpers -------------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Requests handed to instances and not answered yet."""
        return len(self.requests.running)

    def update_log_level(self) -> None:
        level = most_verbose([s.log_level for s in self.sessions.values() if s.log_level])
        if level is None or level == self.log_level:
            return
        self.log_level = level
        for instance in self.pool.ready():
            self.outbox.ask(instance.slot, "logging/setLevel", {"level": level})

    def backends_offer(self, capability: str) -> bool:
        result = self.pool.any_initialize_result()
        return bool(result and capability in (result.get("capabilities") or {}))

    def snapshot(self) -> JsonObject:
        return {
            "sessions": len(self.sessions),
            "queued": len(self.queue),
            "running": len(self.requests.running),
            "subscriptions": len(self.subscriptions),
            "tasks": len(self.tasks),
            "logLevel": self.log_level,
        }


def _internal_error(client_id: Any, exc: Exception) -> JsonObject:
    return jsonrpc.error(client_id, jsonrpc.INTERNAL_ERROR,
                         f"Internal error: mcpmux failed handling this request ({type(exc).__name__}: {exc}); "
                         "other requests are not affected")


def _not_retried(pending: Pending, reason: str) -> str:
    """Why a request whose instance failed gets an error rather than another try, as it really was."""
    if pending.pinned_slot is not None:
        return (f"The instance running this request failed ({reason}); it was not retried because only that "
                "instance could serve it")
    if pending.attempts > 1:
        return (f"The instance running this request failed ({reason}), as did the {pending.attempts - 1} it ran "
                "on before; it was not sent to another, since it may be what makes the server fail")
    return (f"The instance running this request failed ({reason}); it was not retried because it may have "
            "had effects")
