"""Fuzzing the core: random sessions and instances of both eras exchange generated MCP messages through the
switchboard, each first through the edge it would cross (the door for a client's, the shim for a server's),
so the switchboard sees exactly what passed the edge: valid messages, and messages whose routing fields are
right but whose other fields hold anything (a tool name that is a number, tools that are a string, a task
status that is a list, capabilities that are a number, roots that are not a list).

After every step: no exception had to be contained (the switchboard records one as an "error" event, and
fails the request with -32603: a bug found); every response reaches the session that asked, under its id,
once (none once cancelled); every message the core would send packs into a frame and reads back as the line
the other side gets; no instance counts fewer or more requests in flight than it runs. At the end, with the
time past every deadline, every request has had its one response.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from typing import Any

from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mcpmux import jsonrpc, wire
from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.router import door_session
from mcpmux.router.core import actions
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from mcpmux.shim.opening import Opened, Opening
from mcpmux.stateless import Era
from mcpmux.status import EventKind
from tests import edges, mcp_messages
from tests.mcp_messages import HANDSHAKE, STATELESS
from tests.switchboard_harness import Harness

CAP = 2
SLOTS = ("shim:shim_00", "shim:shim_01", "shim:shim_02")
ERA_OF = {HANDSHAKE: Era.HANDSHAKE, STATELESS: Era.STATELESS}
ROOTS = {"roots": {"listChanged": True}}
CAPABILITIES: list[JsonObject] = [{}, ROOTS, {"sampling": {}, "elicitation": {}, **ROOTS}]
DISCOVERED: JsonObject = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}, "logging": {}}}


def fuzzed(messages: st.SearchStrategy[JsonObject]) -> st.SearchStrategy[JsonObject]:
    """Messages as a peer sends them: valid, odd where the edge does not look, or broken anywhere (most of
    which the edge refuses: tests/test_fuzz_edges.py tries those harder)."""
    return st.one_of(messages, mcp_messages.odd_but_checked(messages), mcp_messages.odd_but_checked(messages),
                     mcp_messages.broken(messages))


def of(era: str, *names: str) -> st.SearchStrategy[JsonObject]:
    return st.one_of([mcp_messages.message(era, name) for name in names])


CLIENT_REQUESTS = {era: fuzzed(of(era, *mcp_messages.CLIENT_REQUESTS[era])) for era in mcp_messages.ERAS}
CLIENT_REQUESTS[STATELESS] = st.one_of(CLIENT_REQUESTS[STATELESS], fuzzed(mcp_messages.stateless_task_requests()))
# The requests that run on an instance (most others mcpmux answers itself).
CLIENT_CALLS = {
    HANDSHAKE: fuzzed(of(HANDSHAKE, "CallToolRequest", "ListToolsRequest", "ReadResourceRequest", "GetTaskRequest",
                         "GetTaskPayloadRequest", "ListTasksRequest", "CancelTaskRequest")),
    STATELESS: fuzzed(of(STATELESS, "CallToolRequest", "ListToolsRequest", "SubscriptionsListenRequest")),
}
CLIENT_NOTIFICATIONS = fuzzed(st.one_of([of(era, *mcp_messages.CLIENT_NOTIFICATIONS[era])
                                         for era in mcp_messages.ERAS]))
CLIENT_ANSWERS = fuzzed(of(HANDSHAKE, *mcp_messages.CLIENT_RESULTS[HANDSHAKE]))
SERVER_ANSWERS = {era: fuzzed(mcp_messages.server_responses(era)) for era in mcp_messages.ERAS}
# The results a server gives to each request that runs on it (with a task, for a task-augmented call).
RESULTS_OF = {
    "tools/call": ("CallToolResult", "CreateTaskResult"), "tools/list": ("ListToolsResult",),
    "tasks/get": ("GetTaskResult",), "tasks/result": ("CallToolResult",), "tasks/list": ("ListTasksResult",),
    "tasks/cancel": ("CancelTaskResult",), "subscriptions/listen": ("SubscriptionsListenResult",),
}
SERVER_MESSAGES = {era: fuzzed(of(era, *mcp_messages.SERVER_REQUESTS[era], *mcp_messages.SERVER_NOTIFICATIONS[era]))
                   for era in mcp_messages.ERAS}
INITIALIZE_RESULTS = mcp_messages.of_definition(HANDSHAKE, "InitializeResult").flatmap(
    lambda result: st.one_of(st.just(result), mcp_messages.odd_but_checked(st.just({"result": result})).map(
        lambda message: message["result"])))


def answers_to(method: str, era: str) -> st.SearchStrategy[JsonObject]:
    """A server's answer to a request of `method`: a result of its kind, or any answer."""
    names = [name for name in RESULTS_OF.get(method, ()) if name in mcp_messages.definitions(era)]
    return st.one_of(fuzzed(of(era, *names)), SERVER_ANSWERS[era]) if names else SERVER_ANSWERS[era]


def opened_with(result: JsonObject, era: Era) -> Opened | None:
    """What the core hears of a backend that answers its shim's opening with `result` (in the stateless
    era, naming the era): the backend opened, or None if the shim refused it."""
    sent: list[JsonObject] = []
    opening = Opening(sent.append)
    opening.start({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fuzz"}}, era)
    answer = {**result, "supportedVersions": ["2026-07-28"]} if era is Era.STATELESS else result
    outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": answer})
    if outcome is None:  # the discover was refused: the shim falls back to the handshake
        outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": result})
    return outcome if isinstance(outcome, Opened) else None


def through_door(message: JsonObject) -> Envelope | None:
    """What the core gets of a client's message: the door's envelope, or None if the door refused it."""
    try:
        _, _, frames = door_session.admit(jsonrpc.encode(message))
    except jsonrpc.InvalidMessage:
        return None
    decoded = wire.decode(frames)
    assert isinstance(decoded, wire.ClientMessage)
    return decoded.envelope


def through_shim(message: JsonObject, era: Era) -> Envelope | None:
    """What the core gets of a server's message: the shim's envelope, or None if the shim dropped it."""
    frames, _ = edges.server_line(jsonrpc.encode(message), era)
    if frames is None:
        return None
    decoded = wire.decode(frames)
    assert isinstance(decoded, wire.FromBackend)
    return decoded.envelope


def sent_as(carrier: wire.EnvelopeMessage, message: Envelope | JsonObject) -> None:
    """The message as the core packs it and the edge writes it: the frame must pack, and the line parse."""
    envelope = Envelope.of(message)
    decoded = wire.decode(wire.encode_envelope(carrier, envelope))
    assert isinstance(decoded, carrier)
    line = json.loads(decoded.envelope.line())
    assert line.get("method") == decoded.envelope.method
    assert decoded.envelope.kind is Kind.NOTIFICATION or line["id"] == decoded.envelope.id


class FuzzedSwitchboard(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness.make(maxConcurrentRequests=CAP, queueSize=6, requestTimeout=10_000)
        self.ids = itertools.count(1)
        self.sessions: dict[bytes, Session] = {}
        self.closed: list[Session] = []
        self.eras: dict[bytes, str] = {}
        self.sent: dict[bytes, list[RequestId]] = {}  # each session's requests that passed the door
        self.cancelled: dict[bytes, dict[RequestId, int]] = {}  # id -> responses it had when cancelled
        self.checked: dict[object, int] = {}  # how many of each list of actions were checked
        self.task_ids: list[str] = []  # the tasks instances created

    @initialize(era=st.sampled_from(mcp_messages.ERAS), capabilities=st.sampled_from(CAPABILITIES))
    def start(self, era: str, capabilities: JsonObject) -> None:
        """A session and an instance that can serve it, so that requests run from the first step."""
        self.open_session(era, capabilities, None)
        if era == STATELESS:
            self.h.add_instance(SLOTS[0], result=DISCOVERED, era=Era.STATELESS, pid=next(self.ids))
        else:
            self.h.add_instance(SLOTS[0], capabilities, pid=next(self.ids))

    # --- sessions ------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.sessions) < 3)
    @rule(era=st.sampled_from(mcp_messages.ERAS), capabilities=st.sampled_from(CAPABILITIES),
          initialize=st.one_of(st.none(), fuzzed(mcp_messages.message(HANDSHAKE, "InitializeRequest"))))
    def open_session(self, era: str, capabilities: JsonObject, initialize: JsonObject | None) -> None:
        """A client of the stateless era (its context in each request), or of the handshake: one that
        initializes as the harness does (its roots answered), or with generated initialize params."""
        name = f"s{next(self.ids)}"
        if era == STATELESS or initialize is not None:
            session = self.h.board.open_session(name.encode(), None)
        else:
            session = self.h.open(name, capabilities, roots=["file:///a"] if capabilities else None)
        self.sessions[session.identity] = session
        self.eras[session.identity] = era
        self.sent[session.identity], self.cancelled[session.identity] = [], {}
        if initialize is not None and era == HANDSHAKE:
            self._from_client(session, initialize)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), now=st.integers(0, 3))
    def close_session(self, data: st.DataObject, now: int) -> None:
        if now:  # a session ends one time in four: the others have their work to do first
            return
        session = self.sessions.pop(data.draw(st.sampled_from(sorted(self.sessions))))
        self.h.close(session)
        self.closed.append(session)

    # --- what clients send ---------------------------------------------------------------------------

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), own_era=st.integers(0, 4))
    def client_request(self, data: st.DataObject, own_era: int) -> None:
        session = self._session(data)
        era = self.eras[session.identity] if own_era else data.draw(st.sampled_from(mcp_messages.ERAS))
        self._from_client(session, data.draw(CLIENT_REQUESTS[era]))

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), progress=st.booleans(), task=st.booleans(), quick=st.booleans())
    def client_calls(self, data: st.DataObject, progress: bool, task: bool, quick: bool) -> None:
        """A request that runs on an instance, asking for progress, for a task, about a task it created;
        one time in two its instance answers at once."""
        session = self._session(data)
        request = data.draw(CLIENT_CALLS[self.eras[session.identity]])
        params = request.get("params")
        if isinstance(params, dict):
            meta = params.get("_meta")
            if progress and (meta is None or isinstance(meta, dict)):
                params = {**params, "_meta": {**(meta or {}), "progressToken": f"p{next(self.ids)}"}}
            if task and request.get("method") == "tools/call":
                params = {**params, "task": {"ttl": 60_000}}
            if self.task_ids and "taskId" in params:
                params = {**params, "taskId": data.draw(st.sampled_from(self.task_ids))}
            request = {**request, "params": params}
        running = {id(pair[1]) for pair in self.h.running_requests()}
        self._from_client(session, request)
        started = [pair for pair in self.h.running_requests() if id(pair[1]) not in running]
        if quick and started:
            self._answer(data, *started[0])

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), notification=CLIENT_NOTIFICATIONS)
    def client_notification(self, data: st.DataObject, notification: JsonObject) -> None:
        self._from_client(self._session(data), notification)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def client_cancels(self, data: st.DataObject) -> None:
        session = self._session(data)
        unanswered = [rid for rid in self.sent[session.identity] if not self._responses(session, rid)
                      and rid not in self.cancelled[session.identity]]
        if unanswered:
            request_id = data.draw(st.sampled_from(unanswered))
            self._from_client(session, jsonrpc.notification("notifications/cancelled", {"requestId": request_id}))

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), answer=CLIENT_ANSWERS)
    def client_answers_mcpmux(self, data: st.DataObject, answer: JsonObject) -> None:
        """A client answers a request mcpmux sent it (its roots/list, a server's sampling or elicitation)."""
        session = self._session(data)
        asked = [m["id"] for m in self.h.to_client.get(session.identity, []) if "method" in m and "id" in m]
        if asked and "id" in answer:
            answer = {**answer, "id": data.draw(st.sampled_from(asked))}
        self._from_client(session, answer)

    @precondition(lambda self: any(s.context and s.context.supports("roots") for s in self.sessions.values()))
    @rule(data=st.data(), answer=fuzzed(of(HANDSHAKE, "ListRootsResult")))
    def client_roots_change(self, data: st.DataObject, answer: JsonObject) -> None:
        """A client's roots change: it says so, and answers mcpmux's roots/list with whatever it answers."""
        session = data.draw(st.sampled_from([s for _, s in sorted(self.sessions.items())
                                             if s.context and s.context.supports("roots")]))
        self._from_client(session, jsonrpc.notification("notifications/roots/list_changed"))
        asked = self.h.roots_asked(session)
        if asked and "id" in answer:
            self._from_client(session, {**answer, "id": asked[-1]["id"]})

    # --- instances -----------------------------------------------------------------------------------

    @precondition(lambda self: len(self.h.board.pool) < len(SLOTS))
    @rule(data=st.data(), era=st.sampled_from(mcp_messages.ERAS), result=INITIALIZE_RESULTS)
    def instance_ready(self, data: st.DataObject, era: str, result: JsonObject) -> None:
        """An instance of a context some session waits for, or of the harness's own, with the initialize (or
        discover) result its backend gave: its shim passed it on if msgpack carries it."""
        opened = opened_with(result, ERA_OF[era])
        if opened is None:
            event("instance: refused by its shim")
            return
        slot = data.draw(st.sampled_from([s for s in SLOTS if self.h.board.pool.get(s) is None]))
        self.h.to_instance.pop(slot, None)
        wanted = self.h.board.unmet_handshakes()
        if opened.era is Era.STATELESS:
            self.h.add_instance(slot, result=opened.result, era=Era.STATELESS, pid=next(self.ids))
        elif bool(wanted) and data.draw(st.booleans()):
            self.h.add_instance(slot, result=opened.result, pid=next(self.ids),
                                context=data.draw(st.sampled_from(wanted)))
        else:
            self.h.add_instance(slot, data.draw(st.sampled_from(CAPABILITIES)), opened.result, pid=next(self.ids))

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data(), now=st.integers(0, 2))
    def instance_lost(self, data: st.DataObject, now: int) -> None:
        if not now:  # one time in three
            self.h.lose(self._instance(data))

    @precondition(lambda self: bool(self.h.running_requests()))
    @rule(data=st.data())
    def instance_answers(self, data: st.DataObject) -> None:
        """An instance answers a request it runs, with a result of its kind or any other answer."""
        self._answer(data, *data.draw(st.sampled_from(self.h.running_requests())))

    def _answer(self, data: st.DataObject, instance: Instance, request: Mapping[str, Any]) -> None:
        answer = data.draw(answers_to(request["method"], self._era(instance)))
        if "id" in answer:
            answer = {**answer, "id": request["id"]}
        result = answer.get("result")
        task = result.get("task") if isinstance(result, dict) else None
        if isinstance(task, dict) and isinstance(task.get("taskId"), str):
            self.task_ids.append(task["taskId"])
        envelope = through_shim(answer, instance.era)
        if envelope is not None and envelope.id == request["id"]:
            event(f"server: answers its {request['method']}")
            self.h.answered.add(envelope.id)
        self._from_instance(instance, envelope)

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data(), whose=st.sampled_from(["another's", "nobody's"]))
    def instance_answers_what_it_does_not_run(self, data: st.DataObject, whose: str) -> None:
        """A buggy server answers a request another instance runs, or one nobody sent."""
        instance = self._instance(data)
        answer = data.draw(SERVER_ANSWERS[self._era(instance)])
        others = [request["id"] for on, request in self.h.running_requests() if on is not instance]
        if others and whose == "another's" and "id" in answer:
            answer = {**answer, "id": data.draw(st.sampled_from(others))}
        self._from_instance(instance, through_shim(answer, instance.era))

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data(), tag=st.booleans())
    def instance_speaks(self, data: st.DataObject, tag: bool) -> None:
        """A server's own request or notification; progress tagged with a token of a request it runs (or
        another instance's), a task status with a task's id."""
        instance = self._instance(data)
        message = data.draw(SERVER_MESSAGES[self._era(instance)])
        params = message.get("params")
        if tag and isinstance(params, dict):
            running = [request["id"] for _, request in self.h.running_requests()]
            if message.get("method") == "notifications/progress" and running:
                message = {**message, "params": {**params, "progressToken": data.draw(st.sampled_from(running))}}
            if "taskId" in params and self.task_ids:
                message = {**message, "params": {**params, "taskId": data.draw(st.sampled_from(self.task_ids))}}
        self._from_instance(instance, through_shim(message, instance.era))

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data())
    def instance_asks_roots(self, data: st.DataObject) -> None:
        """A server asks for its client's roots: from then on instances are bound to one client context."""
        message = {"jsonrpc": "2.0", "id": f"roots-{next(self.ids)}", "method": "roots/list"}
        instance = self._instance(data)
        self._from_instance(instance, through_shim(message, instance.era))

    @rule(seconds=st.sampled_from([0.5, 0.5, 4.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.advance(seconds)

    # --- helpers -------------------------------------------------------------------------------------

    def _session(self, data: st.DataObject) -> Session:
        return self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]

    def _instance(self, data: st.DataObject) -> Instance:
        return data.draw(st.sampled_from(sorted(self.h.board.pool, key=lambda instance: instance.slot)))

    def _era(self, instance: Instance) -> str:
        return STATELESS if instance.era is Era.STATELESS else HANDSHAKE

    def _from_client(self, session: Session, message: JsonObject) -> None:
        """Through the door, under an id of its own if it is a request (so that its responses can be told
        apart), and tracked: requests to be answered, cancellations of them."""
        if jsonrpc.is_request(message):
            number = next(self.ids)
            message = {**message, "id": f"c{number}" if number % 2 else 10**12 + number}
        envelope = through_door(message)
        if envelope is None:
            event("client: refused by the door")
            return
        event(f"client: {envelope.kind.name} {envelope.method or ''}".strip())
        if envelope.kind is Kind.REQUEST:
            self.sent[session.identity].append(envelope.id)
        elif envelope.method == "notifications/cancelled":
            request_id = envelope.params().get("requestId")
            if request_id in self.sent[session.identity] and request_id not in self.cancelled[session.identity]:
                self.cancelled[session.identity][request_id] = len(self._responses(session, request_id))
        self.h.board.from_client(session, envelope)
        self.h.collect()

    def _from_instance(self, instance: Instance, envelope: Envelope | None) -> None:
        if envelope is None:
            event("server: dropped by the shim")
            return
        event(f"server: {envelope.kind.name} {envelope.method or ''}".strip())
        self.h.board.from_instance(instance, envelope)
        self.h.collect()

    def _responses(self, session: Session, request_id: RequestId) -> list[JsonObject]:
        return [m for m in self.h.to_client.get(session.identity, []) if "method" not in m
                and m.get("id") == request_id and type(m.get("id")) is type(request_id)]

    # --- invariants ----------------------------------------------------------------------------------

    @invariant()
    def nothing_had_to_be_contained(self) -> None:
        errors = [e.text for e in self.h.board.metrics.events if e.kind == EventKind.ERROR]
        assert not errors, errors[0]

    @invariant()
    def what_the_core_sends_packs_and_reads_back(self) -> None:
        for identity, messages in self.h.to_client.items():
            for message in messages[self.checked.get(identity, 0):]:
                sent_as(wire.ToClient, message)
            self.checked[identity] = len(messages)
        for slot, messages in self.h.to_instance.items():
            for message in messages[self.checked.get(slot, 0):]:
                sent_as(wire.ToBackend, message)
            self.checked[slot] = len(messages)
        for action in self.h.other[self.checked.get("other", 0):]:
            if isinstance(action, actions.InstanceBound):
                wire.decode(wire.encode(wire.BindContext(action.context.to_json())))
            elif isinstance(action, actions.SafeToolsChanged):
                wire.decode(wire.encode(wire.SafeTools(action.names)))
        self.checked["other"] = len(self.h.other)
        for context in self.h.board.unmet_handshakes():  # what the scaler would start instances with
            params = self.h.board.contexts.initialize_params(context)
            wire.decode(wire.encode(wire.InitializeBackend(params, None, context.to_json(), context.era.value)))

    @invariant()
    def each_response_reaches_its_session_once(self) -> None:
        for session in [*self.sessions.values(), *self.closed]:
            answered: set[str] = set()
            for message in self.h.to_client.get(session.identity, []):
                if "method" not in message:
                    key = json.dumps(message["id"])
                    assert message["id"] in self.sent[session.identity], f"{session.name} got a response to {key}"
                    assert key not in answered, f"{session.name} got two responses to {key}"
                    answered.add(key)
            for request_id, before in self.cancelled[session.identity].items():
                assert len(self._responses(session, request_id)) == before, f"{request_id!r} answered once cancelled"

    @invariant()
    def in_flight_counts_what_runs(self) -> None:
        running = set(self.h.board.requests.running)
        for instance in self.h.board.pool:
            capped = [p for s in self.h.board.sessions.values() for p in s.pending.values()
                      if p.slot == instance.slot and p.capped and p.backend_id in running]
            assert instance.in_flight == len(capped), (instance.slot, instance.in_flight, len(capped))
            assert 0 <= instance.in_flight <= CAP

    def teardown(self) -> None:
        """Past every deadline, with every stream cancelled and every instance gone, each request that
        passed the door has had its one response, unless it was cancelled first."""
        for session in list(self.sessions.values()):
            for request_id in self.sent[session.identity]:
                pending = session.pending.get(request_id)
                if pending is not None and pending.method == "subscriptions/listen" and not pending.capped:
                    self._from_client(session, jsonrpc.notification("notifications/cancelled",
                                                                    {"requestId": request_id}))
        self.h.advance(60.0)
        for instance in list(self.h.board.pool):
            self.h.lose(instance)
        self.h.advance(60.0)
        self.nothing_had_to_be_contained()
        self.what_the_core_sends_packs_and_reads_back()
        self.each_response_reaches_its_session_once()
        for session in self.sessions.values():
            for request_id in self.sent[session.identity]:
                if request_id not in self.cancelled[session.identity]:
                    assert len(self._responses(session, request_id)) == 1, f"{request_id!r} of {session.name}"


# No shrinking: each step replays the edges and the switchboard, and shrinking a failure of forty steps took
# minutes. A failure is printed as it ran, step by step. MCPMUX_FUZZ_EXAMPLES=3000 runs longer.
FuzzedSwitchboard.TestCase.settings = settings(
    max_examples=int(os.environ.get("MCPMUX_FUZZ_EXAMPLES", "120")), stateful_step_count=40, deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate])
test_the_switchboard_keeps_its_promises_whatever_passes_the_edges = FuzzedSwitchboard.TestCase
