"""Strategies for servers that keep state in their process, through a real pool, as clients see them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from mcpmux import jsonrpc
from tests.conftest import Stack, StackFactory, result_json
from tests.rawclient import raw_session

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


async def counts(client: ClientSession, calls: int) -> list[tuple[int, int]]:
    """(pid, count) of `calls` calls of the lab server's per-process counter, one after another."""
    replies = [result_json(await client.call_tool("count", {})) for _ in range(calls)]
    return [(reply["pid"], reply["count"]) for reply in replies]


async def test_session_affinity_keeps_each_sessions_state_and_spreads_sessions(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--strategy", "session_affinity")
    async with stack.session() as first, stack.session() as second:
        await stack.ready(2)
        seen_first = await counts(first, 4)
        seen_second = await counts(second, 4)
        status = await stack.current_status()

    assert len({pid for pid, _ in seen_first}) == 1, "one session, one instance"
    assert [count for _, count in seen_first] == [1, 2, 3, 4], "its state is all in one place"
    assert [count for _, count in seen_second] == [1, 2, 3, 4]
    assert seen_first[0][0] != seen_second[0][0], "the two sessions were spread over the pool"
    assert status["strategy"] == "session_affinity"
    assert sorted(len(instance["sessions"]) for instance in status["instances"]) == [1, 1], "status shows who is where"


async def test_least_connections_spreads_one_sessions_calls_and_so_its_state(make_stack: StackFactory) -> None:
    """Why session_affinity exists: by default a session's calls go wherever there is room."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    async with stack.session() as client:
        await stack.ready(2)
        seen = await counts(client, 4)

    assert len({pid for pid, _ in seen}) == 2
    assert [count for _, count in seen] != [1, 2, 3, 4]


# --- dedicated ------------------------------------------------------------------------------------------


def dedicated_pool(make_stack: StackFactory, *options: str, instances: int = 2) -> Stack:
    return make_stack("--min-instances", str(instances), "--max-instances", str(instances),
                      "--strategy", "dedicated", *options)


def sessions_by_slot(status: dict[str, Any]) -> dict[str, list[str]]:
    return {instance["slot"]: instance["sessions"] for instance in status["instances"] if instance["sessions"]}


async def test_dedicated_sessions_each_start_fresh_on_an_instance_of_their_own(make_stack: StackFactory) -> None:
    stack = dedicated_pool(make_stack)
    async with stack.session() as first, stack.session() as second:
        await stack.ready(2)
        seen = await asyncio.gather(counts(first, 3), counts(second, 3))
        during = await stack.current_status()

    async with stack.session() as later:  # both instances are recycled: it waits for one, fresh
        seen_later = await counts(later, 2)
        after = await stack.current_status()

    (first_pid, _), (second_pid, _) = seen[0][0], seen[1][0]
    assert [count for _, count in seen[0]] == [1, 2, 3] == [count for _, count in seen[1]], "each from a fresh start"
    assert {pid for pid, _ in seen[0]} == {first_pid} and {pid for pid, _ in seen[1]} == {second_pid}
    assert first_pid != second_pid, "an instance of its own each"
    assert during["strategy"] == "dedicated"
    assert sorted(map(len, sessions_by_slot(during).values())) == [1, 1], "status shows whose each instance is"
    assert [count for _, count in seen_later] == [1, 2], "the later session starts fresh"
    assert seen_later[0][0] not in (first_pid, second_pid), "on a recycled (restarted) instance"
    (later_slot,) = sessions_by_slot(after)
    assert later_slot in sessions_by_slot(during), "the slot is one the earlier sessions used"


async def test_dedicated_sampling_reaches_its_session_while_another_is_busy(make_stack: StackFactory) -> None:
    stack = dedicated_pool(make_stack)

    def answering(text: str) -> Any:
        async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
            return types.CreateMessageResult(role="assistant", model="test-llm",
                                             content=types.TextContent(type="text", text=text))
        return sampling

    async with stack.session(sampling_callback=answering("busy")) as busy, \
            stack.session(sampling_callback=answering("asking")) as asking:
        await stack.ready(2)
        # Long enough to be still running when a loaded machine gets round to asking whether they run.
        running = asyncio.gather(*(busy.call_tool("sleep", {"seconds": 4}) for _ in range(2)))
        await stack.running(2)
        sampled = result_json(await asking.call_tool("sample", {"prompt": "whose?"}))
        await running

    assert sampled["text"] == "asking"


async def test_dedicated_session_beyond_max_instances_waits_then_gets_a_clear_error(
        make_stack: StackFactory) -> None:
    stack = dedicated_pool(make_stack, "--request-timeout", "1500", instances=1)
    async with stack.session() as holder, stack.session() as latecomer:
        held = await counts(holder, 1)
        with pytest.raises(MCPError) as raised:
            await latecomer.call_tool("count", {})
        still = await counts(holder, 1)

    assert [count for _, count in held + still] == [1, 2], "the holder keeps its instance and its state"
    message = raised.value.error.message
    assert raised.value.error.code == jsonrpc.REQUEST_TIMEOUT
    assert "every instance is dedicated to another session and maxInstances (1) is reached" in message


async def test_dedicated_pool_grows_to_an_instance_per_session(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "3", "--strategy", "dedicated")
    async with stack.session() as a, stack.session() as b, stack.session() as c:
        seen = await asyncio.gather(counts(a, 2), counts(b, 2), counts(c, 2))
        status = await stack.current_status()

    assert all([count for _, count in session] == [1, 2] for session in seen), seen
    assert len({session[0][0] for session in seen}) == 3, "three sessions, three instances"
    assert sorted(map(len, sessions_by_slot(status).values())) == [1, 1, 1]
    assert any("each with an instance of its own" in event["text"] for event in status["scaling"])


async def test_dedicated_sessions_start_fresh_after_a_core_restart_rather_than_inherit_state(
        make_stack: StackFactory) -> None:
    """A new core knows no assignment: the instances it finds may hold any session's state, so they restart."""
    stack = dedicated_pool(make_stack)
    async with stack.session() as first, stack.session() as second:
        await stack.ready(2)
        before = await asyncio.gather(counts(first, 2), counts(second, 2))
        core = next(process for process in stack.processes() if "mcpmux.router.core" in process.cmdline())
        killed = time.time()
        core.kill()
        back = await stack.event("session", after=killed)  # each door introduces itself to the new core
        await stack.event("session", after=back["time"])
        after = await asyncio.gather(counts(first, 2), counts(second, 2))
        status = await stack.current_status()

    old_pids = {pid for session in before for pid, _ in session}
    assert status["corePid"] != core.pid
    assert [[count for _, count in session] for session in after] == [[1, 2], [1, 2]], after
    assert not old_pids & {pid for session in after for pid, _ in session}, "on restarted instances"
    assert sorted(map(len, sessions_by_slot(status).values())) == [1, 1]


async def test_dedicated_spares_warmed_for_another_context_are_restarted_for_the_open_one_once_ready(
        make_stack: StackFactory) -> None:
    # `--up` warms the pool in Claude Code's context; this raw client is another. The spares were already
    # initializing when it opened: each is restarted with its context as soon as it is ready, so that a
    # second session's first call finds a spare of its own rather than waiting for one to restart.
    stack = make_stack("--strategy", "dedicated", "--min-instances", "2", "--max-instances", "3")
    began = time.time()
    stack.router("--up")
    for slot in ("shim:shim_00", "shim:shim_01"):
        warmed = await stack.event("context", began, slot=slot)
        assert "2026-07-28" in warmed["text"], warmed  # initializing in the warm-up's context
    async with raw_session(stack) as holder:
        await holder.initialize()
        await holder.request(1, "tools/call", {"name": "whoami", "arguments": {}})
        # The holder's instance and a spare of its context (a third starts only if the holder's call came
        # while both were restarting, which depends on the machine's speed).
        await stack.ready(2)
        async with raw_session(stack) as newcomer:
            opened = time.time()
            await newcomer.initialize()
            answer = await newcomer.request(1, "tools/call", {"name": "whoami", "arguments": {}})
            answered = time.time()
        status = await stack.current_status()

    restarts = [event for event in status["events"]
                if opened < event["time"] < answered and event["kind"] in ("reinit", "start", "scale")]
    assert "result" in answer
    assert restarts == [], "the newcomer's first call waited for an instance to restart"


async def test_session_affinity_spreads_sessions_that_open_while_the_pool_starts(make_stack: StackFactory) -> None:
    # Claude Code opens its windows' sessions at launch, before the pool is up: pinned to the first instance
    # ready, all four would block each other for as long as they live while the second instance idles.
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--strategy", "session_affinity")
    all_called = asyncio.Event()
    called: list[int] = []

    async def window() -> int:
        async with stack.session() as client:
            pid = result_json(await client.call_tool("count", {}))["pid"]
            called.append(pid)
            if len(called) == 4:
                all_called.set()
            await all_called.wait()
            return int(pid)

    pids = await asyncio.gather(*(window() for _ in range(4)))

    assert sorted(Counter(pids).values()) == [2, 2], f"four sessions on two instances: {pids}"
