"""The shim's main loop: relay between the router's core (ZeroMQ DEALER) and one backend (stdio).

It opens the backend connection with the parameters the core sends (a client context's real ones), in the
era the core asks for (instance_shim/opening.py), reports the result, then relays frames both ways and beats a
heartbeat. In the 2026-07-28 era it wraps each `requestState` its backend issues with its slot
(mcpmux/request_state.py), so the client's retry comes back here. When the backend dies the shim says so and
exits, and supervisord starts a fresh one in the same slot. Under `server.cwdFromClient` it starts the
backend only once the core says in which client's directory. It keeps the client context the core gave its
instance, so that a restarted core knows whom the instance may serve.

It is started once per instance, so it stays small: one synchronous poll loop, no asyncio (which would
bring in ssl and a third of the shim's memory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import zmq

from mcpmux import jsonrpc, request_state, wire
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.link import Link
from mcpmux.shim.backend import Backend
from mcpmux.shim.opening import Opened, Opening
from mcpmux.stateless import Era

HEARTBEAT_INTERVAL = 1.0
RETIRED = 75  # the exit status of a shim the core retired: what runs it starts a fresh one


class Shim:
    def __init__(self, stack_dir: Path, slot: str, backend: Backend, start_failure: OSError | None = None) -> None:
        """`backend` is started already (startup.py), unless it waits for the core to say where and with
        which variables (cwdFromClient, passEnv) or it could not start (`start_failure`)."""
        self._slot = slot
        self._backend = backend
        self._start_failure = start_failure
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.SNDHWM, 100_000)
        link = Link.read(stack_dir / "link.json")
        if link is None:
            self._socket.setsockopt(zmq.ROUTING_ID, slot.encode())
            self._socket.connect(f"ipc://{stack_dir / 'shims.sock'}")
        else:  # on a joined host: to the core over CURVE, as HOST/slot
            self._socket.setsockopt(zmq.ROUTING_ID, link.routing_id(slot))
            link.dial(self._socket)
        self._opening = Opening(self._backend.send)
        self._opened: Opened | None = None
        self._failure: str | None = None
        self._refusal: JsonObject | None = None  # the backend's error to the client context's initialize
        self._client_context: JsonObject | None = None
        self._next_beat = 0.0
        self._poller = zmq.Poller()
        self._pipes: dict[str, int] = {}  # the backend's, once it runs
        self._running = True

    def run(self) -> int:
        if self._start_failure is not None:
            return self._cannot_start(self._start_failure)
        self._hello()
        self._poller.register(self._socket, zmq.POLLIN)
        if self._backend.started:
            self._watch_backend()
        writing = False
        while self._running:
            if "stdin" in self._pipes and writing != self._backend.wants_write:
                writing = not writing
                self._poller.register(self._pipes["stdin"], zmq.POLLOUT if writing else 0)
            events = dict(self._poller.poll(self._until_heartbeat()))
            stdout, stderr, stdin = (self._pipes.get(name, -1) for name in ("stdout", "stderr", "stdin"))
            if events.get(stderr) and not self._backend.read_stderr():
                self._poller.unregister(stderr)
            if events.get(stdout):
                self._running = self._relay_backend()
            if events.get(self._socket):
                self._relay_core()
            if events.get(stdin):
                self._backend.flush()
            self._beat_if_due()
        return self._exit()

    def _watch_backend(self) -> None:
        self._pipes = {name: self._backend.fileno(name) for name in ("stdout", "stderr", "stdin")}
        self._poller.register(self._pipes["stdout"], zmq.POLLIN)
        self._poller.register(self._pipes["stderr"], zmq.POLLIN)

    def _until_heartbeat(self) -> int:
        return max(0, int((self._next_beat - time.monotonic()) * 1000))

    def _beat_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._opening.expire()
            self._send(wire.Heartbeat())
            self._next_beat = now + HEARTBEAT_INTERVAL

    # --- core -> backend -----------------------------------------------------------------------------

    def _relay_core(self) -> None:
        try:
            self._relay_core_messages()
        finally:
            self._backend.flush()  # every line of the batch in one write, as far as the pipe takes them

    def _relay_core_messages(self) -> None:
        for frames in wire.waiting(self._socket):
            try:
                message = wire.decode(frames)
            except wire.WireError as exc:  # from a newer core: not ours to understand
                _log(f"ignored a message from the core: {exc}")
                continue
            if isinstance(message, wire.ToBackend):
                self._backend.queue_line(message.envelope.line())
            elif isinstance(message, wire.InitializeBackend):
                self._initialize(message)
            elif isinstance(message, wire.BindContext):
                self._client_context = message.context
            elif isinstance(message, wire.Resync):
                self._hello()
            elif isinstance(message, wire.Retire):
                self._retire(message.reason)

    def _initialize(self, message: wire.InitializeBackend) -> None:
        if self._opening.busy or self._opened is not None or not self._running:
            return
        if not self._backend.started:
            try:
                self._backend.start(message.cwd, message.env)
            except OSError as exc:
                self._failure = (f"cannot start the server {self._backend.command!r} in {message.cwd}: "
                                 f"{exc.strerror or exc}")
                self._running = False
                return
            self._watch_backend()
        self._client_context = message.context
        self._opening.start(message.params, Era(message.era))

    # --- backend -> core -----------------------------------------------------------------------------

    def _relay_backend(self) -> bool:
        messages = self._backend.read_messages()
        if messages is None:
            return False
        for line, parsed in messages:
            frames = self._frames(line, parsed)
            if frames is not None:
                wire.send(self._socket, frames, block=True)
        return True

    def _frames(self, line: bytes, parsed: JsonObject | jsonrpc.InvalidMessage) -> list[bytes] | None:
        """What one message of the server becomes for the core: its frames, or None if it goes no further
        (malformed, or the answer to the shim's own opening)."""
        payload = self._malformed(line, parsed) if isinstance(parsed, jsonrpc.InvalidMessage) else parsed
        if payload is None:
            return None
        if self._opening.owns(payload):
            self._initialized(payload)
            return None
        text: bytes | None = line if payload is parsed else None
        if self._opened is not None and self._opened.era is Era.STATELESS and "result" in payload:
            wrapped = request_state.wrap_result(payload, self._slot, os.getpid())
            if wrapped is not payload:  # its line no longer says what is sent
                text, payload = None, wrapped
        try:
            return wire.encode_envelope(wire.FromBackend, Envelope.from_message(payload, line=text))
        except wire.WireError as exc:  # jsonrpc.check lets in only what the wire carries: never, but safe
            _log(f"backend sent a message mcpmux cannot carry ({exc}); dropped: {line[:200]!r}")
            return None

    def _malformed(self, line: bytes, invalid: jsonrpc.InvalidMessage) -> JsonObject | None:
        """A message of the wrong shape from the server goes no further. A response whose id is usable
        becomes an error for the request it answers (whose client must get exactly one response); a request
        gets its error back, as a client would answer it; anything else is dropped. Each is logged."""
        _log(f"backend sent a malformed message ({invalid}): {line[:200]!r}")
        if invalid.response_to is not None:
            return jsonrpc.error(invalid.response_to, jsonrpc.INTERNAL_ERROR,
                                 f"the MCP server answered with a malformed response: {invalid}")
        if invalid.answerable and invalid.request_id is not None:
            self._backend.send(jsonrpc.error(invalid.request_id, invalid.code, str(invalid)))
        return None

    def _initialized(self, response: JsonObject) -> None:
        outcome = self._opening.answer(response)
        if outcome is None:
            return  # still opening (falling back to the handshake), or a late answer
        if not isinstance(outcome, Opened):
            self._failure, self._refusal = outcome.reason, outcome.error
            self._backend.send_eof()
            return
        self._opened = outcome
        self._send(wire.BackendReady(outcome.result, self._backend.pid, outcome.era.value, outcome.fallback))

    # --- lifecycle -----------------------------------------------------------------------------------

    def _hello(self) -> None:
        opened = self._opened
        if opened is None:
            self._send(wire.ShimHello(os.getpid(), self._backend.pid, None, self._client_context))
        else:
            self._send(wire.ShimHello(os.getpid(), self._backend.pid, opened.result, self._client_context,
                                      opened.era.value, opened.fallback))

    def stopped_by_signal(self, signum: int, frame: object) -> None:
        """supervisord stops this shim (SIGTERM): the core hears that the stop was planned, then the signal
        does what it would have done. Never blocks: the core may be stopping too."""
        with contextlib.suppress(zmq.ZMQError):
            reason = f"stopped by supervisord ({signal.strsignal(signum)})"
            wire.send(self._socket, wire.encode(wire.ShimStopping(reason)))
            self._socket.close(linger=200)
            self._context.term()  # what flushes it: closing a socket only hands its queue to the I/O thread
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _retire(self, reason: str) -> None:
        """An external instance's restart: the core says it is over, and what runs the shim starts another
        (router/joining.py). The backend dies with the shim (its death signal)."""
        _log(f"retired by the core: {reason}")
        with contextlib.suppress(zmq.ZMQError):
            wire.send(self._socket, wire.encode(wire.ShimStopping(f"retired: {reason}")))
            self._socket.close(linger=200)
            self._context.term()
        os._exit(RETIRED)

    def _send(self, message: wire.Message) -> None:
        wire.send(self._socket, wire.encode(message), block=True)

    def _cannot_start(self, exc: OSError) -> int:
        """Tell the core why (the client waiting for initialize deserves the reason), then exit."""
        reason = f"cannot start the server {self._backend.command!r}: {exc.strerror or exc}"
        _log(reason)
        self._hello()
        self._send(wire.BackendFailed(reason))
        self._socket.close(linger=1000)
        return 2

    def _exit(self) -> int:
        if not self._backend.started:  # it could not start where the core said
            reason = self._failure or "the server was never started"
            _log(reason)
            self._send(wire.BackendFailed(reason))
            self._socket.close(linger=1000)
            return 2
        code = self._backend.wait(timeout=2)
        self._backend.drain_stderr()
        reason = self._failure or f"backend exited with code {code}"
        if self._opening.busy:
            reason += " during initialize"
        _log(reason)
        self._send(wire.BackendFailed(reason, "\n".join(self._backend.stderr_tail), self._refusal))
        self._socket.close(linger=1000)
        self._context.term()
        return 2 if self._failure else 1


def _log(text: str) -> None:
    sys.stderr.write(f"mcpmux-shim: {text}\n")
    sys.stderr.flush()
