"""Inputs the fuzz tests (tests/test_fuzz_*.py) found to break an edge or the core, each once a crash: a
door or a shim that died (and every call it relayed with it), or an exception the switchboard had to
contain (and the request it failed)."""

from __future__ import annotations

import msgpack
import pytest

from mcpmux import jsonrpc, request_state, wire
from mcpmux.envelope import Envelope, Flag
from mcpmux.jsonrpc import JsonObject
from mcpmux.router import door_session
from mcpmux.router.core import actions, cursors
from mcpmux.router.core.tasks import TaskTable
from mcpmux.shim import backend
from mcpmux.shim.opening import Opening, Refused
from mcpmux.stateless import Era
from tests import edges
from tests.edges import server_line
from tests.switchboard_harness import Harness


@pytest.mark.parametrize("line", [
    # Nesting a thousand deep, 2 KB: json.loads raised RecursionError.
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":' + b"[" * 1000 + b"]" * 1000 + b"}}",
    # An integer of more than 4300 digits: json.loads raised ValueError (int_max_str_digits).
    b'{"jsonrpc":"2.0","id":' + b"9" * 4301 + b',"method":"ping"}',
])
def test_a_line_json_cannot_read_is_a_parse_error_for_the_door_and_dropped_by_the_shim(line: bytes) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as refused:
        door_session.admit(line)
    assert refused.value.code == jsonrpc.PARSE_ERROR and refused.value.request_id is None
    assert backend._parse(line) is None


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_a_request_nested_deeper_than_a_server_reads_gets_its_error_at_the_door() -> None:
    """Found by the HTTP fuzz test: 300 deep, in a member mcpmux does not read, a request reached the server,
    whose parser (the SDK's, at about 200) dropped it without a word; its client waited for the request
    timeout, and one of the instance's slots with it."""
    deep = b'{"jsonrpc":"2.0","id":"deep","method":"prompts/list","params":{},"extra":' + nested(300) + b"}"
    shallow = b'{"jsonrpc":"2.0","id":"fine","method":"prompts/list","params":{"a":' + nested(98) + b"}}"  # 100 in all

    with pytest.raises(jsonrpc.InvalidMessage) as refused:
        door_session.admit(deep)
    _, envelope, _ = door_session.admit(shallow)

    assert (refused.value.code, refused.value.request_id, refused.value.answerable) == \
        (jsonrpc.INVALID_REQUEST, "deep", True)
    assert "nested more than 100 deep" in str(refused.value)
    assert envelope.id == "fine"


def test_a_response_nested_too_deep_for_a_client_becomes_an_error_for_its_call() -> None:
    frames, _ = server_line(b'{"jsonrpc":"2.0","id":5,"result":{"content":' + nested(300) + b"}}")

    assert frames is not None
    relayed = wire.decode(frames)
    assert isinstance(relayed, wire.FromBackend)
    assert relayed.envelope.id == 5 and relayed.envelope.error_code == jsonrpc.INTERNAL_ERROR


# A lone surrogate: valid JSON as an escape, but no UTF-8, so msgpack cannot carry it between processes.
@pytest.mark.parametrize(("line", "request_id", "code"), [
    (b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', "\ud800", jsonrpc.INVALID_REQUEST),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/\\udfff"}', 1, jsonrpc.INVALID_REQUEST),
    (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","_meta":{"progressToken":"\\ud800"}}}',
     2, jsonrpc.INVALID_PARAMS),
])
def test_a_client_id_method_or_token_that_is_not_unicode_text_gets_its_error(
        line: bytes, request_id: object, code: int) -> None:
    with pytest.raises(jsonrpc.InvalidMessage) as refused:
        door_session.admit(line)
    assert (refused.value.request_id, refused.value.code) == (request_id, code)
    assert jsonrpc.dumps(jsonrpc.error(refused.value.request_id, code, str(refused.value)))  # its client reads it


@pytest.mark.parametrize("line", [
    b'{"jsonrpc":"2.0","id":"\\udfff","result":{}}',  # the packer raised, and the shim died
    b'{"jsonrpc":"2.0","method":"notifications/\\ud800"}',
])
def test_a_server_id_or_method_that_is_not_unicode_text_is_dropped(line: bytes) -> None:
    frames, answered = server_line(line)
    assert frames is None and answered == []


@pytest.mark.parametrize("message", [
    ["dh", None],  # a door's hello without its pid
    ["dh", 7, 5],  # initialize params that are a number: the core's contexts called .get on it
    ["br", {"capabilities": {}}, 1, 7],  # an era that is not a string
    ["br", {"capabilities": {}}, 1, "2099-01-01"],  # an era mcpmux does not know: Era() raised in the core
    ["sh", 5, 6, None, None, "legacy"],
    ["st", ["a", 3]],  # safe tools that are not all names
])
def test_a_frame_whose_fields_are_not_of_their_types_is_refused(message: list[object]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode([msgpack.packb(message)])


@pytest.mark.parametrize("era", [Era.HANDSHAKE, Era.STATELESS])
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "\ud800", edges.nested(200)])
def test_an_opening_result_msgpack_cannot_carry_refuses_the_backend_or_falls_back(era: Era, value: object) -> None:
    # The shim tells the core of its backend's initialize result in a frame: packing it raised, and the
    # shim died.
    sent: list[JsonObject] = []
    opening = Opening(sent.append)
    opening.start({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}}, era)
    result = {"supportedVersions": ["2026-07-28"], "protocolVersion": "2025-11-25", "capabilities": {"x": value}}
    outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": result})
    if era is Era.STATELESS:
        assert outcome is None and sent[-1]["method"] == "initialize", "it falls back to the handshake"
        outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": result})
    assert isinstance(outcome, Refused) and "beyond 64 bits" in outcome.reason


@pytest.mark.parametrize("params", [
    {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": 2**64}},
    {"protocolVersion": "2025-11-25", "capabilities": {"experimental": {"\ud800": {}}}, "clientInfo": {"name": "c"}},
    {"protocolVersion": "2025-11-25", "capabilities": {"x": edges.nested(150)}, "clientInfo": {"name": "c"}},
])
def test_initialize_params_msgpack_cannot_carry_are_refused_at_the_door(params: JsonObject) -> None:
    # The core starts instances for a client's context with a frame holding its initialize params: packing
    # these raised in the core, which died with every session's calls (checked with real processes).
    with pytest.raises(jsonrpc.InvalidMessage) as refused:
        door_session.admit(jsonrpc.encode({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}))
    assert (refused.value.code, refused.value.request_id) == (jsonrpc.INVALID_PARAMS, 1)


@pytest.mark.parametrize("meta", [
    {"io.modelcontextprotocol/clientCapabilities": {"x": -(2**63) - 1}},
    {"io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "\ud800"}},
])
def test_a_stateless_client_context_msgpack_cannot_carry_is_not_kept(meta: JsonObject) -> None:
    # In the stateless era the first client's _meta (capabilities, identity) is what instances of its
    # context are started with, in a frame: one holding these made packing it raise in the core.
    h = Harness.make()
    session = h.board.open_session(b"a", None)
    params = {"name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", **meta}}
    _, _, frames = door_session.admit(jsonrpc.encode({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                      "params": params}))
    h.board.from_client(session, _sent_by_door(frames))
    (context,) = h.board.unmet_handshakes()
    params = h.board.contexts.initialize_params(context)
    assert wire.decode(wire.encode(wire.InitializeBackend(params, None, context.to_json(), context.era.value)))


@pytest.mark.parametrize("era", [Era.HANDSHAKE, Era.STATELESS])
@pytest.mark.parametrize("capabilities", [5, "tools", ["tools"]])
def test_an_opening_result_whose_capabilities_are_not_an_object_refuses_the_backend(era: Era, capabilities: object
                                                                                     ) -> None:
    # The core reads a backend's capabilities as an object (`"tools" in capabilities`) when its instance
    # becomes ready: with a number there, that raised outside any containment.
    sent: list[JsonObject] = []
    opening = Opening(sent.append)
    opening.start({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}}, era)
    result = {"supportedVersions": ["2026-07-28"], "protocolVersion": "2025-11-25", "capabilities": capabilities}
    outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": result})
    if era is Era.STATELESS:
        assert outcome is None and sent[-1]["method"] == "initialize", "it falls back to the handshake"
        outcome = opening.answer({"jsonrpc": "2.0", "id": sent[-1]["id"], "result": result})
    assert isinstance(outcome, Refused) and "capabilities that are not an object" in outcome.reason


def test_a_tool_name_msgpack_cannot_carry_stays_out_of_the_header() -> None:
    # A tool call's name rides in the envelope's header: a server's tools/call request named with a lone
    # surrogate made the packer raise, and the shim died.
    frames, _ = server_line(b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"\\ud800"}}')
    assert frames is not None
    decoded = wire.decode(frames)
    assert isinstance(decoded, wire.FromBackend) and decoded.envelope.tool is None


@pytest.mark.parametrize(("slot", "pid"), [("\ud800", 1), ("shim:shim_00", 2**64), ("shim:shim_00", True)])
def test_a_request_state_naming_an_instance_msgpack_cannot_carry_is_not_mcpmuxs(slot: str, pid: int) -> None:
    # The instance a requestState names rides in the header: a forged one made the door refuse the call
    # with the packer's error.
    state = request_state.wrap("sealed", slot, pid)
    _, envelope, _ = door_session.admit(jsonrpc.encode({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                "params": {"name": "echo", "requestState": state}}))
    assert envelope.pin is None and envelope.params()["requestState"] == state


def test_a_request_with_a_stray_result_member_keeps_its_routing_flags() -> None:
    # The result's flags replaced the params' ones: the instance got the client's own progress token
    # instead of mcpmux's (a token the client could choose to be another session's request id), and a
    # cursor, a requestState or the stateless era's _meta were no longer seen.
    h = Harness.make()
    session = h.open("a")
    h.add_instance("shim:shim_00")
    _, _, frames = door_session.admit(jsonrpc.encode({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "result": {},
        "params": {"name": "work", "_meta": {"progressToken": "mine"}}}))
    envelope = _sent_by_door(frames)
    assert isinstance(envelope, Envelope) and envelope.flags & Flag.PROGRESS
    h.board.from_client(session, envelope)
    h.collect()
    (sent,) = h.requests_on(h.board.pool.get("shim:shim_00"))  # type: ignore[arg-type]
    assert Envelope.of(sent).to_dict()["params"]["_meta"]["progressToken"] == sent["id"] != "mine"


def test_a_request_with_a_stray_error_member_reads_as_the_request_it_is() -> None:
    # Its keys included `error`, which it cannot be read by: copying it ({**request}, as the core does to
    # unwrap a cursor) raised KeyError, and the request failed with -32603.
    h = Harness.make()
    session = h.open("a")
    h.add_instance("shim:shim_00")
    _, _, frames = door_session.admit(jsonrpc.encode({
        "jsonrpc": "2.0", "id": 1, "method": "tools/list", "error": {"code": 1, "message": "stray"},
        "params": {"cursor": cursors.wrap("shim:shim_00", "page-2")}}))
    h.board.from_client(session, _sent_by_door(frames))
    h.collect()
    assert not h.board.metrics.events
    (sent,) = h.requests_on(h.board.pool.get("shim:shim_00"))  # type: ignore[arg-type]
    assert sent["params"]["cursor"] == "page-2" and "error" not in dict(sent)


@pytest.mark.parametrize("ttl", [10**400, float("inf"), float("nan")])
def test_a_task_whose_ttl_no_clock_can_hold_never_expires(ttl: float) -> None:
    # The ttl is the server's: 10**400 milliseconds made `ttl / 1000` raise OverflowError, and the
    # task-creating call failed with -32603.
    table = TaskTable()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "work", "task": {}}}
    created = {"task": {"taskId": "t", "status": "working", "ttl": ttl}}
    table.answered(b"a", "shim:shim_00", Envelope.from_message(request),
                   Envelope.from_message(jsonrpc.result(1, created)), 7, now=1000.0)
    table.expire(now=10.0**300)
    assert len(table) == 1


@pytest.mark.parametrize("root", [{"uri": "\udfff"}, {"uri": "file:///a", "size": 2**70}])
def test_roots_msgpack_cannot_carry_are_no_roots(root: JsonObject) -> None:
    # An instance bound to a client's context has it kept by its shim, in a frame holding the client's
    # roots: packing roots with a lone surrogate or an integer beyond 64 bits raised in the core.
    h = Harness.make()
    session = h.open("a", {"roots": {"listChanged": True}})
    asked = h.roots_asked(session)[-1]
    _, _, frames = door_session.admit(jsonrpc.encode(jsonrpc.result(asked["id"], {"roots": [root]})))
    h.board.from_client(session, _sent_by_door(frames))
    instance = h.add_instance("shim:shim_00", {"roots": {"listChanged": True}})
    h.from_instance(instance, {"jsonrpc": "2.0", "id": "r1", "method": "roots/list"})
    h.call(session, 1)
    (bound,) = [action for action in h.other if isinstance(action, actions.InstanceBound)]
    assert bound.context.roots is None
    assert wire.decode(wire.encode(wire.BindContext(bound.context.to_json())))


@pytest.mark.parametrize("status", [["completed"], {"s": 1}])
def test_a_task_status_that_is_not_a_string_is_not_an_end(status: object) -> None:
    # `status in TERMINAL` (a frozenset) raised TypeError for a list: the task-creating call, or the
    # server's status notification, failed with -32603.
    table = TaskTable()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "work", "task": {}}}
    created = {"task": {"taskId": "t", "status": status, "ttl": None}}
    table.answered(b"a", "shim:shim_00", Envelope.from_message(request),
                   Envelope.from_message(jsonrpc.result(1, created)), 7, now=1000.0)
    assert table.observe("shim:shim_00", {"taskId": "t", "status": status}) is not None
    assert len(table) == 1


@pytest.mark.parametrize("tools", [5, True, 2.5])
def test_a_tools_list_whose_tools_are_not_a_list_passes_through(tools: object) -> None:
    # The switchboard learns which tools are safe to retry from every tools/list result: iterating a
    # number raised TypeError, and the client's tools/list failed with -32603.
    h = Harness.make()
    session = h.open("a")
    instance = h.add_instance("shim:shim_00")
    h.request(session, 1, "tools/list")
    (sent,) = h.requests_on(instance)
    h.answer(instance, sent["id"], {"tools": tools})
    assert h.response(session, 1)["result"] == {"tools": tools}
    assert not h.board.metrics.events


def test_a_tasks_list_page_whose_tasks_are_not_a_list_is_an_empty_page() -> None:
    # A tasks/list page keeps only the session's own tasks: iterating a number raised TypeError, and the
    # client's tasks/list failed with -32603.
    table = TaskTable()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tasks/list", "params": {}}
    response = table.answered(b"a", "shim:shim_00", Envelope.from_message(request),
                              Envelope.from_message(jsonrpc.result(1, {"tasks": 5})), 7, now=1000.0)
    assert Envelope.of(response).result()["tasks"] == []


def test_a_server_message_the_wire_cannot_carry_is_dropped_not_fatal(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # The door had a last line for a message its checks let in but msgpack could not pack; the shim had
    # none, so each gap in the checks (the lone surrogates above) killed it. Now it drops the message.
    def cannot_carry(*_: object) -> list[bytes]:
        raise wire.WireError("cannot carry it")

    monkeypatch.setattr(wire, "encode_envelope", cannot_carry)
    frames, _ = server_line(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}')
    assert frames is None
    assert "cannot carry it" in capsys.readouterr().err


def _sent_by_door(frames: list[bytes]) -> Envelope:
    """The envelope a door's frame carries to the core, as the core decodes it."""
    message = wire.decode(frames)
    assert isinstance(message, wire.ClientMessage)
    return message.envelope
