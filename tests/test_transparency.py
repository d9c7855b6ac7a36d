"""The client cannot tell mcpmux from the server: each scenario runs against the lab server directly, through
mcpmux over stdio (a stack of its own per server configuration, shared by the module's tests) and through the
same stack's HTTP endpoint (router/http/), and the client sees the same thing every way: the handshake, tools,
prompts, progress, the server's requests to the client, logging, pagination, subscriptions and notifications.

The few scenarios where mcpmux means to differ (a call that blocks its server, a server that crashes or writes
garbage) pin down the lab server's own behaviour here, which the other tests rely on; what mcpmux does
instead is tested where it is built (test_strategies, test_faults, test_bad_input). Every wait on an
asynchronous notification goes through an anyio.Event guarded by a timeout: the SDK runs notification and
progress callbacks as spawned tasks, so they may land after the call that caused them has returned.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client._transport import TransportStreams
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from tests.conftest import Stack, StackFactory
from tests.http_clients import free_port, http_client, make_token

LAB_SERVER = Path(__file__).parent / "servers" / "lab_server.py"
WAIT = 10.0  # generous upper bound for any single wait; tests finish far sooner
ONE_INSTANCE = ("--min-instances", "1", "--max-instances", "1")  # so that two calls meet the same server

# The lab server speaks the handshake era on purpose, so the client calls the
# SDK marks as deprecated for 2026-07-28 (subscribe, setLevel) are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
              pytest.mark.xdist_group("transparency")]  # one worker starts the module's stacks once


@dataclass
class Reach:
    """How the client reaches the lab server: `direct`, or through a stack of its configuration, over stdio
    (`mcpmux`) or over HTTP (`http`)."""

    via: str
    stacks: StackFactory
    started: dict[tuple[tuple[str, str], ...], Stack]
    served: dict[tuple[tuple[str, str], ...], tuple[str, str]]

    def stack(self, env: dict[str, str]) -> Stack:
        """A stack of this configuration, its own for each way of reaching it: a server keeps what one session
        set (a logging level) after the session ends, and a client directly to it would find a new server."""
        key = (("via", self.via), *sorted(env.items()))
        if key not in self.started:
            self.started[key] = stack = self.stacks(*ONE_INSTANCE)
            stack.server_env.update(env)
            if self.via == "http":  # a stack of its own: its name differs from the stdio reach's
                stack.server_env["MCPMUX_REACH"] = "http"
        return self.started[key]

    def params(self, env: dict[str, str]) -> StdioServerParameters:
        return lab_params(**env) if self.via == "direct" else self.stack(env).params()

    def endpoint(self, env: dict[str, str]) -> tuple[str, str]:
        """The URL of the stack's HTTP endpoint, and a token for it."""
        key = tuple(sorted(env.items()))
        if key not in self.served:
            stack, port = self.stack(env), free_port()
            stack.router("--serve-http", str(port))
            self.served[key] = (f"http://127.0.0.1:{port}/mcp", make_token(stack, "transparency"))
        return self.served[key]

    def client(self, env: dict[str, str] | None = None, **kwargs: Any) -> Client:
        # mode="legacy": initialize handshake only (no server/discover probe).
        # cache=None: paging and list_changed tests must always reach the server.
        server = over_http(*self.endpoint(env or {})) if self.via == "http" else self.params(env or {})
        return Client(server, mode="legacy", cache=None, read_timeout_seconds=WAIT, **kwargs)


@asynccontextmanager
async def over_http(url: str, token: str) -> AsyncIterator[TransportStreams]:
    async with http_client(token) as client, streamable_http_client(url, http_client=client) as streams:
        yield streams


@pytest.fixture(scope="module")
def stacks() -> Iterator[StackFactory]:
    factory = StackFactory()
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def started() -> dict[tuple[tuple[str, str], ...], Stack]:
    return {}


@pytest.fixture(scope="module")
def served() -> dict[tuple[tuple[str, str], ...], tuple[str, str]]:
    return {}


@pytest.fixture(params=["direct", "mcpmux", "http"])
def reach(request: pytest.FixtureRequest, stacks: StackFactory, started: dict[tuple[tuple[str, str], ...], Stack],
          served: dict[tuple[tuple[str, str], ...], tuple[str, str]]) -> Reach:
    return Reach(request.param, stacks, started, served)


def lab_params(**env: str) -> StdioServerParameters:
    # sys.executable is the venv interpreter, which has the SDK the server needs.
    return StdioServerParameters(command=sys.executable, args=[str(LAB_SERVER)], env=env or None)


def lab_client(env: dict[str, str] | None = None, **kwargs: Any) -> Client:
    # mode="legacy": initialize handshake only (no server/discover probe).
    # cache=None: paging and list_changed tests must always reach the server.
    return Client(lab_params(**(env or {})), mode="legacy", cache=None, read_timeout_seconds=WAIT, **kwargs)


def payload(result: types.CallToolResult) -> dict[str, Any]:
    """The lab server answers every tool with one JSON text block."""
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    data = json.loads(block.text)
    assert isinstance(data, dict)
    return data


class Inbox:
    """Collects what message_handler receives and wakes waiters by predicate."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []
        self._changed = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: type[Any], **fields: Any) -> Any:
        with anyio.fail_after(WAIT):
            while True:
                for message in self.messages:
                    if isinstance(message, kind) and all(_field(message, k) == v for k, v in fields.items()):
                        return message
                await self._changed.wait()


def _field(message: Any, name: str) -> Any:
    params = getattr(message, "params", None)
    return getattr(params, name, None)


async def test_handshake_identity_and_capabilities(reach: Reach) -> None:
    async with reach.client() as client:
        assert client.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps.resources is not None and caps.resources.subscribe is True
        assert caps.tools is not None and caps.tools.list_changed is True
        assert caps.logging is not None

        echoed = payload(await client.call_tool("echo", {"text": "hi"}))
        me = payload(await client.call_tool("whoami", {}))
        assert echoed["text"] == "hi"
        assert echoed["pid"] == me["pid"] != os.getpid()

        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        block_ann = tools["block"].annotations
        write_ann = tools["slow_write"].annotations
        assert block_ann is not None and block_ann.read_only_hint is True
        assert write_ann is not None
        assert (write_ann.read_only_hint, write_ann.destructive_hint) == (False, True)

        prompt = await client.get_prompt("greet", {"name": "Ada"})
        assert "Hello, Ada!" in str(prompt.messages[0].content)


async def test_sleep_overlaps_but_block_serialises() -> None:
    async def run_pair(client: Client, tool: str, seconds: float) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []

        async def one() -> None:
            results.append(payload(await client.call_tool(tool, {"seconds": seconds})))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
        return sorted(results, key=lambda r: r["start"])

    async with lab_client() as client:
        first, second = await run_pair(client, "sleep", 0.5)
        assert second["start"] < first["end"], "sleep runs in a worker thread, so calls overlap"

        first, second = await run_pair(client, "block", 0.2)
        assert second["start"] >= first["end"], "block stalls the event loop, so calls queue"


async def test_progress_notifications(reach: Reach) -> None:
    steps = 5
    seen: list[tuple[float, float | None, str | None]] = []
    all_seen = anyio.Event()

    # ProgressFnT: async (progress, total, message) -> None
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if len(seen) == steps:
            all_seen.set()

    async with reach.client() as client:
        result = await client.call_tool("progress", {"steps": steps}, progress_callback=on_progress)
        assert payload(result)["steps"] == steps
        with anyio.fail_after(WAIT):
            await all_seen.wait()
    assert sorted(seen) == [(float(i), float(steps), f"step {i}/{steps}") for i in range(1, steps + 1)]


async def test_server_to_client_requests_and_logging(reach: Reach) -> None:
    sampled: list[types.CreateMessageRequestParams] = []
    logged: list[types.LoggingMessageNotificationParams] = []
    got_log = anyio.Event()

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        sampled.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="lab-model"
        )

    async def elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert "answer" in params.requested_schema["properties"]
        return types.ElicitResult(action="accept", content={"answer": "42"})

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///tmp/lab-root"), name="lab")])

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params)
        got_log.set()

    async with reach.client(
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        list_roots_callback=list_roots,
        logging_callback=logging,
    ) as client:
        sample = payload(await client.call_tool("sample", {"prompt": "hello?"}))
        assert (sample["text"], sample["model"]) == ("sampled!", "lab-model")
        prompt_block = sampled[0].messages[0].content
        assert isinstance(prompt_block, types.TextContent) and prompt_block.text == "hello?"

        elicited = payload(await client.call_tool("elicit", {"message": "question?"}))
        assert (elicited["action"], elicited["content"]) == ("accept", {"answer": "42"})

        assert payload(await client.call_tool("roots", {}))["roots"] == ["file:///tmp/lab-root"]

        assert payload(await client.call_tool("get_log_level", {}))["level"] is None
        await client.set_logging_level("warning")
        assert payload(await client.call_tool("get_log_level", {}))["level"] == "warning"

        await client.call_tool("log", {"level": "error", "message": "boom"})
        with anyio.fail_after(WAIT):
            await got_log.wait()
    assert (logged[0].level, logged[0].data, logged[0].logger) == ("error", "boom", "lab")


@pytest.mark.parametrize("page_size", [None, 7])
async def test_resources_paginate_with_opaque_cursors(reach: Reach, page_size: int | None) -> None:
    env = {} if page_size is None else {"LAB_PAGE_SIZE": str(page_size)}
    async with reach.client(env) as client:
        uris: list[str] = []
        pages = 0
        cursor: str | None = None
        while True:
            page = await client.list_resources(cursor=cursor)
            pages += 1
            uris.extend(str(resource.uri) for resource in page.resources)
            cursor = page.next_cursor
            if cursor is None:
                break
            assert "lab://" not in cursor  # opaque, not a readable offset or URI
        assert uris == [f"lab://item/{i}" for i in range(25)]
        assert pages == -(-25 // (page_size or 10))

        read = await client.read_resource("lab://item/3")
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        pid = payload(await client.call_tool("whoami", {}))["pid"]
        assert content.text == f"item 3 from pid {pid}"

        with pytest.raises(MCPError) as excinfo:
            await client.list_resources(cursor="not-a-cursor")
        assert excinfo.value.code == types.INVALID_PARAMS


async def test_tools_paginate_when_enabled(reach: Reach) -> None:
    async with reach.client() as client:
        everything = [tool.name for tool in (await client.list_tools()).tools]
    async with reach.client({"LAB_TOOLS_PAGE_SIZE": "4"}) as client:
        names: list[str] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            assert len(page.tools) <= 4
            names.extend(tool.name for tool in page.tools)
            if (cursor := page.next_cursor) is None:
                break
    assert names == everything


async def test_subscribe_touch_and_list_changed_notifications(reach: Reach) -> None:
    inbox = Inbox()
    async with reach.client(message_handler=inbox) as client:
        await client.subscribe_resource("lab://item/3")
        subs = payload(await client.call_tool("get_subscriptions", {}))["subscriptions"]
        assert subs == ["lab://item/3"]

        touched = payload(await client.call_tool("touch", {"uri": "lab://item/3"}))
        assert touched["sent"] is True
        await inbox.wait_for(types.ResourceUpdatedNotification, uri="lab://item/3")

        # Not subscribed: the server stays quiet unless forced.
        assert payload(await client.call_tool("touch", {"uri": "lab://item/4"}))["sent"] is False
        await client.call_tool("touch", {"uri": "lab://item/5", "force": True})
        if reach.via == "direct":
            await inbox.wait_for(types.ResourceUpdatedNotification, uri="lab://item/5")
        else:  # an update nobody subscribed to has no owner among the sessions an instance serves: it goes nowhere
            inbox.messages.clear()
            await client.call_tool("touch", {"uri": "lab://item/3"})  # after item/5's, from the same server
            await inbox.wait_for(types.ResourceUpdatedNotification, uri="lab://item/3")
        updated = [m.params.uri for m in inbox.messages if isinstance(m, types.ResourceUpdatedNotification)]
        assert "lab://item/4" not in updated
        assert ("lab://item/5" in updated) is (reach.via == "direct")

        await client.unsubscribe_resource("lab://item/3")
        assert payload(await client.call_tool("get_subscriptions", {}))["subscriptions"] == []

        await client.call_tool("notify_tools_changed", {})
        await inbox.wait_for(types.ToolListChangedNotification)
        await client.call_tool("notify_resources_changed", {})
        await inbox.wait_for(types.ResourceListChangedNotification)


async def test_tools_by_client_capabilities(reach: Reach) -> None:
    caps_tools = {"sample", "elicit", "roots"}

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[])

    env = {"LAB_TOOLS_BY_CAPS": "1"}
    async with reach.client(env) as client:
        bare = {tool.name for tool in (await client.list_tools()).tools}
    async with reach.client(env, list_roots_callback=list_roots) as client:
        with_roots = {tool.name for tool in (await client.list_tools()).tools}
    assert not bare & caps_tools
    assert with_roots & caps_tools == {"roots"}
    assert with_roots - bare == {"roots"}


async def test_tool_error_is_a_result_not_a_protocol_error(reach: Reach) -> None:
    async with reach.client() as client:
        result = await client.call_tool("fail", {})
        assert result.is_error is True
        assert "failed on purpose" in str(result.content[0])
        assert payload(await client.call_tool("whoami", {}))["pid"] > 0


async def test_garbage_line_reaches_message_handler_and_session_survives() -> None:
    inbox = Inbox()
    async with lab_client(message_handler=inbox) as client:
        assert payload(await client.call_tool("garbage", {}))["pid"] > 0
        error = await inbox.wait_for(Exception)
        assert "not json" in str(error) or isinstance(error, ValueError)
        assert payload(await client.call_tool("echo", {"text": "still here"}))["text"] == "still here"


async def test_garbage_on_start_does_not_break_the_handshake() -> None:
    inbox = Inbox()
    async with lab_client(env={"LAB_GARBAGE_ON_START": "1"}, message_handler=inbox) as client:
        await inbox.wait_for(Exception)
        assert payload(await client.call_tool("whoami", {}))["pid"] > 0


async def test_crash_fails_the_pending_call() -> None:
    async with lab_client() as client:
        with pytest.raises(MCPError) as excinfo:
            await client.call_tool("crash", {})
        assert excinfo.value.code == types.CONNECTION_CLOSED


async def test_exit_on_initialize() -> None:
    # A handshake failure escapes Client.__aenter__ wrapped in (nested) task-group
    # ExceptionGroups rather than as a bare MCPError.
    with pytest.raises(BaseExceptionGroup) as excinfo:
        async with lab_client(env={"LAB_EXIT_ON_INIT": "1"}):
            pytest.fail("handshake must not succeed")
    closed = excinfo.value.subgroup(lambda e: isinstance(e, MCPError) and e.code == types.CONNECTION_CLOSED)
    assert closed is not None


@asynccontextmanager
async def raw_session(**kwargs: Any) -> AsyncIterator[ClientSession]:
    """The lower-level route: stdio_client + ClientSession, handshake done by hand."""
    async with (
        stdio_client(lab_params()) as (read_stream, write_stream),
        ClientSession(read_stream, write_stream, read_timeout_seconds=WAIT, **kwargs) as session,
    ):
        await session.initialize()
        yield session


async def test_raw_client_session_and_auto_mode_fall_back_to_handshake() -> None:
    async with raw_session() as session:
        page = await session.list_resources(params=types.PaginatedRequestParams(cursor=None))
        assert page.next_cursor is not None
        assert payload(await session.call_tool("echo", {"text": "raw"}))["text"] == "raw"

    # mode="auto" probes server/discover first; the lab server refuses it, so the
    # client falls back to initialize and still lands in the handshake era.
    async with Client(lab_params(), cache=None, read_timeout_seconds=WAIT) as client:
        assert client.protocol_version == "2025-11-25"
