"""The envelope: a message cut into a routing header and an opaque body, and put back together at the edge."""

from __future__ import annotations

import json

import msgpack
import pytest

from mcpmux import jsonrpc, request_state, wire
from mcpmux.envelope import Envelope, Flag, Kind


def line_of(envelope: Envelope) -> dict[str, object]:
    raw = envelope.line()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    decoded = json.loads(raw)
    assert isinstance(decoded, dict)
    return decoded


def across_the_wire(envelope: Envelope) -> Envelope:
    message = wire.decode(wire.encode_envelope(wire.ToBackend, envelope))
    assert isinstance(message, wire.ToBackend)
    return message.envelope


CALL = {"jsonrpc": "2.0", "id": "c-1", "method": "tools/call",
        "params": {"name": "search", "arguments": {"q": "é"}, "_meta": {"progressToken": 7, "other": 1}}}


def test_the_header_holds_what_routing_needs() -> None:
    envelope = Envelope.from_message(CALL)
    assert (envelope.kind, envelope.id, envelope.method, envelope.tool) == (Kind.REQUEST, "c-1", "tools/call", "search")
    assert envelope.flags == Flag.PROGRESS
    assert b'"id"' not in envelope.body and b"jsonrpc" not in envelope.body


@pytest.mark.parametrize("message", [
    CALL,
    {"jsonrpc": "2.0", "id": 3, "result": {}},
    {"jsonrpc": "2.0", "id": 0, "result": {"content": [], "nextCursor": "p2"}},
    {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 5, "method": "ping"},
])
def test_a_message_crosses_unchanged(message: dict[str, object]) -> None:
    envelope = across_the_wire(Envelope.from_message(message))
    assert line_of(envelope) == message
    assert envelope.to_dict() == message
    assert (envelope.params(), envelope.result(), envelope.error()) == (
        message.get("params", {}), message.get("result"), message.get("error"))


def test_an_id_is_replaced_without_opening_the_body() -> None:
    envelope = across_the_wire(Envelope.from_message(CALL).with_id(12345))
    assert envelope._parsed is None
    assert line_of(envelope) == {**CALL, "id": 12345}


def test_ids_keep_their_type() -> None:
    for request_id in ("1", 1, "x y"):
        assert line_of(Envelope.from_message({**CALL, "id": request_id}))["id"] == request_id


def test_a_new_progress_token_is_written_in_by_the_edge() -> None:
    request = across_the_wire(Envelope.from_message(CALL).with_id(99).with_token(99))
    assert line_of(request)["params"] == {**CALL["params"], "_meta": {"progressToken": 99, "other": 1}}  # type: ignore[dict-item]
    progress = Envelope.from_message({"jsonrpc": "2.0", "method": "notifications/progress",
                                      "params": {"progressToken": 99, "progress": 1}})
    assert line_of(across_the_wire(progress.with_token(7)))["params"] == {"progressToken": 7, "progress": 1}


def test_the_door_takes_mcpmuxs_priority_key_out_of_the_body() -> None:
    meta = {"mcpmux/priority": "high", "progressToken": 1}
    message = {**CALL, "params": {"name": "search", "_meta": meta}}
    envelope = Envelope.from_message(message, from_client=True)
    assert envelope.priority == "high"
    assert line_of(envelope)["params"] == {"name": "search", "_meta": {"progressToken": 1}}
    alone = Envelope.from_message({**CALL, "params": {"name": "x", "_meta": {"mcpmux/priority": "low"}}},
                                  from_client=True)
    assert line_of(alone)["params"] == {"name": "x"}


def test_flags_say_when_the_core_must_open_the_body() -> None:
    listing = Envelope.from_message({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": "c"}})
    page = Envelope.from_message({"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "nextCursor": "n"}})
    assert listing.flags == Flag.CURSOR and page.flags == Flag.NEXT_CURSOR
    error = Envelope.from_message({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "boom"}})
    assert (error.kind, error.error_code) == (Kind.ERROR, -32603)


def test_a_frame_that_is_not_an_envelope_is_a_wire_error() -> None:
    [frame] = wire.encode_envelope(wire.ToClient, Envelope.from_message(CALL))
    with pytest.raises(wire.WireError):
        wire.decode([frame, b"{}"])  # one frame per message
    with pytest.raises(wire.WireError):
        wire.decode([msgpack.packb(["tc", 0, 1, "ping", None, None, 0, None, None])])  # no body
    with pytest.raises(wire.WireError):
        wire.decode([b"\x93\xa2tc\x01\x02"])


# --- the 2026-07-28 era -------------------------------------------------------------------------------

ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
TAG = "io.modelcontextprotocol/subscriptionId"


def test_the_door_moves_the_instance_named_in_a_request_state_into_the_header() -> None:
    state = request_state.wrap("sealed.state", "shim:shim_01", 4242)
    message = {**CALL, "params": {"name": "ask", "requestState": state, "_meta": ENVELOPE}}

    envelope = across_the_wire(Envelope.from_message(message, from_client=True))

    assert envelope.flags == Flag.STATE | Flag.ENVELOPED
    assert envelope.pin == ("shim:shim_01", 4242)
    assert line_of(envelope)["params"] == {"name": "ask", "requestState": "sealed.state", "_meta": ENVELOPE}


def test_a_request_state_mcpmux_did_not_wrap_passes_untouched() -> None:
    message = {**CALL, "params": {"name": "ask", "requestState": "mcpmux1.not-base64"}}
    envelope = Envelope.from_message(message, from_client=True)
    assert envelope.pin is None and not envelope.flags & Flag.STATE
    assert line_of(envelope)["params"]["requestState"] == "mcpmux1.not-base64"  # type: ignore[index]


def test_the_shim_wraps_the_state_of_an_input_required_result_only() -> None:
    asked = {"jsonrpc": "2.0", "id": 5, "result": {"resultType": "input_required", "requestState": "s",
                                                   "inputRequests": {}}}
    done = {"jsonrpc": "2.0", "id": 6, "result": {"resultType": "complete", "requestState": "s"}}

    wrapped = request_state.wrap_result(asked, "shim:shim_00", 7)

    assert request_state.unwrap(wrapped["result"]["requestState"]) == ("s", ("shim:shim_00", 7))
    assert Envelope.from_message(wrapped).flags == Flag.INPUT_REQUIRED
    assert request_state.wrap_result(done, "shim:shim_00", 7) == done


def test_a_listen_streams_id_is_rewritten_by_the_edge_in_notifications_and_results() -> None:
    changed = Envelope.from_message({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                                     "params": {"_meta": {TAG: 981}}})
    closed = Envelope.from_message({"jsonrpc": "2.0", "id": 981, "result": {"_meta": {TAG: 981}}})

    assert (changed.flags, changed.token) == (Flag.SUBSCRIPTION, 981)
    assert line_of(across_the_wire(changed.with_token("listen-1")))["params"] == {"_meta": {TAG: "listen-1"}}
    assert line_of(across_the_wire(closed.with_id("listen-1").with_token("listen-1"))) == {
        "jsonrpc": "2.0", "id": "listen-1", "result": {"_meta": {TAG: "listen-1"}}}


def test_a_lone_surrogate_crosses_as_the_escape_it_came_as() -> None:
    # JSON may escape half of a surrogate pair (a JavaScript server cutting a string in an emoji); Python
    # reads it as a str that UTF-8 cannot encode. It must cross as the same escape, not stop the edge.
    line = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"cut \\ud83d"}]}}'
    envelope = Envelope.from_message(jsonrpc.parse(line))

    out = envelope.with_id(9).line()
    assert b"\\ud83d" in out
    assert json.loads(out)["result"] == json.loads(line)["result"]


NOTIFICATION_BODY = b'{"method":"notifications/message","params":{"n": 1e2}}'


# Lines as the SDKs write them: the Python SDK puts jsonrpc and the id first, the TypeScript SDK last. Inside,
# `1e2` and the spaces are spelled as mcpmux's encoder would not (`100.0`, none): they show whose text it is.
@pytest.mark.parametrize(("line", "body"), [
    (b'{"jsonrpc":"2.0","id":7,"result":{"n": 1e2}}\n', b'{"result":{"n": 1e2}}'),
    (b'{"method":"tools/call","params":{"n": 1e2},"jsonrpc":"2.0","id":"a-1"}\n',
     b'{"method":"tools/call","params":{"n": 1e2}}'),
    (b'{"jsonrpc":"2.0","method":"notifications/message","params":{"n": 1e2}}', NOTIFICATION_BODY),
    (b'{"method":"notifications/message","params":{"n": 1e2},"jsonrpc":"2.0"}\r\n', NOTIFICATION_BODY),
])
def test_the_body_is_cut_from_the_line_without_encoding_it_again(line: bytes, body: bytes) -> None:
    message = jsonrpc.parse(line)
    envelope = Envelope.from_message(message, line=line)
    out = line_of(across_the_wire(envelope.with_id(99) if "id" in message else envelope))

    assert envelope.body == body
    assert out == {**message, **({"id": 99} if "id" in message else {})}


@pytest.mark.parametrize("line", [
    # A second id: a parser keeps the last, so the body must not carry one past the id the edge writes.
    b'{"jsonrpc":"2.0","id":7,"result":{},"id":7}',
    b'{"jsonrpc":"2.0","id":7,"result":{},"\\u0069d":7}',
    b'{"result":{},"id":7,"jsonrpc":"2.0","id":7}',
    b'{ "jsonrpc": "2.0", "id": 7, "result": {} }',  # not cut, only because of the spaces
])
def test_a_line_that_cannot_simply_be_cut_is_encoded_again(line: bytes) -> None:
    envelope = Envelope.from_message(jsonrpc.parse(line), line=line)

    assert envelope.body == b'{"result":{}}'
    assert line_of(across_the_wire(envelope.with_id(99))) == {"jsonrpc": "2.0", "id": 99, "result": {}}


def test_the_door_cuts_a_line_only_when_it_took_nothing_out() -> None:
    line = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"mcpmux/priority":"low"}}}'
    envelope = Envelope.from_message(jsonrpc.parse(line), from_client=True, line=line)

    assert envelope.priority == "low"
    assert b"mcpmux/priority" not in envelope.body
