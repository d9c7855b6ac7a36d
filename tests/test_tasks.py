"""Tasks (protocol 2025-11-25) through a real pool: SDK clients over stdio, the task server behind mcpmux.

The SDK (2.3) has no client API for tasks: its tools/call checks the result is a CallToolResult, so a
task-augmented call goes out through the session's dispatcher; tasks/get, result, cancel and list are
ordinary typed requests.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import ClientSession
from mcp.client.extension import NotificationBinding
from mcp.shared.exceptions import MCPError

from tests.conftest import ROOT, Stack, StackFactory

TASK_SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "task_server.py")]
INSTANCE_FAILED = -32051
POOL_OF_TWO = ("--min-instances", "2", "--max-instances", "2")


@dataclass(eq=False)
class TaskClient:
    """One client session, as an application using tasks sees it."""

    session: ClientSession
    statuses: list[types.TaskStatusNotificationParams] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def create(self, tool: str, **arguments: Any) -> types.Task:
        raw = await self.session._dispatcher.send_raw_request(  # the one raw request: see the docstring
            "tools/call", {"name": tool, "arguments": arguments, "task": {"ttl": 120_000}}, None)
        return types.CreateTaskResult.model_validate(raw).task

    async def get(self, task_id: str) -> types.GetTaskResult:
        request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
        return await self.session.send_request(request, types.GetTaskResult)

    async def result(self, task_id: str) -> dict[str, Any]:
        request = types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id))
        result = await self.session.send_request(request, types.CallToolResult)
        assert result.meta is not None and result.meta["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]

    async def cancel(self, task_id: str) -> types.CancelTaskResult:
        request = types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id))
        return await self.session.send_request(request, types.CancelTaskResult)

    async def list(self) -> tuple[list[types.Task], int]:
        """Every task listed, walking the pages; and how many pages it took."""
        tasks: list[types.Task] = []
        cursor: str | None = None
        for pages in range(1, 50):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await self.session.send_request(types.ListTasksRequest(params=params), types.ListTasksResult)
            tasks += page.tasks
            cursor = page.next_cursor
            if cursor is None:
                return tasks, pages
        raise AssertionError("tasks/list never ended")

    async def status_of(self, task_id: str, wanted: str) -> None:
        """Return once a status notification said `task_id` is `wanted`."""
        with anyio.fail_after(30):
            while not any(s.task_id == task_id and s.status == wanted for s in self.statuses):
                await self.changed.wait()

    async def _on_status(self, params: types.TaskStatusNotificationParams) -> None:
        self.statuses.append(params)
        self.changed.set()
        self.changed = anyio.Event()

    async def _on_elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": f"from {id(self)}"})


@asynccontextmanager
async def task_client(stack: Stack) -> AsyncIterator[TaskClient]:
    client = TaskClient(session=None)  # type: ignore[arg-type]
    binding = NotificationBinding(method="notifications/tasks/status",
                                  params_type=types.TaskStatusNotificationParams, handler=client._on_status)
    async with stack.session(notification_bindings=[binding], elicitation_callback=client._on_elicit) as session:
        client.session = session
        yield client


def process_of(task: types.Task) -> int:
    """The task server names the process running a new task in its statusMessage."""
    assert task.status_message is not None and task.status_message.startswith("working in process ")
    return int(task.status_message.rsplit(" ", 1)[1])


async def test_tasks_of_two_sessions_over_two_instances_each_session_seeing_only_its_own(
        make_stack: StackFactory) -> None:
    stack = make_stack(*POOL_OF_TWO, server=TASK_SERVER)
    async with task_client(stack) as a, task_client(stack) as b:
        await stack.ready(2)
        created = {client: [await client.create("work", seconds=0.3, label=f"{name}{n}") for n in range(3)]
                   for name, client in (("a", a), ("b", b))}
        mine = {client: {task.task_id for task in tasks} for client, tasks in created.items()}
        polled = {client: [await client.get(task.task_id) for task in tasks] for client, tasks in created.items()}
        results = {client: {task_id: await client.result(task_id) for task_id in ids} for client, ids in mine.items()}
        listed = {client: await client.list() for client in (a, b)}
        for client, ids in mine.items():
            for task_id in ids:
                await client.status_of(task_id, "completed")
        refused = []
        for task_id in mine[a]:
            with pytest.raises(MCPError) as caught:
                await b.result(task_id)
            refused.append(caught.value.error.code)

    processes = {process_of(task) for tasks in created.values() for task in tasks}
    assert len(processes) == 2, "the tasks were spread over both instances"
    for client in (a, b):
        assert [p.task_id for p in polled[client]] == [t.task_id for t in created[client]]
        assert {r["taskId"] for r in results[client].values()} == mine[client]
        assert {r["pid"] for r in results[client].values()} <= processes
        tasks, pages = listed[client]
        assert {task.task_id for task in tasks} == mine[client], "a session lists its own tasks, all of them"
        assert all(task.status == "completed" for task in tasks)
        assert pages >= 2, "the list was walked over both instances"
        assert {s.task_id for s in client.statuses} == mine[client], "status reaches the owner only"
    assert refused == [-32602] * 3, "another session's task is unknown to b"


async def test_a_task_is_cancelled_on_its_instance(make_stack: StackFactory) -> None:
    stack = make_stack(*POOL_OF_TWO, server=TASK_SERVER)
    async with task_client(stack) as a, task_client(stack) as b:
        await stack.ready(2)
        long = await a.create("work", seconds=120)
        with pytest.raises(MCPError) as not_b:
            await b.cancel(long.task_id)
        cancelled = await a.cancel(long.task_id)
        polled = await a.get(long.task_id)
        with pytest.raises(MCPError) as twice:
            await a.cancel(long.task_id)
        other = await a.create("work", seconds=0)
        done = await a.result(other.task_id)

    assert not_b.value.error.code == -32602
    assert cancelled.status == "cancelled" and polled.status == "cancelled"
    assert twice.value.error.code == -32602 and "terminal status 'cancelled'" in twice.value.error.message
    assert done["taskId"] == other.task_id


async def test_a_task_whose_instance_is_killed_answers_an_explicit_failure(make_stack: StackFactory) -> None:
    stack = make_stack(*POOL_OF_TWO, server=TASK_SERVER)
    async with task_client(stack) as a:
        await stack.ready(2)
        doomed = await a.create("work", seconds=120, label="doomed")
        spared = await a.create("work", seconds=0.5, label="spared")
        assert process_of(doomed) != process_of(spared), "one task on each instance"
        waiting: dict[str, Any] = {}

        async def wait_for_result() -> None:
            with pytest.raises(MCPError) as caught:
                await a.result(doomed.task_id)
            waiting["error"] = caught.value.error

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_result)
            await stack.running(1)  # the tasks/result is with the instance
            psutil.Process(process_of(doomed)).kill()
        await a.status_of(doomed.task_id, "failed")
        polled = await a.get(doomed.task_id)
        with pytest.raises(MCPError) as result_after:
            await a.result(doomed.task_id)
        with pytest.raises(MCPError) as cancel_after:
            await a.cancel(doomed.task_id)
        listed, _ = await a.list()
        spared_result = await a.result(spared.task_id)

    assert waiting["error"].code == INSTANCE_FAILED and "was lost" in waiting["error"].message
    assert polled.status == "failed"
    assert polled.status_message is not None and "mcpmux lost the server instance" in polled.status_message
    assert result_after.value.error.code == INSTANCE_FAILED
    assert cancel_after.value.error.code == -32602
    assert {(t.task_id, t.status) for t in listed} >= {(doomed.task_id, "failed")}
    assert spared_result["label"] == "spared", "the other instance's task is untouched"


async def test_a_tasks_question_reaches_its_owner_while_another_session_uses_the_instance(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", server=TASK_SERVER)
    async with task_client(stack) as a, task_client(stack) as b, anyio.create_task_group() as group:
        await stack.ready(1)
        group.start_soon(b.session.call_tool, "work", {"seconds": 120})
        await stack.running(1)  # b is now the session using the one instance
        question = await a.create("ask", question="go on?")
        answer = await a.result(question.task_id)
        group.cancel_scope.cancel()

    assert a.questions == ["go on?"] and b.questions == []
    assert answer["content"] == {"answer": f"from {id(a)}"}
