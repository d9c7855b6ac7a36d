"""The two kinds of client the benchmarks use.

* ``sdk_session``: the MCP SDK's own client, as an MCP host would open it.
* ``RawClient``: hand-written JSON-RPC over a subprocess's stdio, light enough not to be the bottleneck,
  that counts every response it gets per request id (to prove exactly-once delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TextIO

from mcp import ClientSession, StdioServerParameters, stdio_client

from mcpmux.jsonrpc import JsonObject

PROTOCOL_VERSION = "2025-06-18"
READ_LIMIT = 16 * 1024 * 1024


@asynccontextmanager
async def sdk_session(params: StdioServerParameters, errlog: TextIO) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session with the server (or the router) `params` starts."""
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


async def timed_tool_call(client: ClientSession, name: str, arguments: JsonObject) -> tuple[float, bool]:
    """One tools/call: its latency in seconds and whether it succeeded."""
    start = time.perf_counter()
    try:
        result = await client.call_tool(name, arguments)
    except Exception:  # an error response raises; it counts as a failed call
        return time.perf_counter() - start, False
    return time.perf_counter() - start, not result.is_error


@dataclass
class Answer:
    """One response as the raw client saw it."""

    request_id: int
    sent: float
    received: float
    error_code: int | None

    @property
    def latency(self) -> float:
        return self.received - self.sent


@dataclass
class Flood:
    """What a windowed flood of requests produced."""

    sent: int
    answers: list[Answer]
    started: float
    ended: float  # when sending stopped (the deadline)
    finished: float  # when the last answer arrived
    errors: Counter[int] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return sum(1 for answer in self.answers if answer.error_code is None)

    @property
    def rate(self) -> float:
        """Answers per second over the whole flood, the drain at the end included."""
        return len(self.answers) / (self.finished - self.started)


class RawClient:
    """A JSON-RPC client over one subprocess's stdin/stdout, ids matched by hand."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._next_id = 0
        self._sent_at: dict[int, float] = {}
        self._received_at: dict[int, float] = {}
        self._waiters: dict[int, asyncio.Future[JsonObject]] = {}
        self._on_answer: Callable[[Answer], None] | None = None
        self.answer_counts: Counter[int] = Counter()
        self.strays: list[JsonObject] = []  # responses to ids never sent
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, command: list[str], env: dict[str, str] | None, errlog: TextIO) -> RawClient:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errlog, env=env,
            limit=READ_LIMIT,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def sent_ids(self) -> list[int]:
        return list(self._sent_at)

    def send(self, method: str, params: JsonObject | None = None) -> int:
        """Write one request without waiting for its answer; its id."""
        self._next_id += 1
        request_id = self._next_id
        message: JsonObject = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._sent_at[request_id] = time.perf_counter()
        self._write(message)
        return request_id

    def send_all(self, messages: list[tuple[str, JsonObject]]) -> list[int]:
        """Write several requests in one write (the core reads them as one step); their ids."""
        lines, ids = [], []
        for method, params in messages:
            self._next_id += 1
            ids.append(self._next_id)
            self._waiters[self._next_id] = asyncio.get_running_loop().create_future()
            lines.append(json.dumps({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params},
                                    separators=(",", ":")).encode() + b"\n")
        now = time.perf_counter()
        self._sent_at.update(dict.fromkeys(ids, now))
        assert self._process.stdin is not None
        self._process.stdin.write(b"".join(lines))
        return ids

    async def answers(self, ids: list[int], timeout: float = 120) -> list[JsonObject]:
        """The responses to requests sent with `send_all`, in the order of `ids`."""
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(self._waiters[i] for i in ids)), timeout))
        finally:
            for request_id in ids:
                self._waiters.pop(request_id, None)

    def received_time(self, request_id: int) -> float:
        """When the first response to a request arrived (perf_counter seconds)."""
        return self._received_at[request_id]

    def notify(self, method: str, params: JsonObject | None = None) -> None:
        message: JsonObject = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._write(message)

    async def call(self, method: str, params: JsonObject | None = None, timeout: float = 60) -> JsonObject:
        """One request and its response (an error response is returned, not raised)."""
        request_id = self.send(method, params)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.pop(request_id, None)

    async def initialize(self, timeout: float = 60) -> JsonObject:
        response = await self.call("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "mcpmux-bench", "version": "1.0"},
        }, timeout)
        if "result" not in response:
            raise RuntimeError(f"initialize failed: {response}")
        self.notify("notifications/initialized")
        return response["result"]  # type: ignore[no-any-return]

    async def flood(self, method: str, params: JsonObject, *, window: int, seconds: float,
                    drain_timeout: float = 60) -> Flood:
        """Keep `window` requests outstanding for `seconds` (each answer sends the next), then drain."""
        loop = asyncio.get_running_loop()
        drained = loop.create_future()
        answers: list[Answer] = []
        first_id = self._next_id + 1
        deadline = time.perf_counter() + seconds

        def on_answer(answer: Answer) -> None:
            if answer.request_id < first_id:
                return
            answers.append(answer)
            if answer.received < deadline:
                self.send(method, params)
            elif len(answers) == self._next_id - first_id + 1 and not drained.done():
                drained.set_result(None)

        self._on_answer = on_answer
        started = time.perf_counter()
        try:
            for _ in range(window):
                self.send(method, params)
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained, drain_timeout)
        finally:
            self._on_answer = None
        finished = max((answer.received for answer in answers), default=time.perf_counter())
        errors = Counter(answer.error_code for answer in answers if answer.error_code is not None)
        return Flood(self._next_id - first_id + 1, answers, started, deadline, finished, errors)

    def sent_time(self, request_id: int) -> float:
        """When a request was written (perf_counter seconds)."""
        return self._sent_at[request_id]

    def unanswered(self) -> list[int]:
        return [request_id for request_id in self._sent_at if not self.answer_counts[request_id]]

    def duplicated(self) -> dict[int, int]:
        return {request_id: count for request_id, count in self.answer_counts.items() if count > 1}

    async def close(self, timeout: float = 15) -> int | None:
        """Close stdin (how a stdio session ends) and wait for the process; kill it if it lingers."""
        if self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.close()
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            self._process.kill()
            code = await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        return code

    def _write(self, message: JsonObject) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _read(self) -> None:
        assert self._process.stdout is not None
        stdout = self._process.stdout
        while line := await stdout.readline():
            message = json.loads(line)
            if "method" in message:
                self._server_message(message)
            else:
                self._response(message)

    def _response(self, message: JsonObject) -> None:
        received = time.perf_counter()
        request_id = message.get("id")
        sent = self._sent_at.get(request_id) if isinstance(request_id, int) else None
        if sent is None or not isinstance(request_id, int):
            self.strays.append(message)
            return
        self.answer_counts[request_id] += 1
        self._received_at.setdefault(request_id, received)
        waiter = self._waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        if self._on_answer is not None and self.answer_counts[request_id] == 1:
            error = message.get("error")
            self._on_answer(Answer(request_id, sent, received, error.get("code") if error else None))

    def _server_message(self, message: JsonObject) -> None:
        if "id" in message:  # a server request (ping): answer it so the server is not left waiting
            reply: JsonObject = {"jsonrpc": "2.0", "id": message["id"]}
            if message["method"] == "ping":
                reply["result"] = {}
            else:
                reply["error"] = {"code": -32601, "message": f"Method not found: {message['method']}"}
            self._write(reply)


@asynccontextmanager
async def raw_client(command: list[str], env: dict[str, str] | None, errlog: TextIO) -> AsyncIterator[RawClient]:
    """A started, initialized raw client, closed (its process gone) when the block ends."""
    client = await RawClient.start(command, env, errlog)
    try:
        await client.initialize()
        yield client
    finally:
        await client.close()
