"""Instances crash, hang and fail; the pool heals through supervisord and no request is lost."""

from __future__ import annotations

import time
from typing import Any

import psutil

from tests.conftest import StackFactory
from tests.rawclient import answer, call, calls_in_flight_on_two_instances, pid_of, raw_session

INSTANCE_FAILED = -32051


async def test_killing_a_backend_retries_safe_calls_and_fails_unsafe_ones_explicitly(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "2")
    async with raw_session(stack) as client:
        await calls_in_flight_on_two_instances(client, stack)
        victim = (await stack.current_status())["instances"][0]
        psutil.Process(victim["backendPid"]).kill()
        responses = {rid: await client.response(rid) for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2")}
        await stack.ready(2)
        after = await client.request("after", "tools/call", {"name": "whoami", "arguments": {}})
    status = await stack.current_status()

    assert all("result" in responses[rid] for rid in ("safe-1", "safe-2")), responses
    failed = [rid for rid in ("unsafe-1", "unsafe-2") if "error" in responses[rid]]
    assert len(failed) == 1, "exactly the unsafe call on the killed instance failed"
    error = responses[failed[0]]["error"]
    assert error["code"] == INSTANCE_FAILED
    assert "not retried because it may have had effects" in error["message"]
    assert all(pid_of(responses[rid]) != victim["backendPid"] for rid in ("safe-1", "safe-2"))
    assert pid_of(after) != victim["backendPid"]
    assert len([i for i in status["instances"] if i["state"] in ("ready", "busy")]) == 2


async def test_killing_a_shim_fails_its_calls_over(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "2")
    async with raw_session(stack) as client:
        await calls_in_flight_on_two_instances(client, stack)
        victim = (await stack.current_status())["instances"][0]
        before = time.time()
        psutil.Process(victim["pid"]).kill()
        lost = await stack.event("lost", before, slot=victim["slot"])
        responses = {rid: await client.response(rid) for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2")}
        await stack.ready(2)
    status = await stack.current_status()

    # Whichever comes first: three missed heartbeats, or supervisord's replacement saying hello.
    assert "heartbeats" in lost["text"] or "replaced by a new shim" in lost["text"]
    assert all("result" in responses[rid] for rid in ("safe-1", "safe-2"))
    assert sum("error" in responses[rid] for rid in ("unsafe-1", "unsafe-2")) == 1
    assert not psutil.pid_exists(victim["backendPid"]), "the backend died with its shim"
    assert victim["pid"] not in {i["pid"] for i in status["instances"]}


async def test_a_core_restart_keeps_sessions_going(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "2")
    async with raw_session(stack) as client:
        await calls_in_flight_on_two_instances(client, stack)
        core = next(p for p in stack.processes() if "mcpmux.router.core" in p.cmdline())
        core.kill()
        responses = {rid: await client.response(rid) for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2")}
        after = await client.request("after", "tools/call", {"name": "echo", "arguments": {"text": "still here"}})
        new_core = (await stack.current_status())["corePid"]

    assert new_core != core.pid
    assert all("result" in responses[rid] for rid in ("safe-1", "safe-2")), responses
    assert all(responses[rid]["error"]["code"] == INSTANCE_FAILED for rid in ("unsafe-1", "unsafe-2"))
    assert "result" in after
    assert all(len(client.responses_to(rid)) == 1 for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2"))


async def test_a_hung_backend_opens_its_circuit_and_is_restarted(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "1",
                       "--request-timeout", "1500", "--circuit-breaker-threshold", "1")
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        before = time.time()
        hung = await client.request("hung", "tools/call", {"name": "hang", "arguments": {}})
        circuit = await stack.event("circuit", before)
        restart = await stack.event("restart", before, slot=circuit["slot"])
        await stack.ready(2)
        pids = {pid_of(await client.request(f"w{n}", "tools/call", {"name": "whoami", "arguments": {}}))
                for n in range(4)}
        processes = "\n".join(line for line in stack.supervisorctl("status").splitlines() if line.startswith("shim:"))

    assert hung["error"]["code"] == -32001
    assert "timed out" in circuit["text"]
    assert "restarting" in restart["text"]
    assert len(pids) == 2, "the restarted instance takes traffic again"
    assert processes.count("RUNNING") + processes.count("STARTING") == 2, processes


async def test_an_instance_failing_at_protocol_level_is_restarted_but_tool_errors_are_not_failures(
        make_stack: StackFactory, tmp_path: Any) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", LAB_BROKEN_FILE=str(tmp_path / "broken"))
    async with raw_session(stack) as client:
        await client.initialize()
        first = pid_of(await client.request("who", "tools/call", {"name": "whoami", "arguments": {}}))
        tool_errors = [await client.request(f"f{n}", "tools/call", {"name": "fail", "arguments": {}})
                       for n in range(4)]
        same = pid_of(await client.request("same", "tools/call", {"name": "whoami", "arguments": {}}))
        before = time.time()
        errors = [await client.request(f"b{n}", "tools/call", {"name": "broken", "arguments": {}}) for n in range(3)]
        await stack.event("circuit", before)
        ready = await stack.event("ready", before)
        healed = await client.request("healed", "tools/call", {"name": "broken", "arguments": {}})

    assert all(answer["result"]["isError"] for answer in tool_errors)
    assert same == first, "isError results are the tool's answer, not the instance's failure"
    assert all(answer["error"]["code"] == -32603 for answer in errors)
    assert ready["slot"] == "shim:shim_00"
    assert pid_of(healed) != first


async def test_a_server_that_cannot_start_is_backed_off_not_restarted_in_a_loop(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", server=["/nonexistent/mcp-server"])
    before = time.time()
    async with raw_session(stack) as client:
        # Answered once supervisord has tried and failed the start (10 s here; three times that on a loaded
        # machine): the client's own timeout would be longer still.
        response = await client.request("init", "initialize", {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            timeout=90)
        backoff = await stack.event("backoff", before)
        status = await stack.current_status()

    assert response["error"]["code"] == INSTANCE_FAILED
    assert "/nonexistent/mcp-server" in response["error"]["message"]
    assert "No such file" in response["error"]["message"]
    assert "next start in" in backoff["text"]
    assert status["readyInstances"] == 0
    assert [i["state"] for i in status["instances"]] in (["stopped"], ["starting"])


async def test_a_dead_door_does_not_hold_up_the_failover_of_other_sessions(make_stack: StackFactory) -> None:
    """A session whose door died has calls on an instance that is then lost: the other session's calls are
    answered at once (not at their deadline), its subscription moves to the new instance, and the core's
    timers keep running."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "8",
                       "--request-timeout", "120000")
    async with raw_session(stack) as dead, raw_session(stack) as alive:
        await dead.initialize()
        await alive.initialize()
        await alive.request("sub", "resources/subscribe", {"uri": "lab://moved"})
        for n in range(2):
            await dead.send(call(f"d{n}", "slow_write", seconds=60))
            await alive.send(call(f"a{n}", "slow_write", seconds=60))
        await stack.running(4)
        core_pid = (await stack.current_status())["corePid"]
        dead.process.kill()  # no goodbye: the core keeps its session until it finds the door gone
        await dead.process.wait()
        victim = (await stack.current_status())["instances"][0]
        psutil.Process(victim["backendPid"]).kill()
        failed = [await alive.response(f"a{n}", timeout=20) for n in range(2)]
        await stack.ready(1)
        touched = await alive.request("touch", "tools/call", {"name": "touch", "arguments": {"uri": "lab://moved"}})
        await alive.wait_for(lambda received: any(m.get("method") == "notifications/resources/updated"
                                                  for m in received), timeout=10)
        replacement = (await stack.current_status())["instances"][0]
        before = time.time()
        psutil.Process(replacement["pid"]).suspend()  # found only by missed heartbeats: the timers must run
        lost = await stack.event("lost", before, slot=replacement["slot"])
        psutil.Process(replacement["pid"]).kill()
        status = (await stack.current_status())

    assert [response["error"]["code"] for response in failed] == [INSTANCE_FAILED, INSTANCE_FAILED]
    assert answer(touched)["sent"] is True, "the new instance holds the subscription"
    assert "heartbeats" in lost["text"]
    assert status["corePid"] == core_pid, "the core did not crash"
    assert status["sessions"] == 1, "the dead door's session is closed"


async def test_a_door_killed_by_a_signal_ends_its_session_when_its_process_is_gone(make_stack: StackFactory) -> None:
    """A door killed with SIGKILL sends no goodbye: its session closes because its process is gone, not after
    ten seconds of missed heartbeats, while another session goes on."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    async with raw_session(stack) as killed, raw_session(stack) as other:
        await killed.initialize()
        await other.initialize()
        await killed.send(call("k", "slow_write", seconds=60))
        await stack.running(1)
        before = time.time()
        killed.process.kill()
        await killed.process.wait()
        closed = await stack.event("session", before)
        served = await other.request("after", "tools/call", {"name": "whoami", "arguments": {}})
        status = await stack.current_status()

    assert closed["text"].endswith("closed: its door's process exited"), closed
    assert "result" in served
    assert status["sessions"] == 1
