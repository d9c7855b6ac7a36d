"""One bad actor never hurts another session: a client's malformed lines and a server's bad output stay with
their sender. Each case here once reached every session of the pool (the core crashed, or another
instance's request was completed with someone else's answer)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import mcp_messages
from tests.conftest import LAB_SERVER, Stack, StackFactory
from tests.rawclient import INITIALIZE, RawClient, answer, call, pid_of, raw_session

HUGE = 2**64  # one beyond msgpack's largest integer
TINY = -(2**63) - 1

# (a client line, the id of its error or None for a notification that is dropped, the error code)
BAD_CLIENT_LINES: list[tuple[dict[str, Any], Any, int]] = [
    ({"id": "level", "method": "logging/setLevel", "params": ["debug"]}, "level", -32600),
    ({"id": "sub", "method": "resources/subscribe", "params": ["lab://a"]}, "sub", -32600),
    ({"id": "unsub", "method": "resources/unsubscribe", "params": ["lab://a"]}, "unsub", -32600),
    ({"id": "discover", "method": "server/discover", "params": [1]}, "discover", -32600),
    ({"id": "array-call", "method": "tools/call", "params": ["echo", {"text": "x"}]}, "array-call", -32600),
    ({"id": HUGE, "method": "ping"}, HUGE, -32600),
    ({"id": TINY, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}, TINY, -32600),
    ({"id": "meta", "method": "tools/call", "params": {"name": "echo", "_meta": [1]}}, "meta", -32602),
    ({"id": "token", "method": "tools/call", "params": {"name": "echo", "_meta": {"progressToken": {"a": 1}}}},
     "token", -32602),
    ({"id": "big-token", "method": "tools/call", "params": {"name": "echo", "_meta": {"progressToken": HUGE}}},
     "big-token", -32602),
    ({"id": "cursor", "method": "tools/list", "params": {"cursor": 7}}, "cursor", -32602),
    ({"method": "notifications/cancelled", "params": [1]}, None, 0),
    ({"method": "notifications/cancelled", "params": {"requestId": [1]}}, None, 0),
    ({"method": "notifications/cancelled", "params": {"requestId": HUGE}}, None, 0),
]


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "1")


async def calls_of(client: RawClient, prefix: str, count: int) -> list[dict[str, Any]]:
    """`count` calls one after another, each answered before the next goes."""
    answers = []
    for index in range(count):
        answers.append(await client.request(f"{prefix}-{index}", "tools/call",
                                            {"name": "echo", "arguments": {"text": f"{prefix} {index}"}}))
    return answers


async def test_malformed_client_lines_get_their_errors_and_reach_no_one_else(stack: Stack) -> None:
    async with raw_session(stack) as victim, raw_session(stack) as attacker:
        await victim.initialize()
        await attacker.initialize()
        core = (await stack.current_status())["corePid"]

        async def attack() -> None:
            for message, _, _ in BAD_CLIENT_LINES:
                await attacker.send({"jsonrpc": "2.0", **message})
        victims, _ = await asyncio.gather(calls_of(victim, "victim", 20), attack())
        errors = {request_id: await attacker.response(request_id)
                  for _, request_id, _ in BAD_CLIENT_LINES if request_id is not None}
        still = await attacker.request("after", "tools/call", {"name": "echo", "arguments": {"text": "still"}})
        status = await stack.current_status()

    assert [answer(response)["text"] for response in victims] == [f"victim {index}" for index in range(20)]
    for _, request_id, code in BAD_CLIENT_LINES:
        if request_id is not None:
            assert errors[request_id]["error"]["code"] == code, errors[request_id]
            assert len(attacker.responses_to(request_id)) == 1
    assert answer(still)["text"] == "still"
    assert status["corePid"] == core, "the shared core never fell over"
    assert all(instance["inFlight"] == 0 for instance in status["instances"])
    # Only what was answered reached the client: no stray responses for the dropped notifications.
    ids = {json.dumps(m.get("id")) for m in attacker.received if "method" not in m}
    assert ids == {json.dumps(i) for i in ["init", "after", *errors]}


async def test_a_server_answering_ids_it_was_never_sent_completes_nothing(stack: Stack) -> None:
    # Instance ids come from one counter: the ids just below a call's own belong to calls on the other
    # instance. A buggy server that answers them must not complete those calls.
    phantoms = [json.dumps({"jsonrpc": "2.0", "id": "$ID-N", "result": {
        "content": [{"type": "text", "text": '{"pid": 0, "phantom": true}'}]}}).replace('"$ID-N"', f"$ID-{n}")
        for n in range(1, 6)]
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        await client.send(call("honest", "block", seconds=5))
        await stack.running(1)
        buggy = await client.request("buggy", "tools/call", {"name": "misbehave", "arguments": {"lines": phantoms}})
        honest = await client.response("honest")
        # Each instance is capped at one call: both must take work again, so two calls run side by side.
        first, second = await asyncio.gather(
            client.request("again-1", "tools/call", {"name": "block", "arguments": {"seconds": 0.5}}),
            client.request("again-2", "tools/call", {"name": "block", "arguments": {"seconds": 0.5}}))
        status = await stack.current_status()

    assert "phantom" not in answer(honest), "another instance's answer completed this call"
    assert pid_of(honest) != pid_of(buggy)
    assert len(client.responses_to("honest")) == 1
    assert {pid_of(first), pid_of(second)} == {pid_of(honest), pid_of(buggy)}
    assert sorted(instance["inFlight"] for instance in status["instances"]) == [0, 0]


async def test_bad_messages_from_a_server_are_dropped_and_its_call_still_answered(stack: Stack) -> None:
    lines = [
        '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":$ID,"progress":1}}',
        '{"jsonrpc":"2.0","id":1180591620717411303424,"result":{}}',
        '{"jsonrpc":"2.0","method":"notifications/message","params":["not", "an", "object"]}',
        '{"jsonrpc":"2.0","id":"server-1","method":"sampling/createMessage","params":[1]}',
    ]
    async with raw_session(stack) as client, raw_session(stack) as bystander:
        await client.initialize()
        await bystander.initialize()
        core = (await stack.current_status())["corePid"]
        misbehaved = await client.request("bad", "tools/call", {"name": "misbehave", "arguments": {"lines": lines}})
        calm = await calls_of(bystander, "calm", 5)
        after = await client.request("after", "tools/call", {"name": "echo", "arguments": {"text": "after"}})
        status = await stack.current_status()

    assert "result" in misbehaved and "pid" in answer(misbehaved)
    assert not client.notifications("notifications/progress"), "progress for a token the client never gave"
    assert not [m for m in client.received if m.get("method") == "sampling/createMessage"]
    assert [answer(response)["text"] for response in calm] == [f"calm {index}" for index in range(5)]
    assert answer(after)["text"] == "after"
    assert status["corePid"] == core
    assert pid_of(misbehaved) in {instance["backendPid"] for instance in status["instances"]}, \
        "the shim of the misbehaving server lived on (a 2^70 id once killed it)"
    log = "".join(path.read_text() for path in stack.paths.logs.glob("shim_*.log"))
    assert "malformed message" in log


async def test_a_stack_whose_server_could_not_start_heals_once_the_cause_is_gone(
        make_stack: StackFactory, tmp_path: Path) -> None:
    """The server fails until a file exists, as a missing command or a broken install would: each client
    hears why at once, and the first session after the cause is gone is served, without an operator."""
    flag = tmp_path / "installed"
    server = ["/bin/sh", "-c", f'test -f {flag} || {{ echo "not installed yet" >&2; exit 1; }}; exec "$@"',
              "server", *LAB_SERVER]
    stack = make_stack("--min-instances", "1", "--max-instances", "1", server=server)
    before = time.time()
    async with raw_session(stack) as first:
        failed = await first.request("init", "initialize", INITIALIZE)
        await stack.event("backoff", before)
        held = next(slot for slot in (await stack.current_status())["instances"] if slot["backoffs"])
        flag.touch()
        async with raw_session(stack) as second:
            served = await second.initialize()
            echoed = await second.request("echo", "tools/call", {"name": "echo", "arguments": {"text": "healed"}})

    assert failed["error"]["code"] == -32051
    assert "not installed yet" in failed["error"]["message"], "the client hears the server's last words"
    assert "not installed yet" in held["alert"], "the alert names the cause, not only the restarts"
    assert "result" in served
    assert answer(echoed)["text"] == "healed"


async def test_params_the_server_refuses_get_its_own_error_and_the_pool_stays_whole(stack: Stack) -> None:
    """A client whose initialize the server rejects (capabilities of the wrong shape) hears the server's own
    error. The instances opened for those params restart for the others' as planned, not as failures: a
    client that tries again and again never makes the pool flap and give up on its instances."""
    async with raw_session(stack) as victim, raw_session(stack) as odd:
        await victim.initialize()
        await stack.ready(2)
        before = time.time()
        refused, repeats = [], 0.0
        for attempt in range(6):  # flapping is 5 starts of a slot within a minute; each refusal is one start
            if attempt == 3:
                repeats = time.time()  # the same params again from here
            shape = {"elicitation": {"form": attempt % 3}}  # three distinct params, each asked twice
            refused.append(await odd.request(f"init-{attempt}", "initialize", {**INITIALIZE, "capabilities": shape}))
            refused.append(await victim.request(f"call-{attempt}", "tools/call",
                                                {"name": "echo", "arguments": {"text": str(attempt)}}))
        accepted = await odd.initialize()
        await stack.ready(2)
        status = await stack.current_status()

    refusals, calls = refused[0::2], refused[1::2]
    assert [response["error"]["message"] for response in refusals] == ["Invalid request parameters"] * 6
    assert {response["error"]["code"] for response in refusals} == {-32602}
    assert [answer(response)["text"] for response in calls] == [str(attempt) for attempt in range(6)]
    assert "result" in accepted, "other params from the same client are served"
    assert not [event for event in status["events"] if event["time"] > before
                and event["kind"] in ("lost", "backoff", "alert")], "no instance counted as failed"
    assert all(instance["alert"] is None for instance in status["instances"])
    refusing = [event["time"] for event in status["events"] if "refused the context" in event["text"]]
    assert refusing and min(refusing) > before
    assert max(refusing) < repeats, "params refused once are refused at once, never sent to a backend again"


async def test_a_call_that_kills_its_server_is_not_sent_on_to_kill_every_instance(stack: Stack) -> None:
    """A read-only call may be retried after its instance failed, once: failing a second instance too, it
    may be what makes the server fail, and its error says so rather than that it was never retried."""
    async with raw_session(stack) as client, raw_session(stack) as bystander:
        await client.initialize()
        await bystander.initialize()
        await stack.ready(2)
        before = time.time()
        poisoned = await client.request("poison", "tools/call", {"name": "poison", "arguments": {"exit_code": 3}})
        await stack.ready(2)
        calm = await calls_of(bystander, "calm", 3)
        processes = await asyncio.to_thread(stack.supervisorctl, "status")
        status = await stack.current_status()

    error = poisoned["error"]
    assert error["code"] == -32051
    assert "as did the 1 it ran on before" in error["message"], error
    lost = [event for event in status["events"] if event["kind"] == "lost" and event["time"] > before]
    assert len(lost) == 2, f"the call took {len(lost)} instances down"
    assert [answer(response)["text"] for response in calm] == [f"calm {n}" for n in range(3)]
    shims = [line.split()[1] for line in processes.splitlines() if line.startswith("shim:")]
    assert sum(state in ("RUNNING", "STARTING") for state in shims) >= 2, f"the pool came back whole: {processes}"


@settings(max_examples=1, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(attack=st.lists(mcp_messages.lines(mcp_messages.client_messages(mcp_messages.HANDSHAKE)),
                       min_size=150, max_size=150))
async def test_a_stream_of_generated_bad_lines_reaches_no_other_session(stack: Stack, attack: list[bytes]) -> None:
    """Lines from the fuzz strategies (MCP messages of the spec's schema, broken in every field, mutated as
    text) from one session, while another calls: the other's calls all succeed and the core never falls."""
    async with raw_session(stack) as victim, raw_session(stack) as attacker:
        await victim.initialize()
        await attacker.initialize()
        core = (await stack.current_status())["corePid"]

        async def send_all() -> None:
            for line in attack:
                await attacker.send_raw(line.replace(b"\n", b" ") + b"\n")
        victims, _ = await asyncio.gather(calls_of(victim, "victim", 20), send_all())
        still = await attacker.request("still-here", "tools/call", {"name": "echo", "arguments": {"text": "ok"}})
        status = await stack.current_status()

    assert [answer(response)["text"] for response in victims] == [f"victim {n}" for n in range(20)]
    assert answer(still)["text"] == "ok", "the attacking session keeps working"
    assert status["corePid"] == core, "the shared core never fell over"
    raised = [event["text"] for event in status["events"] if event["kind"] == "error"]
    assert not raised, raised
    refused = [m for m in attacker.received if "error" in m and m["error"]["code"] in (-32700, -32600, -32602)]
    print(f"\n{len(attack)} generated lines: {len(refused)} refused with an error, "
          f"{len([m for m in attacker.received if 'method' not in m])} answers in all")
    assert len(refused) >= len(attack) // 4, "most broken lines are requests or garbage: each gets its error"
