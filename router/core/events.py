"""Everything that happens to the switchboard, as typed events: `Switchboard.handle(event)` is the one entry
the core feeds, so a run can be recorded as a log of events and replayed into a fresh switchboard, which
then takes the same actions (its ids, its clock and its first message id come from the log).

Events are not frozen (a frozen dataclass takes three times as long to make, and two are made per request)
but nothing changes one once made.

A log is a file of msgpack records, one per event: `[at, name, *fields]`, `at` on the switchboard's clock.
The core writes one when `MCPMUX_RECORD` names a file (router/core/loop.py); router/core/replay.py replays it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.queue import Priority
from mcpmux.stateless import Era

log = logging.getLogger("mcpmux.core")


@dataclass(slots=True)
class Began:
    """The first record of a log: where the switchboard's own ids start."""

    first_id: int


@dataclass(slots=True)
class SessionOpened:
    identity: bytes
    initialize_params: JsonObject | None
    priority: Priority | None
    cwd: str | None
    env: dict[str, str] | None
    transport: str = "stdio"  # how its client reaches the stack: stdio (a door of its own) or http
    remote: str | None = None  # an HTTP client's address
    tenant: str | None = None  # the token it came with: its requests share a queue turn with the token's


@dataclass(slots=True)
class SessionClosed:
    identity: bytes


@dataclass(slots=True)
class SessionHeld:
    identity: bytes
    held: bool


@dataclass(slots=True)
class FromClient:
    identity: bytes
    message: Envelope


@dataclass(slots=True)
class FromInstance:
    slot: str
    message: Envelope


@dataclass(slots=True)
class InstanceConnected:
    slot: str
    pid: int
    backend_pid: int


@dataclass(slots=True)
class InstanceInitializing:
    slot: str
    context: ClientContext


@dataclass(slots=True)
class ContextAdopted:
    slot: str
    context: ClientContext


@dataclass(slots=True)
class InstanceReady:
    slot: str
    result: JsonObject
    probe: bool
    era: Era
    fallback: str | None
    backend_pid: int


@dataclass(slots=True)
class InstanceLost:
    slot: str
    reason: str


@dataclass(slots=True)
class StartupFailed:
    reason: str
    stderr_tail: str


@dataclass(slots=True)
class InitializeRefused:
    """The backend answered an instance's initialize with an error: its client context's params are refused."""

    slot: str
    error: JsonObject


@dataclass(slots=True)
class DeadlinesDue:
    pass


@dataclass(slots=True)
class HealthChecked:
    interval: float
    timeout: float


@dataclass(slots=True)
class SilenceForgiven:
    pass


@dataclass(slots=True)
class ClientsAsked:
    """The server asks clients (remembered from an earlier run): instances serve one session at a time."""


@dataclass(slots=True)
class Stopped:
    reason: str


Event = (SessionOpened | SessionClosed | SessionHeld | FromClient | FromInstance | InstanceConnected
         | InstanceInitializing | ContextAdopted | InstanceReady | InstanceLost | StartupFailed | InitializeRefused
         | DeadlinesDue | HealthChecked | SilenceForgiven | ClientsAsked | Stopped)
Recorder = Callable[[float, "Event | Began"], None]

_TYPES: dict[str, type[Any]] = {kind.__name__: kind for kind in (
    Began, SessionOpened, SessionClosed, SessionHeld, FromClient, FromInstance, InstanceConnected,
    InstanceInitializing, ContextAdopted, InstanceReady, InstanceLost, StartupFailed, InitializeRefused, DeadlinesDue,
    HealthChecked, SilenceForgiven, ClientsAsked, Stopped)}


# --- the log ---------------------------------------------------------------------------------------------


def record(at: float, event: Event | Began) -> bytes:
    """One record of a log."""
    return msgpack.packb([at, type(event).__name__, *map(_plain, _values(event))], use_bin_type=True)


def write_to(file: BinaryIO) -> Recorder:
    """A recorder that appends to `file` (flushed per record: a log is read after a crash too). A write that
    fails (a full disk) ends the log, never the core."""
    failed = False

    def write(at: float, event: Event | Began) -> None:
        nonlocal failed
        if failed:
            return
        try:
            file.write(record(at, event))
            file.flush()
        except OSError as exc:
            failed = True
            log.warning("stopped recording events: %s", exc)
    return write


def read(path: Path) -> Iterator[tuple[float, Event | Began]]:
    with path.open("rb") as file:
        for at, name, *values in msgpack.Unpacker(file, raw=False, strict_map_key=False):
            kind = _TYPES[name]
            yield at, kind(*(_typed(str(field.type), value) for field, value in zip(fields(kind), values, strict=True)))


def _values(event: Event | Began) -> tuple[Any, ...]:
    return tuple(getattr(event, field.name) for field in fields(event))


def _plain(value: Any) -> Any:
    if isinstance(value, Envelope):
        return [list(value.header()), value.body]
    if isinstance(value, ClientContext):
        return value.to_json()
    if isinstance(value, Era | Priority):
        return value.value
    return value


def _typed(hint: str, value: Any) -> Any:
    if value is None:
        return None
    if hint == "Envelope":
        header, body = value
        return Envelope.from_wire(header, body)
    if hint == "ClientContext":
        return ClientContext.from_json(value)
    if hint == "Era":
        return Era(value)
    if hint.startswith("Priority"):
        return Priority(value)
    return value
