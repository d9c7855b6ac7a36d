"""A published server that keeps state in its process, @modelcontextprotocol/server-sequential-thinking: its
thought history is per process, so through a pool it stays whole only when a session stays on one instance."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import ClientSession

from tests.conftest import StackFactory
from tests.npm_servers import NODE, THINKING, needs

pytestmark = [
    needs(THINKING),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

THOUGHTS = 4


async def think(client: ClientSession, number: int, branch: str) -> dict[str, Any]:
    """One thought; from the second on, on the session's own branch. The server's answer (its state)."""
    arguments: dict[str, Any] = {"thought": f"step {number}", "thoughtNumber": number, "totalThoughts": THOUGHTS,
                                 "nextThoughtNeeded": number < THOUGHTS}
    if number > 1:
        arguments |= {"branchFromThought": 1, "branchId": branch}
    result = await client.call_tool("sequentialthinking", arguments)
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]


async def interleaved(make_stack: StackFactory, *options: str) -> dict[str, list[dict[str, Any]]]:
    """Two sessions think through a pool of two, their calls interleaved two by two (a, a, b, b, ...)."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2", *options,
                       server=[str(NODE), str(THINKING)], DISABLE_THOUGHT_LOGGING="true")
    answers: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    async with stack.session() as a, stack.session() as b:
        await stack.ready(2)
        for client in (a, b):
            await client.list_tools()  # the SDK checks results against the tool's output schema
        clients = {"a": a, "b": b}
        for number in range(1, THOUGHTS + 1, 2):
            for name in ("a", "b"):
                for step in (number, number + 1):
                    answers[name].append(await think(clients[name], step, f"{name}-branch"))
    return answers


def history(answers: list[dict[str, Any]]) -> list[int]:
    return [answer["thoughtHistoryLength"] for answer in answers]


@pytest.mark.parametrize("strategy", ["session_affinity", "dedicated"])
async def test_a_session_that_stays_on_one_instance_keeps_its_thought_history_whole(
        make_stack: StackFactory, strategy: str) -> None:
    answers = await interleaved(make_stack, "--strategy", strategy)

    for name in ("a", "b"):
        assert history(answers[name]) == [1, 2, 3, 4], f"session {name} sees its own history, all of it"
        assert [answer["thoughtNumber"] for answer in answers[name]] == [1, 2, 3, 4]
        assert answers[name][-1]["branches"] == [f"{name}-branch"], "and only its own branches"


async def test_least_connections_breaks_a_sessions_thought_history(make_stack: StackFactory) -> None:
    """Why session_affinity exists: by default each call goes to the least busy instance, state or not."""
    answers = await interleaved(make_stack)

    assert history(answers["a"]) != [1, 2, 3, 4] or history(answers["b"]) != [1, 2, 3, 4]
    branches = {branch for name in ("a", "b") for branch in answers[name][-1]["branches"]}
    assert any(set(answers[name][-1]["branches"]) != {f"{name}-branch"} for name in ("a", "b")), branches
