"""The pool grows under load, up to maxInstances, through supervisord."""

from __future__ import annotations

import json
import time
from typing import Any

from mcpmux.router.core.scaling import FIRST_ALONE_FOR
from tests.conftest import StackFactory
from tests.rawclient import INITIALIZE, call, pid_of, raw_session


async def test_a_backlog_starts_another_instance(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "2", "--max-concurrent-requests", "1")
    async with raw_session(stack) as client:
        await client.initialize()
        before = time.time()
        for n in range(3):
            await client.send({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                               "params": {"name": "sleep", "arguments": {"seconds": 3}}})
        scale = await stack.event("scale", before)
        await stack.ready(2)
        answers = [await client.response(n) for n in range(3)]
        status = await stack.current_status()

    assert scale["text"].startswith("start shim:shim_01")
    assert all("result" in answer for answer in answers)
    assert status["readyInstances"] + status["busyInstances"] == 2


async def test_a_load_step_grows_the_pool_in_one_decision_and_no_request_fails(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "3", "--max-concurrent-requests", "1")
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(1)
        before = time.time()
        # One write: the core sees the whole step at once, not a few calls then the rest.
        await client.send_raw(b"".join(json.dumps({
            "jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 1}}}).encode() + b"\n" for n in range(9)))
        await stack.ready(3)
        answers = [await client.response(n) for n in range(9)]
        status = await stack.current_status()

    starts = [event for event in status["scaling"] if event["time"] > before and event["text"].startswith("start")]
    first_ready = min(event["time"] for event in status["events"]
                      if event["kind"] == "ready" and event["time"] > before)
    assert {event["slot"] for event in starts} == {"shim:shim_01", "shim:shim_02"}
    assert all("3 instances needed" in event["text"] for event in starts)
    assert all(event["time"] < first_ready for event in starts), "one decision, before any new instance was ready"
    assert all("result" in answer for answer in answers), "no request failed while the pool grew"


async def test_a_load_step_takes_the_instance_no_open_session_can_use(make_stack: StackFactory) -> None:
    # Two sessions of two client contexts (protocol versions), one instance each; one leaves, and its
    # instance, idle, serves nobody. A load step of the other restarts it with the other's context at once,
    # beside a new instance: three instances take the step, not two.
    stack = make_stack("--min-instances", "1", "--max-instances", "3", "--max-concurrent-requests", "1")
    async with raw_session(stack) as staying:
        await staying.request("init", "initialize", {**INITIALIZE, "protocolVersion": "2025-06-18"})
        await staying.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await staying.request(1, "tools/call", {"name": "whoami", "arguments": {}})
        async with raw_session(stack) as leaving:
            await leaving.initialize()
            await leaving.request(1, "tools/call", {"name": "whoami", "arguments": {}})
            left = time.time()
        await stack.event("session", left)  # the core closed the leaving session
        step = time.time()
        await staying.send_raw(b"".join(json.dumps(call(n, "sleep", seconds=1)).encode() + b"\n"
                                        for n in range(10, 19)))
        answers = [await staying.response(n) for n in range(10, 19)]
        status = await stack.current_status()

    restarted = [event for event in status["events"] if event["time"] > step and event["kind"] == "reinit"]
    assert all("result" in answer for answer in answers), "no request failed while the pool grew"
    assert len({pid_of(answer) for answer in answers}) == 3, "every instance took calls"
    assert [event["slot"] for event in restarted] == ["shim:shim_01"], restarted


async def test_a_cold_start_starts_the_first_instance_alone(make_stack: StackFactory) -> None:
    # A second server starting beside the first takes CPU from the start the first client waits for; one
    # instance serves the first requests, and the rest of minInstances follows once it is ready.
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    async with stack.session() as client:
        await client.call_tool("whoami", {})
        await stack.ready(2)
        events = (await stack.current_status())["events"]

    first_ready = _when(events, "ready", "shim:shim_00 ready")
    second_started = _when(events, "scale", "start shim:shim_01")
    # Until the first is ready, or, on a machine so loaded that it is not, for FIRST_ALONE_FOR from boot.
    waited_out = _when(events, "core", "core") + FIRST_ALONE_FOR - CLOCKS
    assert second_started >= min(first_ready, waited_out), events


async def test_where_sessions_keep_to_an_instance_the_whole_minimum_starts_at_once(make_stack: StackFactory) -> None:
    # Under session_affinity, sessions opening while the pool starts must find both instances starting, or
    # they would all keep to the first one ready.
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--strategy", "session_affinity")
    async with stack.session() as client:
        await client.call_tool("whoami", {})
        await stack.ready(2)
        events = (await stack.current_status())["events"]

    assert _when(events, "scale", "start shim:shim_01") < _when(events, "ready", "shim:shim_00 ready"), events


CLOCKS = 0.05  # seconds: the core's wall-clock event times against the monotonic clock it waits on


def _when(events: list[dict[str, Any]], kind: str, text: str) -> float:
    return min(float(event["time"]) for event in events if event["kind"] == kind and event["text"].startswith(text))
