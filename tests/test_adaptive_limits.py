"""maxConcurrentRequests "auto" through a real pool: the limit each instance finds for the lab server's tools.

`block` stalls the whole server while it runs (a server that runs one call at a time); `sleep` runs in a
worker thread (a server that runs calls concurrently). One instance each, a burst of calls in one write.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import StackFactory
from tests.rawclient import raw_session

AUTO = ("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "auto")


async def burst_then_status(make_stack: StackFactory, tool: str, calls: int, seconds: float) -> dict[str, Any]:
    stack = make_stack(*AUTO)
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(1)
        # One write: the core has the whole burst queued before the first call is answered.
        await client.send_raw(b"".join(json.dumps({
            "jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": tool, "arguments": {"seconds": seconds}}}).encode() + b"\n" for n in range(calls)))
        answers = [await client.response(n, timeout=60) for n in range(calls)]
        status = await stack.current_status()
    assert all("result" in answer for answer in answers), "no call failed"
    assert status["maxConcurrentRequests"] == "auto"
    return status


async def test_a_server_that_runs_one_call_at_a_time_gets_a_limit_of_1(make_stack: StackFactory) -> None:
    status = await burst_then_status(make_stack, "block", 14, 0.2)

    (instance,) = status["instances"]
    assert instance["limit"] == 1, instance


async def test_a_server_that_runs_calls_concurrently_gets_a_limit_above_1(make_stack: StackFactory) -> None:
    status = await burst_then_status(make_stack, "sleep", 24, 0.2)

    (instance,) = status["instances"]
    assert instance["limit"] > 1, instance
