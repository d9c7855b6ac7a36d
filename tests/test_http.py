"""The stack's Streamable HTTP endpoint (router/http/), reached by the SDK's HTTP client as a remote client
would: its sessions are sessions of the pool, beside stdio ones; its tokens, Host and Origin checks keep
everyone else out; a client that vanishes has its calls cancelled; one that reconnects in time picks up."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

from tests import mcp_messages
from tests.conftest import ROOT, Stack, StackFactory, result_json
from tests.http_clients import free_port, http_client, http_session, make_token, revoke_token, session_closed

pytestmark = [pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
              pytest.mark.xdist_group("http")]  # one worker starts the module's stack once

ERA_SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "era_server.py")]
SESSION_TIMEOUT_MS = 2000
FUZZ = settings(max_examples=int(os.environ.get("MCPMUX_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixtures are module-wide
FUZZ_TIMEOUT = 20.0  # seconds: a request with no answer by then is a request the endpoint lost
ACCEPT = "application/json, text/event-stream"
CLIENT_LINES = mcp_messages.lines(mcp_messages.client_messages())
VERSION = "2025-11-25"


class Served:
    """A stack with its endpoint, and a token for each of two members of a team."""

    def __init__(self, stack: Stack, port: int) -> None:
        self.stack = stack
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.port = port
        self.alice = make_token(stack, "alice")
        self.bob = make_token(stack, "bob")


def serve(stack: Stack, port: int, *options: str) -> str:
    done = stack.router("--serve-http", str(port), *options)
    return done.stdout


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    factory = StackFactory()
    stack = factory("--min-instances", "2", "--max-instances", "2")
    port = free_port()
    serve(stack, port, "--session-timeout", str(SESSION_TIMEOUT_MS))
    yield Served(stack, port)
    factory.stop_all()


def initialize(session_id: str | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


def events_of(text: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    """The (id, message) of each server-sent event of a body."""
    found = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "id" in fields or "data" in fields:
            data = fields.get("data")
            found.append((fields.get("id"), json.loads(data) if data else None))
    return found


async def raw_session(client: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """Open a session by hand: the headers its later requests carry."""
    opened = await client.post(url, json=initialize(), headers={"Accept": ACCEPT})
    assert opened.status_code == 200, opened.text
    headers = {"Accept": ACCEPT, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION}
    sent = await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert sent.status_code == 202
    return headers


def call(request_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


# --- sessions of the pool -------------------------------------------------------------------------------


async def test_a_remote_client_calls_tools_with_progress_and_shows_in_status(served: Served) -> None:
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    async with http_session(served.url, served.alice) as client:
        tools = await client.list_tools()
        echoed = result_json(await client.call_tool("echo", {"text": "over http"}))
        stepped = result_json(await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress))
        status = await served.stack.current_status()

    assert "echo" in {tool.name for tool in tools.tools}
    assert echoed["text"] == "over http" and stepped["steps"] == 3
    assert steps == [1, 2, 3]
    remote = [session for session in status["openSessions"] if session["transport"] == "http"]
    assert len(remote) == 1
    assert remote[0]["token"] == "alice" and remote[0]["remote"].startswith("127.0.0.1:")


async def test_two_remote_clients_and_a_stdio_one_share_the_pool_and_each_hears_only_its_own(
        served: Served) -> None:
    def answer(text: str) -> Any:
        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=text),
                                             model=text)
        return sampling

    def roots(uri: str) -> Any:
        async def list_roots(context: Any) -> types.ListRootsResult:
            return types.ListRootsResult(roots=[types.Root(uri=uri)])
        return list_roots

    before = await served.stack.current_status()
    async with http_session(served.url, served.alice, sampling_callback=answer("alice's model"),
                            list_roots_callback=roots("file:///alice")) as alice, \
            http_session(served.url, served.bob, sampling_callback=answer("bob's model"),
                         list_roots_callback=roots("file:///bob")) as bob, \
            served.stack.session(sampling_callback=answer("local model"),
                                 list_roots_callback=roots("file:///local")) as local:
        results: dict[str, dict[str, Any]] = {}
        # One after another: an instance running several sessions' calls could not tell whose client a
        # sampling request is for (tests/test_sampling_sessions.py covers that); here each must get its own.
        for name, client in (("alice", alice), ("bob", bob), ("local", local)):
            results[name] = result_json(await client.call_tool("sample", {"prompt": "who?"}))
            results[name + " roots"] = result_json(await client.call_tool("roots", {}))
        during = await served.stack.current_status()

    assert [results[name]["model"] for name in ("alice", "bob", "local")] == ["alice's model", "bob's model",
                                                                              "local model"]
    assert [results[name + " roots"]["roots"] for name in ("alice", "bob", "local")] == [
        ["file:///alice"], ["file:///bob"], ["file:///local"]]
    transports = sorted(session["transport"] for session in during["openSessions"])
    assert transports == ["http", "http", "stdio"]
    assert len(during["instances"]) == len(before["instances"]) == 2, "one pool, not a server per client"


async def test_a_stateless_client_and_a_handshake_client_share_one_endpoint(make_stack: StackFactory) -> None:
    """A 2026-07-28 client's requests are single exchanges (its question to the user comes back as
    input_required and its retry is routed to the instance that asked); a handshake client keeps a session."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "1",
                       server=ERA_SERVER)
    port = free_port()
    serve(stack, port)
    url = f"http://127.0.0.1:{port}/mcp"
    token = make_token(stack, "team")

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"text": f"answer to {params.message}"})

    async with http_client(token) as modern_http, http_client(token) as legacy_http:
        modern = Client(streamable_http_client(url, http_client=modern_http), mode="2026-07-28",
                        elicitation_callback=answer)
        legacy = Client(streamable_http_client(url, http_client=legacy_http), mode="legacy")
        async with modern, legacy:
            new = json.loads(text_of(await modern.call_tool("whoami", {})))
            asked = json.loads(text_of(await modern.call_tool("ask", {"question": "why?"})))
            old = json.loads(text_of(await legacy.call_tool("whoami", {})))

    assert new["protocolVersion"] == "2026-07-28"
    assert asked["answer"] == "answer to why?"
    assert old["protocolVersion"] == "2025-11-25"


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent), result
    return block.text


# --- whatever a client posts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(served: Served) -> Iterator[tuple[httpx2.Client, dict[str, str]]]:
    """A session of its own for the fuzz test, opened by hand."""
    with httpx2.Client(headers={"Authorization": f"Bearer {served.alice}"}, timeout=FUZZ_TIMEOUT) as client:
        opened = client.post(served.url, json=initialize(), headers={"Accept": ACCEPT})
        headers = {"Accept": ACCEPT, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        client.post(served.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        yield client, headers


@FUZZ
@given(body=CLIENT_LINES, version=st.sampled_from([None, "2025-11-25", "2026-07-28", "1999-01-01", "x" * 300]),
       in_session=st.just(True))  # out of a session, an initialize would open one per example: see the examples
@example(body=b"[]", version=None, in_session=True)
@example(body=b'{"jsonrpc":"2.0","id":7,"method":"ping"', version=None, in_session=True)
@example(body=b'{"jsonrpc":"2.0","id":7,"result":{}}', version=None, in_session=True)
@example(body=b"\xff\xfe", version="2026-07-28", in_session=False)
# An initialize within the session, with params the server refuses: it once re-made the session's context,
# and the pool's instances, restarted for it, were refused over and over until the pool gave up on them.
@example(body=b'{"jsonrpc":"2.0","id":"","method":"initialize","params":{"protocolVersion":"","capabilities":'
              b'{"elicitation":{"form":false}},"clientInfo":{"name":"","version":""}}}', version=None, in_session=True)
# Nested 300 deep in a member mcpmux does not read: the server's parser dropped it, and nobody answered.
@example(body=b'{"jsonrpc":"2.0","id":3,"method":"prompts/list","deep":' + b"[" * 300 + b"]" * 300 + b"}", version=None,
         in_session=True)
def test_whatever_a_client_posts_it_gets_one_clear_answer(
        fuzzed: tuple[httpx2.Client, dict[str, str]], served: Served, body: bytes, version: str | None,
        in_session: bool) -> None:
    client, session = fuzzed
    headers = {**(session if in_session else {"Accept": ACCEPT}), "Content-Type": "application/json"}
    if version is not None:
        headers["MCP-Protocol-Version"] = version
    answer = client.post(served.url, content=body, headers=headers)
    event(f"{answer.status_code}")

    assert answer.status_code in (200, 202, 400, 404, 406, 429), answer.text
    message = loose(body)
    if answer.status_code == 200 and isinstance(message, dict) and "method" in message and "id" in message:
        responses = [reply for reply in replies(answer) if "result" in reply or "error" in reply]
        assert len(responses) == 1, answer.text
        assert responses[0].get("id") == message["id"] or "error" in responses[0]


def replies(answer: httpx2.Response) -> list[dict[str, Any]]:
    if answer.headers.get("content-type", "").startswith("application/json"):
        return [answer.json()]
    return [message for _, message in events_of(answer.text) if message is not None]


def loose(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


async def test_after_the_fuzzing_the_endpoint_serves_as_before(served: Served) -> None:
    async with http_session(served.url, served.bob) as client:
        assert result_json(await client.call_tool("echo", {"text": "still"}))["text"] == "still"


# --- who may come in ------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer mcpmux_not-a-token", "Basic YWxpY2U6c2VjcmV0"])
async def test_a_request_without_a_valid_token_is_refused_and_reaches_no_instance(
        served: Served, authorization: str | None) -> None:
    before = (await served.stack.current_status())["totalRequests"]
    headers = {"Accept": ACCEPT} | ({"Authorization": authorization} if authorization else {})
    async with httpx2.AsyncClient() as client:
        refused = await client.post(served.url, json=initialize(), headers=headers)
    after = (await served.stack.current_status())["totalRequests"]

    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert after == before


async def test_a_revoked_token_is_refused_from_its_next_request(served: Served) -> None:
    token = make_token(served.stack, "carol")
    async with http_client(token) as client:
        headers = await raw_session(client, served.url)
        allowed = await client.post(served.url, json=call(2, "echo", text="before"), headers=headers)
        revoke_token(served.stack, "carol")
        refused = await client.post(served.url, json=call(3, "echo", text="after"), headers=headers)

    assert allowed.status_code == 200 and "before" in allowed.text
    assert refused.status_code == 401


async def test_a_token_cannot_reach_another_tokens_session(served: Served) -> None:
    async with http_client(served.alice) as alice, http_client(served.bob) as bob:
        headers = await raw_session(alice, served.url)
        stolen = await bob.post(served.url, json=call(2, "echo", text="x"), headers=headers)

    assert stolen.status_code == 404


@pytest.mark.parametrize(("header", "value", "status"), [
    ("Host", "evil.example:80", 421),  # a page that rebound its name to 127.0.0.1
    ("Origin", "http://evil.example", 403),
])
async def test_a_forged_host_or_origin_is_refused(served: Served, header: str, value: str, status: int) -> None:
    async with http_client(served.alice) as client:
        refused = await client.post(served.url, json=initialize(), headers={"Accept": ACCEPT, header: value})

    assert refused.status_code == status


def test_serve_http_returns_once_the_endpoint_it_started_accepts_connections(served: Served) -> None:
    """The endpoint says so in a private file with its pid, which `--serve-http` waited for: a client that
    connects as soon as it returns is not refused (on a slow machine uvicorn was still loading)."""
    marker = served.stack.paths.http_listening
    running = served.stack.supervisorctl("pid", "http").strip()

    assert marker.read_text() == running
    assert marker.stat().st_mode & 0o777 == 0o600


def test_a_listener_beyond_loopback_without_authentication_does_not_start(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1")
    done = stack.router("--serve-http", f"0.0.0.0:{free_port()}", "--auth", "none", check=False)

    assert done.returncode != 0
    assert "0.0.0.0 is not a loopback address: a listener there needs authentication" in done.stderr
    assert not stack.paths.root.exists(), "nothing was started"


# --- sessions that end ------------------------------------------------------------------------------------


async def test_a_client_that_vanishes_has_its_calls_cancelled_and_others_go_on(served: Served) -> None:
    """Its connection closes mid-call and it never comes back: after the session timeout the session ends,
    and the instance running its call is told to stop (it is free again); another session is unaffected."""
    started = time.time()
    before = await served.stack.current_status()
    earlier = {session["name"] for session in before["openSessions"]}
    async with http_client(served.alice) as client:
        headers = await raw_session(client, served.url)
        async with client.stream("POST", served.url, json=call(2, "sleep", seconds=60), headers=headers) as running:
            async for line in running.aiter_lines():
                if line.startswith("id:"):
                    break  # the priming event: the call is on its way; the connection now drops
        await served.stack.running(before["running"] + 1)
        busy = await served.stack.current_status()
        # This test's session: not one an earlier test of the module left open (the stack is shared)
        name = next(session["name"] for session in busy["openSessions"]
                    if session["pending"] and session["name"] not in earlier)
        async with http_session(served.url, served.bob) as other:
            answered = result_json(await other.call_tool("echo", {"text": "unaffected"}))
        closed = await session_closed(served.stack, name, started)
        gone = await served.stack.current_status()
        following = await client.post(served.url, json=call(3, "echo", text="late"), headers=headers)

    assert answered["text"] == "unaffected"
    assert closed["time"] - started >= SESSION_TIMEOUT_MS / 1000, "not before its timeout"
    assert sum(instance["inFlight"] for instance in gone["instances"]) == 0, "the call was cancelled"
    assert following.status_code == 404, "the session ended"


async def test_a_client_that_reconnects_in_time_gets_its_result(served: Served) -> None:
    async with http_client(served.alice) as client:
        headers = await raw_session(client, served.url)
        last = None
        async with client.stream("POST", served.url, json=call(2, "sleep", seconds=1), headers=headers) as running:
            async for line in running.aiter_lines():
                if line.startswith("id:"):
                    last = line.split(": ", 1)[1]
                    break
        assert last is not None
        resumed = await client.get(served.url, headers={**headers, "Accept": "text/event-stream",
                                                        "Last-Event-ID": last})

    messages = [message for _, message in events_of(resumed.text) if message is not None]
    assert resumed.status_code == 200
    assert messages[-1]["id"] == 2 and json.loads(messages[-1]["result"]["content"][0]["text"])["end"]


async def test_delete_ends_a_session(served: Served) -> None:
    async with http_client(served.alice) as client:
        headers = await raw_session(client, served.url)
        ended = await client.delete(served.url, headers=headers)
        after = await client.post(served.url, json=call(2, "echo", text="x"), headers=headers)

    assert ended.status_code == 200
    assert after.status_code == 404


async def test_an_initialize_the_server_refuses_gets_its_error_and_leaves_no_session(served: Served) -> None:
    """Params the server rejects: the client hears the server's own error, and the session that initialize
    would have begun does not hold one of its token's places until it times out."""
    odd = {**initialize()["params"], "capabilities": {"elicitation": {"form": False}}}
    async with http_client(served.alice) as client:
        refused = await client.post(served.url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                      "params": odd}, headers={"Accept": ACCEPT})
        headers = {"Accept": ACCEPT, "Mcp-Session-Id": refused.headers["mcp-session-id"]}
        after = await client.post(served.url, json=call(2, "echo", text="x"), headers=headers)
        served_after = await raw_session(client, served.url)

    (answer,) = [message for _, message in events_of(refused.text) if message is not None]
    assert answer == {"jsonrpc": "2.0", "id": 1,
                      "error": {"code": -32602, "message": "Invalid request parameters", "data": ""}}
    assert after.status_code == 404
    assert served_after["Mcp-Session-Id"] != headers["Mcp-Session-Id"]


async def test_a_remote_session_outlives_a_core_that_dies(make_stack: StackFactory) -> None:
    """The core is killed between two calls: the endpoint introduces the session to the new core (as a door
    does) and the client goes on, with no error and no new session."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    port = free_port()
    serve(stack, port)
    token = make_token(stack, "survivor")
    async with http_session(f"http://127.0.0.1:{port}/mcp", token) as client:
        before = result_json(await client.call_tool("echo", {"text": "before"}))
        core = next(process for process in stack.processes() if "mcpmux.router.core" in process.cmdline())
        killed = time.time()
        core.kill()
        back = await stack.event("session", after=killed)  # the session, introduced to the new core
        after = result_json(await client.call_tool("echo", {"text": "after"}))
        status = await stack.current_status()

    assert (before["text"], after["text"]) == ("before", "after")
    assert "opened (http from 127.0.0.1" in back["text"] and "token survivor" in back["text"]
    assert status["corePid"] != core.pid


# --- limits per token ---------------------------------------------------------------------------------------


async def test_a_tokens_sessions_and_requests_in_flight_are_bounded(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.router("--up")  # running without an endpoint: --serve-http adds one to it
    port = free_port()
    serve(stack, port, "--token-sessions", "1", "--token-in-flight", "1")
    url = f"http://127.0.0.1:{port}/mcp"
    token = make_token(stack, "runaway")
    async with http_client(token) as client:
        headers = await raw_session(client, url)
        second_session = await client.post(url, json=initialize(), headers={"Accept": ACCEPT})
        async with client.stream("POST", url, json=call(2, "sleep", seconds=1), headers=headers) as first:
            lines = first.aiter_lines()
            async for line in lines:
                if line.startswith("id:"):
                    break
            over = await client.post(url, json=call(3, "echo", text="x"), headers=headers)
            async for _ in lines:
                pass
        after = await client.post(url, json=call(4, "echo", text="again"), headers=headers)

    assert second_session.status_code == 429
    assert over.json()["error"]["code"] == -32050 and "tokenInFlight" in over.json()["error"]["message"]
    assert "again" in after.text
