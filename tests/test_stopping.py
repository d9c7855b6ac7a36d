"""Every request gets its answer when the session, the core or the stack stops, and a core that merely stalled
judges nobody dead for the silence."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROUTER, Stack, StackFactory
from tests.rawclient import INITIALIZE, answer, call, raw_session

NEVER_STARTED = -32050
MAY_HAVE_RUN = -32051


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1")


async def test_requests_sent_just_before_eof_are_answered(stack: Stack) -> None:
    """A client that writes its last requests and closes stdin still reads their answers, as it would from a
    server run directly."""
    lines = [{"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": INITIALIZE},
             {"jsonrpc": "2.0", "method": "notifications/initialized"},
             call("slow", "block", seconds=1),
             call("echo", "echo", text="last words"),
             {"jsonrpc": "2.0", "id": "ping", "method": "ping"}]
    process = await asyncio.create_subprocess_exec(*ROUTER, *stack.router_args, env=stack.env,
                                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(process.communicate(
        b"".join(json.dumps(line).encode() + b"\n" for line in lines)), 60)
    answers = {message["id"]: message for message in map(json.loads, stdout.splitlines()) if "method" not in message}

    assert process.returncode == 0
    assert set(answers) == {"init", "slow", "echo", "ping"}
    assert answer(answers["echo"])["text"] == "last words"
    assert "result" in answers["slow"] and answers["ping"]["result"] == {}


async def test_stopping_the_stack_answers_every_call_and_ends_every_session(stack: Stack) -> None:
    async with raw_session(stack) as first, raw_session(stack) as second:
        await first.initialize()
        await second.initialize()
        await first.send(call("running", "slow_write", seconds=30))
        await stack.running(1)
        for n in range(3):  # one instance, one call at a time: these wait in the queue
            await second.send(call(f"queued-{n}", "echo", text="never"))
        await first.send(call("queued-first", "block", seconds=1))
        stopped = await asyncio.to_thread(stack.router, "--down")
        answers = {rid: await client.response(rid, timeout=10) for client, rid in (
            (first, "running"), (first, "queued-first"),
            *((second, f"queued-{n}") for n in range(3)))}
        exits = await asyncio.wait_for(asyncio.gather(first.process.wait(), second.process.wait()), 10)

    assert "stopped" in stopped.stderr
    assert answers["running"]["error"]["code"] == MAY_HAVE_RUN
    assert "the stack is stopping" in answers["running"]["error"]["message"]
    for rid in ("queued-first", "queued-0", "queued-1", "queued-2"):
        assert answers[rid]["error"]["code"] == NEVER_STARTED, answers[rid]
    assert list(exits) == [0, 0], "each door ended its session instead of waiting for a core that is gone"
    assert len(first.responses_to("running")) == 1


async def test_a_core_that_stalls_longer_than_every_liveness_timeout_fails_no_call(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    async with raw_session(stack) as first, raw_session(stack) as second:
        await first.initialize()
        await second.initialize()
        await stack.ready(2)
        before = await stack.current_status()
        core = psutil.Process(before["corePid"])
        core.suspend()  # a laptop asleep, a swap storm: the core runs nothing for longer than it waits for anyone
        try:
            for n in range(10):
                await first.send(call(f"a{n}", "echo", text=f"a{n}"))
                await second.send(call(f"b{n}", "echo", text=f"b{n}"))
            await asyncio.sleep(11)  # the stall itself is what is tested: nothing to wait for but time
        finally:
            resumed = time.time()
            core.resume()
        answers = [await client.response(f"{side}{n}", timeout=30)
                   for client, side in ((first, "a"), (second, "b")) for n in range(10)]
        stall = await stack.event("core", resumed)
        after = await stack.current_status()

    failed = [response for response in answers if "error" in response]
    events = [f'{event["kind"]}: {event["text"]}' for event in after["events"] if event["time"] > resumed - 20]
    assert not failed, (failed[:2], events)
    assert [answer(response)["text"] for response in answers] == [f"a{n}" for n in range(10)] + [
        f"b{n}" for n in range(10)]
    assert after["corePid"] == before["corePid"]
    assert after["sessions"] == 2, "no session was taken for gone"
    assert {i["pid"] for i in after["instances"]} == {i["pid"] for i in before["instances"]}, \
        "no instance was taken for dead"
    assert "did not run for" in stall["text"]
