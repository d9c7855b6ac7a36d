"""The pool grows under load, up to maxInstances, through supervisord."""

from __future__ import annotations

import time

from tests.conftest import StackFactory
from tests.rawclient import raw_session


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
