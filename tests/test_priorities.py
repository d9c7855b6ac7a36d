"""Priorities and fair sharing through a real pool: who is served first when every instance is busy."""

from __future__ import annotations

from tests.conftest import StackFactory
from tests.rawclient import answer, call, raw_session

BACKLOG = 10


async def test_high_and_other_sessions_calls_pass_a_backlog_which_still_completes(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1")
    async with raw_session(stack) as bulk, raw_session(stack) as other, \
            raw_session(stack, "--priority", "high") as high_session:
        for client in (bulk, other, high_session):
            await client.initialize()
        await stack.ready(1)
        # The first call runs long enough for every later one to be queued behind it; nine wait.
        for n in range(BACKLOG):
            await bulk.send(call(f"bulk{n}", "sleep", seconds=2.0 if n == 0 else 0.2))
        await stack.running(1)
        by_meta = call("by-meta", "sleep", seconds=0.2)
        by_meta["params"]["_meta"] = {"mcpmux/priority": "high"}
        await bulk.send(by_meta)
        await high_session.send(call("by-session", "sleep", seconds=0.2))
        await other.send(call("other-session", "sleep", seconds=0.2))
        started = {f"bulk{n}": answer(await bulk.response(f"bulk{n}", timeout=60))["start"] for n in range(BACKLOG)}
        started["by-meta"] = answer(await bulk.response("by-meta"))["start"]
        started["by-session"] = answer(await high_session.response("by-session"))["start"]
        started["other-session"] = answer(await other.response("other-session"))["start"]

    order = sorted(started, key=started.__getitem__)  # the order the server ran them in (one at a time)
    assert order[0] == "bulk0", order
    assert set(order[1:3]) == {"by-meta", "by-session"}, f"the high calls ran next: {order}"
    assert order.index("other-session") <= 4, f"another session's call did not wait for the backlog: {order}"
    assert len([rid for rid in order if rid.startswith("bulk")]) == BACKLOG, "the backlog still completes"
