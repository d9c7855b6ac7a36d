"""The wrapped MCP server: a child process spoken to in newline-delimited JSON-RPC over stdio."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

JsonObject = dict[str, Any]
LINE_LIMIT = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A shim killed with SIGKILL cannot stop its child; the kernel does it for us.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Backend:
    """Starts the server, writes messages to it, hands every message it prints to `on_message`."""

    def __init__(self, spec: JsonObject, on_message: Callable[[JsonObject], Awaitable[None]]) -> None:
        self._spec = spec
        self._on_message = on_message
        self._process: asyncio.subprocess.Process | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=30)

    @property
    def command(self) -> str:
        return " ".join([self._spec["command"], *self._spec.get("args", [])])

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else 0

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        env = {**os.environ, **self._spec.get("env", {})}
        # Servers installed beside mcpmux (mcp-server-time, say) are found by name.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        self._process = await asyncio.create_subprocess_exec(
            self._spec["command"], *self._spec.get("args", []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=self._spec.get("cwd"), limit=LINE_LIMIT, preexec_fn=_die_with_parent,
        )

    def send(self, message: JsonObject) -> None:
        assert self._process and self._process.stdin
        if self._process.stdin.is_closing():
            return
        self._process.stdin.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    async def pump_stdout(self) -> None:
        """Relay stdout until the server closes it; a line that is not JSON is logged and skipped."""
        assert self._process and self._process.stdout
        stdout = self._process.stdout
        while True:
            try:
                line = await stdout.readline()
            except ValueError:
                _log(f"backend printed a line longer than {LINE_LIMIT} bytes; dropped")
                continue
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:
                _log(f"backend printed non-JSON on stdout (ignored): {line[:200]!r}")
                continue
            if not isinstance(message, dict):
                _log(f"backend printed JSON that is not a message (ignored): {line[:200]!r}")
                continue
            await self._on_message(message)

    async def pump_stderr(self) -> None:
        """Pass the server's stderr to the shim's log, keeping the last lines to explain a failure."""
        assert self._process and self._process.stderr
        async for raw in self._process.stderr:
            text = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            sys.stderr.write(f"[backend] {text}\n")
        sys.stderr.flush()

    async def wait(self) -> int:
        assert self._process
        return await self._process.wait()

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin:
            process.stdin.close()  # the MCP way to ask a stdio server to exit
        try:
            await asyncio.wait_for(process.wait(), 2)
        except TimeoutError:
            process.kill()
            await process.wait()


def _log(text: str) -> None:
    sys.stderr.write(f"mcpmux-shim: {text}\n")
    sys.stderr.flush()
