"""Drive the switchboard as the core does, with no process, socket or event loop: events in, actions out.

The clock is a number the test moves. What the switchboard asks for is collected per session and per
instance, as the core would send it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcpmux import jsonrpc
from mcpmux.config import parse_config
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.router.core import actions
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.session import Session
from mcpmux.router.core.switchboard import Switchboard
from mcpmux.stateless import Era

INITIALIZE_RESULT: JsonObject = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}, "resources": {"subscribe": True}, "logging": {}},
    "serverInfo": {"name": "fake", "version": "1"},
}


TOOLS = [{"name": "work", "inputSchema": {"type": "object"}},
         {"name": "look", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}]


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    board: Switchboard
    clock: Clock
    to_client: dict[bytes, list[JsonObject]] = field(default_factory=dict)
    to_instance: dict[str, list[JsonObject]] = field(default_factory=dict)
    other: list[actions.Action] = field(default_factory=list)
    answered: set[Any] = field(default_factory=set)  # backend ids the instances have answered

    @classmethod
    def make(cls, load_balancing: JsonObject | None = None, server: JsonObject | None = None,
             **multiplexer: Any) -> Harness:
        config = parse_config({"server": {"command": "server", **(server or {})}, "multiplexer": multiplexer,
                               "loadBalancing": load_balancing or {}}, "test")
        clock = Clock()
        return cls(Switchboard(config, Metrics(), clock=clock), clock)

    # --- events --------------------------------------------------------------------------------------

    def from_client(self, session: Session, message: JsonObject) -> None:
        """A client's message, cut into an envelope as its door cuts it."""
        self.board.from_client(session, Envelope.from_message(message, from_client=True))

    def from_instance(self, instance: Instance, message: JsonObject) -> None:
        """A backend's message, cut into an envelope as its shim cuts it."""
        self.board.from_instance(instance, Envelope.from_message(message))

    def collect(self) -> None:
        for action in self.board.take_actions():
            match action:
                case actions.ToClient(session, message):  # as the door would write it
                    self.to_client.setdefault(session, []).append(message.to_dict())
                case actions.ToInstance(slot, message):  # as the shim would write it
                    self.to_instance.setdefault(slot, []).append(message.to_dict())
                case _:
                    self.other.append(action)

    def open(self, name: str, capabilities: JsonObject | None = None, *, roots: list[str] | None = None,
             cwd: str | None = None) -> Session:
        """A session whose client has initialized; with `roots`, it answers mcpmux's roots/list with them."""
        params = {"protocolVersion": "2025-11-25", "capabilities": capabilities or {}, "clientInfo": {"name": name}}
        session = self.board.open_session(name.encode(), params, cwd=cwd)
        self.collect()
        if roots is not None:
            self.give_roots(session, roots)
        return session

    def roots_asked(self, session: Session) -> list[JsonObject]:
        return [m for m in self.to_client.get(session.identity, []) if m.get("method") == "roots/list"]

    def give_roots(self, session: Session, roots: list[str]) -> None:
        """The client answers mcpmux's latest roots/list."""
        asked = self.roots_asked(session)[-1]
        self.from_client(session, jsonrpc.result(asked["id"], {"roots": [{"uri": uri} for uri in roots]}))
        self.collect()

    def change_roots(self, session: Session, roots: list[str]) -> None:
        """The client's roots change: it says so, and answers mcpmux's roots/list with the new ones."""
        self.from_client(session, jsonrpc.notification("notifications/roots/list_changed"))
        self.collect()
        self.give_roots(session, roots)

    def close(self, session: Session) -> None:
        self.board.close_session(session)
        self.collect()

    def add_instance(self, slot: str, capabilities: JsonObject | None = None, result: JsonObject | None = None, *,
                     era: Era = Era.HANDSHAKE, fallback: str | None = None, pid: int = 1,
                     context: ClientContext | None = None, tools: list[JsonObject] = TOOLS) -> Instance:
        """A ready instance initialized for the handshake of clients with these capabilities (or for
        `context`, one the switchboard asked for), or opened in the stateless era (`fallback`: asked to, it
        fell back to the handshake)."""
        instance = self.board.readiness.connected(slot, pid, pid + 1)
        handshake = {"protocolVersion": "2025-11-25", "capabilities": capabilities or {}}
        stateless = era is Era.STATELESS or fallback is not None
        instance.context = context or (ClientContext.stateless() if stateless else ClientContext.of(handshake))
        self.board.instance_ready(instance, result or INITIALIZE_RESULT, era=era, fallback=fallback)
        self.collect()
        sent = self.to_instance.pop(slot, [])
        self.to_instance[slot] = [m for m in sent if m.get("method") != "ping"]
        for ping in [m for m in sent if m.get("method") == "ping"]:
            # An instance of clients with roots is pinged before it serves: its server may ask for them first.
            self.from_instance(instance, jsonrpc.result(ping["id"], {}))
        self.collect()
        sent = self.to_instance.pop(slot, [])
        learning = [m for m in sent if m.get("method") == "tools/list" and isinstance(m["id"], int)
                    and m["id"] not in set(self.board.requests.running)]
        self.to_instance[slot] = [m for m in sent if m not in learning]
        for request in learning:  # the switchboard reads the tools' annotations first
            self.from_instance(instance, jsonrpc.result(request["id"], {"tools": tools}))
        self.collect()
        return instance

    def request(self, session: Session, request_id: RequestId, method: str, params: JsonObject | None = None) -> None:
        message: JsonObject = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.from_client(session, message)
        self.collect()

    def call(self, session: Session, request_id: RequestId, tool: str = "work") -> None:
        self.request(session, request_id, "tools/call", {"name": tool, "arguments": {}})

    def cancel(self, session: Session, request_id: RequestId) -> None:
        self.from_client(session, jsonrpc.notification("notifications/cancelled", {"requestId": request_id}))
        self.collect()

    def answer(self, instance: Instance, backend_id: Any, result: JsonObject | None = None) -> None:
        self.answered.add(backend_id)
        self.from_instance(instance, jsonrpc.result(backend_id, result if result is not None else {"ok": True}))
        self.collect()

    def answer_all(self, instance: Instance) -> None:
        for request in self.requests_on(instance):
            self.answer(instance, request["id"])

    def serve_one_at_a_time(self, instance: Instance) -> list[JsonObject]:
        """Answer what the instance runs, one request at a time, until it runs nothing: the order served."""
        served = []
        while running := self.requests_on(instance):
            (request,) = running
            served.append(request)
            self.answer(instance, request["id"], {"n": len(served)})
        return served

    def lose(self, instance: Instance, reason: str = "gone") -> None:
        self.board.instance_lost(instance, reason)
        self.collect()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.board.expire_due()
        self.collect()

    # --- what was sent -------------------------------------------------------------------------------

    def responses(self, session: Session) -> dict[RequestId, list[JsonObject]]:
        by_id: dict[RequestId, list[JsonObject]] = {}
        for message in self.to_client.get(session.identity, []):
            if "method" not in message:
                by_id.setdefault(message["id"], []).append(message)
        return by_id

    def response(self, session: Session, request_id: RequestId) -> JsonObject:
        (only,) = self.responses(session).get(request_id, [])
        return only

    def running_requests(self) -> list[tuple[Instance, JsonObject]]:
        """Each request an instance runs now, with its instance."""
        return [(instance, request) for instance in self.board.pool for request in self.requests_on(instance)
                if request["id"] in set(self.board.requests.running)]

    def requests_on(self, instance: Instance) -> list[JsonObject]:
        """Requests sent to the instance and not yet answered or cancelled."""
        sent = [m for m in self.to_instance.get(instance.slot, []) if jsonrpc.is_request(m)]
        cancelled = {jsonrpc.params_of(m).get("requestId") for m in self.to_instance.get(instance.slot, [])
                     if m.get("method") == "notifications/cancelled" and jsonrpc.is_notification(m)}
        return [m for m in sent if m["id"] not in self.answered and m["id"] not in cancelled]

    def error_code(self, session: Session, request_id: RequestId) -> int | None:
        response = self.response(session, request_id)
        return response["error"]["code"] if "error" in response else None
