"""The door: the process a client starts (`mcpmux-router`), relaying its stdio session to the stack's core.

It checks each line is a JSON-RPC message (so bad input gets its error here, at once) and remembers which
requests are unanswered, so that if the core restarts it can answer each of them and carry the session on.

One runs per client session for as long as the session lasts, so it is lean: `mcpmux-router` validates the
configuration and starts the stack, then replaces itself (exec) with this module, a synchronous poll loop
that imports neither pydantic nor asyncio.

A client may stop reading for a while (busy with a large result): the door never blocks on it. Its stdout is
non-blocking and what the client has not taken yet waits in an outbox, so the door goes on beating and the
core does not take a slow client for a dead door. When the outbox is full the door stops reading the core
(heartbeats still go out) until the client catches up; ZeroMQ's queues and then the core hold the rest.
"""

from __future__ import annotations

import collections
import os
import sys
import time

import zmq

from mcpmux import jsonrpc, stack, wire
from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.lines import LineSplitter, Oversized
from mcpmux.router.core.retry import RetryPolicy

HEARTBEAT_INTERVAL = 2.0
STDIN = 0
STDOUT = 1
READ_SIZE = 1 << 16
# What the client has not read yet, at most (or 4 messages of --max-message-bytes, if that is more): enough
# that a few large results never stop the door reading the core, bounded so that a client that stops
# reading cannot make the door grow without limit. Over it, the door stops reading the core until the
# outbox is down to half; the core's messages then wait in ZeroMQ (RCVHWM) and in the core.
OUTBOX_LIMIT = 8 * 1024 * 1024
OUTBOX_MESSAGES = 4
RCVHWM = 1000  # messages from the core queued in this door's socket while it does not read them
TAKEN_BATCH = 256 * 1024  # bytes the client read before the door tells the core (at once when all is read)
DOOR_OPTIONS = ("--stack-dir", "--max-message-bytes", "--connect-timeout", "--priority", "--pass-env")
# Seconds the door waits, after its client's EOF, for the answers to what the client asked before, and then
# as long again for the client to read them.
DRAIN_TIMEOUT = 30.0
LISTEN = "subscriptions/listen"


class CoreUnreachable(RuntimeError):
    pass


class Door:
    def __init__(self, stack_dir: str, *, max_message_bytes: int, connect_timeout: float,
                 priority: str | None = None, pass_env: tuple[str, ...] = ()) -> None:
        self._stack_dir = stack_dir
        self._priority = priority
        self._limit = max_message_bytes
        self._connect_timeout = connect_timeout
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, os.urandom(16).hex().encode())
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.SNDHWM, 100_000)
        self._socket.setsockopt(zmq.RCVHWM, RCVHWM)
        self._unanswered: dict[RequestId, Envelope] = {}
        self._initialize_params: JsonObject | None = None
        self._lost: dict[RequestId, Envelope] | None = None
        self._retry = RetryPolicy()  # the core keeps it up to date with the tools' annotations
        self._welcomed = False
        self._next_beat = 0.0
        self._outbox = bytearray()
        self._outbox_limit = max(OUTBOX_LIMIT, OUTBOX_MESSAGES * max_message_bytes)
        # What the outbox holds, message by message: its line's length, and the size of the core's frame it
        # came in (0 for what the door wrote itself). Once the client has read a line, the core hears that
        # it may send as much again (Taken): the bytes on their way to this door stay bounded.
        self._lines: collections.deque[list[int]] = collections.deque()
        self._taken = 0
        self._client_gone = False
        self._stack_closed = False  # the core said the stack stops: the session ends
        self._incarnation = ""  # the core's, from its last welcome
        self._cwd = _client_directory()
        # The client's own values of the variables the stack passes: its context, as its directory is.
        self._env = {name: os.environ[name] for name in pass_env if name in os.environ} if pass_env else None

    def run(self) -> None:
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_CONNECTED)
        self._socket.connect(stack.doors_endpoint(self._stack_dir))
        self._send(wire.DoorHello(os.getpid(), None, self._priority, self._cwd, True, self._env))
        self._await_welcome()
        os.set_blocking(STDOUT, False)
        try:
            self._relay()
        finally:
            os.set_blocking(STDOUT, True)  # a terminal's other users expect it as it was
        self._send(wire.DoorBye())
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=1000)
        self._context.term()

    def _relay(self) -> None:
        """Relay until the client's EOF, then until what it asked before is answered and handed over (as a
        server run directly answers a request that came just before EOF), or until the client is gone."""
        splitter = LineSplitter(self._limit)
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(STDIN, zmq.POLLIN)
        reading_core = writing = False
        eof_deadline: float | None = None
        while not self._client_gone:
            if self._stack_closed or (eof_deadline is not None and (
                    not self._awaiting_answers() or time.monotonic() >= eof_deadline)):
                self._drain()
                return
            if reading_core and len(self._outbox) > self._outbox_limit:
                reading_core = False  # backpressure: the core's messages wait in ZeroMQ meanwhile
                poller.unregister(self._socket)
            elif not reading_core and len(self._outbox) < self._outbox_limit // 2:
                reading_core = True
                poller.register(self._socket, zmq.POLLIN)
            if writing != bool(self._outbox):
                writing = not writing
                poller.register(STDOUT, zmq.POLLOUT if writing else 0)
            events = dict(poller.poll(max(0, int((self._next_beat - time.monotonic()) * 1000))))
            if events.get(self._socket):
                self._from_core()
            if events.get(self._monitor):
                self._connection_events()
            if events.get(STDIN) and not self._from_stdin(splitter):
                poller.unregister(STDIN)
                eof_deadline = time.monotonic() + DRAIN_TIMEOUT
            self._flush()
            self._beat_if_due()

    def _awaiting_answers(self) -> bool:
        """Whether a request the client sent is still unanswered (a listen stream never is: it lasts as long
        as its client listens)."""
        return any(request.method != LISTEN for request in self._unanswered.values())

    def _from_stdin(self, splitter: LineSplitter) -> bool:
        """Relay what the client wrote; false at its EOF."""
        try:
            data = os.read(STDIN, READ_SIZE)
        except BlockingIOError:  # stdin shares stdout's open file (a socket, a terminal), now non-blocking
            return True
        if data:
            for line in splitter.feed(data):
                self._from_client(line)
            return True
        last = splitter.rest()
        if last is not None:
            self._from_client(last)
        return False

    def _drain(self) -> None:
        """At the client's EOF: hand it what it has not read yet, within DRAIN_TIMEOUT, beating meanwhile."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        poller = zmq.Poller()
        poller.register(STDOUT, zmq.POLLOUT)
        while self._flush():
            now = time.monotonic()
            if now >= deadline:
                print(f"mcpmux-router: the client did not read its last {len(self._outbox)} bytes",
                      file=sys.stderr)
                return
            poller.poll(max(0, int((min(deadline, self._next_beat) - now) * 1000)))
            self._beat_if_due()

    def _flush(self) -> bool:
        """Write what the client's pipe takes now; true while something is left for later."""
        while self._outbox and not self._client_gone:
            try:
                written = os.write(STDOUT, self._outbox)
            except BlockingIOError:
                return True
            except BrokenPipeError:  # the client is gone: the session ends as it does at EOF
                self._client_gone = True
                self._outbox.clear()
                self._lines.clear()
                return False
            del self._outbox[:written]
            self._written(written)
        return False

    def _await_welcome(self) -> None:
        deadline = time.monotonic() + self._connect_timeout
        while not self._welcomed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000)):
                raise CoreUnreachable(
                    f"the stack's core did not answer within {self._connect_timeout:.0f} s; "
                    f"see {os.path.join(self._stack_dir, stack.LOGS)}")
            self._from_core()

    def _connection_events(self) -> None:
        """A reconnection means the core restarted: beat at once, so it tells us to resync now."""
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # zmq.utils.monitor would decode this, but it imports asyncio; the event is the first 2 bytes.
            if int.from_bytes(frames[0][:2], "little") == zmq.EVENT_CONNECTED:
                self._next_beat = 0.0

    def _beat_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._send(wire.Heartbeat())
            self._next_beat = now + HEARTBEAT_INTERVAL

    # --- client -> core ------------------------------------------------------------------------------

    def _from_client(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            self._oversized(line)
            return
        try:
            message, envelope, frames = admit(line)
        except jsonrpc.InvalidMessage as invalid:
            self._refuse(invalid, line)
            return
        if envelope.kind is Kind.REQUEST:
            self._unanswered[envelope.id] = envelope
            if envelope.method == "initialize" and isinstance(message.get("params"), dict):
                self._initialize_params = message["params"]
        elif envelope.method == "notifications/cancelled":
            self._unanswered.pop(jsonrpc.params_of(message).get("requestId"), None)  # type: ignore[arg-type]
        wire.send(self._socket, frames, block=True)

    def _oversized(self, line: Oversized) -> None:
        """A line over --max-message-bytes goes no further; its sender is answered under its id where the
        line's ends say it (a client cannot match an error without one: its call would hang)."""
        said = jsonrpc.id_at_edges(line.head, line.tail)
        invalid = jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST,
                                         f"Invalid Request: message longer than {self._limit} bytes",
                                         said[1] if said and said[0] == "method" else None)
        if said is not None and said[0] != "method":
            invalid.answerable, invalid.response_to = False, said[1]
        self._refuse(invalid, line.head)

    def _refuse(self, invalid: jsonrpc.InvalidMessage, line: bytes) -> None:
        """A message of the wrong shape goes no further: its sender hears why, if it can hear at all."""
        if invalid.answerable:
            self._write(jsonrpc.error(invalid.request_id, invalid.code, str(invalid)))
        elif invalid.response_to is not None:  # the server waits for this answer: it gets an error instead
            error = jsonrpc.error(invalid.response_to, jsonrpc.INVALID_REQUEST,
                                  f"the client answered with a malformed response: {invalid}")
            wire.send(self._socket, wire.encode_envelope(wire.ClientMessage, Envelope.from_message(error)),
                      block=True)
        else:
            print(f"mcpmux-router: dropped a malformed notification ({invalid}): {line[:200]!r}", file=sys.stderr)

    # --- core -> client ------------------------------------------------------------------------------

    def _from_core(self) -> None:
        for frames in wire.waiting(self._socket):
            try:
                message = wire.decode(frames)
            except wire.WireError as exc:  # a newer core's message this door does not know: skip it
                print(f"mcpmux-router: ignored a message from the core: {exc}", file=sys.stderr)
                continue
            if isinstance(message, wire.ToClient):
                envelope = message.envelope
                if envelope.kind in (Kind.RESULT, Kind.ERROR):
                    self._unanswered.pop(envelope.id, None)
                self._queue(envelope.line(), len(frames[0]))
            elif isinstance(message, wire.SafeTools):
                self._retry.replace(message.names)
            elif isinstance(message, wire.Welcome):
                if message.safe_tools:
                    self._retry.replace(message.safe_tools)
                self._welcomed = True
                self._answer_lost(restarted=message.incarnation != self._incarnation)
                self._incarnation = message.incarnation
            elif isinstance(message, wire.Closing):
                self._close(message.reason)
                return
            elif isinstance(message, wire.Resync) and self._lost is None:
                # The core restarted and lost this session: introduce it again; what was sent before this
                # point is settled once the core welcomes us (later Resyncs are echoes of the same loss).
                self._lost = dict(self._unanswered)
                self._send(wire.DoorHello(os.getpid(), self._initialize_params, self._priority, self._cwd, True,
                                          self._env))
            if len(self._outbox) > self._outbox_limit:
                return  # the rest waits in ZeroMQ until the client reads

    def _answer_lost(self, *, restarted: bool) -> None:
        """Answer each request the core lost (it restarted, or took this door for gone): resend the safe
        ones, fail the others."""
        lost, self._lost = self._lost or {}, None
        what = "mcpmux's core restarted" if restarted else "mcpmux's core lost this session"
        for request in lost.values():
            if request.id not in self._unanswered:
                continue
            if self._retry.may_retry(request, attempts=0):
                wire.send(self._socket, wire.encode_envelope(wire.ClientMessage, request), block=True)
                continue
            del self._unanswered[request.id]
            self._write(jsonrpc.error(request.id, jsonrpc.INSTANCE_FAILED,
                                      f"{what} while this request ran; it was not retried because it may "
                                      "have had effects"))

    def _close(self, reason: str) -> None:
        """The stack stops. The core answered what it had; what it never saw never started. Then the
        session ends, as a server's does when it exits: the client's next start finds a running stack."""
        for request_id in list(self._unanswered):
            self._write(jsonrpc.error(request_id, jsonrpc.OVERLOADED,
                                      f"{reason}; this request never started"))
        self._unanswered.clear()
        print(f"mcpmux-router: {reason}; ending the session", file=sys.stderr)
        self._stack_closed = True

    def _send(self, message: wire.Message) -> None:
        wire.send(self._socket, wire.encode(message), block=True)

    def _write(self, message: JsonObject) -> None:
        """Queue a message for the client; the poll loop writes it as fast as the client reads."""
        self._queue(jsonrpc.dumps(message), 0)

    def _queue(self, line: bytes, frame_size: int) -> None:
        self._outbox += line
        self._lines.append([len(line), frame_size])

    def _written(self, size: int) -> None:
        """The client took `size` more bytes: the core hears of the frames whose lines it has read whole,
        in batches (a message per line would double the traffic of small calls)."""
        while size and self._lines:
            line = self._lines[0]
            step = min(size, line[0])
            line[0] -= step
            size -= step
            if not line[0]:
                self._taken += line[1]
                self._lines.popleft()
        if self._taken >= TAKEN_BATCH or (self._taken and not self._lines):
            self._send(wire.Taken(self._taken))
            self._taken = 0


def admit(line: bytes) -> tuple[JsonObject, Envelope, list[bytes]]:
    """A client's line as the door lets it in: the message, its envelope and the frames for the core; or
    InvalidMessage, the error its sender gets, for a line that goes no further. Pure, for the fuzz tests."""
    message = jsonrpc.parse(line)
    envelope = Envelope.from_message(message, from_client=True, line=line)
    try:
        return message, envelope, wire.encode_envelope(wire.ClientMessage, envelope)
    except wire.WireError as exc:  # jsonrpc.check lets in only what the wire carries: never, but safe
        raise jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST, f"Invalid Request: {exc}", message.get("id")) from None


def _client_directory() -> str | None:
    """Where the client started its server: the door runs there (the router execs it in place)."""
    try:
        return os.getcwd()
    except OSError:  # removed since
        return None


def main() -> None:
    try:
        arguments = _arguments(sys.argv[1:])
        max_message_bytes = int(arguments.get("--max-message-bytes", 16 * 1024 * 1024))
        connect_timeout = float(arguments.get("--connect-timeout", 30.0))
    except ValueError as exc:
        sys.exit(f"mcpmux-door: {exc} (the door is started by mcpmux-router, which writes its arguments)")
    pass_env = tuple(name for name in arguments.get("--pass-env", "").split(",") if name)
    door = Door(arguments["--stack-dir"], max_message_bytes=max_message_bytes,
                connect_timeout=connect_timeout, priority=arguments.get("--priority"), pass_env=pass_env)
    try:
        door.run()
    except CoreUnreachable as exc:
        sys.exit(f"mcpmux-router: {exc}")
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(130)


def _arguments(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs, as mcpmux-router writes them. Not argparse: it would weigh 0.4 MB in every
    session's process, for four options that no person types."""
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    if len(argv) % 2 or not set(pairs) <= set(DOOR_OPTIONS) or "--stack-dir" not in pairs:
        raise ValueError(f"expected --stack-dir DIR and any of {', '.join(DOOR_OPTIONS[1:])}, got {argv}")
    if pairs.get("--priority", "normal") not in ("high", "normal", "low"):
        raise ValueError(f"--priority must be high, normal or low, not {pairs['--priority']!r}")
    return pairs


if __name__ == "__main__":
    main()
