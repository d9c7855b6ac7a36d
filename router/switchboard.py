"""The MCP semantics of the multiplexer: every message between client sessions and instances goes through here.

The switchboard owns the per-request and per-session state and decides, for each message, where it goes and
under which id. It does no I/O itself: it is given two coroutines, one that sends a JSON-RPC message to a
session's client and one that sends it to an instance's backend.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcpmux import jsonrpc
from mcpmux.config import Config
from mcpmux.jsonrpc import JsonObject
from mcpmux.router import cursors, profile
from mcpmux.router.breaker import CircuitBreaker, is_instance_failure
from mcpmux.router.dispatch import LeastConnections
from mcpmux.router.instances import Instance, InstanceState, Pool
from mcpmux.router.metrics import Metrics
from mcpmux.router.queue import QueueFull, RequestQueue
from mcpmux.router.retry import RetryPolicy
from mcpmux.router.session import (
    LIST_CHANGED_BY_LIST_METHOD,
    LOG_LEVELS,
    Pending,
    ServerRequest,
    Session,
    most_verbose,
)
from mcpmux.router.watch import Watch

log = logging.getLogger("mcpmux.core")

SendToClient = Callable[[Session, JsonObject], Awaitable[None]]
SendToInstance = Callable[[Instance, JsonObject], Awaitable[None]]
OnAnswer = Callable[[Instance, JsonObject], Awaitable[None]]
InstanceHook = Callable[[Instance, str], Awaitable[None]]

CLIENT_CAPABILITY_OF = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


@dataclass(eq=False)
class Subscription:
    """A resource subscription lives on one instance, however many sessions asked for it."""

    slot: str | None
    sessions: set[bytes] = field(default_factory=set)


class Switchboard:
    def __init__(
        self, config: Config, to_client: SendToClient, to_instance: SendToInstance, metrics: Metrics
    ) -> None:
        settings = config.multiplexer
        self.pool = Pool()
        self.sessions: dict[bytes, Session] = {}
        self.queue: RequestQueue[Pending] = RequestQueue(settings.queue_size)
        self.balancer = LeastConnections(settings.max_concurrent_requests)
        self.metrics = metrics
        self.profile: JsonObject = profile.WARM  # the initialize params every backend gets
        self.profile_from_client = False
        self.on_profile: Callable[[JsonObject, bool], Awaitable[None]] | None = None
        self.on_circuit_open: InstanceHook | None = None  # the core restarts the instance
        self.on_ready: InstanceHook | None = None
        self.on_safe_tools: Callable[[list[str]], Awaitable[None]] | None = None
        self.breaker = CircuitBreaker(config.load_balancing.circuit_breaker_threshold,
                                      enabled=config.load_balancing.circuit_breaker_enabled)
        self._pings: dict[str, tuple[int, float]] = {}  # health pings awaiting an answer, by slot
        self._request_timeout = settings.request_timeout / 1000
        self._startup_timeout = settings.startup_timeout / 1000
        self._to_client = to_client
        self._to_instance = to_instance
        self._running: dict[int, Pending] = {}  # by the id the instance sees
        self._internal: dict[int, OnAnswer | None] = {}  # requests the router itself sent, with their follow-up
        self._init_waiters: list[Pending] = []
        self._subscriptions: dict[str, Subscription] = {}
        self._log_level: str | None = None
        self.retry = RetryPolicy()
        self.watch = Watch()  # for control queries that wait for the pool to reach a state
        metrics.on_event = self.watch.poke
        # Unique across instances and across core restarts, so a late answer never matches a new request.
        self._ids = itertools.count(time.time_ns() // 1000)

    # --- sessions ------------------------------------------------------------------------------------

    def open_session(self, identity: bytes, door_pid: int, initialize_params: JsonObject | None) -> Session:
        session = Session(identity, door_pid, initialize_params)
        self.sessions[identity] = session
        return session

    async def close_session(self, session: Session) -> None:
        self.sessions.pop(session.identity, None)
        for pending in list(session.pending.values()):
            await self._abandon(pending, "client session ended")
        for uri, subscription in list(self._subscriptions.items()):
            subscription.sessions.discard(session.identity)
            if not subscription.sessions:
                del self._subscriptions[uri]
                await self._internal_request(subscription.slot, "resources/unsubscribe", {"uri": uri})
        await self._update_log_level()

    # --- from the client -----------------------------------------------------------------------------

    async def from_client(self, session: Session, message: JsonObject) -> None:
        session.last_seen = time.monotonic()
        if jsonrpc.is_request(message):
            await self._client_request(session, message)
        elif jsonrpc.is_notification(message):
            await self._client_notification(session, message)
        else:
            await self._client_response(session, message)

    async def _client_request(self, session: Session, message: JsonObject) -> None:
        method, client_id = message["method"], message["id"]
        session.last_request = time.monotonic()
        self.metrics.requests_received += 1
        if client_id in session.pending:
            await self._answer_local(session, jsonrpc.error(
                client_id, jsonrpc.INVALID_REQUEST, f"Invalid Request: id {client_id!r} is already in use"))
            return
        if method in LIST_CHANGED_BY_LIST_METHOD:
            session.list_changed_sent.discard(LIST_CHANGED_BY_LIST_METHOD[method])
        local = self._LOCAL_METHODS.get(method)
        if local is not None:
            await local(self, session, message)
            return
        await self._admit(Pending(session, client_id, message))

    async def _ping(self, session: Session, message: JsonObject) -> None:
        await self._answer_local(session, jsonrpc.result(message["id"], {}))

    async def _discover(self, session: Session, message: JsonObject) -> None:
        # The 2026-07-28 era is not served yet; -32601 is what makes a client fall back to initialize.
        await self._answer_local(session, jsonrpc.error(
            message["id"], jsonrpc.METHOD_NOT_FOUND, "Method not found: server/discover (use initialize)"))

    async def _initialize(self, session: Session, message: JsonObject) -> None:
        params = message.get("params")
        if not isinstance(params, dict):
            await self._answer_local(session, jsonrpc.error(
                message["id"], jsonrpc.INVALID_PARAMS, "Invalid params: initialize needs params"))
            return
        session.initialize_params = params
        if not self.profile_from_client:
            changed = not profile.same_handshake(self.profile, params)
            self.profile, self.profile_from_client = params, True
            if self.on_profile is not None:
                await self.on_profile(params, changed)
        pending = Pending(session, message["id"], message)
        result = self.pool.any_initialize_result()
        if result is not None:
            await self._finish(pending, jsonrpc.result(message["id"], result))
            return
        session.pending[pending.client_id] = pending
        self._init_waiters.append(pending)
        self._arm_timer(pending, self._startup_timeout)

    async def _set_level(self, session: Session, message: JsonObject) -> None:
        level = (message.get("params") or {}).get("level")
        if not self._backends_offer("logging"):
            await self._admit(Pending(session, message["id"], message))
            return
        if level not in LOG_LEVELS:
            await self._answer_local(session, jsonrpc.error(
                message["id"], jsonrpc.INVALID_PARAMS, f"Invalid params: unknown logging level {level!r}"))
            return
        session.log_level = level
        await self._update_log_level()
        await self._answer_local(session, jsonrpc.result(message["id"], {}))

    async def _subscribe(self, session: Session, message: JsonObject) -> None:
        uri = (message.get("params") or {}).get("uri")
        subscription = self._subscriptions.get(uri) if isinstance(uri, str) else None
        if subscription is None or subscription.slot is None:
            await self._admit(Pending(session, message["id"], message))
            return
        subscription.sessions.add(session.identity)
        await self._answer_local(session, jsonrpc.result(message["id"], {}))

    async def _unsubscribe(self, session: Session, message: JsonObject) -> None:
        uri = (message.get("params") or {}).get("uri")
        subscription = self._subscriptions.get(uri) if isinstance(uri, str) else None
        if not isinstance(uri, str) or subscription is None or session.identity not in subscription.sessions:
            await self._admit(Pending(session, message["id"], message))
            return
        subscription.sessions.discard(session.identity)
        if subscription.sessions or subscription.slot is None:
            await self._answer_local(session, jsonrpc.result(message["id"], {}))
            return
        del self._subscriptions[uri]
        await self._admit(Pending(session, message["id"], message, pinned_slot=subscription.slot))

    _LOCAL_METHODS: dict[str, Callable[[Switchboard, Session, JsonObject], Awaitable[None]]] = {
        "ping": _ping,
        "server/discover": _discover,
        "initialize": _initialize,
        "logging/setLevel": _set_level,
        "resources/subscribe": _subscribe,
        "resources/unsubscribe": _unsubscribe,
    }

    async def _client_notification(self, session: Session, message: JsonObject) -> None:
        method = message["method"]
        if method == "notifications/cancelled":
            request_id = (message.get("params") or {}).get("requestId")
            pending = session.pending.get(request_id) if isinstance(request_id, str | int) else None
            if pending is not None:
                await self._abandon(pending, (message.get("params") or {}).get("reason") or "cancelled by client")
        elif method == "notifications/initialized":
            pass  # every backend had its own handshake when it started
        else:
            # roots/list_changed and the like concern every instance serving this client.
            for instance in self.pool.ready():
                await self._to_instance(instance, message)

    async def _client_response(self, session: Session, message: JsonObject) -> None:
        request = session.server_requests.pop(message["id"], None)
        instance = self.pool.get(request.slot) if request else None
        if request is None or instance is None:
            log.info("dropped a client response to %r: no instance waits for it", message.get("id"))
            return
        await self._to_instance(instance, {**message, "id": request.backend_id})

    # --- the life of a request -----------------------------------------------------------------------

    async def _admit(self, pending: Pending) -> None:
        params = pending.message.get("params")
        params = params if isinstance(params, dict) else {}
        cursor = params.get("cursor")
        if isinstance(cursor, str):
            unwrapped = cursors.unwrap(cursor)
            if unwrapped is None:
                await self._answer_local(pending.session, jsonrpc.error(
                    pending.client_id, jsonrpc.INVALID_PARAMS, "Invalid params: unknown pagination cursor"))
                return
            pending.pinned_slot, inner = unwrapped
            pending.message = {**pending.message, "params": {**params, "cursor": inner}}
        pending.session.pending[pending.client_id] = pending
        self._arm_timer(pending, self._request_timeout)
        if await self._dispatch(pending):
            return
        try:
            self.queue.push(pending.key, pending)
        except QueueFull as full:
            await self._fail(pending, jsonrpc.OVERLOADED, f"mcpmux is overloaded: {full}; retry later")

    async def _dispatch(self, pending: Pending) -> bool:
        """Send the request to an instance now if one can take it; False if it must wait."""
        if pending.pinned_slot is not None:
            instance = self.pool.get(pending.pinned_slot)
            if instance is None or not instance.ready:
                await self._fail(pending, jsonrpc.INVALID_PARAMS,
                                 f"Invalid params: the instance that made this cursor ({pending.pinned_slot}) is gone")
                return True
        else:
            instance = self.balancer.pick(self.pool.ready())
            if instance is None:
                return False
        backend_id = next(self._ids)
        pending.backend_id, pending.slot = backend_id, instance.slot
        pending.dispatched = time.monotonic()
        pending.attempts += 1
        instance.in_flight += 1
        self._running[backend_id] = pending
        await self._to_instance(instance, _with_backend_ids(pending.message, backend_id))
        self.watch.poke()
        return True

    async def drain(self) -> None:
        """Hand queued requests, oldest first, to instances that have room."""
        while (pending := self.queue.peek()) is not None:
            if not await self._dispatch(pending):
                return
            self.queue.pop()

    async def _finish(self, pending: Pending, response: JsonObject) -> None:
        """Send a request's one response, under the client's own id."""
        if pending.timer is not None:
            pending.timer.cancel()
        pending.session.pending.pop(pending.client_id, None)
        if "error" in response:
            self.metrics.requests_failed += 1
        else:
            self.metrics.requests_succeeded += 1
        self.metrics.observe_latency(time.monotonic() - pending.received)
        await self._answer(pending.session, {**response, "id": pending.client_id})

    async def _fail(self, pending: Pending, code: int, text: str) -> None:
        self.queue.remove(pending.key)
        await self._finish(pending, jsonrpc.error(pending.client_id, code, text))

    def _arm_timer(self, pending: Pending, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_at(
            loop.time() - (time.monotonic() - pending.received) + seconds,
            lambda: asyncio.ensure_future(self._expire(pending, seconds)),
        )

    async def _expire(self, pending: Pending, seconds: float) -> None:
        if pending.session.pending.get(pending.client_id) is not pending:
            return
        where = f"running on {pending.slot}" if pending.slot else "waiting for an instance"
        if pending in self._init_waiters:
            self._init_waiters.remove(pending)
            where = "waiting for a backend to start"
        instance = self.pool.get(pending.slot or "")
        await self._release(pending, "request timed out")
        self.metrics.requests_timed_out += 1
        if instance is not None:
            await self._instance_failed(instance, "a request timed out")
        await self._fail(pending, jsonrpc.REQUEST_TIMEOUT,
                         f"Request timed out after {seconds * 1000:.0f} ms ({where}); mcpmux cancelled it")
        await self.drain()

    async def _abandon(self, pending: Pending, reason: str) -> None:
        """Forget a request that will get no response (cancelled by the client or its session closed)."""
        if pending.timer is not None:
            pending.timer.cancel()
        pending.session.pending.pop(pending.client_id, None)
        self.queue.remove(pending.key)
        if pending in self._init_waiters:
            self._init_waiters.remove(pending)
        await self._release(pending, reason)
        await self.drain()

    async def _release(self, pending: Pending, reason: str) -> None:
        """Take a request off its instance, telling the instance to stop working on it."""
        if pending.backend_id is None or self._running.pop(pending.backend_id, None) is None:
            return
        instance = self.pool.get(pending.slot or "")
        if instance is None:
            return
        instance.in_flight -= 1
        await self._to_instance(instance, jsonrpc.notification(
            "notifications/cancelled", {"requestId": pending.backend_id, "reason": reason}))

    # --- from an instance ----------------------------------------------------------------------------

    async def from_instance(self, instance: Instance, message: JsonObject) -> None:
        if "method" not in message:
            await self._instance_response(instance, message)
        elif "id" in message:
            await self._instance_request(instance, message)
        else:
            await self._instance_notification(instance, message)

    async def _instance_response(self, instance: Instance, message: JsonObject) -> None:
        backend_id = message.get("id")
        if backend_id in self._internal:
            follow_up = self._internal.pop(backend_id)
            if follow_up is not None:
                await follow_up(instance, message)
            elif "error" in message:
                log.warning("%s refused an mcpmux request: %s", instance.slot, message["error"])
            return
        pending = self._running.pop(backend_id, None)  # type: ignore[arg-type]
        if pending is None:
            return  # the answer to a request that timed out or was cancelled
        instance.in_flight -= 1
        instance.served += 1
        instance.latencies.append(time.monotonic() - pending.dispatched)
        if "error" in message:
            instance.errors += 1
        await self._finish(pending, self._adapt_result(instance, pending, message))
        if is_instance_failure(message):
            await self._instance_failed(instance, f"answered error {message['error'].get('code')}")
        else:
            self.breaker.success(instance)
        await self.drain()

    def _adapt_result(self, instance: Instance, pending: Pending, message: JsonObject) -> JsonObject:
        result = message.get("result")
        if not isinstance(result, dict):
            return message
        if isinstance(result.get("nextCursor"), str):
            message = {**message, "result": {**result, "nextCursor": cursors.wrap(instance.slot, result["nextCursor"])}}
        if pending.method == "tools/list":
            self.retry.observe_tools(result)
        elif pending.method == "resources/subscribe":
            uri = (pending.message.get("params") or {}).get("uri")
            if isinstance(uri, str):
                subscription = self._subscriptions.setdefault(uri, Subscription(instance.slot))
                subscription.slot = subscription.slot or instance.slot
                subscription.sessions.add(pending.session.identity)
        return message

    async def _instance_request(self, instance: Instance, message: JsonObject) -> None:
        method = message["method"]
        if method == "ping":
            await self._to_instance(instance, jsonrpc.result(message["id"], {}))
            return
        session = self._session_for(instance)
        capability = CLIENT_CAPABILITY_OF.get(method)
        refusal = None
        if session is None:
            refusal = (jsonrpc.UNATTRIBUTABLE,
                       f"mcpmux cannot tell which client session {method} is for: several share this instance")
        elif capability is not None and not session.supports(capability):
            refusal = (jsonrpc.METHOD_NOT_FOUND, f"the client does not support {capability}")
        if refusal is not None or session is None:
            code, text = refusal or (jsonrpc.INTERNAL_ERROR, "no session")
            await self._to_instance(instance, jsonrpc.error(message["id"], code, text))
            return
        client_id = next(self._ids)
        session.server_requests[client_id] = ServerRequest(instance.slot, message["id"])
        await self._answer(session, {**message, "id": client_id})

    async def _instance_notification(self, instance: Instance, message: JsonObject) -> None:
        method = message["method"]
        params = message.get("params") or {}
        if method == "notifications/progress":
            await self._progress(params, message)
        elif method.endswith("/list_changed"):
            await self._list_changed(method, message)
        elif method == "notifications/resources/updated":
            await self._resource_updated(instance, params, message)
        elif method == "notifications/cancelled":
            await self._server_cancelled(instance, params)
        elif method == "notifications/message":
            await self._log_message(instance, params, message)
        else:
            session = self._session_for(instance)
            for target in [session] if session else list(self.sessions.values()):
                await self._answer(target, message)

    async def _progress(self, params: JsonObject, message: JsonObject) -> None:
        pending = self._running.get(params.get("progressToken"))  # type: ignore[arg-type]
        if pending is None:
            return
        token = pending.message["params"]["_meta"]["progressToken"]
        await self._answer(pending.session, {**message, "params": {**params, "progressToken": token}})

    async def _list_changed(self, method: str, message: JsonObject) -> None:
        # Every instance announces the same change: a session hears it once until it lists again.
        for session in list(self.sessions.values()):
            if method not in session.list_changed_sent:
                session.list_changed_sent.add(method)
                await self._answer(session, message)

    async def _resource_updated(self, instance: Instance, params: JsonObject, message: JsonObject) -> None:
        subscription = self._subscriptions.get(params.get("uri"))  # type: ignore[arg-type]
        if subscription is None or subscription.slot != instance.slot:
            return
        for identity in list(subscription.sessions):
            session = self.sessions.get(identity)
            if session is not None:
                await self._answer(session, message)

    async def _server_cancelled(self, instance: Instance, params: JsonObject) -> None:
        for session in self.sessions.values():
            for client_id, request in list(session.server_requests.items()):
                if request.slot == instance.slot and request.backend_id == params.get("requestId"):
                    del session.server_requests[client_id]
                    await self._answer(session, jsonrpc.notification(
                        "notifications/cancelled", {**params, "requestId": client_id}))
                    return

    async def _log_message(self, instance: Instance, params: JsonObject, message: JsonObject) -> None:
        owner = self._session_for(instance, guess_when_idle=False)
        targets = [owner] if owner else list(self.sessions.values())
        for session in targets:
            if session.wants_log(str(params.get("level"))):
                await self._answer(session, message)

    def _session_for(self, instance: Instance, *, guess_when_idle: bool = True) -> Session | None:
        """The session an instance's own request or log belongs to.

        stdio carries no link from a server's message to the request that caused it, so: the one session
        with requests on that instance; if none, the session that was active last; if several, nobody.
        """
        owners = {p.session.identity for p in self._running.values() if p.slot == instance.slot}
        if len(owners) == 1:
            return self.sessions.get(owners.pop())
        if owners or not guess_when_idle:
            return None
        candidates = [s for s in self.sessions.values() if s.initialize_params is not None]
        return max(candidates, key=lambda s: s.last_request, default=None)

    # --- instances coming and going ------------------------------------------------------------------

    async def instance_ready(self, instance: Instance, result: JsonObject, *, probe: bool = False) -> None:
        """A backend finished its handshake. After failures it is half-open: one ping decides."""
        instance.initialize_result = result
        if probe:
            instance.state = InstanceState.PROBING
            await self._internal_request(instance.slot, "ping", {}, self._probe_answered, allow_unready=True)
            return
        await self._become_ready(instance)

    async def _probe_answered(self, instance: Instance, message: JsonObject) -> None:
        if "result" in message:
            await self._become_ready(instance)
        else:
            await self._open_circuit(instance, f"failed its probe: {message.get('error')}")

    async def _become_ready(self, instance: Instance) -> None:
        instance.state = InstanceState.READY
        instance.consecutive_failures = 0
        if self.on_ready is not None:
            await self.on_ready(instance, "ready")
        if self._log_level is not None:
            await self._internal_request(instance.slot, "logging/setLevel", {"level": self._log_level})
        if "tools" in ((instance.initialize_result or {}).get("capabilities") or {}):
            # Which tools are safe to retry comes from their annotations: read them before any failure.
            await self._internal_request(instance.slot, "tools/list", {}, self._learn_tools)
        for uri, subscription in self._subscriptions.items():
            if subscription.slot is None:
                subscription.slot = instance.slot
                await self._internal_request(instance.slot, "resources/subscribe", {"uri": uri})
        self.watch.poke()
        waiters, self._init_waiters = self._init_waiters, []
        for pending in waiters:
            await self._finish(pending, jsonrpc.result(pending.client_id, instance.initialize_result or {}))
        await self.drain()

    async def _learn_tools(self, instance: Instance, message: JsonObject) -> None:
        result = message.get("result")
        if not isinstance(result, dict):
            return
        known = self.retry.safe_tools
        self.retry.observe_tools(result)
        if self.retry.safe_tools != known and self.on_safe_tools is not None:
            await self.on_safe_tools(self.retry.safe_tools)
        cursor = result.get("nextCursor")
        if isinstance(cursor, str):
            await self._internal_request(instance.slot, "tools/list", {"cursor": cursor}, self._learn_tools)

    async def _instance_failed(self, instance: Instance, reason: str) -> None:
        instance.failed += 1
        if self.breaker.failure(instance, self.pool):
            await self._open_circuit(instance, f"{instance.consecutive_failures} failures in a row, last: {reason}")

    async def _open_circuit(self, instance: Instance, reason: str) -> None:
        if self.pool.get(instance.slot) is not instance or instance.state is InstanceState.OPEN:
            return
        instance.state = InstanceState.OPEN
        await self.instance_lost(instance, f"circuit opened: {reason}")
        if self.on_circuit_open is not None:
            await self.on_circuit_open(instance, reason)

    async def health_check(self, interval: float, timeout: float) -> None:
        """Ping idle instances every `interval`; one that does not answer within `timeout` is unhealthy.

        Busy instances are not pinged: a server that runs one call at a time cannot answer until it is
        done, and its requests' deadlines already watch it.
        """
        now = time.monotonic()
        for instance in self.pool.ready():
            outstanding = self._pings.get(instance.slot)
            if outstanding is not None:
                if now > outstanding[1]:
                    self._internal.pop(outstanding[0], None)
                    del self._pings[instance.slot]
                    if self.breaker.enabled and self._may_eject():
                        await self._open_circuit(instance, f"no answer to ping within {timeout:.0f} s")
                continue
            if instance.in_flight == 0 and now - instance.last_ping >= interval:
                instance.last_ping = now
                backend_id = await self._internal_request(instance.slot, "ping", {}, self._pong)
                if backend_id is not None:
                    self._pings[instance.slot] = (backend_id, now + timeout)

    async def _pong(self, instance: Instance, message: JsonObject) -> None:
        self._pings.pop(instance.slot, None)
        instance.last_ping = time.monotonic()

    def _may_eject(self) -> bool:
        ejected = sum(1 for other in self.pool if other.state is InstanceState.OPEN)
        return ejected < max(1, len(self.pool) // 2)

    async def forget_instances(self, reason: str) -> None:
        for instance in list(self.pool):
            await self.instance_lost(instance, reason)

    async def startup_failed(self, reason: str, stderr_tail: str) -> None:
        """A backend died in its handshake: tell the clients waiting for one, rather than let them wait."""
        if self.pool.ready():
            return
        waiters, self._init_waiters = self._init_waiters, []
        detail = f"; its last words: {stderr_tail.strip()[-500:]}" if stderr_tail.strip() else ""
        for pending in waiters:
            await self._fail(pending, jsonrpc.INSTANCE_FAILED, f"The MCP server failed to start: {reason}{detail}")

    async def instance_lost(self, instance: Instance, reason: str) -> None:
        """Fail over the requests an instance was running: retry the safe ones, answer the others."""
        if instance.state is not InstanceState.OPEN:
            instance.state = InstanceState.FAILED
        self.pool.remove(instance.slot)
        self._pings.pop(instance.slot, None)
        self.watch.poke()
        for backend_id, pending in list(self._running.items()):
            if pending.slot != instance.slot:
                continue
            del self._running[backend_id]
            pending.backend_id = pending.slot = None
            if pending.pinned_slot is None and self.retry.may_retry(pending.message, pending.attempts):
                self.metrics.requests_retried += 1
                self.queue.push_front(pending.key, pending)
            else:
                instance.failed += 1
                await self._fail(pending, jsonrpc.INSTANCE_FAILED,
                                 f"The instance running this request failed ({reason}); it was not retried "
                                 "because it may have had effects")
        for uri, subscription in self._subscriptions.items():
            if subscription.slot == instance.slot:
                target = self.balancer.pick(self.pool.ready())
                subscription.slot = target.slot if target else None
                if target is not None:
                    await self._internal_request(target.slot, "resources/subscribe", {"uri": uri})
        await self.drain()

    # --- helpers -------------------------------------------------------------------------------------

    async def wait_ready(self, count: int, timeout: float) -> bool:
        return await self.watch.until(lambda: len(self.pool.ready()) >= count, timeout)

    async def wait_running(self, count: int, timeout: float) -> bool:
        """Until `count` requests run on instances (a test's cue that its calls have been handed out)."""
        return await self.watch.until(lambda: len(self._running) >= count, timeout)

    async def _answer(self, session: Session, message: JsonObject) -> None:
        await self._to_client(session, message)

    async def _answer_local(self, session: Session, response: JsonObject) -> None:
        """A response mcpmux gives itself (ping, setLevel, refusals): counted like any other."""
        if "error" in response:
            self.metrics.requests_failed += 1
        else:
            self.metrics.requests_succeeded += 1
        self.metrics.observe_latency(0.0)
        await self._answer(session, response)

    async def _internal_request(self, slot: str | None, method: str, params: JsonObject,
                                follow_up: OnAnswer | None = None, *, allow_unready: bool = False) -> int | None:
        instance = self.pool.get(slot or "")
        if instance is None or not (instance.ready or allow_unready):
            return None
        backend_id = next(self._ids)
        self._internal[backend_id] = follow_up
        await self._to_instance(instance, {"jsonrpc": "2.0", "id": backend_id, "method": method, "params": params})
        return backend_id

    async def _update_log_level(self) -> None:
        level = most_verbose([s.log_level for s in self.sessions.values() if s.log_level])
        if level is None or level == self._log_level:
            return
        self._log_level = level
        for instance in self.pool.ready():
            await self._internal_request(instance.slot, "logging/setLevel", {"level": level})

    def _backends_offer(self, capability: str) -> bool:
        result = self.pool.any_initialize_result()
        return bool(result and capability in (result.get("capabilities") or {}))

    def snapshot(self) -> JsonObject:
        return {
            "sessions": len(self.sessions),
            "queued": len(self.queue),
            "running": len(self._running),
            "subscriptions": len(self._subscriptions),
            "logLevel": self._log_level,
        }


def _with_backend_ids(message: JsonObject, backend_id: int) -> JsonObject:
    """The request as the instance sees it: our id, and our id as its progress token if it has one."""
    out = {**message, "id": backend_id}
    params = message.get("params")
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            out["params"] = {**params, "_meta": {**meta, "progressToken": backend_id}}
    return out
