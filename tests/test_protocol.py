"""Every MCP message kind keeps its meaning through mcpmux, with several instances behind it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from tests.conftest import Stack, StackFactory, result_json
from tests.rawclient import RawClient, raw_session

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


def pool(make_stack: StackFactory, instances: int = 2, cap: int = 1, **env: str) -> Stack:
    """A pool where `cap` 1 makes concurrent calls land on distinct instances."""
    options = ("--min-instances", str(instances), "--max-instances", str(instances),
               "--max-concurrent-requests", str(cap))
    return make_stack(*options, server=None, **env)


async def on_every_instance(client: ClientSession, stack: Stack, tool: str, count: int = 2) -> list[dict[str, Any]]:
    """Call a tool once on each instance: with a cap of 1, concurrent calls cannot share one."""
    await stack.ready(count)
    results = await asyncio.gather(*(client.call_tool(tool, {}) for _ in range(count)))
    answers = [result_json(result) for result in results]
    assert len({answer["pid"] for answer in answers}) == count
    return answers


async def test_progress_reaches_the_client_under_its_own_token(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    seen: list[tuple[float, float | None, str | None]] = []
    all_seen = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if len(seen) == 4:
            all_seen.set()

    async with stack.session() as client:
        result = await client.call_tool("progress", {"steps": 4, "delay": 0}, progress_callback=on_progress)
        with anyio.fail_after(10):
            await all_seen.wait()  # progress callbacks run as tasks and may trail the result

    assert result_json(result)["steps"] == 4
    assert sorted(seen) == [(i, 4, f"step {i}/4") for i in range(1, 5)]


async def test_progress_of_two_sessions_on_one_instance_stays_apart(make_stack: StackFactory) -> None:
    # Both SDK clients number their requests from 0, so their progress tokens collide at the instance.
    stack = pool(make_stack, instances=1, cap=4)

    async def run_session(steps: int) -> list[float]:
        seen: list[float] = []
        all_seen = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(total or -1)
            if len(seen) == steps:
                all_seen.set()

        async with stack.session() as client:
            await client.call_tool("progress", {"steps": steps, "delay": 0.01}, progress_callback=on_progress)
            with anyio.fail_after(10):
                await all_seen.wait()
        return seen

    first, second = await asyncio.gather(run_session(3), run_session(5))

    assert first == [3, 3, 3]
    assert second == [5, 5, 5, 5, 5]


async def test_sampling_elicitation_and_roots_reach_the_client_and_return(make_stack: StackFactory) -> None:
    stack = pool(make_stack)

    async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        prompt = params.messages[0].content
        assert isinstance(prompt, types.TextContent)
        return types.CreateMessageResult(role="assistant", model="test-llm",
                                         content=types.TextContent(type="text", text=f"echo: {prompt.text}"))

    async def elicitation(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "forty-two"})

    async def list_roots(ctx: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work/project"))])

    async with stack.session(sampling_callback=sampling, elicitation_callback=elicitation,
                             list_roots_callback=list_roots) as client:
        sampled = result_json(await client.call_tool("sample", {"prompt": "hello"}))
        elicited = result_json(await client.call_tool("elicit", {"message": "what?"}))
        rooted = result_json(await client.call_tool("roots", {}))

    assert sampled["text"] == "echo: hello"
    assert sampled["model"] == "test-llm"
    assert elicited["action"] == "accept"
    assert elicited["content"] == {"answer": "forty-two"}
    assert rooted["roots"] == ["file:///work/project"]


async def test_a_list_change_announced_by_every_instance_reaches_the_client_once(make_stack: StackFactory) -> None:
    # The raw client, because the SDK's own client lists tools again when its cache is invalidated.
    stack = pool(make_stack)
    changed = "notifications/tools/list_changed"
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        await announce_on_every_instance(client, "a")
        assert len(client.notifications(changed)) == 1

        await client.request("list", "tools/list")
        await announce_on_every_instance(client, "b")
        assert len(client.notifications(changed)) == 2, "listing again re-arms the notification"


async def announce_on_every_instance(client: RawClient, prefix: str) -> None:
    calls = [f"{prefix}{n}" for n in range(2)]
    for request_id in calls:
        await client.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"name": "notify_tools_changed", "arguments": {}}})
    answers = [await client.response(request_id) for request_id in calls]
    pids = {json.loads(answer["result"]["content"][0]["text"])["pid"] for answer in answers}
    assert len(pids) == 2, "each instance announced the change"


async def test_set_level_applies_to_every_instance_including_replacements(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with stack.session() as client:
        await client.set_logging_level("warning")
        levels = await on_every_instance(client, stack, "get_log_level")
        assert [answer["level"] for answer in levels] == ["warning", "warning"]

        backend = psutil.Process(levels[0]["pid"])
        killed = time.time()
        backend.kill()
        await stack.event("lost", killed)  # the core knows: no call of the next round goes to it
        await stack.ready(2)  # supervisord starts a new shim

        levels = await on_every_instance(client, stack, "get_log_level")

    assert backend.pid not in {answer["pid"] for answer in levels}, "the killed backend's replacement answered"
    assert [answer["level"] for answer in levels] == ["warning", "warning"]


async def test_log_messages_are_filtered_by_the_sessions_level(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    received: list[tuple[str, Any]] = []
    logged = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        received.append((params.level, params.data))
        logged.set()

    async with stack.session(logging_callback=on_log) as client:
        await client.set_logging_level("warning")
        await client.call_tool("log", {"level": "info", "message": "too quiet"})
        await client.call_tool("log", {"level": "error", "message": "loud enough"})
        await client.call_tool("whoami", {})
        with anyio.fail_after(10):
            await logged.wait()

    assert received == [("error", "loud enough")]


async def test_subscriptions_stay_with_their_instance_and_their_session(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    updates: dict[str, list[str]] = {"subscriber": [], "bystander": []}
    subscriber_updated = anyio.Event()

    def handler(name: str) -> Any:
        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates[name].append(str(message.params.uri))
                if name == "subscriber":
                    subscriber_updated.set()
        return on_message

    async with stack.session(message_handler=handler("subscriber")) as subscriber, \
            stack.session(message_handler=handler("bystander")) as bystander:
        await subscriber.subscribe_resource("lab://item/3")
        holders = [a for a in await on_every_instance(subscriber, stack, "get_subscriptions")
                   if a["subscriptions"] == ["lab://item/3"]]
        assert len(holders) == 1, "the subscription is pinned to one instance"

        await asyncio.gather(*(bystander.call_tool("touch", {"uri": "lab://item/3"}) for _ in range(2)))
        await subscriber.call_tool("whoami", {})
        with anyio.fail_after(10):
            await subscriber_updated.wait()
        await subscriber.unsubscribe_resource("lab://item/3")
        after = await on_every_instance(subscriber, stack, "get_subscriptions")

    assert updates["subscriber"] == ["lab://item/3"]
    assert updates["bystander"] == []
    assert all(answer["subscriptions"] == [] for answer in after)


async def test_pagination_cursors_lead_back_to_the_instance_that_made_them(make_stack: StackFactory) -> None:
    stack = pool(make_stack, instances=3, LAB_PAGE_SIZE="4")
    async with stack.session() as client:
        await stack.ready(3)
        uris: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await client.list_resources(params=types.PaginatedRequestParams(cursor=cursor))
            uris += [str(resource.uri) for resource in page.resources]
            pages += 1
            await client.call_tool("whoami", {})  # moves the next least-loaded pick to another instance
            if page.next_cursor is None:
                break
            cursor = page.next_cursor

    assert pages == 7
    assert sorted(uris) == sorted(f"lab://item/{i}" for i in range(25))


async def test_an_unknown_cursor_is_a_clear_error(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with stack.session() as client:
        with pytest.raises(MCPError) as raised:
            await client.list_resources(params=types.PaginatedRequestParams(cursor="not-ours"))
    assert raised.value.error.code == -32602
    assert "cursor" in raised.value.error.message


async def test_ping_is_answered(make_stack: StackFactory) -> None:
    stack = pool(make_stack)
    async with stack.session() as client:
        assert isinstance(await client.send_ping(), types.EmptyResult)


async def test_a_cancelled_call_frees_its_instance(make_stack: StackFactory) -> None:
    stack = pool(make_stack, instances=1)
    async with stack.session() as client:
        with anyio.move_on_after(1):  # leaving the scope makes the SDK send notifications/cancelled
            await client.call_tool("sleep", {"seconds": 30})
        result = result_json(await client.call_tool("echo", {"text": "next"}))
        status = await stack.current_status()

    assert result["text"] == "next", "the only instance took a new call: the cancelled one let go of it"
    assert status["instances"][0]["inFlight"] == 0


async def test_a_server_request_the_client_cannot_serve_is_refused_to_the_server(make_stack: StackFactory) -> None:
    stack = pool(make_stack, instances=1)
    async with stack.session() as client:  # no sampling callback: the client declares no sampling capability
        with pytest.raises(MCPError) as raised:  # the lab server passes the refusal on as its answer
            await client.call_tool("sample", {"prompt": "hello"})

    assert "the client does not support sampling" in raised.value.error.message


async def test_a_server_request_that_could_belong_to_two_sessions_is_refused_not_guessed(
        make_stack: StackFactory) -> None:
    # stdio does not link a server's request to the call that caused it: with calls of two sessions
    # running on one instance, mcpmux refuses rather than risk asking the wrong client.
    stack = pool(make_stack, instances=1, cap=3)

    async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        raise AssertionError("no session may be asked")

    async with stack.session(sampling_callback=sampling) as busy, \
            stack.session(sampling_callback=sampling) as asking:
        # Long enough to be running still whatever the machine's load: it is cancelled once seen through.
        running = asyncio.ensure_future(busy.call_tool("sleep", {"seconds": 60}))
        await stack.running(1)
        with pytest.raises(MCPError) as raised:
            await asking.call_tool("sample", {"prompt": "whose?"})
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    assert "cannot tell which client session" in raised.value.error.message
