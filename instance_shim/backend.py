"""The wrapped MCP server: a child process spoken to in newline-delimited JSON-RPC over stdio.

Non-blocking on every pipe, so a server that stops reading cannot stall the shim's heartbeat.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping

from mcpmux import jsonrpc
from mcpmux.environment import as_started, server_environment
from mcpmux.jsonrpc import InvalidMessage, JsonObject
from mcpmux.lines import LineSplitter, Oversized
from mcpmux.signals import parent_death_signal

LINE_LIMIT = 64 * 1024 * 1024
READ_SIZE = 1 << 16


def _die_with_parent() -> None:
    # A shim killed with SIGKILL cannot stop its child; the kernel does it for us (Linux; elsewhere the
    # server sees its stdin close).
    parent_death_signal(signal.SIGKILL)


class Backend:
    def __init__(self, spec: JsonObject, default_cwd: str | None = None) -> None:
        self._spec = spec
        self._default_cwd = default_cwd  # where a server with no directory of its own runs
        self._process: subprocess.Popen[bytes] | None = None
        self._outbox = bytearray()
        self._stdout = LineSplitter(LINE_LIMIT)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=30)

    @property
    def command(self) -> str:
        return " ".join([self._spec["command"], *self._spec.get("args", [])])

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else 0

    @property
    def started(self) -> bool:
        return self._process is not None

    def start(self, cwd: str | None = None, passed: Mapping[str, str] | None = None) -> None:
        """Start the server in `cwd` (the client's), else in the configured directory, else the default one,
        with the client's `passed` variables (mcpmux/environment.py)."""
        env = server_environment(as_started(), self._spec.get("env", {}), passed)
        self._process = subprocess.Popen(
            [find_command(self._spec["command"], env), *self._spec.get("args", [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            env=env, cwd=cwd or self._spec.get("cwd") or self._default_cwd, preexec_fn=_die_with_parent,
        )
        for pipe in (self._process.stdin, self._process.stdout, self._process.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)

    def fileno(self, name: str) -> int:
        assert self._process is not None
        pipe = getattr(self._process, name)
        return int(pipe.fileno())

    # --- writing -------------------------------------------------------------------------------------

    def send(self, message: JsonObject) -> None:
        self.send_line(jsonrpc.dumps(message))

    def send_line(self, line: bytes) -> None:
        self._outbox += line
        self.flush()

    def queue_line(self, line: bytes) -> None:
        """Add a line to what goes to the server, written by the next `flush` (the shim's, once per batch
        of the core's messages: one write for all of them rather than one each)."""
        self._outbox += line

    def send_eof(self) -> None:
        """Close the server's stdin: the MCP way to ask a stdio server to exit."""
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()

    @property
    def wants_write(self) -> bool:
        return bool(self._outbox)

    def flush(self) -> None:
        if not self._outbox or self._process is None:  # a dead server's pipe says so (BrokenPipeError)
            return
        try:
            written = os.write(self.fileno("stdin"), self._outbox)
        except BlockingIOError:
            return  # the server is not reading right now; the shim waits for its pipe to drain
        except (BrokenPipeError, ValueError):  # the server is gone, or we closed its stdin
            self._outbox.clear()
            return
        del self._outbox[:written]

    # --- reading -------------------------------------------------------------------------------------

    def read_messages(self) -> list[tuple[bytes, JsonObject | InvalidMessage]] | None:
        """The messages the server printed since last time, each with its line (or, for a message of the
        wrong shape, why it is one); None once it has closed stdout."""
        try:
            data = os.read(self.fileno("stdout"), READ_SIZE)
        except BlockingIOError:
            return []
        if not data:
            return None
        messages = []
        for line in self._stdout.feed(data):
            message = _parse(line)
            if message is not None:
                messages.append((line.head if isinstance(line, Oversized) else line, message))
        return messages

    def read_stderr(self) -> bool:
        """Pass the server's stderr to the shim's log; False once the server closed it."""
        try:
            return self._read_stderr_chunk()
        except BlockingIOError:
            return True

    def _read_stderr_chunk(self) -> bool:
        data = os.read(self.fileno("stderr"), READ_SIZE)
        if not data:
            return False
        for text in data.decode(errors="replace").splitlines():
            self.stderr_tail.append(text)
            sys.stderr.write(f"[backend] {text}\n")
        sys.stderr.flush()
        return True

    def wait(self, timeout: float) -> int:
        assert self._process is not None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def drain_stderr(self) -> None:
        """After exit: read what is left, without waiting for more."""
        try:
            while self._read_stderr_chunk():
                pass
        except OSError:  # BlockingIOError included: nothing more for now
            pass


def find_command(command: str, env: Mapping[str, str]) -> str:
    """The server's executable: on the server's PATH, else beside mcpmux's Python (a server installed in
    the same environment as mcpmux, as `make up` does). The server's PATH itself is left as it is."""
    if os.sep in command:
        return command
    return (shutil.which(command, path=env.get("PATH", os.defpath))
            or shutil.which(command, path=os.path.dirname(sys.executable))
            or command)


def _parse(line: bytes | Oversized) -> JsonObject | InvalidMessage | None:
    """A message, or why a JSON object is not one (the shim may still answer it), or None for a line that
    is not even that (dropped: a server's stray output)."""
    if isinstance(line, Oversized):
        return _oversized(line)
    try:
        return jsonrpc.parse(line, require_version=False)
    except InvalidMessage as invalid:
        if invalid.code == jsonrpc.PARSE_ERROR:
            _log(f"backend printed non-JSON on stdout (ignored): {line[:200]!r}")
        elif invalid.request_id is None and invalid.response_to is None and invalid.answerable:
            _log(f"backend printed JSON that is not a message (ignored): {line[:200]!r}")
        else:
            return invalid
    return None


def _oversized(line: Oversized) -> InvalidMessage | None:
    """A line too long to read: dropped, but a response's request still gets its one answer (an error),
    where the line's ends say its id."""
    _log(f"backend printed a line longer than {LINE_LIMIT} bytes; dropped: {line.head[:200]!r}")
    said = jsonrpc.id_at_edges(line.head, line.tail)
    if said is None or said[0] == "method":
        return None
    invalid = InvalidMessage(jsonrpc.INTERNAL_ERROR, f"its answer was longer than {LINE_LIMIT} bytes")
    invalid.answerable, invalid.response_to = False, said[1]
    return invalid


def _log(text: str) -> None:
    sys.stderr.write(f"mcpmux-shim: {text}\n")
    sys.stderr.flush()
