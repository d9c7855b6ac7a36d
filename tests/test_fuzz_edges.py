"""Fuzzing the edges: whatever line a client or a server writes, and whatever frame reaches a process.

A door (one per client session) and a shim (one per instance) read lines nobody vouches for. Each line is
either let in whole (checked, cut into an envelope, packed, and unpacked on the other side as it was) or
refused the documented way: a client hears a JSON-RPC error, a server's bad line is dropped or becomes the
error its request gets. Any other exception is a door or a shim that dies, and every call it relays with it.

The lines are MCP messages of both eras generated from the spec's schema (tests/mcp_messages.py), broken in
every field, and written by hand where JSON encoders cannot (duplicate keys, deep nesting, stray bytes).
"""

from __future__ import annotations

import json
import os
import types
import typing
from typing import Any, cast

import msgpack
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from mcpmux import jsonrpc, request_state, wire
from mcpmux.envelope import PRIORITY_KEY, Envelope, Kind
from mcpmux.jsonrpc import JsonObject
from mcpmux.router import door_session
from mcpmux.shim import backend
from mcpmux.shim.opening import Opened, Opening, Refused
from mcpmux.stateless import Era
from tests import mcp_messages
from tests.edges import shim_of

FUZZ = settings(max_examples=int(os.environ.get("MCPMUX_FUZZ_EXAMPLES", "300")), deadline=None)  # more: a longer run
CLIENT_LINES = mcp_messages.lines(mcp_messages.client_messages())
SERVER_LINES = mcp_messages.lines(mcp_messages.server_messages())


def loose(line: bytes) -> Any:
    """What a lenient reader makes of a line (the last of duplicate keys wins), or None."""
    try:
        return json.loads(line.decode())
    except (ValueError, RecursionError):
        return None


def usable_id(message: Any) -> Any:
    """The id an error can answer: the message's own, when it is a string or an integer."""
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def assert_readable(invalid: jsonrpc.InvalidMessage, line: bytes) -> None:
    """A refusal the sender can read: JSON, under the request's own id (null if it has none usable)."""
    answer = json.loads(jsonrpc.dumps(jsonrpc.error(invalid.request_id, invalid.code, str(invalid))))
    sent = loose(line)
    if invalid.answerable and invalid.code != jsonrpc.PARSE_ERROR and isinstance(sent, dict) and "method" in sent:
        assert answer["id"] == usable_id(sent) and type(answer["id"]) is type(usable_id(sent))
    if not invalid.answerable:
        assert isinstance(sent, dict) and ("method" not in sent or "id" not in sent), "a request goes unanswered"


def assert_carried(message: JsonObject, envelope: Envelope) -> None:
    """The envelope that came out of the wire says what the message said: its kind, id and method in the
    header, and the message itself in the line the other side will read."""
    kind = (Kind.REQUEST if "id" in message else Kind.NOTIFICATION) if "method" in message else (
        Kind.ERROR if "error" in message else Kind.RESULT)
    assert envelope.kind is kind
    assert envelope.method == message.get("method")
    if kind is not Kind.NOTIFICATION:
        assert envelope.id == message["id"] and type(envelope.id) is type(message["id"])
    written = json.loads(envelope.line())
    expected = {**message, "jsonrpc": "2.0"}
    if not _rewritten(message):
        assert json.dumps(written, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _rewritten(message: JsonObject) -> bool:
    """Whether mcpmux itself changes the message on its way: a priority taken out of a client's `_meta`, a
    requestState unwrapped."""
    params = jsonrpc.params_of(message)
    state = params.get("requestState")
    return PRIORITY_KEY in jsonrpc.meta_of(message) or (
        isinstance(state, str) and request_state.unwrap(state) is not None)


# --- the door: a client's lines ------------------------------------------------------------------------------


@FUZZ
@given(line=CLIENT_LINES)
@example(line=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"deep":' + b"[" * 5000 + b"]" * 5000 + b"}}")
@example(line=b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}')
@example(line=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\udfff"}}')
def test_a_client_line_is_let_in_whole_or_refused_with_an_error_its_client_can_read(line: bytes) -> None:
    try:
        message, _, frames = door_session.admit(line)
    except jsonrpc.InvalidMessage as invalid:
        event(f"refused: {invalid.code}")
        assert_readable(invalid, line)
        if invalid.response_to is not None:  # the server waiting for this answer gets an error instead
            wire.encode_envelope(wire.ClientMessage, Envelope.from_message(
                jsonrpc.error(invalid.response_to, jsonrpc.INVALID_REQUEST, str(invalid))))
        return
    decoded = wire.decode(frames)
    assert isinstance(decoded, wire.ClientMessage)
    event(f"let in: {decoded.envelope.kind.name}")
    assert_carried(message, decoded.envelope)


# --- the shim: a server's lines ------------------------------------------------------------------------------


@FUZZ
@given(line=SERVER_LINES, era=st.sampled_from([None, Era.HANDSHAKE, Era.STATELESS]))
@example(line=b'{"jsonrpc":"2.0","method":"notifications/\\ud800"}', era=None)
@example(line=b'{"jsonrpc":"2.0","id":"\\udfff","result":{}}', era=None)
@example(line=b'{"jsonrpc":"2.0","id":1,"result":{"x":' + b"{\"a\":" * 3000 + b"1" + b"}" * 3000 + b"}}", era=None)
def test_a_server_line_reaches_the_core_whole_or_is_dropped_or_becomes_its_requests_error(
        line: bytes, era: Era | None) -> None:
    shim, stdin = shim_of(era)
    parsed = backend._parse(line)
    if parsed is None:  # not even a JSON object: a server's stray output, dropped and logged
        event("dropped: not a message")
        assert not mcp_messages.passes_edge(loose(line))
        return
    frames = shim._frames(line, parsed)
    for answer in stdin.sent:  # the server's malformed requests get their errors, as a client gives them
        json.loads(jsonrpc.dumps(answer))
    if frames is None:
        event("dropped: malformed")
        assert isinstance(parsed, jsonrpc.InvalidMessage) and parsed.response_to is None
        return
    decoded = wire.decode(frames)
    assert isinstance(decoded, wire.FromBackend)
    event(f"to the core: {decoded.envelope.kind.name}")
    if isinstance(parsed, jsonrpc.InvalidMessage):  # a malformed response: its request gets an error
        assert decoded.envelope.kind is Kind.ERROR and decoded.envelope.id == parsed.response_to
    elif era is not Era.STATELESS:  # there, an input_required result's requestState is wrapped
        assert_carried(parsed, decoded.envelope)


OPENING_ANSWERS = st.one_of(
    mcp_messages.server_responses(), mcp_messages.odd_but_checked(mcp_messages.server_responses()),
    mcp_messages.broken(mcp_messages.server_responses()))


@FUZZ
@given(era=st.sampled_from([Era.HANDSHAKE, Era.STATELESS]), answers=st.lists(OPENING_ANSWERS, min_size=1, max_size=2),
       stateless=st.booleans())
def test_whatever_a_server_answers_its_opening_the_shim_opens_refuses_or_falls_back(
        era: Era, answers: list[JsonObject], stateless: bool) -> None:
    """The answers to `server/discover` and `initialize` (the stateless era falls back to the second) open
    the backend, with a result the core can be told of, or refuse it with a reason."""
    sent: list[JsonObject] = []
    opening = Opening(sent.append)
    opening.start({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fuzz"}}, era)
    for answer in answers:
        if not jsonrpc.is_response(answer) or not mcp_messages.passes_edge({"jsonrpc": "2.0", **answer}):
            continue  # the shim's edge keeps it from the opening
        asked = sent[-1]["id"]
        if stateless and isinstance(answer.get("result"), dict):  # it names the era: discover succeeds
            answer = {**answer, "result": {**answer["result"], "supportedVersions": ["2026-07-28"]}}
        outcome = opening.answer({**answer, "id": asked})
        event(f"{asked}: {type(outcome).__name__}")
        if isinstance(outcome, Opened):
            ready = wire.BackendReady(outcome.result, 1, outcome.era.value, outcome.fallback)
            frame = wire.encode(ready)  # compared as frames: a NaN in a result is unequal to itself
            assert wire.encode(wire.decode(frame)) == frame
        elif isinstance(outcome, Refused):
            assert isinstance(outcome.reason, str)
        if outcome is not None:
            break
    for message in sent:
        json.loads(jsonrpc.dumps(message))


# --- the wire: frames between mcpmux's processes ------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(jsonrpc.MIN_INT, jsonrpc.MAX_INT), st.floats(),
                    st.text(max_size=8), st.binary(max_size=8))
PACKABLE = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
TAGS = st.sampled_from([*wire.TAGS.values(), "zz", ""])
# Each header field as an envelope holds it, or anything else msgpack carries.
HEADER_FIELDS = (st.integers(0, 3), st.none() | st.integers(jsonrpc.MIN_INT, jsonrpc.MAX_INT) | st.text(max_size=4),
                 st.text(max_size=8),
                 st.none(), st.none(), st.integers(0, 512), st.none(), st.none(),
                 st.none() | st.tuples(st.text(max_size=4), st.integers(0, 2**31)).map(list))


@st.composite
def headers(draw: st.DrawFn) -> list[Any]:
    return [draw(st.one_of(field, PACKABLE) if draw(st.booleans()) else field) for field in HEADER_FIELDS]


def of_hint(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's declared type."""
    if isinstance(hint, types.UnionType):
        return st.one_of([of_hint(member) for member in typing.get_args(hint)])
    if typing.get_origin(hint) is list:
        return st.lists(of_hint(typing.get_args(hint)[0]), max_size=2)
    if typing.get_origin(hint) is dict:
        return st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(typing.get_args(hint))
    return {int: st.integers(0, 2**31), float: st.floats(allow_nan=False), str: st.text(max_size=8),
            bool: st.booleans(), type(None): st.none()}[hint]


@st.composite
def frames(draw: st.DrawFn) -> list[bytes]:
    """Random bytes; or a message of a known tag with fields of its types, each sometimes of another type;
    or an envelope carrier, its nine header fields and its body."""
    if draw(st.booleans()):
        return draw(st.lists(st.binary(max_size=48), max_size=2))
    kind = draw(st.sampled_from([*(cls for cls in wire.TAGS if "envelope" not in cls._fields), "envelope"]))
    if kind == "envelope":
        tag, fields = draw(TAGS), [*draw(headers()), draw(st.binary(max_size=16) | PACKABLE)]
    else:
        tag = wire.TAGS[cast(type[Any], kind)]
        fields = [draw(PACKABLE if draw(st.integers(0, 5)) == 0 else of_hint(hint))
                  for hint in typing.get_type_hints(kind).values()]
        fields = fields[:draw(st.integers(0, len(fields)))] if draw(st.booleans()) else fields
    return [msgpack.packb([tag, *fields], use_bin_type=True)]


def of_type(value: Any, hint: Any) -> bool:
    """Whether a field holds what its message declares (`int`, `str | None`, `list[str]`, `JsonObject`...)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType):
        return any(of_type(value, member) for member in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return type(value) is str and value in typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(of_type(item, typing.get_args(hint)[0]) for item in value)
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict) and all(type(key) is str for key in value)
    return value is None if hint is type(None) else type(value) is hint


@FUZZ
@given(frames=frames())
def test_a_frame_decodes_to_a_message_of_its_type_or_is_refused(frames: list[bytes]) -> None:
    try:
        message = wire.decode(frames)
    except wire.WireError:
        event("refused")
        return
    event(f"decoded: {type(message).__name__}")
    assert type(message) in wire.TAGS
    for value, hint in zip(message, typing.get_type_hints(type(message)).values(), strict=True):
        assert of_type(value, hint), f"{type(message).__name__}: {value!r} is not {hint}"
    if isinstance(message, wire.ClientMessage | wire.ToClient | wire.ToBackend | wire.FromBackend):
        again = wire.decode(wire.encode_envelope(type(message), message.envelope))
        assert isinstance(again, type(message)) and again.envelope.header() == message.envelope.header()


@FUZZ
@given(header=headers(), body=st.binary(max_size=16))
def test_an_envelope_header_of_the_wrong_types_is_refused_as_a_value_error(header: list[Any], body: bytes) -> None:
    try:
        envelope = Envelope.from_wire(header, body)
    except ValueError:
        event("refused")
        return
    event("accepted")
    assert type(envelope.id) in (type(None), str, int) and type(envelope.flags) is int
    assert wire.encode_envelope(wire.ToClient, envelope)
