"""Each client session is served in its own context, through one shared pool: real stacks, real published
servers (server-filesystem and server-everything from npm), several differing SDK clients at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from mcpmux.jsonrpc import NO_INSTANCE
from tests.conftest import ROOT, Stack, StackFactory, result_json
from tests.npm_servers import EVERYTHING, FILESYSTEM, NODE, needs

needs_filesystem = needs(FILESYSTEM)
needs_everything = needs(EVERYTHING)

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

ListRoots = Callable[[ClientRequestContext], Awaitable[types.ListRootsResult]]


def roots_callback(directories: list[Path]) -> ListRoots:
    """A client whose roots are `directories` (the list may change; the client says so itself)."""
    async def list_roots(ctx: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(d.as_uri()), name=d.name) for d in directories])
    return list_roots


async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="test-llm",
                                     content=types.TextContent(type="text", text="sampled"))


async def elicitation(ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def allowed_directories(client: ClientSession) -> list[str]:
    text = (await client.call_tool("list_allowed_directories", {})).content[0].text  # type: ignore[union-attr]
    return [line for line in text.splitlines()[1:] if line]


async def settled_directories(client: ClientSession, own: Path) -> list[str]:
    """The directories the server allows this client, once its roots are applied.

    server-filesystem applies roots asynchronously after it receives them, and says nothing when it is
    done: even connected directly, a client's first call finds no directory at all. So ask until they are
    in (there is no event to wait for), and fail if the client ever sees anything but nothing or its own.
    """
    for _ in range(200):
        seen = await allowed_directories(client)
        assert seen in ([], [str(own)]), f"{seen} is not this client's ({own})"
        if seen:
            return seen
        await anyio.sleep(0.05)
    raise AssertionError(f"the server never applied this client's roots ({own})")


async def reads(client: ClientSession, path: Path) -> bool:
    """Whether the server lets this client read `path` (server-filesystem refuses outside its roots)."""
    result = await client.call_tool("read_text_file", {"path": str(path)})
    return not result.is_error


def project(base: Path, name: str) -> Path:
    directory = base / name
    directory.mkdir()
    (directory / "note.txt").write_text(f"a note in {name}")
    return directory


def contexts_of(status: dict[str, Any]) -> dict[str, str | None]:
    """Each instance's context, as the status shows it."""
    return {instance["slot"]: instance.get("context") for instance in status["instances"]}


# --- roots -------------------------------------------------------------------------------------------


@needs_filesystem
async def test_two_sessions_with_other_roots_each_see_and_read_only_their_own(
        make_stack: StackFactory, tmp_path: Path) -> None:
    first_dir, second_dir = project(tmp_path, "first"), project(tmp_path, "second")
    stack = make_stack("--min-instances", "2", "--max-instances", "3", server=[str(NODE), str(FILESYSTEM)])
    async with stack.session(list_roots_callback=roots_callback([first_dir])) as first, \
            stack.session(list_roots_callback=roots_callback([second_dir])) as second:
        seen = await settled_directories(first, first_dir), await settled_directories(second, second_dir)
        first_reads = await reads(first, first_dir / "note.txt"), await reads(first, second_dir / "note.txt")
        second_reads = await reads(second, second_dir / "note.txt"), await reads(second, first_dir / "note.txt")
        status = await stack.current_status()

    assert seen == ([str(first_dir)], [str(second_dir)])
    assert first_reads == (True, False) and second_reads == (True, False)
    bound = {instance["slot"]: instance["context"] for instance in status["instances"] if instance["bound"]}
    assert len(set(bound.values())) == 2, f"one instance bound to each project's context: {bound}"
    sessions = sorted(len(context["sessions"]) for context in status["contexts"])
    assert sessions == [1, 1], status["contexts"]


@needs_filesystem
async def test_a_session_whose_roots_change_moves_to_its_new_roots(make_stack: StackFactory, tmp_path: Path) -> None:
    before, after = project(tmp_path, "before"), project(tmp_path, "after")
    roots = [before]
    stack = make_stack("--min-instances", "1", "--max-instances", "2", server=[str(NODE), str(FILESYSTEM)])
    async with stack.session(list_roots_callback=roots_callback(roots)) as client:
        seen_before = await settled_directories(client, before)
        roots[:] = [after]
        await client.send_roots_list_changed()
        seen_after = await settled_directories(client, after)  # never `before` again
        reads_after = await reads(client, after / "note.txt"), await reads(client, before / "note.txt")

    assert seen_before == [str(before)]
    assert seen_after == [str(after)]
    assert reads_after == (True, False)


# --- capabilities ------------------------------------------------------------------------------------


CLIENTS: dict[str, dict[str, Any]] = {
    "bare": {},
    "sampling": {"sampling_callback": sampling},
    "elicitation": {"elicitation_callback": elicitation},
    "everything": {"sampling_callback": sampling, "elicitation_callback": elicitation,
                   "list_roots_callback": roots_callback([ROOT])},
}


@asynccontextmanager
async def direct(**callbacks: Any) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=str(NODE), args=[str(EVERYTHING), "stdio"])
    async with stdio_client(params) as (read, write), ClientSession(read, write, **callbacks) as client:
        await client.initialize()
        yield client


async def tool_names(client: ClientSession) -> list[str]:
    return sorted(tool.name for tool in (await client.list_tools()).tools)


@needs_everything
async def test_clients_with_and_without_sampling_each_see_the_tools_they_would_see_directly(
        make_stack: StackFactory) -> None:
    expected = {}
    for name, callbacks in CLIENTS.items():
        async with direct(**callbacks) as client:
            expected[name] = await tool_names(client)
    stack = make_stack("--min-instances", "2", "--max-instances", "4", server=[str(NODE), str(EVERYTHING), "stdio"])

    seen: dict[str, list[str]] = {}
    async with anyio.create_task_group() as group:
        for name, callbacks in CLIENTS.items():
            group.start_soon(list_through, stack, name, callbacks, seen)

    assert len(set(map(tuple, expected.values()))) > 1, "server-everything lists tools by client capability"
    assert seen == expected


async def list_through(stack: Stack, name: str, callbacks: dict[str, Any], seen: dict[str, list[str]]) -> None:
    async with stack.session(**callbacks) as client:
        seen[name] = await tool_names(client)
        if "trigger-sampling-request" in seen[name]:  # offered: it works
            sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
            assert "sampled" in str(sampled.content), sampled


@needs_everything
async def test_a_stack_started_again_keeps_nothing_of_the_previous_runs_clients(make_stack: StackFactory) -> None:
    async with direct() as client:
        bare = await tool_names(client)
    stack = make_stack("--min-instances", "1", "--max-instances", "2", server=[str(NODE), str(EVERYTHING), "stdio"])
    async with stack.session(**CLIENTS["everything"]) as client:
        assert "trigger-sampling-request" in await tool_names(client)
    stack.router("--down")

    async with stack.session() as client:
        tools = await tool_names(client)
        summed = await client.call_tool("get-sum", {"a": 2, "b": 3})
        status = await stack.current_status()

    assert tools == bare, "the new client's own tools, at once"
    assert not summed.is_error
    assert not [event for event in status["events"] if event["kind"] in ("reinit", "lost")], status["events"]


# --- the client's working directory ------------------------------------------------------------------


@asynccontextmanager
async def session_in(stack: Stack, directory: Path) -> AsyncIterator[ClientSession]:
    """A session whose client runs in `directory` (as a Claude Code window in that project)."""
    params = stack.params()
    params = StdioServerParameters(command=params.command, args=params.args, env=params.env, cwd=directory)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


async def test_with_cwd_from_client_each_session_runs_in_its_own_directory(
        make_stack: StackFactory, tmp_path: Path) -> None:
    first_dir, second_dir = project(tmp_path, "first"), project(tmp_path, "second")
    stack = make_stack("--min-instances", "1", "--max-instances", "3", "--cwd-from-client")
    async with session_in(stack, first_dir) as first, session_in(stack, second_dir) as second:
        seen = [result_json(await client.call_tool("environment", {}))["cwd"] for client in (first, second)]
        again = [result_json(await client.call_tool("environment", {}))["cwd"] for client in (second, first)]
        status = await stack.current_status()

    assert seen == [str(first_dir), str(second_dir)]
    assert again == [str(second_dir), str(first_dir)]
    assert status["sessions"] == 2, "one registration, one stack, whatever the client's directory"
    assert sorted(context["cwd"] for context in status["contexts"]) == sorted([str(first_dir), str(second_dir)])


# --- a full pool -------------------------------------------------------------------------------------


def only_mcp_error(raised: BaseException) -> MCPError:
    while isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, MCPError), raised
    return raised


async def test_at_max_instances_with_every_instance_busy_a_new_context_gets_a_clear_error(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--startup-timeout", "8000")
    async with stack.session() as busy, anyio.create_task_group() as group:
        group.start_soon(busy.call_tool, "sleep", {"seconds": 30})
        await stack.running(1)
        with pytest.raises(BaseException) as raised:
            async with stack.session(sampling_callback=sampling):
                pass  # its initialize needs a backend initialized with sampling: none can be had
        status = await stack.current_status()
        group.cancel_scope.cancel()

    refused = only_mcp_error(raised.value)
    assert refused.error.code == NO_INSTANCE
    assert "maxInstances (1)" in refused.error.message and "other clients' contexts" in refused.error.message
    assert len(status["instances"]) == 1, "the busy instance was not taken from its session"


def test_the_status_shows_contexts_as_json(make_stack: StackFactory) -> None:
    """The contract's keys, for scripts (the rest is in test_status)."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.router("--up")
    stack.wait_ready(1)
    status = stack.status()
    (instance,) = status["instances"]
    assert instance["context"] is not None and instance["bound"] is False
    assert status["contexts"] == []
    json.dumps(status)
