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

import os
import sys
import time

import zmq

from mcpmux import stack, wire
from mcpmux.lines import LineSplitter
from mcpmux.router.door_session import DoorSession

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
DOOR_OPTIONS = ("--stack-dir", "--max-message-bytes", "--connect-timeout", "--priority", "--pass-env")
# Seconds the door waits, after its client's EOF, for the answers to what the client asked before, and then
# as long again for the client to read them.
DRAIN_TIMEOUT = 30.0


class CoreUnreachable(RuntimeError):
    pass


class Door:
    def __init__(self, stack_dir: str, *, max_message_bytes: int, connect_timeout: float,
                 priority: str | None = None, pass_env: tuple[str, ...] = ()) -> None:
        self._stack_dir = stack_dir
        self._limit = max_message_bytes
        self._connect_timeout = connect_timeout
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, os.urandom(16).hex().encode())
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.SNDHWM, 100_000)
        self._socket.setsockopt(zmq.RCVHWM, RCVHWM)
        # The client's own values of the variables the stack passes: its context, as its directory is.
        env = {name: os.environ[name] for name in pass_env if name in os.environ} if pass_env else None
        self._session = DoorSession(pid=os.getpid(), limit=max_message_bytes, priority=priority,
                                    cwd=_client_directory(), env=env)
        self._next_beat = 0.0
        self._outbox = bytearray()
        self._outbox_limit = max(OUTBOX_LIMIT, OUTBOX_MESSAGES * max_message_bytes)
        self._client_gone = False

    def run(self) -> None:
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_CONNECTED)
        self._socket.connect(stack.doors_endpoint(self._stack_dir))
        self._session.hello()
        self._pump()
        self._await_welcome()
        os.set_blocking(STDOUT, False)
        try:
            self._relay()
        finally:
            os.set_blocking(STDOUT, True)  # a terminal's other users expect it as it was
        self._session.bye()
        self._pump()
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
            if self._session.closed or (eof_deadline is not None and (
                    not self._session.awaiting_answers() or time.monotonic() >= eof_deadline)):
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

    def _from_stdin(self, splitter: LineSplitter) -> bool:
        """Relay what the client wrote; false at its EOF."""
        try:
            data = os.read(STDIN, READ_SIZE)
        except BlockingIOError:  # stdin shares stdout's open file (a socket, a terminal), now non-blocking
            return True
        if data:
            for line in splitter.feed(data):
                self._session.from_client(line)
            self._pump()
            return True
        last = splitter.rest()
        if last is not None:
            self._session.from_client(last)
            self._pump()
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
                self._session.client_gone()
                return False
            del self._outbox[:written]
            self._session.written(written)
            self._pump()
        return False

    def _await_welcome(self) -> None:
        deadline = time.monotonic() + self._connect_timeout
        while not self._session.welcomed:
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
            self._session.heartbeat()
            self._pump()
            self._next_beat = now + HEARTBEAT_INTERVAL

    # --- core -> client ------------------------------------------------------------------------------

    def _from_core(self) -> None:
        for frames in wire.waiting(self._socket):
            self._session.from_core(frames)
            self._pump()
            if self._session.closed or len(self._outbox) > self._outbox_limit:
                return  # the rest waits in ZeroMQ until the client reads

    def _pump(self) -> None:
        """Carry out what the session says: frames to the core, lines to the client's outbox (written as fast
        as the client reads), notes to stderr."""
        for frames in self._session.to_core:
            wire.send(self._socket, frames, block=True)
        for line in self._session.to_client:
            self._outbox += line
        for note in self._session.notes:
            print(f"mcpmux-router: {note}", file=sys.stderr)
        self._session.to_core, self._session.to_client, self._session.notes = [], [], []


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
