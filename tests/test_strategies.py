"""Strategies for servers that keep state in their process, through a real pool, as clients see them."""

from __future__ import annotations

from mcp import ClientSession

from tests.conftest import StackFactory, result_json


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
