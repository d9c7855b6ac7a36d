"""The one definition of what crosses ZeroMQ between doors, the core, shims and the monitor.

Each message is a msgpack array: a short tag, then the fields in order. Arrays rather than maps keep the
hot path (a JSON-RPC payload wrapped in one frame) small and quick to decode. JSON-RPC payloads travel as
dicts, untouched: ids keep their type, unknown fields survive.

Messages are NamedTuples, not dataclasses: the door (one per client session) imports this module, and
`dataclasses` alone brings `inspect`, `ast` and `dis` into every door's memory.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from mcpmux.jsonrpc import JsonObject


class WireError(ValueError):
    """A frame that is not a message of this protocol."""


# --- door <-> core -----------------------------------------------------------------------------------


class DoorHello(NamedTuple):
    """A door's first frame; its ZeroMQ routing id is the session id."""

    pid: int
    initialize_params: JsonObject | None = None  # set when a door reconnects to a restarted core
    priority: str | None = None  # the session's level: high, normal or low (mcpmux-router --priority)
    cwd: str | None = None  # the client's working directory (the door's)


class Welcome(NamedTuple):
    safe_tools: list[str]


class SafeTools(NamedTuple):
    """The tools whose annotations make them safe to run again: a door retries these if its core dies."""

    names: list[str]


class ClientMessage(NamedTuple):
    """A JSON-RPC message from the client, already checked to be a JSON object."""

    payload: JsonObject


class ToClient(NamedTuple):
    payload: JsonObject


class DoorBye(NamedTuple):
    """The client closed its session."""


# --- shim <-> core -----------------------------------------------------------------------------------


class ShimHello(NamedTuple):
    """Sent when the shim starts and whenever the core asks (a restarted core knows nobody)."""

    pid: int
    backend_pid: int
    initialize_result: JsonObject | None = None  # set once the backend is initialized
    context: JsonObject | None = None  # the client context the core gave it (InitializeBackend, BindContext)


class Heartbeat(NamedTuple):
    """A door or a shim is alive (a stuck process stops beating)."""


class Resync(NamedTuple):
    """From the core to a shim it does not know: say hello again."""



class InitializeBackend(NamedTuple):
    params: JsonObject
    cwd: str | None = None  # where to start the server, if the shim waits to know (server.cwdFromClient)
    context: JsonObject | None = None  # kept by the shim for a restarted core


class BindContext(NamedTuple):
    """The instance now serves one client context only (its roots): kept by the shim for a restarted core."""

    context: JsonObject


class BackendReady(NamedTuple):
    initialize_result: JsonObject
    backend_pid: int = 0  # a server started only once the core said where (server.cwdFromClient)


class BackendFailed(NamedTuple):
    """The backend exited or could not be initialized; the shim exits next."""

    reason: str
    stderr_tail: str = ""


class ToBackend(NamedTuple):
    payload: JsonObject


class FromBackend(NamedTuple):
    payload: JsonObject


# --- monitor <-> core --------------------------------------------------------------------------------


class ControlRequest(NamedTuple):
    query: str
    args: JsonObject


class ControlReply(NamedTuple):
    data: JsonObject
    error: str | None = None


Message = (
    DoorHello | Welcome | SafeTools | ClientMessage | ToClient | DoorBye
    | ShimHello | Heartbeat | Resync | InitializeBackend | BindContext | BackendReady | BackendFailed | ToBackend
    | FromBackend
    | ControlRequest | ControlReply
)

TAGS: dict[type[Any], str] = {
    DoorHello: "dh", Welcome: "wl", SafeTools: "st", ClientMessage: "cm", ToClient: "tc", DoorBye: "db",
    ShimHello: "sh", Heartbeat: "hb", Resync: "rs", InitializeBackend: "ib", BindContext: "bc", BackendReady: "br",
    BackendFailed: "bf", ToBackend: "tb", FromBackend: "fb", ControlRequest: "cq", ControlReply: "cr",
}
_BY_TAG: dict[str, type[Any]] = {tag: cls for cls, tag in TAGS.items()}

PayloadMessage = type[ToBackend] | type[FromBackend] | type[ClientMessage] | type[ToClient]


def encode(message: Message) -> bytes:
    return msgpack.packb((TAGS[type(message)], *message), use_bin_type=True)


def encode_payload(message_type: PayloadMessage, payload: JsonObject) -> bytes:
    """The hot path: no tuple built for the frames that carry JSON-RPC."""
    return msgpack.packb((TAGS[message_type], payload), use_bin_type=True)


def decode(frame: bytes) -> Message:
    try:
        tag, *fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        message: Message = _BY_TAG[tag](*fields)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable frame ({len(frame)} bytes): {exc}") from None
    return message
