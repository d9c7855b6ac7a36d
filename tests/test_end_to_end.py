"""A client talks to mcpmux exactly as to the server it wraps, through a real stack."""

from __future__ import annotations

import asyncio

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import TextContent

from tests.conftest import TIME_SERVER, StackFactory, result_json


async def test_time_server_answers_through_the_router_as_it_does_directly(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", server=TIME_SERVER)
    direct = StdioServerParameters(command=TIME_SERVER[0])
    async with stdio_client(direct) as (read, write), ClientSession(read, write) as client:
        direct_init = await client.initialize()
        direct_tools = await client.list_tools()

    async with stack.session() as client:
        tools = await client.list_tools()
        result = await client.call_tool("convert_time", {
            "source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})

    assert client.initialize_result is not None
    assert client.initialize_result.server_info == direct_init.server_info
    assert client.initialize_result.capabilities == direct_init.capabilities
    assert [tool.model_dump() for tool in tools.tools] == [tool.model_dump() for tool in direct_tools.tools]
    assert not result.is_error
    (content,) = result.content
    assert isinstance(content, TextContent) and "21:00" in content.text


async def test_the_router_starts_the_stack_with_the_minimum_of_instances(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "3", "--max-instances", "4")
    async with stack.session() as client:
        await stack.ready(3)
        pids = {result_json(await client.call_tool("whoami", {}))["pid"] for _ in range(6)}
        status = await stack.current_status()

    assert status["totalInstances"] == 3
    assert status["readyInstances"] == 3
    assert len(pids) == 3, "least connections with fair ties spreads sequential calls over every instance"
    # supervisord says RUNNING once a shim has lived startsecs (1 s), which a fast start may not have yet.
    states = [line.split()[1] for line in stack.supervisorctl("status").splitlines() if line.startswith("shim:")]
    assert len(states) == 4 and states.count("STOPPED") == 1, states
    assert set(states) <= {"RUNNING", "STARTING", "STOPPED"}, "three started, the fourth slot left alone"


async def test_concurrent_sessions_share_one_pool(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")

    async def pids_seen() -> set[int]:
        async with stack.session() as client:
            return {result_json(await client.call_tool("whoami", {}))["pid"] for _ in range(4)}

    first, second, third = await asyncio.gather(pids_seen(), pids_seen(), pids_seen())
    await stack.ready(2)  # the second may still be starting: a cold stack's first instance starts alone
    backends = {process.pid for process in stack.processes() if "lab_server" in " ".join(process.cmdline())}

    assert first | second | third <= backends
    assert len(backends) == 2, "three sessions, still one pool of two instances"
    assert len(list((stack.runtime_dir / "mcpmux").glob("*/stack.json"))) == 1, "one stack for the three routers"


async def test_make_down_stops_every_process_of_the_stack(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2")
    async with stack.session() as client:
        await client.call_tool("whoami", {})
    processes = stack.processes()
    assert len(processes) >= 5  # supervisord, core, two shims, two backends

    stack.router("--down")

    assert all(not process.is_running() or process.status() == "zombie" for process in processes)
