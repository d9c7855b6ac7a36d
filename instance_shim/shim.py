"""The shim's main loop: relay between the router's core (ZeroMQ DEALER) and one backend (stdio).

It initializes the backend with the parameters the core sends (the first client's real ones), reports the
result, then relays frames both ways and beats a heartbeat. When the backend dies the shim says so and
exits, and supervisord starts a fresh one in the same slot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from instance_shim.backend import Backend
from mcpmux import wire

HEARTBEAT_INTERVAL = 1.0
INIT_ID = "mcpmux-shim-initialize"
JsonObject = dict[str, Any]


class Shim:
    def __init__(self, stack_dir: Path, slot: str) -> None:
        stack = json.loads((stack_dir / "stack.json").read_text())
        self._slot = slot
        self._endpoint = f"ipc://{stack_dir / 'shims.sock'}"
        self._backend = Backend(stack["server"], self._from_backend)
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._initializing = False
        self._initialize_result: JsonObject | None = None
        self._in_flight: set[Any] = set()
        self._exit_code = 0

    async def run(self) -> int:
        self._socket.setsockopt(zmq.ROUTING_ID, self._slot.encode())
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.connect(self._endpoint)
        try:
            await self._backend.start()
        except OSError as exc:
            return await self._cannot_start(exc)
        await self._hello()
        tasks = [
            asyncio.create_task(self._backend.pump_stdout()),
            asyncio.create_task(self._backend.pump_stderr()),
            asyncio.create_task(self._from_core()),
            asyncio.create_task(self._heartbeat()),
        ]
        code = await self._backend.wait()
        await asyncio.gather(tasks[0], tasks[1], return_exceptions=True)  # read what it printed last
        reason = f"backend exited with code {code}"
        if self._initializing:
            reason += " during initialize"
        _log(reason)
        await self._send(wire.BackendFailed(reason, "\n".join(self._backend.stderr_tail)))
        for task in tasks:
            task.cancel()
        self._socket.close(linger=1000)
        return self._exit_code or 1

    async def _cannot_start(self, exc: OSError) -> int:
        """Tell the core why (the client waiting for initialize deserves the reason), then exit."""
        reason = f"cannot start the server {self._backend.command!r}: {exc.strerror or exc}"
        _log(reason)
        await self._hello()
        await self._send(wire.BackendFailed(reason))
        self._socket.close(linger=1000)
        return 2

    async def _hello(self) -> None:
        await self._send(wire.ShimHello(os.getpid(), self._backend.pid, self._initialize_result))

    async def _send(self, message: wire.Message) -> None:
        await self._socket.send(wire.encode(message))

    async def _from_core(self) -> None:
        while True:
            message = wire.decode(await self._socket.recv())
            if isinstance(message, wire.ToBackend):
                self._track_outgoing(message.payload)
                self._backend.send(message.payload)
            elif isinstance(message, wire.InitializeBackend):
                self._initialize(message.params)
            elif isinstance(message, wire.Resync):
                await self._hello()

    def _track_outgoing(self, payload: JsonObject) -> None:
        method = payload.get("method")
        if method is None:
            return
        if "id" in payload:
            self._in_flight.add(payload["id"])
        elif method == "notifications/cancelled":
            self._in_flight.discard(payload.get("params", {}).get("requestId"))

    def _initialize(self, params: JsonObject) -> None:
        if self._initializing or self._initialize_result is not None:
            return
        self._initializing = True
        self._backend.send({"jsonrpc": "2.0", "id": INIT_ID, "method": "initialize", "params": params})

    async def _from_backend(self, payload: JsonObject) -> None:
        if payload.get("id") == INIT_ID and "method" not in payload:
            await self._initialized(payload)
            return
        if "method" not in payload:
            self._in_flight.discard(payload.get("id"))
        await self._socket.send(wire.encode_payload(wire.FromBackend, payload))

    async def _initialized(self, response: JsonObject) -> None:
        self._initializing = False
        if "result" not in response:
            error = response.get("error", {})
            reason = f"backend refused initialize: {error.get('message', error)}"
            _log(reason)
            await self._send(wire.BackendFailed(reason, "\n".join(self._backend.stderr_tail)))
            self._exit_code = 2
            await self._backend.stop()
            return
        self._backend.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self._initialize_result = response["result"]
        await self._send(wire.BackendReady(response["result"]))

    async def _heartbeat(self) -> None:
        while True:
            await self._send(wire.Heartbeat(len(self._in_flight), self._backend.alive))
            await asyncio.sleep(HEARTBEAT_INTERVAL)


def _log(text: str) -> None:
    sys.stderr.write(f"mcpmux-shim: {text}\n")
    sys.stderr.flush()


def _slot_name() -> str:
    group = os.environ.get("SUPERVISOR_GROUP_NAME")
    name = os.environ.get("SUPERVISOR_PROCESS_NAME")
    if name is None:
        return f"manual:{os.getpid()}"
    return f"{group}:{name}" if group else name


def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-shim", description="Run one MCP server instance for mcpmux.")
    parser.add_argument("--stack-dir", type=Path, required=True)
    parser.add_argument("--slot", default=None, help="routing id; defaults to supervisord's group:name")
    args = parser.parse_args()
    shim = Shim(args.stack_dir, args.slot or _slot_name())
    sys.exit(asyncio.run(shim.run()))
