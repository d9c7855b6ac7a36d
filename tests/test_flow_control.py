"""A client that stops reading for a while slows its own session down, and nothing else happens to it."""

from __future__ import annotations

import asyncio
import time

import psutil

from tests.conftest import StackFactory
from tests.rawclient import answer, call, raw_session

BIG = 64 * 1024  # each of these results is larger than a pipe's buffer, so the first one fills the pipe
SLOW_CALLS = 48  # 2 s each on 2 x 3 slots: some are still queued or running after the core's door liveness
CLIENT_BUSY = 12.0  # longer than the core's DOOR_LIVENESS (10 s)


async def test_a_client_that_stops_reading_keeps_its_session_and_its_calls(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "3")
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        sessions = (await stack.current_status())["sessions"]
        client.pause_reading()
        big = [f"big-{n}" for n in range(4)]
        slow = [f"slow-{n}" for n in range(SLOW_CALLS)]
        for n, request_id in enumerate(big):
            await client.send(call(request_id, "echo", text=str(n) * BIG))
        for request_id in slow:  # slow_write may have had effects: a door that resynced would fail it (-32051)
            await client.send(call(request_id, "slow_write", seconds=2))
        # Not a synchronisation sleep: the client is busy for longer than the core waits for a silent door.
        await asyncio.sleep(CLIENT_BUSY)
        client.resume_reading()
        responses = {request_id: await client.response(request_id, timeout=90) for request_id in big + slow}
        status = (await stack.current_status())

    assert all(len(client.responses_to(request_id)) == 1 for request_id in big + slow)
    failed = {request_id: response["error"] for request_id, response in responses.items() if "error" in response}
    assert not failed, failed
    assert [answer(responses[request_id])["text"] for request_id in big] == [str(n) * BIG for n in range(4)]
    closed = [event for event in status["events"] if "stopped beating" in event["text"]]
    assert not closed, closed
    assert status["sessions"] == sessions


async def test_a_client_that_stops_reading_more_than_the_door_holds_still_gets_everything(
        make_stack: StackFactory) -> None:
    """More output than the door's budget: the core holds the session until the client reads."""
    # The budget is 8 MiB or 4 messages of --max-message-bytes, the more of the two: here 8 MiB.
    # One session's burst of 200 calls: its own queue bound must hold them all.
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "3",
                       "--max-message-bytes", str(1024 * 1024), "--queue-per-session", "256")
    calls = [f"big-{n}" for n in range(200)]  # about 13 MB of results
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        client.pause_reading()
        before = time.time()
        for n, request_id in enumerate(calls):
            await client.send(call(request_id, "echo", text=f"{n % 10}" * BIG))
        held = await stack.event("session", before, timeout=60)  # the door's budget is full: the rest waits
        client.resume_reading()
        responses = {request_id: await client.response(request_id, timeout=60) for request_id in calls}
        status = (await stack.current_status())

    assert "held" in held["text"]
    assert all(len(client.responses_to(request_id)) == 1 for request_id in calls)
    assert [answer(responses[request_id])["text"] for request_id in calls] == [
        f"{n % 10}" * BIG for n in range(len(calls))]
    assert status["sessions"] == 1
    assert not [event for event in status["events"] if "closed" in event["text"]]


async def test_a_client_that_stops_reading_large_results_keeps_its_door_small(make_stack: StackFactory) -> None:
    """The bytes on their way to a door are bounded, not only the messages: 60 results of 2 MB for a client
    that reads none of them wait in the core, and its new requests wait with them, while another session
    is served as usual."""
    size, calls = 2 * 1024 * 1024, 60  # 120 MB of results; the door's budget is 4 x 4 MB
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "2",
                       "--max-message-bytes", str(4 * 1024 * 1024), "--queue-per-session", "256")
    async with raw_session(stack) as slow, raw_session(stack) as other:
        await slow.initialize()
        await other.initialize()
        await stack.ready(2)
        door = psutil.Process(slow.process.pid)
        baseline = door.memory_info().rss
        slow.pause_reading()
        before = time.time()
        for n in range(calls):
            await slow.send(call(f"big-{n}", "blob", size=size))
        held = await stack.event("session", before, timeout=60)
        others = [await other.request(f"o{n}", "tools/call", {"name": "echo", "arguments": {"text": f"o{n}"}})
                  for n in range(5)]
        grown = door.memory_info().rss - baseline
        slow.resume_reading()
        responses = [await slow.response(f"big-{n}", timeout=120) for n in range(calls)]

    print(f"\nthe door grew by {grown / 2**20:.1f} MB while {calls * size / 2**20:.0f} MB of results waited")
    assert "held" in held["text"]
    assert grown < 48 * 1024 * 1024, f"the door grew by {grown / 2**20:.0f} MB for 120 MB it was not asked to hold"
    assert [answer(response)["text"] for response in others] == [f"o{n}" for n in range(5)]
    assert all(len(answer(response)["text"]) == size for response in responses)
    assert all(len(slow.responses_to(f"big-{n}")) == 1 for n in range(calls))
