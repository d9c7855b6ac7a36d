"""The door's session protocol (router/door_session.py), without a process or a socket: lines in, frames and
lines out."""

from __future__ import annotations

import json
from typing import Any

from mcpmux import jsonrpc, wire
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.door_session import TAKEN_BATCH, DoorSession

HANDSHAKE: JsonObject = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}


def session() -> DoorSession:
    door = DoorSession(pid=42, limit=1 << 20, priority="high", cwd="/w", env={"A": "1"})
    door.hello()
    door.from_core(wire.encode(wire.Welcome(["look"], "core-1")))
    door.to_core.clear()
    return door


def line(message: JsonObject) -> bytes:
    return jsonrpc.encode(message)


def sent(door: DoorSession) -> list[wire.Message]:
    messages, door.to_core = [wire.decode(frames) for frames in door.to_core], []
    return messages


def read(door: DoorSession) -> list[Any]:
    lines, door.to_client = [json.loads(text) for text in door.to_client], []
    return lines


def answer(request_id: int, result: JsonObject) -> list[bytes]:
    return wire.encode_envelope(wire.ToClient, Envelope.from_message(jsonrpc.result(request_id, result)))


def call(request_id: int, tool: str) -> bytes:
    return line({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool}})


def test_a_request_goes_to_the_core_and_its_answer_to_the_client() -> None:
    door = session()
    door.from_client(call(1, "work"))

    (relayed,) = sent(door)
    assert isinstance(relayed, wire.ClientMessage) and relayed.envelope.id == 1 and door.awaiting_answers()
    door.from_core(answer(1, {"ok": True}))
    assert read(door) == [{"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}]
    assert not door.awaiting_answers()


def test_a_core_that_restarted_hears_the_session_again_and_what_it_lost_is_settled() -> None:
    door = session()
    door.from_client(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": HANDSHAKE}))
    door.from_core(answer(0, {}))
    door.from_client(call(1, "look"))  # safe: its annotations say so (the welcome's list)
    door.from_client(call(2, "work"))
    sent(door), read(door)

    door.from_core(wire.encode(wire.Resync()))
    (hello,) = sent(door)
    assert isinstance(hello, wire.DoorHello) and hello.initialize_params == HANDSHAKE and hello.env == {"A": "1"}
    door.from_core(wire.encode(wire.Welcome(["look"], "core-2")))

    (resent,) = sent(door)
    assert isinstance(resent, wire.ClientMessage) and resent.envelope.id == 1
    (failed,) = read(door)
    assert failed["id"] == 2 and failed["error"]["code"] == jsonrpc.INSTANCE_FAILED
    assert "mcpmux's core restarted" in failed["error"]["message"]


def test_a_restarted_core_hears_the_handshake_that_was_taken_not_one_refused_after_it() -> None:
    door = session()
    refused = {**HANDSHAKE, "capabilities": {"elicitation": {"form": False}}}
    door.from_client(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": HANDSHAKE}))
    door.from_core(answer(0, {}))
    door.from_client(line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": refused}))
    door.from_core(wire.encode_envelope(wire.ToClient, Envelope.from_message(
        jsonrpc.error(1, jsonrpc.INVALID_REQUEST, "initialized already"))))
    sent(door)

    door.from_core(wire.encode(wire.Resync()))

    (hello,) = sent(door)
    assert isinstance(hello, wire.DoorHello) and hello.initialize_params == HANDSHAKE


def test_an_initialize_refused_while_the_first_waits_does_not_undo_the_first() -> None:
    door = session()
    door.from_client(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": HANDSHAKE}))
    door.from_client(line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HANDSHAKE}))
    door.from_core(wire.encode_envelope(wire.ToClient, Envelope.from_message(
        jsonrpc.error(1, jsonrpc.INVALID_REQUEST, "initialized already"))))
    door.from_core(answer(0, {}))
    sent(door)

    door.from_core(wire.encode(wire.Resync()))

    (hello,) = sent(door)
    assert isinstance(hello, wire.DoorHello) and hello.initialize_params == HANDSHAKE
    assert not door.initialize_refused


def test_a_stopping_stack_answers_every_unanswered_request_and_ends_the_session() -> None:
    door = session()
    door.from_client(call(1, "work"))
    door.from_client(call(2, "work"))

    door.from_core(wire.encode(wire.Closing("the stack is stopping")))

    assert door.closed and not door.awaiting_answers()
    assert sorted((m["id"], m["error"]["code"]) for m in read(door)) == [(1, jsonrpc.OVERLOADED),
                                                                        (2, jsonrpc.OVERLOADED)]


def test_the_core_hears_what_the_client_read_once_it_read_whole_lines() -> None:
    door = session()
    frames = answer(1, {"text": "x" * 1000})
    door.from_client(call(1, "work"))
    door.from_core(frames)
    sent(door)
    (text,) = door.to_client

    door.written(len(text) - 1)
    assert sent(door) == [], "half a line read is not a message taken"
    door.written(1)
    assert sent(door) == [wire.Taken(len(frames[0]))]


def test_reads_are_told_in_batches_while_more_is_unread() -> None:
    door = session()
    big = answer(1, {"text": "x" * (TAKEN_BATCH // 2)})
    for request_id in (1, 2, 3):
        door.from_client(call(request_id, "work"))
        door.from_core(answer(request_id, {"text": "x" * (TAKEN_BATCH // 2)}))
    sent(door)
    lines = list(door.to_client)

    door.written(len(lines[0]))
    assert sent(door) == [], "one line read, more unread: not worth a message yet"
    door.written(len(lines[1]))
    assert sent(door) == [wire.Taken(2 * len(big[0]))]


def test_bad_lines_are_answered_where_they_came_from() -> None:
    door = session()
    door.from_client(b'{"jsonrpc": "2.0", "id": 7, "method": 5}')
    door.from_client(b'{"jsonrpc": "2.0", "id": 8, "result": {}, "error": {}}')  # a broken answer to the server
    door.from_client(b'{"jsonrpc": "2.0", "method": 5}')  # a notification nobody can be told about

    (refused,) = read(door)
    assert refused["id"] == 7 and refused["error"]["code"] == jsonrpc.INVALID_REQUEST
    (to_server,) = sent(door)
    assert isinstance(to_server, wire.ClientMessage) and to_server.envelope.id == 8
    assert to_server.envelope.error_code == jsonrpc.INVALID_REQUEST
    assert len(door.notes) == 1 and "malformed notification" in door.notes[0]
