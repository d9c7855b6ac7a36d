"""Random interleavings of sessions, requests, cancellations, answers, losses and time, against the
switchboard's promises: every client request gets exactly one response (none once cancelled), to its own
session under its own id; no instance holds more than its cap; an instance never runs a request of a session
of another client context, nor gets another context's roots; nothing is kept after its session and its
instances are gone. Under dedicated, an instance never runs requests of two sessions, at once or one after
the other (a session's instance is recycled, a new one, before another session has the slot). Sessions and
instances of both protocol eras share the pool: an instance runs only requests of its era, a retry carrying
a `requestState` only on the instance that issued it (or it is refused), and a listen stream, which has no
deadline, ends with one response at most (none once cancelled)."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mcpmux import jsonrpc, request_state
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.limits import HIGHEST
from mcpmux.router.core.requests import Pending, Stage
from mcpmux.router.core.session import Session
from mcpmux.stateless import Era
from tests.switchboard_harness import Harness

CAP = 2
SLOTS = ("shim:shim_00", "shim:shim_01", "shim:shim_02")
SESSIONS = ("a", "b", "c")
# Client contexts: two handshakes, and two sets of roots within the one that declares roots.
ROOTS: JsonObject = {"roots": {"listChanged": True}}
CAPABILITIES: list[JsonObject] = [{}, ROOTS]
ROOT_SETS = (["file:///a"], ["file:///b"])
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
DISCOVERED: JsonObject = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}

# 300 random interleavings per machine take seconds on an idle machine, minutes on a loaded one.
pytestmark = pytest.mark.timeout(900)


class SwitchboardMachine(RuleBasedStateMachine):
    strategy = "least_connections"
    cap: int | str = CAP
    high_reserve = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness.make({"strategy": self.strategy, "highReserve": self.high_reserve},
                              maxConcurrentRequests=self.cap, queueSize=4, requestTimeout=10_000)
        self.sessions: dict[str, Session] = {}
        self.closed: list[Session] = []
        self.sent: dict[bytes, list[RequestId]] = {}
        self.cancelled: dict[bytes, dict[RequestId, int]] = {}  # id -> responses seen when cancelled
        self.ids = itertools.count()
        self.roots_seen: list[JsonObject] = []  # roots answers to instances already checked
        self.served: dict[Instance, set[bytes]] = {}  # every instance object, and whose requests it was given
        self.stateless: set[bytes] = set()  # the sessions of the 2026-07-28 era
        self.streams: set[tuple[bytes, RequestId]] = set()  # listen requests: answered only when they end
        self._watch_choices()
        self.misplaced: list[str] = []
        self.sent_under: dict[int, object] = {}  # id(pending) -> its session's context when it was sent
        self._watch_dispatch()

    # --- rules ---------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.sessions) < len(SESSIONS))
    @rule(data=st.data())
    def open_session(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n in SESSIONS if n not in self.sessions]))
        if data.draw(st.booleans()):  # a client of the 2026-07-28 era: no initialize, its context per request
            session = self.h.board.open_session(f"{name}{next(self.ids)}".encode(), None)
            self.stateless.add(session.identity)
            self.sessions[name] = session
            self.sent[session.identity] = []
            self.cancelled[session.identity] = {}
            return
        capabilities = data.draw(st.sampled_from(CAPABILITIES))
        roots = data.draw(st.sampled_from(ROOT_SETS)) if capabilities else None
        session = self.h.open(f"{name}{next(self.ids)}", capabilities, roots=roots)  # identities are never reused
        self.sessions[name] = session
        self.sent[session.identity] = []
        self.cancelled[session.identity] = {}

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.sessions)))
        session = self.sessions.pop(name)
        self.h.close(session)
        self.closed.append(session)

    @precondition(lambda self: len(self.h.board.pool) < len(SLOTS))
    @rule(data=st.data())
    def instance_ready(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in SLOTS if self.h.board.pool.get(s) is None]))
        self.h.to_instance.pop(slot, None)  # what a lost instance of this slot was sent
        if data.draw(st.booleans()):
            self.h.add_instance(slot, result=DISCOVERED, era=Era.STATELESS, pid=next(self.ids))
        else:
            self.h.add_instance(slot, data.draw(st.sampled_from(CAPABILITIES)), pid=next(self.ids))

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data())
    def instance_asks_roots(self, data: st.DataObject) -> None:
        instance = data.draw(st.sampled_from(sorted(self.h.board.pool, key=lambda i: i.slot)))
        self.h.from_instance(instance, {"jsonrpc": "2.0", "id": f"roots{next(self.ids)}",
                                              "method": "roots/list"})
        self.h.collect()

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule()
    def instances_answer_pings(self) -> None:
        for instance in list(self.h.board.pool):
            for request in self.h.requests_on(instance):
                if request["method"] == "ping":
                    self.h.answer(instance, request["id"], {})

    @precondition(lambda self: any(s.context and s.context.supports("roots") for s in self.sessions.values()))
    @rule(data=st.data(), roots=st.sampled_from(ROOT_SETS))
    def roots_change(self, data: st.DataObject, roots: list[str]) -> None:
        rooted = sorted(name for name, s in self.sessions.items() if s.context and s.context.supports("roots"))
        self.h.change_roots(self.sessions[data.draw(st.sampled_from(rooted))], roots)

    @precondition(lambda self: len(self.h.board.pool) > 0)
    @rule(data=st.data())
    def instance_lost(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(instance.slot for instance in self.h.board.pool)))
        instance = self.h.board.pool.get(slot)
        assert instance is not None
        self.h.lose(instance)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), kind=st.sampled_from(["work", "look", "tools/list", "urgent"]), string_id=st.booleans())
    def request(self, data: st.DataObject, kind: str, string_id: bool) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        number = next(self.ids)
        request_id: RequestId = f"r{number}" if string_id else number
        self.sent[session.identity].append(request_id)
        if session.identity in self.stateless:
            self._stateless_request(session, request_id, kind)
        elif kind == "tools/list":
            self.h.request(session, request_id, "tools/list")
        elif kind == "urgent":
            self.h.request(session, request_id, "tools/call",
                           {"name": "work", "arguments": {}, "_meta": {"mcpmux/priority": "high"}})
        else:
            self.h.call(session, request_id, tool=kind)

    def _stateless_request(self, session: Session, request_id: RequestId, kind: str) -> None:
        meta = {**ENVELOPE, "mcpmux/priority": "high"} if kind == "urgent" else ENVELOPE
        if kind == "tools/list":
            self.h.request(session, request_id, "tools/list", {"_meta": meta})
        else:
            self.h.request(session, request_id, "tools/call", {"name": "look" if kind == "look" else "work",
                                                               "arguments": {}, "_meta": meta})

    @precondition(lambda self: bool(self.stateless & set(self.h.board.sessions)))
    @rule(data=st.data(), slot=st.sampled_from(SLOTS), current=st.booleans())
    def input_retry(self, data: st.DataObject, slot: str, current: bool) -> None:
        """A retry with a requestState issued by the instance now in a slot, or by one gone from it."""
        session = self.h.board.sessions[data.draw(st.sampled_from(sorted(self.stateless & set(self.h.board.sessions))))]
        instance = self.h.board.pool.get(slot)
        pid = instance.pid if instance is not None and current else -1
        request_id = f"i{next(self.ids)}"
        self.sent[session.identity].append(request_id)
        self.h.request(session, request_id, "tools/call", {
            "name": "work", "requestState": request_state.wrap("sealed", slot, pid), "inputResponses": {},
            "_meta": ENVELOPE})

    @precondition(lambda self: bool(self.stateless & set(self.h.board.sessions)))
    @rule(data=st.data())
    def listen(self, data: st.DataObject) -> None:
        session = self.h.board.sessions[data.draw(st.sampled_from(sorted(self.stateless & set(self.h.board.sessions))))]
        request_id = f"l{next(self.ids)}"
        self.sent[session.identity].append(request_id)
        self.streams.add((session.identity, request_id))
        self.h.request(session, request_id, "subscriptions/listen",
                       {"notifications": {"toolsListChanged": True}, "_meta": ENVELOPE})

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), uri=st.sampled_from(["file:///a", "file:///b"]), subscribe=st.booleans())
    def subscription(self, data: st.DataObject, uri: str, subscribe: bool) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        request_id = f"s{next(self.ids)}"
        self.sent[session.identity].append(request_id)
        self.h.request(session, request_id, "resources/subscribe" if subscribe else "resources/unsubscribe",
                       {"uri": uri})

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        unanswered = [rid for rid in self.sent[session.identity]
                      if rid not in self.h.responses(session) and rid not in self.cancelled[session.identity]]
        if not unanswered:
            return
        request_id = data.draw(st.sampled_from(unanswered))
        self.cancelled[session.identity][request_id] = 0
        self.h.cancel(session, request_id)

    @precondition(lambda self: self.h.board.running > 0)
    @rule(data=st.data(), outcome=st.sampled_from(["result", "tool error", "internal error"]))
    def instance_answers(self, data: st.DataObject, outcome: str) -> None:
        running = self.h.running_requests()
        if not running:
            return
        instance, request = data.draw(st.sampled_from(running))
        if outcome == "internal error":
            self.h.answered.add(request["id"])
            self.h.from_instance(instance, jsonrpc.error(request["id"], jsonrpc.INTERNAL_ERROR, "broken"))
            self.h.collect()
        else:
            self.h.answer(instance, request["id"], {"content": [], "isError": outcome == "tool error"})

    @precondition(lambda self: self.h.board.running > 0)
    @rule(data=st.data(), kind=st.sampled_from(["answer", "error", "progress"]))
    def an_instance_speaks_of_an_id_it_was_never_sent(self, data: st.DataObject, kind: str) -> None:
        """A buggy server answers (or reports progress on) a request that runs on another instance: ids come
        from one counter, so its neighbours' are the ids just below its own."""
        pairs = [(request, liar) for instance, request in self.h.running_requests()
                 for liar in self.h.board.pool if liar is not instance]
        if not pairs:
            return
        request, liar = data.draw(st.sampled_from(pairs))
        message = {"answer": jsonrpc.result(request["id"], {"phantom": True}),
                   "error": jsonrpc.error(request["id"], jsonrpc.INTERNAL_ERROR, "phantom"),
                   "progress": jsonrpc.notification("notifications/progress",
                                                    {"progressToken": request["id"], "progress": 1})}[kind]
        self.h.from_instance(liar, message)
        self.h.collect()

    @rule(seconds=st.sampled_from([0.1, 1.0, 4.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.advance(seconds)

    # --- invariants ----------------------------------------------------------------------------------

    @invariant()
    def responses_are_single_and_belong_to_their_session(self) -> None:
        for session in [*self.sessions.values(), *self.closed]:
            for request_id, responses in self.h.responses(session).items():
                assert request_id in self.sent[session.identity], f"{request_id!r} is not {session.name}'s"
                assert len(responses) == 1, f"{session.name} got {len(responses)} responses to {request_id!r}"
            for request_id in self.cancelled[session.identity]:
                assert request_id not in self.h.responses(session) or request_id in self._answered_before_cancel()

    @invariant()
    def an_instance_runs_only_requests_of_its_context(self) -> None:
        """Checked at dispatch (by `_watch_dispatch`): a request started before its session's roots changed
        rightly runs on an instance of the roots it was sent under."""
        assert not self.misplaced, self.misplaced[0]

    @invariant()
    def roots_given_to_an_instance_are_its_own_contexts(self) -> None:
        """Checked when an answer is first seen: under dedicated an instance's context follows its session's
        roots later (it is rebound), so an earlier answer is checked against the context it had then."""
        for instance in self.h.board.pool:
            for message in self.h.to_instance.get(instance.slot, []):
                if "result" in message and isinstance(message["result"].get("roots"), list):
                    if any(message is seen for seen in self.roots_seen):
                        continue
                    self.roots_seen.append(message)
                    assert instance.bound and instance.context is not None
                    assert instance.context.roots_result() == message["result"], (instance.slot, message)

    @invariant()
    def every_table_agrees_with_each_request_s_stage(self) -> None:
        """A live request is in its session's `pending` and in exactly the table of its stage; no table
        holds a request that is not live."""
        requests = self.h.board.requests
        tables = {Stage.QUEUED: list(requests.queue), Stage.RUNNING: list(requests.running.values()),
                  Stage.AWAITING_BACKEND: requests.awaiting_backend()}
        live = [pending for session in self.h.board.sessions.values() for pending in session.pending.values()]
        for pending in live:
            for stage, held in tables.items():
                assert any(p is pending for p in held) == (pending.stage is stage), (pending.key, pending.stage)
        assert sum(map(len, tables.values())) == len(live)
        assert len(requests.deadlines) <= len(live)

    @invariant()
    def no_instance_exceeds_its_cap(self) -> None:
        cap = HIGHEST if self.cap == "auto" else CAP
        for instance in self.h.board.pool:
            assert 0 <= instance.in_flight <= cap, (instance.slot, instance.in_flight)

    @invariant()
    def an_instance_counts_exactly_what_it_runs(self) -> None:
        running = set(self.h.board.requests.running)
        for instance in self.h.board.pool:
            runs = sum(1 for session in self.sessions.values() for pending in session.pending.values()
                       if pending.slot == instance.slot and pending.capped and pending.backend_id in running)
            assert instance.in_flight == runs, (instance.slot, instance.in_flight, runs)

    @invariant()
    def nothing_reaches_a_client_from_an_instance_that_was_not_asked(self) -> None:
        for messages in self.h.to_client.values():
            assert not [m for m in messages if "phantom" in str(m.get("result") or m.get("error") or "")]
            assert not [m for m in messages if m.get("method") == "notifications/progress"]  # none was asked

    @invariant()
    def no_message_raised(self) -> None:
        """The switchboard contains a message whose handling raises (router/core/switchboard.py): each is a bug."""
        raised = [event.text for event in self.h.board.metrics.events if event.kind == "error"]
        assert not raised, raised

    @invariant()
    def what_is_kept_belongs_to_open_sessions(self) -> None:
        open_identities = {session.identity for session in self.sessions.values()}
        assert set(self.h.board.sessions) == open_identities
        for session in self.closed:
            assert not session.pending, f"{session.name} is closed but keeps requests"

    @invariant()
    def an_affine_session_runs_on_one_instance(self) -> None:
        if self.strategy != "session_affinity":
            return
        for session in self.sessions.values():
            # Requests sent before the session's roots changed may still run where its old roots are.
            slots = {pending.slot for pending in session.pending.values()
                     if pending.slot is not None and pending.pinned_slot is None
                     and self.sent_under.get(id(pending)) is session.context}  # `is`: roots may change and back
            assert len(slots) <= 1, f"{session.name} runs on {slots}"

    def _watch_dispatch(self) -> None:
        """Check each request's instance against its session's context at the moment it is sent there, and
        note that context (a session's later requests may rightly go elsewhere once its roots change)."""
        board = self.h.board
        start = board.start

        def watched(pending: Pending, instance: Instance) -> None:
            ours, theirs = instance.context, pending.session.context
            where = f"{pending.session.name} ({theirs}) sent to {instance.slot} ({ours})"
            # A request pinned to its instance (a cursor it made, a subscription it holds) goes there.
            if pending.pinned_slot is None and (ours is None or theirs is None or ours.handshake() != theirs.handshake()
                                                or (instance.bound and ours != theirs)):
                self.misplaced.append(where)
            if ours is None or instance.era is not ours.era:
                self.misplaced.append(f"{where}, of era {instance.era}")
            # A retry carrying a requestState runs on the very instance that issued it, or nowhere.
            if pending.message.pin is not None and pending.message.pin != (instance.slot, instance.pid):
                self.misplaced.append(f"{where}, its requestState from {pending.message.pin}")
            self.sent_under[id(pending)] = theirs
            start(pending, instance)

        board.start = watched  # type: ignore[method-assign]

    def _watch_choices(self) -> None:
        """Note every instance the eligibility policy gives a request to, even one taken back at once."""
        eligibility = self.h.board.eligibility
        choose = eligibility.choose

        def watched(pending: Pending, pool: Pool) -> Instance | None:
            instance = choose(pending, pool)
            if instance is not None:
                self.served.setdefault(instance, set()).add(pending.session.identity)
            return instance

        eligibility.choose = watched  # type: ignore[method-assign]

    @invariant()
    def a_dedicated_instance_serves_one_session_in_its_life(self) -> None:
        if self.strategy != "dedicated":
            return
        for instance, sessions in self.served.items():
            assert len(sessions) <= 1, f"{instance.slot} was given requests of {sessions}"

    def _answered_before_cancel(self) -> set[Any]:
        return set()  # a cancel is only sent for a request not answered yet (see the cancel rule)

    def teardown(self) -> None:
        self.h.advance(60.0)  # past every deadline: whatever was waiting has been answered by now
        for session in self.sessions.values():  # streams last until their client ends them
            for identity, request_id in self.streams:
                unanswered = request_id not in self.h.responses(session)
                if identity == session.identity and unanswered and request_id not in self.cancelled[identity]:
                    self.cancelled[identity][request_id] = 0
                    self.h.cancel(session, request_id)
        for session in self.sessions.values():
            answered = self.h.responses(session)
            for request_id in self.sent[session.identity]:
                if request_id in self.cancelled[session.identity]:
                    assert request_id not in answered, f"{request_id!r} was cancelled, yet answered"
                else:
                    assert len(answered.get(request_id, [])) == 1, f"{request_id!r} of {session.name} unanswered"
        for session in list(self.sessions.values()):
            self.h.close(session)
        for instance in list(self.h.board.pool):
            self.h.lose(instance)
        board = self.h.board
        assert board.sessions == {} and len(board.queue) == 0 and board.running == 0
        assert board.next_deadline() is None
        assert board.snapshot()["subscriptions"] == 0


class AffineSwitchboardMachine(SwitchboardMachine):
    strategy = "session_affinity"


class DedicatedSwitchboardMachine(SwitchboardMachine):
    strategy = "dedicated"


class AdaptiveSwitchboardMachine(SwitchboardMachine):
    """Limits found from latency, which change under the requests' feet, and a reserve for high ones."""

    cap = "auto"
    high_reserve = 0.5


for machine in (SwitchboardMachine, AffineSwitchboardMachine, DedicatedSwitchboardMachine, AdaptiveSwitchboardMachine):
    # 150 runs of 40 steps per machine within the suite's time; MCPMUX_PROPERTY_EXAMPLES=3000 runs longer
    machine.TestCase.settings = settings(max_examples=int(os.environ.get("MCPMUX_PROPERTY_EXAMPLES", "150")),
                                         stateful_step_count=40, deadline=None)
test_switchboard_keeps_its_promises = SwitchboardMachine.TestCase
test_switchboard_keeps_its_promises_with_session_affinity = AffineSwitchboardMachine.TestCase
test_switchboard_keeps_its_promises_with_dedicated_instances = DedicatedSwitchboardMachine.TestCase
test_switchboard_keeps_its_promises_with_adaptive_limits_and_a_reserve = AdaptiveSwitchboardMachine.TestCase
