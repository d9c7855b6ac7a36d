"""mcpmux in front of a published server it knows nothing about: @modelcontextprotocol/server-everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext
from pydantic import FileUrl

from tests.conftest import StackFactory
from tests.npm_servers import EVERYTHING, NODE, needs

pytestmark = needs(EVERYTHING)


async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="test-llm",
                                     content=types.TextContent(type="text", text="sampled through mcpmux"))


async def list_roots(ctx: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/project"), name="project")])


async def elicitation(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


CALLBACKS: dict[str, Any] = {"sampling_callback": sampling, "list_roots_callback": list_roots,
                             "elicitation_callback": elicitation}


@asynccontextmanager
async def direct_session() -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=str(NODE), args=[str(EVERYTHING), "stdio"])
    async with stdio_client(params) as (read, write), ClientSession(read, write, **CALLBACKS) as client:
        await client.initialize()
        yield client


async def test_server_everything_looks_the_same_through_mcpmux(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", server=[str(NODE), str(EVERYTHING), "stdio"])
    async with direct_session() as direct:
        direct_tools = sorted(tool.name for tool in (await direct.list_tools()).tools)
        direct_info = direct.initialize_result

    async with stack.session(**CALLBACKS) as client:
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        info = client.initialize_result
        summed = await client.call_tool("get-sum", {"a": 2, "b": 3})
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
        rooted = await client.call_tool("get-roots-list", {})

    assert tools == direct_tools
    assert len(tools) >= 17, "the backends were initialized with the client's real capabilities"
    assert info is not None and direct_info is not None
    assert info.server_info == direct_info.server_info
    assert "5" in summed.content[0].text  # type: ignore[union-attr]
    assert "sampled through mcpmux" in str(sampled.content)
    assert "file:///srv/project" in str(rooted.content)


async def test_server_everything_progress_arrives_with_the_clients_token(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", server=[str(NODE), str(EVERYTHING), "stdio"])
    steps: list[float] = []
    all_steps = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)
        if len(steps) == 3:
            all_steps.set()

    async with stack.session(**CALLBACKS) as client:
        await client.call_tool("trigger-long-running-operation", {"duration": 0.3, "steps": 3},
                               progress_callback=on_progress)
        with anyio.fail_after(10):
            await all_steps.wait()  # progress callbacks run as tasks and may trail the result

    assert steps == [1, 2, 3]
