"""`mcpmux-monitor test N`: N tool calls through a real client session on a running stack.

The session is opened exactly as a client's would be, over stdio, by running the router attached to the
stack's directory (the router's ``--stack-dir DIR``): every call crosses the door, the core and a shim.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import Tool

from mcpmux import jsonrpc
from mcpmux.stack import StackPaths
from mcpmux.status import StackStatus

DEFAULT_CONCURRENCY = 8  # when the stack's own figures give no number (an "auto" limit not found yet)

REFUSED = "refused by mcpmux"
# mcpmux's own answers: the call never reached a server (refused), or its instance failed under it
# (README, "What the client sees").
REFUSALS = {
    jsonrpc.OVERLOADED: "refused by mcpmux (-32050, overloaded or stopping)",
    jsonrpc.INSTANCE_FAILED: "failed in mcpmux (-32051, its instance failed while running it)",
    jsonrpc.NO_INSTANCE: "refused by mcpmux (-32052, no instance can serve it)",
    jsonrpc.STACK_UNAVAILABLE: "refused by mcpmux (-32054, the stack is unavailable)",
}


class LoadTestError(RuntimeError):
    """The test could not run (no such tool, no safe default, bad arguments)."""


@dataclass
class LoadTestResult:
    tool: str
    arguments: dict[str, Any]
    concurrency: int
    total_requests: int
    successful_requests: int
    failed_requests: int
    success_rate: float
    duration_s: float
    average_duration_ms: float | None
    requests_per_second: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    min_ms: float | None
    max_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)  # the most frequent error messages
    refused_requests: int = 0  # those mcpmux refused or failed itself (REFUSALS), included in failed_requests

    def as_json(self) -> dict[str, Any]:
        """camelCase, as the core's status: durations in milliseconds under latencyMs."""
        return {
            "tool": self.tool, "arguments": self.arguments, "concurrency": self.concurrency,
            "totalRequests": self.total_requests, "successfulRequests": self.successful_requests,
            "failedRequests": self.failed_requests, "refusedRequests": self.refused_requests,
            "successRate": self.success_rate, "durationSeconds": self.duration_s,
            "requestsPerSecond": self.requests_per_second,
            "latencyMs": {"average": self.average_duration_ms, "p50": self.p50_ms, "p95": self.p95_ms,
                          "p99": self.p99_ms, "min": self.min_ms, "max": self.max_ms},
            "errors": self.errors,
        }


def router_params(paths: StackPaths) -> StdioServerParameters:
    """The router, attached to a running stack by its directory, with this interpreter."""
    command, *args = paths.session_command()
    return StdioServerParameters(command=command, args=args, env=dict(os.environ))


def choose_tool(tools: list[Tool], name: str | None, arguments: dict[str, Any] | None) -> Tool:
    """The named tool, or the first read-only one that the arguments (if any) can call."""
    if name is not None:
        for tool in tools:
            if tool.name == name:
                return tool
        names = ", ".join(t.name for t in tools) or "none"
        raise LoadTestError(f"the server has no tool {name!r}; it has: {names}")
    read_only = [t for t in tools if t.annotations is not None and t.annotations.read_only_hint]
    for tool in read_only:
        if arguments is not None or not tool.input_schema.get("required"):
            return tool
    if read_only:
        needs = "; ".join(f"{t.name} needs {', '.join(t.input_schema['required'])}" for t in read_only)
        raise LoadTestError(f"no read-only tool can be called without arguments ({needs}): "
                            "choose one with --tool NAME --args JSON")
    raise LoadTestError("the server has no tool marked read-only (readOnlyHint), so none is safe to call "
                        "repeatedly by default: choose one with --tool NAME [--args JSON]")


def describe_error(code: int, message: str) -> str:
    """One failed call in the error counts: who refused it, and why."""
    return f"{REFUSALS.get(code, f'error {code}')}: {message}"[:200]


def default_concurrency(pool: StackStatus) -> tuple[int, str]:
    """Calls at once that the stack can run without queueing them: maxInstances x each instance's limit
    (its current one under "auto"), and how that number was found."""
    limit = pool.max_concurrent_requests
    if isinstance(limit, int):
        return pool.max_instances * limit, f"maxInstances {pool.max_instances} x maxConcurrentRequests {limit}"
    found = [instance.limit for instance in pool.instances if instance.limit]
    if found:
        return pool.max_instances * max(found), f"maxInstances {pool.max_instances} x the instances' limit {max(found)}"
    return DEFAULT_CONCURRENCY, "the instances' \"auto\" limits are not known yet"


def summarize(tool: str, arguments: dict[str, Any], concurrency: int, durations: list[float],
              failures: list[str], elapsed: float) -> LoadTestResult:
    total = len(durations)
    millis = sorted(d * 1000 for d in durations)
    p50: float | None = millis[0] if millis else None
    p95 = p99 = p50
    if len(millis) >= 2:
        cuts = statistics.quantiles(millis, n=100, method="inclusive")
        p50, p95, p99 = cuts[49], cuts[94], cuts[98]
    successes = total - len(failures)
    return LoadTestResult(
        tool=tool, arguments=arguments, concurrency=concurrency, total_requests=total,
        successful_requests=successes, failed_requests=len(failures),
        success_rate=successes / total if total else 0.0, duration_s=elapsed,
        average_duration_ms=statistics.fmean(millis) if millis else None,
        requests_per_second=total / elapsed if elapsed > 0 else 0.0,
        p50_ms=p50, p95_ms=p95, p99_ms=p99, min_ms=millis[0] if millis else None,
        max_ms=millis[-1] if millis else None, errors=dict(Counter(failures).most_common(5)),
        refused_requests=sum(failure.startswith(REFUSED) for failure in failures),
    )


async def _all_tools(session: ClientSession) -> list[Tool]:
    from mcp_types import PaginatedRequestParams

    tools: list[Tool] = []
    page = await session.list_tools()
    tools += page.tools
    while page.next_cursor:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=page.next_cursor))
        tools += page.tools
    return tools


async def run_load_test(
    paths: StackPaths,
    count: int,
    *,
    tool: str | None = None,
    arguments: dict[str, Any] | None = None,
    concurrency: int | None = None,
    call_timeout: float = 60.0,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[bool], None] | None = None,
) -> LoadTestResult:
    """Make `count` calls of one tool, `concurrency` at a time (all at once by default), and time each."""
    try:
        return await _run(paths, count, tool, arguments, concurrency, call_timeout, on_start, on_done)
    except BaseExceptionGroup as group:  # the SDK's task groups wrap what went wrong: say it plainly
        problem = _first(group, LoadTestError)
        if problem is not None:
            raise problem from None
        raise


def _first(group: BaseExceptionGroup[BaseException], kind: type[LoadTestError]) -> LoadTestError | None:
    for inner in group.exceptions:
        if isinstance(inner, kind):
            return inner
        if isinstance(inner, BaseExceptionGroup) and (found := _first(inner, kind)) is not None:
            return found
    return None


async def _run(
    paths: StackPaths,
    count: int,
    tool: str | None,
    arguments: dict[str, Any] | None,
    concurrency: int | None,
    call_timeout: float,
    on_start: Callable[[str], None] | None,
    on_done: Callable[[bool], None] | None,
) -> LoadTestResult:
    width = max(1, min(concurrency or count, count))
    async with stdio_client(router_params(paths)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        chosen = choose_tool(await _all_tools(session), tool, arguments)
        args = arguments or {}
        if on_start is not None:
            on_start(chosen.name)
        gate = asyncio.Semaphore(width)
        durations: list[float] = []
        failures: list[str] = []

        async def call() -> None:
            async with gate:
                began = time.perf_counter()
                error: str | None = None
                try:
                    result = await asyncio.wait_for(session.call_tool(chosen.name, args), call_timeout)
                    if result.is_error:
                        text = next((getattr(block, "text", "") for block in result.content), "")
                        error = f"tool error: {text[:200]}" if text else "tool error"
                except TimeoutError:
                    error = f"no answer within {call_timeout:g} s"
                except MCPError as exc:
                    error = describe_error(exc.code, exc.message)
                except Exception as exc:  # every failure of one call is a result, not a crash of the test
                    error = f"{type(exc).__name__}: {exc}"[:200]
                durations.append(time.perf_counter() - began)
                if error is not None:
                    failures.append(error)
                if on_done is not None:
                    on_done(error is None)

        started = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(count)))
        elapsed = time.perf_counter() - started
    return summarize(chosen.name, args, width, durations, failures, elapsed)
