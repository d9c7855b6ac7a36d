"""Task server: a stdio MCP server with protocol 2025-11-25 task support, to test tasks through mcpmux.

Run as ``python tests/servers/task_server.py``. The SDK (2.3) defines the task types but serves none of
their methods, and MCPServer has no task support, so this is a low-level Server whose middleware serves
task-augmented ``tools/call`` and ``tasks/get``, ``tasks/result``, ``tasks/cancel``, ``tasks/list``, and
sends ``notifications/tasks/status`` on every change. Handshake era only, like the lab server.

Tools, each answering one JSON line with the serving ``pid``, each callable as a task
(``execution.taskSupport: optional``) or as a plain call:
    work(seconds, label="", steps=0)  sleep, then answer; ``steps`` progress notifications on the way
                                      (under the request's token, also after the CreateTaskResult)

A new task's statusMessage names the process running it, so a test can kill that one.
    ask(question)                     elicit a string ``answer`` from the client; as a task, the
                                      elicitation carries the related-task ``_meta`` and the task is
                                      ``input_required`` meanwhile
    fail(message)                     an ``isError`` result (a task ends ``failed``)

Environment: TASKS_PAGE_SIZE=N is the tasks/list page size (default 2).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.runner import serve_loop
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

PID = os.getpid()
RELATED_TASK = "io.modelcontextprotocol/related-task"
TERMINAL = {"completed", "failed", "cancelled"}
PAGE_SIZE = int(os.environ.get("TASKS_PAGE_SIZE") or 2)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _text(**fields: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps({"pid": PID, **fields}))])


class Job:
    """One task: its wire state, how it ends, and how to stop it."""

    def __init__(self, ttl: int | None, session: ServerSession) -> None:
        created = _now()
        self.task: dict[str, Any] = {"taskId": uuid.uuid4().hex, "status": "working", "createdAt": created,
                                     "lastUpdatedAt": created, "ttl": ttl, "pollInterval": 100,
                                     "statusMessage": f"working in process {PID}"}
        self.session = session
        self.done = anyio.Event()
        self.result: dict[str, Any] | None = None
        self.error: MCPError | None = None
        self.scope = anyio.CancelScope()

    @property
    def task_id(self) -> str:
        return str(self.task["taskId"])

    async def move(self, status: str, message: str | None = None) -> None:
        """Change status (never out of a terminal one) and tell the client."""
        if self.task["status"] in TERMINAL:
            return
        self.task = {key: value for key, value in self.task.items() if key != "statusMessage"}
        self.task.update({"status": status, "lastUpdatedAt": _now()})
        if message is not None:
            self.task["statusMessage"] = message
        params = types.TaskStatusNotificationParams.model_validate(self.task)
        try:
            await self.session.send_notification(types.TaskStatusNotification(params=params))  # type: ignore[arg-type]
        finally:
            if status in TERMINAL:  # after the notification, so tasks/result answers after it too
                self.done.set()


JOBS: dict[str, Job] = {}
TASK_GROUP: TaskGroup | None = None  # set while serving: where tasks run after their tools/call returned


# --- tools ---------------------------------------------------------------------------------------------

Tool = Callable[[dict[str, Any], ServerSession, "Job | None", Any], Awaitable[types.CallToolResult]]


async def work(args: dict[str, Any], session: ServerSession, job: Job | None, token: Any) -> types.CallToolResult:
    seconds, steps = float(args.get("seconds", 0)), int(args.get("steps", 0))
    for step in range(1, steps + 1):
        await anyio.sleep(seconds / steps)
        if token is not None:
            await session.send_progress_notification(token, step, steps)
    await anyio.sleep(0 if steps else seconds)
    return _text(label=args.get("label", ""), taskId=job.task_id if job else None)


async def ask(args: dict[str, Any], session: ServerSession, job: Job | None, token: Any) -> types.CallToolResult:
    meta: Any = {RELATED_TASK: {"taskId": job.task_id}} if job else None  # a key the SDK's TypedDict lacks
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    if job is not None:
        await job.move("input_required", "waiting for the client's answer")
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(
        message=str(args.get("question", "?")), requested_schema=schema, _meta=meta))
    answer = await session.send_request(request, types.ElicitResult)
    if job is not None:
        await job.move("working")
    return _text(action=answer.action, content=answer.content)


async def fail(args: dict[str, Any], session: ServerSession, job: Job | None, token: Any) -> types.CallToolResult:
    result = _text(failed=args.get("message", ""))
    result.is_error = True
    return result


TOOLS: dict[str, Tool] = {"work": work, "ask": ask, "fail": fail}
SCHEMAS: dict[str, dict[str, Any]] = {
    "work": {"seconds": {"type": "number"}, "label": {"type": "string"}, "steps": {"type": "integer"}},
    "ask": {"question": {"type": "string"}},
    "fail": {"message": {"type": "string"}},
}


async def _list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
                      ) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[
        types.Tool(name=name, input_schema={"type": "object", "properties": properties},
                   execution=types.ToolExecution(task_support="optional"))
        for name, properties in SCHEMAS.items()])


def _tool(name: str) -> Tool:
    tool = TOOLS.get(name)
    if tool is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
    return tool


def _token(params: dict[str, Any]) -> Any:
    meta = params.get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def _call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    token = params.meta.get("progress_token") if params.meta else None
    return await _tool(params.name)(params.arguments or {}, ctx.session, None, token)


# --- tasks ---------------------------------------------------------------------------------------------


async def _run(job: Job, tool: Tool, args: dict[str, Any], token: Any) -> None:
    with job.scope:
        try:
            result = await tool(args, job.session, job, token)
        except MCPError as error:
            job.error = error
            await job.move("failed", str(error))
            return
        job.result = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        await job.move("failed" if result.is_error else "completed")


async def _create(ctx: ServerRequestContext[Any], params: dict[str, Any]) -> HandlerResult:
    tool = _tool(str(params.get("name")))
    ttl = params["task"].get("ttl")
    job = Job(ttl if isinstance(ttl, int) else 60_000, ctx.session)
    JOBS[job.task_id] = job
    assert TASK_GROUP is not None
    TASK_GROUP.start_soon(_run, job, tool, params.get("arguments") or {}, _token(params))
    return {"task": dict(job.task)}


def _job(params: dict[str, Any]) -> Job:
    job = JOBS.get(params.get("taskId"))  # type: ignore[arg-type]
    if job is None:
        raise MCPError(code=types.INVALID_PARAMS, message="Failed to retrieve task: Task not found")
    return job


async def _get(params: dict[str, Any]) -> HandlerResult:
    return dict(_job(params).task)


async def _result(params: dict[str, Any]) -> HandlerResult:
    job = _job(params)
    await job.done.wait()
    if job.error is not None:
        raise job.error
    if job.task["status"] == "cancelled":
        raise MCPError(code=types.INVALID_PARAMS, message=f"Task {job.task_id} was cancelled")
    return {**(job.result or {}), "_meta": {RELATED_TASK: {"taskId": job.task_id}}}


async def _cancel(params: dict[str, Any]) -> HandlerResult:
    job = _job(params)
    if job.task["status"] in TERMINAL:
        raise MCPError(code=types.INVALID_PARAMS,
                       message=f"Cannot cancel task: already in terminal status '{job.task['status']}'")
    await job.move("cancelled", "The task was cancelled by request.")
    job.scope.cancel()
    return dict(job.task)


async def _list(params: dict[str, Any]) -> HandlerResult:
    jobs = list(JOBS.values())
    cursor = params.get("cursor")
    start = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else 0
    if cursor is not None and not (isinstance(cursor, str) and cursor.isdigit()):
        raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {cursor!r}")
    page: dict[str, Any] = {"tasks": [dict(job.task) for job in jobs[start:start + PAGE_SIZE]]}
    if start + PAGE_SIZE < len(jobs):
        page["nextCursor"] = str(start + PAGE_SIZE)
    return page


TASK_METHODS: dict[str, Callable[[dict[str, Any]], Awaitable[HandlerResult]]] = {
    "tasks/get": _get, "tasks/result": _result, "tasks/cancel": _cancel, "tasks/list": _list,
}


async def _tasks(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """The task surface the SDK does not serve: a middleware answers it before the SDK's own handlers."""
    params = dict(ctx.params or {})
    if ctx.method == "tools/call" and isinstance(params.get("task"), dict):
        return await _create(ctx, params)
    handler = TASK_METHODS.get(ctx.method)
    return await (handler(params) if handler is not None else call_next(ctx))


server: Server[Any] = Server("task-server", version="1.0.0", on_list_tools=_list_tools, on_call_tool=_call_tool)
server.middleware.append(_tasks)


async def _serve() -> None:
    global TASK_GROUP
    options = server.create_initialization_options()
    options.capabilities.tasks = types.ServerTasksCapability(
        list=types.TasksListCapability(), cancel=types.TasksCancelCapability(),
        requests=types.ServerTasksRequestsCapability(tools=types.TasksToolsCapability(call=types.TasksCallCapability())))
    async with stdio_server() as (read_stream, write_stream), server.lifespan(server) as state, \
            anyio.create_task_group() as TASK_GROUP:
        try:
            await serve_loop(server, read_stream, write_stream, lifespan_state=state, init_options=options)
        finally:
            TASK_GROUP.cancel_scope.cancel()
            await write_stream.aclose()


if __name__ == "__main__":
    anyio.run(_serve)
