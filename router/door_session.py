"""One client session's side of the door protocol, without I/O: what the client's lines and the core's
messages mean, and what goes where.

The door (router/door.py) owns the sockets and the client's pipes and feeds this: a line the client wrote
(`from_client`), a message from the core (`from_core`), bytes the client has read (`written`). What follows
waits in `to_core` (frames, sent in order), `to_client` (lines) and `notes` (for the door's stderr) until
the door takes it. Here: which requests are unanswered (so that each gets its one answer if the core restarts
or the stack stops), the client's handshake (to introduce the session again), the safe requests to resend,
and how much of what the core sent the client has read (`Taken`, the core's flow control).
"""

from __future__ import annotations

import collections

from mcpmux import jsonrpc, wire
from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.lines import Oversized
from mcpmux.router.core.retry import RetryPolicy

TAKEN_BATCH = 256 * 1024  # bytes the client read before the door tells the core (at once when all is read)
LISTEN = "subscriptions/listen"


class DoorSession:
    def __init__(self, *, pid: int, limit: int, priority: str | None = None, cwd: str | None = None,
                 env: dict[str, str] | None = None, transport: str | None = None, remote: str | None = None,
                 tenant: str | None = None) -> None:
        self._pid = pid
        self._origin = (transport, remote, tenant)
        self._limit = limit
        self._priority = priority
        self._cwd = cwd
        self._env = env
        self.to_core: list[list[bytes]] = []
        self.to_client: list[bytes] = []
        self.notes: list[str] = []
        self.welcomed = False
        self.closed = False  # the core said the stack stops: the session ends
        self.initialize_refused = False  # its initialize got an error, and none before it a result
        self._unanswered: dict[RequestId, Envelope] = {}
        self._initialize_params: JsonObject | None = None  # the client's handshake, once the core took it
        self._initializing: tuple[RequestId, JsonObject] | None = None  # an initialize not answered yet
        self._lost: dict[RequestId, Envelope] | None = None
        self._retry = RetryPolicy()  # the core keeps it up to date with the tools' annotations
        self._incarnation = ""  # the core's, from its last welcome
        # What the client has not read yet, message by message: its line's length, and the size of the core's
        # frame it came in (0 for what the door wrote itself). Once the client has read a line, the core hears
        # that it may send as much again (Taken): the bytes on their way to this door stay bounded.
        self._lines: collections.deque[list[int]] = collections.deque()
        self._taken = 0

    def hello(self) -> None:
        """Introduce the session to the core (again, after a core restart: with the client's handshake)."""
        self._send(wire.DoorHello(self._pid, self._initialize_params, self._priority, self._cwd, True, self._env,
                                  *self._origin))

    def bye(self) -> None:
        self._send(wire.DoorBye())

    def heartbeat(self) -> None:
        self._send(wire.Heartbeat())

    def awaiting_answers(self) -> bool:
        """Whether a request the client sent is still unanswered (a listen stream never is: it lasts as long
        as its client listens)."""
        return any(request.method != LISTEN for request in self._unanswered.values())

    # --- client -> core ------------------------------------------------------------------------------

    def from_client(self, line: bytes | Oversized) -> None:
        """Take a line the client wrote; a line refused gets its sender's error, if it can hear one."""
        if isinstance(line, Oversized):
            self._oversized(line)
            return
        try:
            message, envelope, frames = admit(line)
        except jsonrpc.InvalidMessage as invalid:
            self.refuse(invalid, line)
            return
        self.let_in(message, envelope, frames)

    def let_in(self, message: JsonObject, envelope: Envelope, frames: list[bytes]) -> None:
        """A message `admit` let in goes to the core."""
        if envelope.kind is Kind.REQUEST:
            self._unanswered[envelope.id] = envelope
            params = message.get("params")
            if envelope.method == "initialize" and isinstance(params, dict) and self._initializing is None:
                self._initializing = (envelope.id, params)  # one sent while another waits is refused
        elif envelope.method == "notifications/cancelled":
            self._unanswered.pop(jsonrpc.params_of(message).get("requestId"), None)  # type: ignore[arg-type]
        self.to_core.append(frames)

    def _oversized(self, line: Oversized) -> None:
        """A line over the limit goes no further; its sender is answered under its id where the line's ends
        say it (a client cannot match an error without one: its call would hang)."""
        said = jsonrpc.id_at_edges(line.head, line.tail)
        invalid = jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST,
                                         f"Invalid Request: message longer than {self._limit} bytes",
                                         said[1] if said and said[0] == "method" else None)
        if said is not None and said[0] != "method":
            invalid.answerable, invalid.response_to = False, said[1]
        self.refuse(invalid, line.head)

    def refuse(self, invalid: jsonrpc.InvalidMessage, line: bytes) -> None:
        """A message of the wrong shape goes no further: its sender hears why, if it can hear at all."""
        if invalid.answerable:
            self._write(jsonrpc.error(invalid.request_id, invalid.code, str(invalid)))
        elif invalid.response_to is not None:  # the server waits for this answer: it gets an error instead
            error = jsonrpc.error(invalid.response_to, jsonrpc.INVALID_REQUEST,
                                  f"the client answered with a malformed response: {invalid}")
            self.to_core.append(wire.encode_envelope(wire.ClientMessage, Envelope.from_message(error)))
        else:
            self.notes.append(f"dropped a malformed notification ({invalid}): {line[:200]!r}")

    # --- core -> client ------------------------------------------------------------------------------

    def from_core(self, frames: list[bytes]) -> None:
        try:
            message = wire.decode(frames)
        except wire.WireError as exc:  # a newer core's message this door does not know: skip it
            self.notes.append(f"ignored a message from the core: {exc}")
            return
        if isinstance(message, wire.ToClient):
            envelope = message.envelope
            if envelope.kind in (Kind.RESULT, Kind.ERROR):
                self._unanswered.pop(envelope.id, None)
                self._answered(envelope)
            self._queue(envelope.line(), len(frames[0]), envelope)
        elif isinstance(message, wire.SafeTools):
            self._retry.replace(message.names)
        elif isinstance(message, wire.Welcome):
            if message.safe_tools:
                self._retry.replace(message.safe_tools)
            self.welcomed = True
            self._answer_lost(restarted=message.incarnation != self._incarnation)
            self._incarnation = message.incarnation
        elif isinstance(message, wire.Closing):
            self._close(message.reason)
        elif isinstance(message, wire.Resync) and self._lost is None:
            # The core restarted and lost this session: introduce it again; what was sent before this point
            # is settled once the core welcomes us (later Resyncs are echoes of the same loss).
            self._lost = dict(self._unanswered)
            self.hello()

    def _answered(self, response: Envelope) -> None:
        """An initialize that succeeded makes the client's handshake the one a restarted core hears of; one
        refused (a second initialize, params the server rejects) changes nothing."""
        if self._initializing is not None and self._initializing[0] == response.id:
            if response.kind is Kind.RESULT:
                self._initialize_params = self._initializing[1]
            elif self._initialize_params is None:
                self.initialize_refused = True
            self._initializing = None

    def _answer_lost(self, *, restarted: bool) -> None:
        """Answer each request the core lost (it restarted, or took this door for gone): resend the safe
        ones, fail the others."""
        lost, self._lost = self._lost or {}, None
        what = "mcpmux's core restarted" if restarted else "mcpmux's core lost this session"
        for request in lost.values():
            if request.id not in self._unanswered:
                continue
            if self._retry.may_retry(request, attempts=0):
                self.to_core.append(wire.encode_envelope(wire.ClientMessage, request))
                continue
            del self._unanswered[request.id]
            self._write(jsonrpc.error(request.id, jsonrpc.INSTANCE_FAILED,
                                      f"{what} while this request ran; it was not retried because it may "
                                      "have had effects"))

    def _close(self, reason: str) -> None:
        """The stack stops. The core answered what it had; what it never saw never started. Then the
        session ends, as a server's does when it exits: the client's next start finds a running stack."""
        for request_id in list(self._unanswered):
            self._write(jsonrpc.error(request_id, jsonrpc.OVERLOADED, f"{reason}; this request never started"))
        self._unanswered.clear()
        self.notes.append(f"{reason}; ending the session")
        self.closed = True

    # --- what the client has read ----------------------------------------------------------------------

    def written(self, size: int) -> None:
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

    def client_gone(self) -> None:
        self._lines.clear()

    def _send(self, message: wire.Message) -> None:
        self.to_core.append(wire.encode(message))

    def _write(self, message: JsonObject) -> None:
        self._queue(jsonrpc.dumps(message), 0, Envelope.from_message(message))

    def _queue(self, line: bytes, frame_size: int, envelope: Envelope) -> None:
        self._lines.append([len(line), frame_size])
        self._deliver(line, envelope)

    def _deliver(self, line: bytes, envelope: Envelope) -> None:
        """A line for the client. A door writes every line to its one stdout; a session of the HTTP endpoint
        (router/http/session.py) puts each on the response stream its envelope says it belongs on."""
        self.to_client.append(line)


def admit(line: bytes) -> tuple[JsonObject, Envelope, list[bytes]]:
    """A client's line as the door lets it in: the message, its envelope and the frames for the core; or
    InvalidMessage, the error its sender gets, for a line that goes no further. Pure, for the fuzz tests."""
    message = jsonrpc.parse(line)
    envelope = Envelope.from_message(message, from_client=True, line=line)
    try:
        return message, envelope, wire.encode_envelope(wire.ClientMessage, envelope)
    except wire.WireError as exc:  # jsonrpc.check lets in only what the wire carries: never, but safe
        raise jsonrpc.InvalidMessage(jsonrpc.INVALID_REQUEST, f"Invalid Request: {exc}", message.get("id")) from None
