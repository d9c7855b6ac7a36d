"""A bare JSON-RPC client over the router's stdio, for what the SDK client will not send or hides.

It writes whatever bytes a test gives it and collects every line the router prints, so tests can assert
exactly which messages arrived (ids and their types, duplicate or missing responses, notifications).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.conftest import ROUTER, Stack

INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}},
    "clientInfo": {"name": "raw-test-client", "version": "1"},
}


class RawClient:
    def __init__(self, process: asyncio.subprocess.Process, stdout: asyncio.StreamReader,
                 stdout_pipe: asyncio.ReadTransport) -> None:
        self.process = process
        self.received: list[dict[str, Any]] = []
        self._stdout = stdout
        self._stdout_pipe = stdout_pipe
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    def pause_reading(self) -> None:
        """Stop reading the router's stdout, as a client busy elsewhere does: the pipe fills and stays full."""
        self._stdout_pipe.pause_reading()

    def resume_reading(self) -> None:
        self._stdout_pipe.resume_reading()

    async def _read(self) -> None:
        async for line in self._stdout:
            message = json.loads(line)  # the router must only ever print JSON-RPC
            async with self._arrived:
                self.received.append(message)
                self._arrived.notify_all()

    async def send_raw(self, data: bytes) -> None:
        assert self.process.stdin
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None,
                      timeout: float = 30) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.response(request_id, timeout)

    async def response(self, request_id: Any, timeout: float = 30) -> dict[str, Any]:
        """The response with this id, matched by value and type (1 and "1" are different ids)."""
        def found() -> dict[str, Any] | None:
            for message in self.received:
                if "method" not in message and _same_id(message.get("id"), request_id):
                    return message
            return None
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: found() is not None), timeout)
        answer = found()
        assert answer is not None
        return answer

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: predicate(self.received)), timeout)

    def responses_to(self, request_id: Any) -> list[dict[str, Any]]:
        return [m for m in self.received if "method" not in m and _same_id(m.get("id"), request_id)]

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("method") == method and "id" not in m]

    async def initialize(self) -> dict[str, Any]:
        response = await self.request("init", "initialize", INITIALIZE)
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response


def call(request_id: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tools/call request, as a client would write it."""
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


def answer(response: dict[str, Any]) -> dict[str, Any]:
    """The JSON a lab-server tool returned, from a raw response."""
    assert "result" in response, response
    return json.loads(response["result"]["content"][0]["text"])  # type: ignore[no-any-return]


def pid_of(response: dict[str, Any]) -> int:
    """Which backend process served a lab-server call."""
    return int(answer(response)["pid"])


def _same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@asynccontextmanager
async def raw_session(stack: Stack, *options: str) -> AsyncIterator[RawClient]:
    """A session through the router, with `options` for this session only (--priority, say)."""
    # The router's stdout is a pipe of our own, so the client holds its read transport and can pause it
    # (asyncio.subprocess keeps the transport of `stdout=PIPE` to itself).
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *ROUTER, *options, *stack.router_args, env=stack.env, stdin=asyncio.subprocess.PIPE, stdout=write_end)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    stdout = asyncio.StreamReader(limit=64 * 1024 * 1024)
    stdout_pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(read_end, "rb", buffering=0))
    client = RawClient(process, stdout, stdout_pipe)
    try:
        yield client
    finally:
        assert process.stdin
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        client._reader.cancel()
        stdout_pipe.close()


async def calls_in_flight_on_two_instances(client: RawClient, stack: Stack) -> None:
    """One safe (`block`, readOnlyHint) and one unsafe (`slow_write`) call on each of two instances."""
    await client.initialize()
    await stack.ready(2)
    for request_id, tool in (("safe-1", "block"), ("safe-2", "block"),
                             ("unsafe-1", "slow_write"), ("unsafe-2", "slow_write")):
        # Long enough to be still running when the test, on a loaded machine, gets round to its fault.
        await client.send(call(request_id, tool, seconds=4))
    await stack.running(4)
