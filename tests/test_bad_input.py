"""Bad input gets a clear error, and the router keeps serving: every request gets exactly one response."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROUTER, Stack, StackFactory
from tests.rawclient import raw_session


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One stack for the module's tests, as for several clients in a row: bad input is contained, so each
    test's session finds the stack whole after the last one's (and a stack costs seconds of CPU to start)."""
    factory = StackFactory()
    yield factory("--min-instances", "1", "--max-instances", "1", "--max-message-bytes", "65536")
    factory.stop_all()


async def test_malformed_json_gets_a_parse_error(stack: Stack) -> None:
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
        await client.wait_for(lambda received: any(m.get("error", {}).get("code") == -32700 for m in received))
        still = await client.request(2, "ping")
    error = next(m for m in client.received if m.get("error", {}).get("code") == -32700)
    assert error["id"] is None
    assert still["result"] == {}


@pytest.mark.parametrize(("line", "request_id", "words"), [
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]\n', None, "batch"),
    (b'{"id": 5, "method": "ping"}\n', 5, "jsonrpc"),
    (b'"just a string"\n', None, "object"),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}\n', None, "id"),
    (b'{"jsonrpc": "2.0", "id": 6, "method": 42}\n', 6, "method"),
])
async def test_invalid_messages_get_invalid_request(stack: Stack, line: bytes, request_id: object, words: str) -> None:
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send_raw(line)
        await client.wait_for(lambda received: any(m.get("error", {}).get("code") == -32600 for m in received))
        still = await client.request("after", "ping")
    error = next(m for m in client.received if m.get("error", {}).get("code") == -32600)
    assert error["id"] == request_id
    assert words in error["error"]["message"]
    assert still["result"] == {}


async def test_an_unknown_method_gets_method_not_found(stack: Stack) -> None:
    async with raw_session(stack) as client:
        await client.initialize()
        response = await client.request(1, "no/such/method", {})
    assert response["error"]["code"] == -32601


async def test_an_oversized_line_is_refused_and_the_next_one_served(stack: Stack) -> None:
    huge = json.dumps({"jsonrpc": "2.0", "id": "huge", "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"text": "x" * 200_000}}}).encode() + b"\n"
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send_raw(huge)
        after = await client.request("after", "tools/call", {"name": "echo", "arguments": {"text": "small"}})
    too_long = [m for m in client.received if m.get("error", {}).get("code") == -32600]
    assert len(too_long) == 1
    assert too_long[0]["id"] == "huge", "answered under its own id, which the client can match"
    assert "longer than 65536 bytes" in too_long[0]["error"]["message"]
    assert json.loads(after["result"]["content"][0]["text"])["text"] == "small"


async def test_a_backend_printing_garbage_on_stdout_does_not_disturb_the_session(stack: Stack) -> None:
    async with raw_session(stack) as client:
        await client.initialize()
        garbage = await client.request(1, "tools/call", {"name": "garbage", "arguments": {}})
        after = await client.request(2, "tools/call", {"name": "echo", "arguments": {"text": "fine"}})
    assert "result" in garbage
    assert json.loads(after["result"]["content"][0]["text"])["text"] == "fine"
    log = (stack.paths.logs / "shim_00.log").read_text()
    assert "non-JSON" in log


async def test_half_a_surrogate_pair_crosses_as_it_came_and_the_session_goes_on(stack: Stack) -> None:
    # Valid JSON that Python cannot write back as UTF-8: an escaped lone surrogate (a string cut inside an
    # emoji), from the server; and the same from the client (the lab server, like the SDK's, never answers
    # that one: mcpmux must pass it on, not fall over).
    async with raw_session(stack) as client:
        await client.initialize()
        answered = await client.request(1, "tools/call", {"name": "half_surrogate", "arguments": {}})
        await client.send_raw(b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
                              b'"params":{"name":"echo","arguments":{"text":"cut \\ud83d"}}}\n')
        still = await client.request(3, "ping")

    assert answered["result"]["content"][0]["text"] == "cut \ud83d"
    assert len(client.responses_to(1)) == 1, "the server's own second answer never reaches the client"
    assert still["result"] == {}


async def test_a_backend_that_exits_during_initialize_gets_a_clear_error(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", LAB_EXIT_ON_INIT="1")
    async with raw_session(stack) as client:
        response = await client.request("init", "initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})
        ping = await client.request("ping", "ping")
    assert response["error"]["code"] == -32051
    assert "failed to start" in response["error"]["message"]
    assert "during initialize" in response["error"]["message"]
    assert ping["result"] == {}, "the router itself keeps serving"


def run_router(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("config", "expected"), [
    ({"server": {"command": "x"}, "multiplexer": {"minInstance": 2}}, "multiplexer.minInstance: unknown key"),
    ({"server": {"command": "x"}, "multiplexer": {"maxInstances": "four"}}, "multiplexer.maxInstances"),
    ({"server": {"command": "x"}, "multiplexer": {"minInstances": 5, "maxInstances": 2}},
     "minInstances (5) is greater than maxInstances (2)"),
    ({"multiplexer": {}}, "server: Field required"),
])
def test_a_bad_configuration_is_named_and_refused(tmp_path: Path, config: dict[str, object], expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    completed = run_router("--config", str(path), cwd=tmp_path)
    assert completed.returncode != 0
    assert str(path) in completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_configuration_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    completed = run_router("--config", str(path), cwd=tmp_path)
    assert completed.returncode != 0
    assert "not valid JSON" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    completed = run_router("--min-instances", "3", "--max-instances", "1", "--", sys.executable, cwd=tmp_path)
    assert completed.returncode != 0
    assert "minInstances (3) is greater than maxInstances (1)" in completed.stderr
    assert "Traceback" not in completed.stderr


async def test_a_stack_that_cannot_write_its_files_answers_the_client_instead_of_a_traceback(
        make_stack: StackFactory) -> None:
    # As a full disk would: the stack's configuration cannot be written (here a directory stands in its place).
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.paths.create()
    stack.paths.config.mkdir()
    process = await asyncio.create_subprocess_exec(*ROUTER, *stack.router_args, env=stack.env,
                                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    request = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    stdout, stderr = await asyncio.wait_for(process.communicate(json.dumps(request).encode() + b"\n"), 60)
    answer = json.loads(stdout)

    assert answer["error"]["code"] == -32054
    assert "stack.json" in answer["error"]["message"]
    assert b"Traceback" not in stderr
