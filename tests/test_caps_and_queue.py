"""Least-connections dispatch, the per-instance cap, the bounded queue and request deadlines."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from tests.conftest import StackFactory, result_json
from tests.rawclient import answer, call, raw_session


async def test_blocking_calls_run_side_by_side_on_k_instances(make_stack: StackFactory) -> None:
    # `block` holds its server's event loop: one server can only run these one after another.
    stack = make_stack("--min-instances", "3", "--max-instances", "3", "--max-concurrent-requests", "1")
    async with stack.session() as client:
        await stack.ready(3)
        results = await asyncio.gather(*(client.call_tool("block", {"seconds": 0.5}) for _ in range(3)))
    windows = [result_json(result) for result in results]

    assert len({window["pid"] for window in windows}) == 3
    assert max(w["start"] for w in windows) < min(w["end"] for w in windows), "all three ran at the same time"


async def test_six_calls_on_three_instances_with_a_cap_of_two_split_evenly(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "3", "--max-instances", "3", "--max-concurrent-requests", "2")
    async with stack.session() as client:
        await stack.ready(3)
        results = await asyncio.gather(*(client.call_tool("sleep", {"seconds": 0.5}) for _ in range(6)))
    pids = [result_json(result)["pid"] for result in results]

    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2, 2]


async def test_requests_beyond_the_caps_wait_in_arrival_order(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1")
    async with raw_session(stack) as client:
        await client.initialize()
        for n in range(4):
            await client.send(call(n, "block", seconds=0.2))
        windows = [answer(await client.response(n)) for n in range(4)]

    starts = [window["start"] for window in windows]
    assert starts == sorted(starts), "served first come, first served"
    assert all(earlier["end"] <= later["start"] for earlier, later in itertools.pairwise(windows))


async def test_a_full_queue_answers_at_once_with_a_clear_error(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1",
                       "--queue-size", "1")
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send(call("running", "block", seconds=1))
        await client.send(call("queued", "echo", text="waited"))
        await client.send(call("rejected", "echo", text="no room"))
        rejected = await client.response("rejected")
        assert client.responses_to("running") == [], "the error came while the first call still ran"
        queued = await client.response("queued")
        await client.response("running")

    assert rejected["error"]["code"] == -32050
    assert "overloaded" in rejected["error"]["message"]
    assert answer(queued)["text"] == "waited"


async def test_a_request_that_outlives_its_deadline_gets_a_timeout_error(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1",
                       "--request-timeout", "1500")
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send(call("slow", "sleep", seconds=30))
        slow = await client.response("slow")
        after = await client.request("after", "tools/call", {"name": "echo", "arguments": {"text": "free again"}})

    assert slow["error"]["code"] == -32001
    assert "timed out after 1500 ms" in slow["error"]["message"]
    assert answer(after)["text"] == "free again", "the instance was released for the next call"


async def test_time_spent_queued_counts_toward_the_deadline(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1",
                       "--request-timeout", "3000")
    async with raw_session(stack) as client:
        await client.initialize()
        await client.send(call("first", "sleep", seconds=2))
        await client.send(call("behind", "sleep", seconds=2))  # alone it would fit in 3 s; after first, not
        first = await client.response("first")
        behind = await client.response("behind")

    assert answer(first)["end"] - answer(first)["start"] >= 2
    assert behind["error"]["code"] == -32001


async def test_every_request_of_a_burst_gets_exactly_one_response(make_stack: StackFactory) -> None:
    # Two instances with a cap of two run 4 calls, the queue holds 10 more: the first 14 of the burst are
    # served whatever the timing. A later one is served only if it arrived after an earlier one finished,
    # and refused at once as overloaded otherwise; each call holds its instance far longer than the burst
    # takes to arrive, so the burst overflows the queue and both kinds of answer are exercised.
    stack = make_stack("--min-instances", "2", "--max-instances", "2", "--max-concurrent-requests", "2",
                       "--queue-size", "10")
    room = 2 * 2 + 10
    ids: list[Any] = [*range(20), *(f"s{n}" for n in range(20))]
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        for request_id in ids:
            await client.send(call(request_id, "sleep", seconds=0.5))
        await client.wait_for(lambda received: sum("method" not in m for m in received) >= len(ids) + 1)
        await client.request("last", "ping")  # answered after any duplicate the burst could still cause
        responses = {request_id: client.responses_to(request_id) for request_id in ids}
        total = sum("method" not in m for m in client.received)

    assert [len(replies) for replies in responses.values()] == [1] * len(ids), "exactly one response per request"
    assert total == len(ids) + 2, "and none beyond them, but for initialize's and the ping's"
    first = {request_id: replies[0] for request_id, replies in responses.items()}
    served = [request_id for request_id in ids if "result" in first[request_id]]
    refused = [first[request_id]["error"] for request_id in ids if "result" not in first[request_id]]
    assert served[:room] == ids[:room], "every call that fits the instances and the queue is served"
    assert all(error["code"] == -32050 and "overloaded" in error["message"] for error in refused), refused
    assert refused, "the burst overflowed the queue"
    windows = [answer(first[request_id]) for request_id in served]
    for k in range(room, len(served)):  # let in only once enough earlier calls had left the pool
        finished = sum(earlier["end"] <= windows[k]["start"] for earlier in windows[:k])
        assert finished >= k - room + 1, f"{served[k]!r} was let in while {room} calls filled the pool"


async def test_ids_keep_their_type_and_never_collide(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    async with raw_session(stack) as first, raw_session(stack) as second:
        await first.initialize()
        await second.initialize()
        for client in (first, second):
            await client.send(call(7, "echo", text="integer"))
            await client.send(call("7", "echo", text="string"))
        replies = {(name, request_id): answer(await client.response(request_id))["text"]
                   for name, client in (("first", first), ("second", second)) for request_id in (7, "7")}

    assert replies == {("first", 7): "integer", ("first", "7"): "string",
                       ("second", 7): "integer", ("second", "7"): "string"}


async def test_server_discover_falls_back_to_the_handshake(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1")
    async with raw_session(stack) as client:
        probe = await client.request("server-discover-probe-1", "server/discover", {})
        init = await client.initialize()

    assert probe["error"]["code"] == -32601
    assert init["result"]["serverInfo"]["name"]
