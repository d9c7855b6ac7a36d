"""The one definition of what crosses ZeroMQ between doors, the core, shims and the monitor.

Each message is a msgpack array: a short tag, then the fields in order (arrays rather than maps: small
and quick to decode). A message that carries JSON-RPC is the envelope's routing header and its body, the
JSON text as opaque bytes (mcpmux/envelope.py), which the core passes on without decoding it. One frame
per message: each extra frame costs a receive and a "more?" question, each a system call or two.

Messages are NamedTuples, not dataclasses: the door (one per client session) imports this module, and
`dataclasses` alone brings `inspect`, `ast` and `dis` into every door's memory.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, cast

import msgpack
import zmq

from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject

EraName = Literal["handshake", "2026-07-28"]  # mcpmux.stateless.Era's values: a shim names its backend's era


class WireError(ValueError):
    """A frame that is not a message of this protocol."""


# --- door <-> core -----------------------------------------------------------------------------------


class DoorHello(NamedTuple):
    """A door's first frame; its ZeroMQ routing id is the session id."""

    pid: int
    initialize_params: JsonObject | None = None  # set when a door reconnects to a restarted core
    priority: str | None = None  # the session's level: high, normal or low (mcpmux-router --priority)
    cwd: str | None = None  # the client's working directory (the door's)
    acks: bool = False  # it says what its client took (Taken): the core keeps its bytes in flight bounded
    env: dict[str, str] | None = None  # the values of server.passEnv's variables in the client's environment
    transport: str | None = None  # "http" for a session of the HTTP endpoint (None: stdio, a door of its own)
    remote: str | None = None  # its client's address, as the endpoint saw it
    tenant: str | None = None  # whose it is: the name of the token it came with (fair sharing is per tenant)


class Taken(NamedTuple):
    """From a door: its client has read this many bytes of the core's ToClient frames, so that many more
    may be on their way (the bytes in flight to one door are bounded, not only the messages)."""

    size: int


class Welcome(NamedTuple):
    safe_tools: list[str]
    incarnation: str = ""  # which run of the core: a door says "the core restarted" only when it changed


class Closing(NamedTuple):
    """The stack is stopping: every request of the session has had its answer; the door ends the session."""

    reason: str


class SafeTools(NamedTuple):
    """The tools whose annotations make them safe to run again: a door retries these if its core dies."""

    names: list[str]


class ClientMessage(NamedTuple):
    """A JSON-RPC message from the client, already checked to be a JSON object."""

    envelope: Envelope


class ToClient(NamedTuple):
    envelope: Envelope


class DoorBye(NamedTuple):
    """The client closed its session."""


# --- shim <-> core -----------------------------------------------------------------------------------


class ShimHello(NamedTuple):
    """Sent when the shim starts and whenever the core asks (a restarted core knows nobody)."""

    pid: int
    backend_pid: int
    initialize_result: JsonObject | None = None  # set once the backend is initialized
    context: JsonObject | None = None  # the client context the core gave it (InitializeBackend, BindContext)
    era: EraName = "handshake"  # the era its backend connection was opened in (mcpmux/stateless.py)
    fallback: str | None = None  # why the backend refused the stateless era it was asked to open in


class Heartbeat(NamedTuple):
    """A door or a shim is alive (a stuck process stops beating)."""


class Resync(NamedTuple):
    """From the core to a shim it does not know: say hello again."""



class InitializeBackend(NamedTuple):
    params: JsonObject
    cwd: str | None = None  # where to start the server, if the shim waits to know (server.cwdFromClient)
    context: JsonObject | None = None  # kept by the shim for a restarted core
    # 2026-07-28: open with server/discover, falling back to initialize (instance_shim/opening.py)
    era: EraName = "handshake"
    env: dict[str, str] | None = None  # the client's values of server.passEnv, if the shim waits to know


class BindContext(NamedTuple):
    """The instance now serves one client context only (its roots): kept by the shim for a restarted core."""

    context: JsonObject


class BackendReady(NamedTuple):
    initialize_result: JsonObject  # in the stateless era, the discover result
    backend_pid: int = 0  # a server started only once the core said where (server.cwdFromClient)
    era: EraName = "handshake"
    fallback: str | None = None  # why the backend refused the stateless era it was asked to open in


class BackendFailed(NamedTuple):
    """The backend exited or could not be initialized; the shim exits next."""

    reason: str
    stderr_tail: str = ""
    refusal: JsonObject | None = None  # the backend answered the initialize with this error (its params')


class ShimStopping(NamedTuple):
    """supervisord stops this shim (SIGTERM: `supervisorctl stop` or `restart`, the stack stopping): a planned
    stop, which health does not count as a failure."""

    reason: str


class Retire(NamedTuple):
    """From the core to an external instance's shim: exit, to be started afresh by what runs it (the core
    cannot restart it itself: router/core/external.py)."""

    reason: str


class ToBackend(NamedTuple):
    envelope: Envelope


class FromBackend(NamedTuple):
    envelope: Envelope


# --- host agent <-> core (over the CURVE link; Heartbeat and Resync as for shims) --------------------


class HostHello(NamedTuple):
    """A host agent's first frame, and again when the core asks: the shim slots its supervisord runs."""

    pid: int
    slots: list[str]  # its supervisord's shim programs (group:name); their shims dial in as HOST/slot
    cpus: int
    memory: int  # bytes of memory the host has
    server: str  # the command its shims run, for status


class StartSlot(NamedTuple):
    """From the core: start the shim in this slot (its supervisord's group:name)."""

    slot: str


class StopSlot(NamedTuple):
    slot: str


class Probe(NamedTuple):
    """From the core to a host's agent, which sends it straight back: the link's round trip."""

    sent: float  # the core's clock


# --- monitor <-> core --------------------------------------------------------------------------------


class ControlRequest(NamedTuple):
    query: str
    args: JsonObject


class ControlReply(NamedTuple):
    data: JsonObject
    error: str | None = None


Message = (
    DoorHello | Welcome | Closing | SafeTools | ClientMessage | ToClient | DoorBye | Taken
    | ShimHello | Heartbeat | Resync | InitializeBackend | BindContext | BackendReady | BackendFailed | ShimStopping
    | Retire
    | ToBackend | FromBackend
    | HostHello | StartSlot | StopSlot | Probe
    | ControlRequest | ControlReply
)

TAGS: dict[type[Any], str] = {
    DoorHello: "dh", Welcome: "wl", Closing: "cl", SafeTools: "st", ClientMessage: "cm", ToClient: "tc", DoorBye: "db",
    Taken: "tk",
    ShimHello: "sh", Heartbeat: "hb", Resync: "rs", InitializeBackend: "ib", BindContext: "bc", BackendReady: "br",
    BackendFailed: "bf", ShimStopping: "ss", ToBackend: "tb", FromBackend: "fb",
    HostHello: "hh", StartSlot: "ts", StopSlot: "ps", Retire: "rt", Probe: "pb",
    ControlRequest: "cq", ControlReply: "cr",
}
_BY_TAG: dict[str, type[Any]] = {tag: cls for cls, tag in TAGS.items()}


EnvelopeMessage = type[ToBackend] | type[FromBackend] | type[ClientMessage] | type[ToClient]
_CARRIERS = frozenset(TAGS[carrier] for carrier in (ClientMessage, ToClient, ToBackend, FromBackend))


# One packer for the process (msgpack.packb builds one per call): every process packs on one thread.
_PACKER = msgpack.Packer(use_bin_type=True)
_unpackb = msgpack.unpackb


def encode(message: Message) -> list[bytes]:
    """The frames of a message, to send with `send_multipart`."""
    if isinstance(message, ClientMessage | ToClient | ToBackend | FromBackend):
        return encode_envelope(type(message), message.envelope)
    return [_PACKER.pack((TAGS[type(message)], *message))]


def encode_envelope(message_type: EnvelopeMessage, envelope: Envelope) -> list[bytes]:
    """The hot path: the header's fields, then the body as msgpack bytes (copied, never parsed).

    WireError if a field cannot be packed: the edges check what they let in (jsonrpc.check), so this is
    the last line, not the first."""
    try:  # the header's fields in Envelope.header()'s order, without building a Header first
        return [_PACKER.pack((TAGS[message_type], int(envelope.kind), envelope.id, envelope.method, envelope.tool,
                              envelope.priority, envelope.flags, envelope.error_code, envelope.token, envelope.pin,
                              envelope.body))]
    except (OverflowError, TypeError, ValueError) as exc:
        _PACKER.reset()  # a failed pack may leave half a message in the packer's buffer
        raise WireError(f"cannot carry {envelope!r}: {exc}") from None


def decode(frames: list[bytes]) -> Message:
    try:
        if len(frames) != 1:
            raise ValueError(f"{len(frames)} frames, not one")
        unpacked = _unpackb(frames[0], raw=False, strict_map_key=False)
        if type(unpacked) is not list or not unpacked:
            raise ValueError("not a tagged array")
        tag = unpacked[0]
        if tag in _CARRIERS:  # the hot path: indexed, not unpacked into new lists
            body = unpacked[-1]
            if not isinstance(body, bytes):  # a lone tag's body would be the tag, a str
                raise ValueError("a JSON-RPC message without its body")
            return _BY_TAG[tag](Envelope.from_wire(unpacked[1:-1], body))  # type: ignore[no-any-return]
        message: Message = _BY_TAG[tag](*unpacked[1:])
        _check_fields(message)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        size = sum(len(frame) for frame in frames)
        raise WireError(f"undecodable message ({len(frames)} frames, {size} bytes): {exc}") from None
    return message


def _check_fields(message: Message) -> None:
    """TypeError unless each field holds what its message declares: a frame is untrusted, and a wrong type
    (a pid that is None, params that are a number) would fail deep inside the process that reads it."""
    message_type: type[Any] = type(message)
    for name, value, hint in zip(message._fields, message, _hints(message_type), strict=True):
        if not _of_type(value, hint):
            raise TypeError(f"{type(message).__name__}.{name} is not {hint}: {value!r:.80}")


_HINTS: dict[type[Any], tuple[Any, ...]] = {}  # each message type's field types, once it is first decoded


def _hints(message_type: type[Any]) -> tuple[Any, ...]:
    hints = _HINTS.get(message_type)
    if hints is None:
        hints = _HINTS[message_type] = tuple(typing.get_type_hints(message_type).values())
    return hints


def _of_type(value: Any, hint: Any) -> bool:
    """Whether a value is of a field's type, as msgpack decodes them: `int`, `str`, `X | None`, `list[str]`,
    `JsonObject` (an object with string keys; its values are the other side's business)."""
    if isinstance(hint, types.UnionType):
        return any(_of_type(value, member) for member in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_of_type(item, typing.get_args(hint)[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(type(key) is str for key in value)
    return value is None if hint is type(None) else type(value) is hint


# --- sockets -----------------------------------------------------------------------------------------
# pyzmq's send_multipart and recv_multipart build a flag enum per frame, which costs more than the send
# itself on the hot path; these do the same with plain ints.

_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
# The backend's send, which the sugar's Socket.send (routing_id, group: draft sockets only) only wraps: a
# third of the cost of a small frame. Copied: a frame below zmq.COPY_THRESHOLD is copied even when sent
# with copy=False, after a memoryview is made to learn its size.
_send = zmq.backend.Socket.send


def send(socket: zmq.Socket[bytes], frames: list[bytes], *, block: bool = False) -> None:
    """Send one message of several frames; zmq.Again (not blocking) or another ZMQError if it cannot go.

    A message is queued whole or not at all, so only the first frame can fail for want of room."""
    more, last = (_MORE, 0) if block else (_MORE_NOBLOCK, _NOBLOCK)
    for frame in frames[:-1]:
        _send(socket, frame, more)
    _send(socket, frames[-1], last)


def receive_authenticated(socket: zmq.Socket[bytes]) -> tuple[str, list[bytes]]:
    """The frames of the next message and who sent it, as its CURVE authenticator named it (User-Id)."""
    frame = socket.recv(_NOBLOCK, copy=False)
    user = str(frame.get("User-Id") or "")
    frames = [frame.bytes]
    while frame.more:
        frame = socket.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return user, frames


def receive(socket: zmq.Socket[bytes]) -> list[bytes]:
    """The frames of the next message, without blocking (zmq.Again if there is none).

    Each frame is received as a zmq.Frame, which says whether more follow: asking the socket (RCVMORE)
    costs more than the receive itself."""
    frame = socket.recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = socket.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def waiting(socket: zmq.Socket[bytes]) -> Iterator[list[bytes]]:
    """The frames of each message waiting on a socket that the poll found readable.

    Calls one at a time are the common case: after the first message the socket is asked whether another
    waits, which is cheaper than the receive that fails with zmq.Again (an exception raised per wake-up).
    Only a burst is read until zmq.Again."""
    try:
        yield receive(socket)
        if not cast(int, socket.get(_EVENTS)) & _POLLIN:
            return
        while True:
            yield receive(socket)
    except zmq.Again:
        return
