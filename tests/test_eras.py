"""Both protocol eras through mcpmux, with the SDK's own `Client` in its three modes over real stacks.

The era server (tests/servers/era_server.py) speaks both eras; its `ask` tool asks the client through a
resolver, which is a server-to-client request in the handshake era and an `input_required` result in the
2026-07-28 era, whose `requestState` only the process that issued it accepts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.subscriptions import ResourceUpdated, Subscription, ToolsListChanged

from tests.conftest import ROOT, Stack, StackFactory
from tests.rawclient import raw_session

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

ERA_SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "era_server.py")]
STATELESS = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": STATELESS,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}


def pool(make_stack: StackFactory, server: list[str] | None = None, instances: int = 2) -> Stack:
    """Two instances that run one call at a time, so concurrent calls (and retries) land on both."""
    return make_stack("--min-instances", str(instances), "--max-instances", str(instances),
                      "--max-concurrent-requests", "1", server=server or ERA_SERVER)


async def answer_with_the_question(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"text": f"answer to {params.message}"})


@asynccontextmanager
async def client(stack: Stack, mode: str) -> AsyncIterator[Client]:
    """A client through the router, once the stack runs (a 2026-07-28 client says nothing before its first
    request, and the first router starts the stack meanwhile)."""
    async with Client(stack.params(), mode=mode, elicitation_callback=answer_with_the_question) as connected:  # type: ignore[arg-type]
        await connected.list_tools()
        yield connected


def line(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return json.loads(block.text)  # type: ignore[no-any-return]


async def test_a_stateless_client_is_served_by_every_instance(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with client(stack, STATELESS) as session:
        await stack.ready(2)
        answers = [line(result) for result in await asyncio.gather(
            *(session.call_tool("whoami", {}) for _ in range(8)))]
        status = await stack.current_status()

    assert {answer["protocolVersion"] for answer in answers} == {STATELESS}
    assert len({answer["pid"] for answer in answers}) == 2
    assert {instance["era"] for instance in status["instances"]} == {STATELESS}
    assert list(status["sessionEras"].values()) == [STATELESS]


async def test_auto_negotiates_the_stateless_era_from_mcpmuxs_own_discover(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with client(stack, "auto") as session:
        answer = line(await session.call_tool("whoami", {}))
        assert session.protocol_version == STATELESS

    assert answer["protocolVersion"] == STATELESS


async def test_the_input_round_trip_returns_to_the_instance_that_asked(make_stack: StackFactory) -> None:
    # Two instances of one call each: a retry sent by least connections would often find the other one,
    # whose process rejects the state the first one sealed.
    stack = pool(make_stack)
    async with client(stack, STATELESS) as session:
        await stack.ready(2)
        results = await asyncio.gather(*(session.call_tool("ask", {"question": f"q{n}"}) for n in range(16)))
    answers = [line(result) for result in results]

    assert [answer["answer"] for answer in answers] == [f"answer to q{n}" for n in range(16)]
    assert len({answer["pid"] for answer in answers}) == 2


async def test_a_legacy_client_answers_the_same_question_as_a_server_request(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with client(stack, "legacy") as session:
        await stack.ready(2)
        answers = [line(result) for result in await asyncio.gather(
            *(session.call_tool("ask", {"question": f"q{n}"}) for n in range(4)))]
        status = await stack.current_status()

    assert [answer["answer"] for answer in answers] == [f"answer to q{n}" for n in range(4)]
    assert {instance["era"] for instance in status["instances"]} == {"handshake"}


async def test_a_retry_whose_instance_is_gone_gets_a_clear_error(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with raw_session(stack) as raw:
        asked = await raw.request(1, "tools/call", {"name": "ask", "arguments": {"question": "q"}, "_meta": ENVELOPE})
        assert "result" in asked, asked
        state = asked["result"]["requestState"]
        psutil.Process(await _backend_pid_of_state(stack, state)).kill()
        await stack.event("lost", after=0)
        retry = await raw.request(2, "tools/call", {
            "name": "ask", "arguments": {"question": "q"}, "requestState": state, "_meta": ENVELOPE,
            "inputResponses": {key: {"action": "accept", "content": {"text": "a"}}
                               for key in asked["result"]["inputRequests"]}})

    assert asked["result"]["resultType"] == "input_required"
    assert retry["error"]["code"] == -32602
    assert "requestState" in retry["error"]["message"] and "is gone" in retry["error"]["message"]


async def test_a_version_mismatch_is_answered_as_the_server_would(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    future = {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    async with raw_session(stack) as raw:
        served = await raw.request(1, "tools/call", {"name": "whoami", "arguments": {}, "_meta": ENVELOPE})
        discovered = await raw.request(2, "server/discover", {"_meta": future})
        called = await raw.request(3, "tools/call", {"name": "whoami", "arguments": {}, "_meta": future})
        handshake = await raw.request(4, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                         "clientInfo": {"name": "raw", "version": "1"}})

    assert "result" in served
    assert discovered["error"]["code"] == -32022
    assert discovered["error"]["data"] == {"supported": [STATELESS], "requested": "2099-01-01"}
    assert called["error"]["code"] == -32022  # the backend's own answer, unchanged
    assert called["error"]["data"]["requested"] == "2099-01-01"
    assert handshake["error"]["code"] == -32022  # this session spoke 2026-07-28 already


async def test_a_handshake_only_backend_sends_clients_back_to_initialize(make_stack: StackFactory) -> None:
    stack = pool(make_stack, server=None)
    stack.server = [sys.executable, str(ROOT / "tests" / "servers" / "lab_server.py")]
    async with client(stack, "auto") as session:
        assert session.protocol_version == "2025-11-25"
        await session.call_tool("echo", {"text": "hi"})
    async with raw_session(stack) as raw:
        discovered = await raw.request(1, "server/discover", {"_meta": ENVELOPE})
        called = await raw.request(2, "tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": ENVELOPE})

    assert discovered["error"]["code"] == -32601
    assert called["error"]["code"] == -32022


async def test_a_listen_stream_survives_the_loss_of_its_instance(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    uris = ["lab://a", "lab://b"]
    async with client(stack, STATELESS) as session, session.listen(tools_list_changed=True,
                                                                    resource_subscriptions=uris) as stream:
        await stack.ready(2)
        holder = await _holder(session, stream, uris)
        psutil.Process(holder).kill()
        missed = {await _next(stream), await _next(stream), await _next(stream)}
        survivor = await _holder(session, stream, uris)

    assert missed == {ToolsListChanged(), ResourceUpdated(uri="lab://a"), ResourceUpdated(uri="lab://b")}
    assert survivor != holder


async def _holder(session: Client, stream: Subscription, uris: list[str]) -> int:
    """The pid of the instance serving the stream: a change is announced on both instances at once (one
    call each), and only the stream's own instance's announcement reaches it."""
    calls = await asyncio.gather(*(session.call_tool("announce", {"uri": uri}) for uri in uris))
    pids = {uri: line(result)["pid"] for uri, result in zip(uris, calls, strict=True)}
    while not isinstance(event := await _next(stream), ResourceUpdated):
        pass
    return int(pids[event.uri])


async def _next(stream: Subscription) -> Any:
    with anyio.fail_after(30):
        return await stream.__anext__()


async def _backend_pid_of_state(stack: Stack, state: str) -> int:
    from mcpmux.request_state import unwrap

    unwrapped = unwrap(state)
    assert unwrapped is not None
    _, (slot, _) = unwrapped
    status = await stack.current_status()
    (instance,) = [i for i in status["instances"] if i["slot"] == slot]
    return int(instance["backendPid"])


async def test_a_session_of_each_era_at_once_shares_the_pool(make_stack: StackFactory) -> None:
    # The legacy client comes first, so the pool starts in the handshake era; the auto client's discover
    # then waits for an instance of the stateless era (an idle one is restarted in it: the pool is full).
    stack = pool(make_stack)
    async with client(stack, "legacy") as classic, client(stack, "auto") as modern:
        asks = await asyncio.gather(*(session.call_tool("ask", {"question": f"{n}"})
                                      for n in range(4) for session in (classic, modern)))
        whoami = [line(await session.call_tool("whoami", {})) for session in (classic, modern)]
        negotiated = modern.protocol_version
        status = await stack.current_status()
    answers = [line(result) for result in asks]

    assert negotiated == STATELESS
    assert [answer["answer"] for answer in answers] == [f"answer to {n}" for n in range(4) for _ in range(2)]
    assert [answer["protocolVersion"] for answer in whoami] == ["2025-11-25", STATELESS]
    classic_pids, modern_pids = ({answer["pid"] for answer in answers[side::2]} for side in (0, 1))
    assert len(classic_pids) == len(modern_pids) == 1 and classic_pids != modern_pids
    assert sorted(instance["era"] for instance in status["instances"]) == [STATELESS, "handshake"]
    assert sorted(status["sessionEras"].values()) == [STATELESS, "handshake"]
