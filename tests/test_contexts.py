"""Client contexts in the switchboard: an instance serves only the sessions whose context it cannot tell
apart from its own, and answers roots/list from its context, never from another session's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcpmux import jsonrpc
from mcpmux.jsonrpc import JsonObject
from mcpmux.resolve import resolve
from mcpmux.router.core import actions, events, placement
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.instances import Instance
from mcpmux.stack import stack_paths
from tests.switchboard_harness import INITIALIZE_RESULT, TOOLS, Harness

SAMPLING: JsonObject = {"sampling": {}}
ROOTS = {"roots": {"listChanged": True}}


def wanted(h: Harness) -> int:
    return sum(isinstance(action, actions.ContextWanted) for action in h.other)


def bound(h: Harness) -> list[tuple[str, Any]]:
    return [(a.slot, a.context.roots) for a in h.other if isinstance(a, actions.InstanceBound)]


def instance_asks_roots(h: Harness, instance: Instance, request_id: Any = "roots-1") -> None:
    h.from_instance(instance, {"jsonrpc": "2.0", "id": request_id, "method": "roots/list"})
    h.collect()


def answers_to(h: Harness, instance: Instance, request_id: Any) -> list[dict[str, Any]]:
    return [m for m in h.to_instance.get(instance.slot, []) if "method" not in m and m.get("id") == request_id]


def root_uris(answer: dict[str, Any]) -> list[str]:
    return [root["uri"] for root in answer["result"]["roots"]]


def pong(h: Harness, instance: Instance) -> None:
    """The instance answers the pings mcpmux sent it."""
    for ping in [m for m in h.requests_on(instance) if m["method"] == "ping"]:
        h.answer(instance, ping["id"], {})


def list_tools(h: Harness, instance: Instance, tools: list[dict[str, Any]] = TOOLS) -> None:
    """The instance answers the tools/list mcpmux sent it."""
    for request in [m for m in h.requests_on(instance) if m["method"] == "tools/list"]:
        h.answer(instance, request["id"], {"tools": tools})


# --- handshakes --------------------------------------------------------------------------------------


def test_an_instance_serves_only_sessions_of_its_handshake() -> None:
    h = Harness.make()
    plain, sampling = h.open("plain"), h.open("sampling", SAMPLING)
    instance = h.add_instance("shim:shim_00")

    h.call(plain, 1)
    h.call(sampling, 2)

    assert len(h.requests_on(instance)) == 1, "the sampling client's call does not run on the plain instance"
    assert wanted(h) == 1, "the scaler is asked for an instance of the other context"
    assert [context.supports("sampling") for context in h.board.unmet_handshakes()] == [True]
    own = h.add_instance("shim:shim_01", SAMPLING)
    (runs,) = h.requests_on(own)
    h.answer(own, runs["id"])
    assert h.error_code(sampling, 2) is None
    assert h.board.unmet_handshakes() == []


def test_initialize_is_answered_by_a_backend_of_the_clients_own_handshake() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00", result={**INITIALIZE_RESULT, "instructions": "plain"})
    session = h.board.open_session(b"s", None)
    params = {"protocolVersion": "2025-11-25", "capabilities": SAMPLING, "clientInfo": {"name": "s"}}

    h.request(session, "init", "initialize", params)
    assert "init" not in h.responses(session), "not from a backend initialized for someone else"
    assert wanted(h) == 1
    h.add_instance("shim:shim_01", SAMPLING, result={**INITIALIZE_RESULT, "instructions": "sampling"})

    assert h.response(session, "init")["result"]["instructions"] == "sampling"


def refuse_initialize(h: Harness, slot: str, capabilities: JsonObject, error: JsonObject) -> None:
    """An instance started for clients of these capabilities, whose backend answers the initialize with `error`."""
    instance = h.board.readiness.connected(slot, 7, 8)
    h.board.readiness.initializing(instance, ClientContext.of({"protocolVersion": "2025-11-25",
                                                                "capabilities": capabilities}))
    h.board.handle(events.InitializeRefused(slot, error))
    h.collect()


def test_params_a_backend_refuses_get_its_error_and_cost_no_other_session_anything() -> None:
    h = Harness.make()
    plain = h.open("plain")
    serving = h.add_instance("shim:shim_00")
    odd = h.board.open_session(b"odd", None)
    params = {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": False}},
              "clientInfo": {"name": "odd"}}
    bad = {"code": jsonrpc.INVALID_PARAMS, "message": "Invalid request parameters", "data": "form"}

    h.request(odd, "init", "initialize", params)
    refuse_initialize(h, "shim:shim_01", {"elicitation": {"form": False}}, bad)
    h.call(plain, "p")

    assert h.response(odd, "init")["error"] == bad, "the server's own answer, under the client's id"
    assert odd.context is None and h.board.unmet_handshakes() == [], "no instance is wanted for those params"
    assert len(h.requests_on(serving)) == 1, "the other session's call runs"


def test_params_refused_once_are_refused_at_once_and_others_still_initialize() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00")
    bad = {"code": jsonrpc.INVALID_PARAMS, "message": "Invalid request parameters"}
    first, second = h.board.open_session(b"first", None), h.board.open_session(b"second", None)
    params = {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": False}},
              "clientInfo": {"name": "odd"}}
    h.request(first, 1, "initialize", params)
    refuse_initialize(h, "shim:shim_01", {"elicitation": {"form": False}}, bad)
    before = wanted(h)

    h.request(second, 1, "initialize", params)
    h.request(first, 2, "initialize", {**params, "capabilities": {}})

    assert h.response(second, 1)["error"] == bad and wanted(h) == before, "no instance asked for again"
    assert "result" in h.response(first, 2), "other params, on the instance that serves them"


def test_a_second_initialize_is_refused_and_leaves_the_session_as_it_was() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00")
    session = h.open("plain")
    context = session.context

    h.request(session, "again", "initialize", {"protocolVersion": "2025-11-25", "capabilities": SAMPLING,
                                               "clientInfo": {"name": "other"}})

    assert h.error_code(session, "again") == jsonrpc.INVALID_REQUEST
    assert "initialized already" in h.response(session, "again")["error"]["message"]
    assert session.context is context and wanted(h) == 0


def test_a_request_before_initialize_is_refused_at_once() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00")
    session = h.board.open_session(b"s", None)

    h.call(session, 1)

    assert h.error_code(session, 1) == jsonrpc.INVALID_REQUEST
    assert "initialize first" in h.response(session, 1)["error"]["message"]


def test_at_max_instances_a_context_with_no_instance_waits_then_says_why() -> None:
    h = Harness.make(minInstances=1, maxInstances=1, requestTimeout=1000)
    plain, sampling = h.open("plain"), h.open("sampling", SAMPLING)
    h.add_instance("shim:shim_00")

    h.call(plain, "p")
    h.call(sampling, "s")
    h.advance(1.0)

    assert h.error_code(sampling, "s") == jsonrpc.NO_INSTANCE
    message = h.response(sampling, "s")["error"]["message"]
    assert "maxInstances (1)" in message and "other clients' contexts" in message
    assert "running on" in h.response(plain, "p")["error"]["message"], "the only instance was busy with it"


def test_notifications_of_an_instance_reach_only_the_sessions_of_its_context() -> None:
    h = Harness.make()
    plain, sampling = h.open("plain"), h.open("sampling", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)

    h.from_instance(instance, jsonrpc.notification("notifications/tools/list_changed"))
    h.collect()

    assert not [m for m in h.to_client.get(plain.identity, []) if m.get("method", "").endswith("list_changed")]
    assert [m["method"] for m in h.to_client[sampling.identity]] == ["notifications/tools/list_changed"]


# --- roots -------------------------------------------------------------------------------------------


def test_mcpmux_asks_a_session_for_its_roots_and_keeps_them_in_its_context() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS)
    assert len(h.roots_asked(session)) == 1 and not session.roots_known

    h.give_roots(session, ["file:///a"])

    assert session.roots_known and session.context is not None
    assert session.context.roots == ('{"uri":"file:///a"}',)


def test_sessions_with_other_roots_share_an_instance_while_the_server_never_asks_for_roots() -> None:
    """A server that never asks cannot tell them apart: the pool does not split for nothing."""
    h = Harness.make()
    a, b = h.open("a", ROOTS, roots=["file:///a"]), h.open("b", ROOTS, roots=["file:///b"])
    instance = h.add_instance("shim:shim_00", ROOTS)

    h.call(a, 1)
    h.call(b, 2)

    assert len(h.requests_on(instance)) == 2
    assert not instance.bound


def test_an_instance_asking_for_roots_gets_its_sessions_and_is_bound_to_them() -> None:
    h = Harness.make()
    a, b = h.open("a", ROOTS, roots=["file:///a"]), h.open("b", ROOTS, roots=["file:///b"])
    instance = h.add_instance("shim:shim_00", ROOTS)
    h.call(a, 1)

    instance_asks_roots(h, instance)

    (answer,) = answers_to(h, instance, "roots-1")
    assert root_uris(answer) == ["file:///a"]
    assert bound(h) == [(instance.slot, ('{"uri":"file:///a"}',))]
    h.call(b, 2)
    assert len(h.requests_on(instance)) == 1, "b's roots differ: it no longer runs there"
    spare = h.add_instance("shim:shim_01", ROOTS)
    (runs,) = h.requests_on(spare)
    assert runs["method"] == "tools/call" and spare.bound, "a spare is bound to b's context at its first use"


def test_an_idle_instance_that_asked_for_roots_is_bound_at_its_first_use_and_settles_first() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS, roots=["file:///a"])
    instance = h.add_instance("shim:shim_00", ROOTS)
    instance_asks_roots(h, instance)  # as server-filesystem does right after its handshake
    assert answers_to(h, instance, "roots-1") == [], "nobody to answer for yet"

    h.call(session, 1)
    (answer,) = answers_to(h, instance, "roots-1")
    assert root_uris(answer) == ["file:///a"]
    assert [m["method"] for m in h.requests_on(instance)] == ["ping"], "the call waits until the roots are in"

    pong(h, instance)
    assert [m["method"] for m in h.requests_on(instance)] == ["tools/call"]


def test_an_instance_never_gets_another_sessions_roots_when_several_contexts_run_there() -> None:
    h = Harness.make()
    a, b = h.open("a", ROOTS, roots=["file:///a"]), h.open("b", ROOTS, roots=["file:///b"])
    instance = h.add_instance("shim:shim_00", ROOTS)
    h.call(a, 1)
    h.call(b, 2)

    instance_asks_roots(h, instance)

    (answer,) = answers_to(h, instance, "roots-1")
    assert answer["error"]["code"] == jsonrpc.UNATTRIBUTABLE
    assert not instance.bound


def test_a_session_that_changes_its_roots_moves_to_an_instance_of_its_new_context() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS, roots=["file:///old"])
    first = h.add_instance("shim:shim_00", ROOTS)
    h.call(session, 1)
    instance_asks_roots(h, first)
    h.answer_all(first)

    h.change_roots(session, ["file:///new"])
    h.call(session, 2)
    assert h.requests_on(first) == [] and wanted(h) >= 1, "not on the instance that has the old roots"
    second = h.add_instance("shim:shim_01", ROOTS)
    (runs,) = h.requests_on(second)
    instance_asks_roots(h, second, "roots-2")

    (answer,) = answers_to(h, second, "roots-2")
    assert root_uris(answer) == ["file:///new"]
    assert runs["method"] == "tools/call"


def test_requests_after_a_roots_change_wait_for_the_new_roots_once_the_server_asks_for_them() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS, roots=["file:///old"])
    instance = h.add_instance("shim:shim_00", ROOTS)
    h.call(session, 1)
    instance_asks_roots(h, instance)
    h.answer_all(instance)
    h.add_instance("shim:shim_01", ROOTS)

    h.from_client(session, jsonrpc.notification("notifications/roots/list_changed"))
    h.collect()
    h.call(session, 2)

    assert h.board.running == 0, "its roots are unknown until the client answers"
    h.give_roots(session, ["file:///new"])
    assert h.board.running == 1


def test_a_session_without_the_roots_capability_never_gets_roots_asked_for() -> None:
    h = Harness.make()
    session = h.open("a")
    instance = h.add_instance("shim:shim_00")
    h.call(session, 1)

    instance_asks_roots(h, instance)

    assert h.roots_asked(session) == []
    (answer,) = answers_to(h, instance, "roots-1")
    assert answer["error"]["code"] == jsonrpc.METHOD_NOT_FOUND


def test_a_client_that_never_gives_its_roots_gets_a_clear_timeout_once_they_matter() -> None:
    h = Harness.make(requestTimeout=1000)
    session = h.open("a", ROOTS)  # never answers mcpmux's roots/list
    instance = h.add_instance("shim:shim_00", ROOTS)
    instance_asks_roots(h, instance)

    h.call(session, 1)
    h.advance(1.0)

    assert "client's roots" in h.response(session, 1)["error"]["message"]


# --- cwd ---------------------------------------------------------------------------------------------


def test_with_cwd_from_client_sessions_in_other_directories_are_other_contexts() -> None:
    h = Harness.make()
    h.board.contexts.cwd_from_client = True
    here, there = h.open("here", cwd="/p/here"), h.open("there", cwd="/p/there")

    assert here.context is not None and there.context is not None
    assert here.context.cwd == "/p/here" and here.context != there.context


def test_without_cwd_from_client_the_directory_is_not_part_of_the_context() -> None:
    h = Harness.make()
    here, there = h.open("here", cwd="/p/here"), h.open("there", cwd="/p/there")

    assert here.context == there.context


# --- the value and the scaler's policy ---------------------------------------------------------------


def test_a_context_survives_its_json_and_its_label_is_stable() -> None:
    context = ClientContext.of({"protocolVersion": "2025-06-18", "capabilities": {"roots": {}, "sampling": {}}},
                               "/work").with_roots([{"uri": "file:///work", "name": "w"}])

    assert ClientContext.from_json(context.to_json()) == context
    assert context.label == ClientContext.from_json(context.to_json()).label  # type: ignore[union-attr]
    assert context.describe().endswith("2025-06-18")
    assert context.handshake() != context and context.handshake().roots is None


def make_instance(slot: str, context: ClientContext, in_flight: int = 0) -> Instance:
    instance = Instance(slot, 1, 1, started=0.0)
    instance.context, instance.in_flight = context, in_flight
    instance.state = instance.state.READY
    return instance


def test_recycling_takes_an_idle_instance_of_an_unused_context_first_and_never_a_busy_one() -> None:
    used = ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": {}})
    unused = ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": SAMPLING})
    pool = [make_instance("s0", used), make_instance("s1", used), make_instance("s2", unused),
            make_instance("s3", unused, in_flight=1)]

    def in_use(instance: Instance) -> bool:
        return instance.context == used

    first, second = placement.recycling_victim(pool, in_use), placement.recycling_victim(pool[:2], in_use)
    assert first is not None and first.slot == "s2"
    assert second is not None and second.slot == "s0", "a used context keeps its other instance"
    assert placement.recycling_victim(pool[3:], in_use) is None
    assert [i.slot for i in placement.retiring_order(pool, in_use)] == ["s2", "s1", "s0"]
    assert [i.slot for i in placement.unused(pool, in_use)] == ["s2"], "every idle one nobody can use"


def test_a_new_instance_of_clients_with_roots_lets_its_server_ask_for_them_before_it_serves() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS, roots=["file:///a"])
    instance = Instance("shim:shim_00", 1, 1, started=0.0)
    instance.context = ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": ROOTS})
    h.board.pool.add(instance)
    h.board.instance_ready(instance, INITIALIZE_RESULT)
    h.collect()

    h.call(session, 1)
    assert "tools/call" not in [m["method"] for m in h.requests_on(instance)], "not before it answered a ping"
    instance_asks_roots(h, instance)  # right after its handshake, as server-filesystem does
    pong(h, instance)
    (answer,) = answers_to(h, instance, "roots-1")
    list_tools(h, instance)  # none of them shows which roots it has: a ping settles it
    pong(h, instance)

    assert root_uris(answer) == ["file:///a"]
    assert "tools/call" in [m["method"] for m in h.requests_on(instance)]


def test_one_registration_is_one_stack_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stack_from(directory: Path, command: list[str], *, from_client: bool) -> str:
        monkeypatch.chdir(directory)
        config, origin = resolve(command=command, cwd_from_client=from_client)
        return stack_paths(config, origin).root.name

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    for command in (["mcp-server-git", "--repository", "."], ["mcp-server-time"]):
        for from_client in (True, False):
            assert stack_from(first, command, from_client=from_client) == stack_from(
                second, command, from_client=from_client), (command, from_client)
    relative, _ = resolve(command=["mcp-server-git", "--repository", "."], cwd_from_client=False)
    assert relative.server.cwd_from_client, "a relative path runs in each client's directory unasked"
    config, _ = resolve(command=["srv"], cwd_from_client=True)
    assert config.server.cwd_from_client and config.server.cwd is None


# --- with the dedicated strategy ---------------------------------------------------------------------


def test_a_dedicated_session_gets_a_free_instance_of_its_own_context_only() -> None:
    h = Harness.make({"strategy": "dedicated"})
    plain, sampling = h.open("plain"), h.open("sampling", SAMPLING)
    other = h.add_instance("shim:shim_00")  # the lowest slot, free, but of the other handshake
    own = h.add_instance("shim:shim_01", SAMPLING)

    h.call(sampling, 1)
    h.call(plain, 2)

    assert [m["method"] for m in h.requests_on(own)] == ["tools/call"]
    assert [m["method"] for m in h.requests_on(other)] == ["tools/call"]
    assert h.board.eligibility.assignment() == {own.slot: b"sampling", other.slot: b"plain"}


def test_a_dedicated_instance_follows_its_sessions_new_roots_rather_than_the_session_moving() -> None:
    h = Harness.make({"strategy": "dedicated"})
    session = h.open("a", ROOTS, roots=["file:///old"])
    instance = h.add_instance("shim:shim_00", ROOTS)
    instance_asks_roots(h, instance)
    h.call(session, 1)
    pong(h, instance)
    h.answer_all(instance)
    assert instance.bound

    h.change_roots(session, ["file:///new"])

    assert bound(h)[-1] == (instance.slot, ('{"uri":"file:///new"}',))
    assert h.requests_on(instance) == [] and any(
        m.get("method") == "notifications/roots/list_changed" for m in h.to_instance[instance.slot])
    instance_asks_roots(h, instance, "roots-2")
    assert root_uris(answers_to(h, instance, "roots-2")[0]) == ["file:///new"]
    h.call(session, 2)
    assert [m["method"] for m in h.requests_on(instance)] == ["ping"], "it settles on its new roots first"
    pong(h, instance)
    assert [m["method"] for m in h.requests_on(instance)] == ["tools/call"], "still its own instance"


def test_the_scaler_under_dedicated_wants_an_instance_per_session_of_each_context() -> None:
    h = Harness.make({"strategy": "dedicated"})
    plain = h.open("plain")
    h.open("other"), h.open("sampling", SAMPLING)
    spare = h.add_instance("shim:shim_00")
    h.call(plain, 1)  # takes the one instance of its handshake

    wants = h.board.contexts.unplaced(h.board.sessions_without_instance(),
                                      [i.context for i in h.board.dedicated_spares()])

    assert h.board.eligibility.assignment() == {spare.slot: b"plain"}
    assert sorted(context.capabilities for context in wants) == ['{"sampling":{}}', "{}"], "other's and sampling's"
