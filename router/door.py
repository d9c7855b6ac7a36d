"""The door: the process a client starts (`mcpmux-router`), relaying its stdio session to the stack's core.

It checks each line is a JSON-RPC message (so bad input gets its error here, at once) and remembers which
requests are unanswered, so that if the core restarts it can answer each of them and carry the session on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import zmq
import zmq.asyncio

from mcpmux import jsonrpc, wire
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.stack import StackPaths
from router.retry import RetryPolicy

HEARTBEAT_INTERVAL = 2.0


class CoreUnreachable(RuntimeError):
    pass


class Door:
    def __init__(self, paths: StackPaths, *, max_message_bytes: int, connect_timeout: float) -> None:
        self._paths = paths
        self._limit = max_message_bytes
        self._connect_timeout = connect_timeout
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._unanswered: dict[RequestId, JsonObject] = {}
        self._initialize_params: JsonObject | None = None
        self._to_settle: dict[RequestId, JsonObject] | None = None
        self._retry = RetryPolicy()  # the core keeps it up to date with the tools' annotations
        self._welcomed = asyncio.Event()
        self._stdout = sys.stdout.buffer

    async def run(self) -> None:
        self._socket.setsockopt(zmq.ROUTING_ID, uuid.uuid4().hex.encode())
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.connect(self._paths.doors_endpoint)
        await self._send(wire.DoorHello(os.getpid()))
        relay = asyncio.create_task(self._from_core())
        try:
            await asyncio.wait_for(self._welcomed.wait(), self._connect_timeout)
        except TimeoutError:
            relay.cancel()
            raise CoreUnreachable(
                f"the stack's core did not answer within {self._connect_timeout:.0f} s; see {self._paths.logs}"
            ) from None
        beat = asyncio.create_task(self._heartbeat())
        try:
            await self._from_client()
            await self._send(wire.DoorBye())
        finally:
            relay.cancel()
            beat.cancel()
            self._socket.close(linger=1000)
            self._context.term()

    # --- client -> core ------------------------------------------------------------------------------

    async def _from_client(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._limit)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while (line := await _read_line(reader, self._limit)) is not None:
            if line is _TOO_LONG:
                self._write(jsonrpc.error(None, jsonrpc.INVALID_REQUEST,
                                          f"Invalid Request: message longer than {self._limit} bytes"))
                continue
            if not line.strip():
                continue
            try:
                message = jsonrpc.parse(line)
            except jsonrpc.InvalidMessage as invalid:
                self._write(jsonrpc.error(invalid.request_id, invalid.code, str(invalid)))
                continue
            await self._to_core(message)

    async def _to_core(self, message: JsonObject) -> None:
        if jsonrpc.is_request(message):
            self._unanswered[message["id"]] = message
            if message["method"] == "initialize" and isinstance(message.get("params"), dict):
                self._initialize_params = message["params"]
        elif message.get("method") == "notifications/cancelled":
            self._unanswered.pop((message.get("params") or {}).get("requestId"), None)  # type: ignore[arg-type]
        await self._socket.send(wire.encode_payload(wire.ClientMessage, message))

    # --- core -> client ------------------------------------------------------------------------------

    async def _from_core(self) -> None:
        while True:
            message = wire.decode(await self._socket.recv())
            if isinstance(message, wire.ToClient):
                payload = message.payload
                if "method" not in payload:
                    self._unanswered.pop(payload.get("id"), None)  # type: ignore[arg-type]
                self._write(payload)
            elif isinstance(message, wire.SafeTools):
                self._retry.replace(message.names)
            elif isinstance(message, wire.Welcome):
                if message.safe_tools:
                    self._retry.replace(message.safe_tools)
                self._welcomed.set()
                await self._settle()
            elif isinstance(message, wire.Resync) and self._to_settle is None:
                # The core restarted and lost this session: introduce it again; what was sent before this
                # point is settled once the core welcomes us (later Resyncs are echoes of the same loss).
                self._to_settle = dict(self._unanswered)
                await self._send(wire.DoorHello(os.getpid(), self._initialize_params))

    async def _settle(self) -> None:
        """Answer each request the lost core never answered: resend the safe ones, fail the others."""
        to_settle, self._to_settle = self._to_settle or {}, None
        for request in to_settle.values():
            if request["id"] not in self._unanswered:
                continue
            if self._retry.may_retry(request, attempts=0):
                await self._socket.send(wire.encode_payload(wire.ClientMessage, request))
                continue
            del self._unanswered[request["id"]]
            self._write(jsonrpc.error(request["id"], jsonrpc.INSTANCE_FAILED,
                                      "mcpmux's core restarted while this request ran; it was not retried "
                                      "because it may have had effects"))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            await self._send(wire.Heartbeat(len(self._unanswered), True))

    async def _send(self, message: wire.Message) -> None:
        await self._socket.send(wire.encode(message))

    def _write(self, message: JsonObject) -> None:
        self._stdout.write(jsonrpc.dumps(message))
        self._stdout.flush()


_TOO_LONG: Any = object()


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """One line; _TOO_LONG (after skipping the rest of it) for a line over the limit; None at the end."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as end:
        return end.partial or None
    except asyncio.LimitOverrunError:
        await _skip_line(reader)
        return _TOO_LONG  # type: ignore[no-any-return]


async def _skip_line(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as overrun:
            await reader.readexactly(overrun.consumed)
        except asyncio.IncompleteReadError:
            return
