"""The one definition of what crosses ZeroMQ between doors, the core, shims and the monitor.

Each message is a msgpack array: a short tag, then the dataclass fields in order. Arrays rather than maps
keep the hot path (a JSON-RPC payload wrapped in one frame) small and quick to decode.
JSON-RPC payloads travel as dicts, untouched: ids keep their type, unknown fields survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

JsonObject = dict[str, Any]


class WireError(ValueError):
    """A frame that is not a message of this protocol."""


@dataclass(slots=True)
class Message:
    tag: ClassVar[str] = ""


# --- door <-> core -----------------------------------------------------------------------------------


@dataclass(slots=True)
class DoorHello(Message):
    """A door's first frame; its ZeroMQ routing id is the session id."""

    tag: ClassVar[str] = "dh"
    pid: int
    initialize_params: JsonObject | None = None  # set when a door reconnects to a restarted core


@dataclass(slots=True)
class Welcome(Message):
    tag: ClassVar[str] = "wl"
    core_pid: int
    safe_tools: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SafeTools(Message):
    """The tools whose annotations make them safe to run again: a door retries these if its core dies."""

    tag: ClassVar[str] = "st"
    names: list[str]


@dataclass(slots=True)
class ClientMessage(Message):
    """A JSON-RPC message from the client, already checked to be a JSON object."""

    tag: ClassVar[str] = "cm"
    payload: JsonObject


@dataclass(slots=True)
class ToClient(Message):
    tag: ClassVar[str] = "tc"
    payload: JsonObject


@dataclass(slots=True)
class DoorBye(Message):
    tag: ClassVar[str] = "db"


# --- shim <-> core -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ShimHello(Message):
    """Sent when the shim starts and whenever the core asks (a restarted core knows nobody)."""

    tag: ClassVar[str] = "sh"
    pid: int
    backend_pid: int
    initialize_result: JsonObject | None = None  # set once the backend is initialized


@dataclass(slots=True)
class Heartbeat(Message):
    tag: ClassVar[str] = "hb"
    in_flight: int
    backend_alive: bool


@dataclass(slots=True)
class Resync(Message):
    """From the core to a shim it does not know: say hello again."""

    tag: ClassVar[str] = "rs"


@dataclass(slots=True)
class InitializeBackend(Message):
    tag: ClassVar[str] = "ib"
    params: JsonObject


@dataclass(slots=True)
class BackendReady(Message):
    tag: ClassVar[str] = "br"
    initialize_result: JsonObject


@dataclass(slots=True)
class BackendFailed(Message):
    """The backend exited or could not be initialized; the shim exits next."""

    tag: ClassVar[str] = "bf"
    reason: str
    stderr_tail: str = ""


@dataclass(slots=True)
class ToBackend(Message):
    tag: ClassVar[str] = "tb"
    payload: JsonObject


@dataclass(slots=True)
class FromBackend(Message):
    tag: ClassVar[str] = "fb"
    payload: JsonObject


# --- monitor <-> core --------------------------------------------------------------------------------


@dataclass(slots=True)
class ControlRequest(Message):
    tag: ClassVar[str] = "cq"
    query: str
    args: JsonObject = field(default_factory=dict)


@dataclass(slots=True)
class ControlReply(Message):
    tag: ClassVar[str] = "cr"
    data: JsonObject
    error: str | None = None


_BY_TAG: dict[str, type[Message]] = {
    cls.tag: cls
    for cls in (
        DoorHello, Welcome, SafeTools, ClientMessage, ToClient, DoorBye,
        ShimHello, Heartbeat, Resync, InitializeBackend, BackendReady, BackendFailed, ToBackend, FromBackend,
        ControlRequest, ControlReply,
    )
}


def encode(message: Message) -> bytes:
    # Not dataclasses.astuple: it deep-copies every payload on the way.
    values = [getattr(message, name) for name in _FIELDS[type(message)]]
    return msgpack.packb((message.tag, *values), use_bin_type=True)


PayloadMessage = type[ToBackend] | type[FromBackend] | type[ClientMessage] | type[ToClient]


def encode_payload(message_type: PayloadMessage, payload: JsonObject) -> bytes:
    """The hot path: skip dataclass construction for the frames that carry JSON-RPC."""
    return msgpack.packb((message_type.tag, payload), use_bin_type=True)


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _BY_TAG.values()}


def decode(frame: bytes) -> Message:
    try:
        tag, *fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        return _BY_TAG[tag](*fields)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable frame ({len(frame)} bytes): {exc}") from None
