"""Sampling from an instance that serves two sessions (issue 19): real stacks, server-everything from npm,
SDK clients whose sampling callbacks answer with their own names.

Directly, each client has its own server and every sampling request reaches the client whose call caused
it. Through mcpmux the sessions share an instance, and stdio does not say which call a server's request is
for; once the instance has asked a client, it serves one session at a time, so the answer is always right.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from tests.conftest import StackFactory, result_json
from tests.npm_servers import EVERYTHING, NODE, needs

CALLS = 3  # per session, at once

needs_everything = needs(EVERYTHING)
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


Sampling = Callable[[ClientRequestContext, types.CreateMessageRequestParams], Awaitable[types.CreateMessageResult]]


def answering_as(name: str) -> Sampling:
    """A client's sampling: its LLM answers with the client's name, so the test sees whose answer it got."""
    async def sample(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="test-llm",
                                         content=types.TextContent(type="text", text=f"answer-of-{name}"))
    return sample


async def sample_through(client: ClientSession, name: str) -> str:
    """One trigger-sampling-request call: whose answer came back ("alpha", "beta"), or "refused: ..."."""
    try:
        result = await client.call_tool("trigger-sampling-request", {"prompt": f"from {name}", "maxTokens": 5})
    except MCPError as error:
        return f"refused: {error}"
    text = str(result.content)
    owners = [who for who in ("alpha", "beta") if f"answer-of-{who}" in text]
    return owners[0] if len(owners) == 1 and not result.is_error else f"refused: {text[:200]}"


async def burst(clients: dict[str, ClientSession]) -> dict[str, list[str]]:
    """Every client calls trigger-sampling-request CALLS times, all at once: whose answer each call got."""
    got: dict[str, list[str]] = {name: [] for name in clients}

    async def one(name: str, client: ClientSession) -> None:
        got[name].append(await sample_through(client, name))

    async with anyio.create_task_group() as group:
        for _ in range(CALLS):
            for name, client in clients.items():
                group.start_soon(one, name, client)
    return got


async def summing(client: ClientSession, times: int) -> list[bool]:
    """A client without sampling at work beside them: whether each of its calls succeeded."""
    results = []
    for n in range(times):
        result = await client.call_tool("get-sum", {"a": n, "b": 1})
        results.append(not result.is_error and str(n + 1) in str(result.content))
    return results


def right_answers(got: dict[str, list[str]]) -> int:
    return sum(answer == name for name, answers in got.items() for answer in answers)


@needs_everything
async def test_two_sessions_sampling_at_once_through_one_instance_each_get_their_own_answers(
        make_stack: StackFactory) -> None:
    # One instance for the sampling clients' context (the plain client's context has its own).
    stack = make_stack("--min-instances", "1", "--max-instances", "2", server=[str(NODE), str(EVERYTHING), "stdio"])
    async with (stack.session(sampling_callback=answering_as("alpha")) as alpha,
                stack.session(sampling_callback=answering_as("beta")) as beta,
                stack.session() as plain):
        first = await sample_through(alpha, "alpha")  # the instance asks a client: from now on it is marked
        plain_ok: list[bool] = []

        async def plain_work() -> None:
            plain_ok.extend(await summing(plain, 10))

        async with anyio.create_task_group() as group:
            group.start_soon(plain_work)
            got = await burst({"alpha": alpha, "beta": beta})
        status = await stack.current_status()

    assert first == "alpha"
    assert right_answers(got) == 2 * CALLS, got
    assert plain_ok == [True] * 10, "the client without sampling is served as before"
    # One program: once one instance asked, every instance (the plain context's too) serves one session at a time.
    asking = [i["slot"] for i in status["instances"] if i.get("asksClients")]
    assert len(asking) == len(status["instances"]) == 2, status["instances"]


@needs_everything
async def test_a_session_that_does_not_sample_shares_the_marked_instance_by_turns(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", server=[str(NODE), str(EVERYTHING), "stdio"])
    async with (stack.session(sampling_callback=answering_as("alpha")) as alpha,
                stack.session(sampling_callback=answering_as("beta")) as quiet):
        assert await sample_through(alpha, "alpha") == "alpha"
        quiet_ok: list[bool] = []

        async def quiet_work() -> None:
            quiet_ok.extend(await summing(quiet, 10))

        async with anyio.create_task_group() as group:
            group.start_soon(quiet_work)
            got = await burst({"alpha": alpha})

    assert got == {"alpha": ["alpha"] * CALLS}
    assert quiet_ok == [True] * 10, "a session of the same context that never samples is served between"


async def test_a_session_kept_from_an_instance_that_asks_clients_makes_the_pool_grow(make_stack: StackFactory) -> None:
    # The lab server: `sample` asks the client, `sleep` holds the instance. One waiting call would hardly
    # move the load (2 requests for 3 slots); a session that can only run elsewhere needs an instance.
    stack = make_stack("--min-instances", "1", "--max-instances", "2")
    async with (stack.session(sampling_callback=answering_as("alpha")) as alpha,
                stack.session(sampling_callback=answering_as("beta")) as beta):
        await stack.ready(1)
        marked = result_json(await alpha.call_tool("sample", {"prompt": "hi"}))
        async with anyio.create_task_group() as group:
            group.start_soon(alpha.call_tool, "sleep", {"seconds": 8})
            await stack.running(1)
            before = time.time()
            elsewhere = result_json(await beta.call_tool("echo", {"text": "beta"}))
            scale = await stack.event("scale", before)
            group.cancel_scope.cancel()

    assert marked["text"] == "answer-of-alpha"
    assert scale["text"].startswith("start shim:shim_01")
    assert elsewhere["pid"] != marked["pid"], "beta ran on the new instance, not after alpha's sleep"
