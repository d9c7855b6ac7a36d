"""What the core sends each door, in order, with the bytes on their way to one door bounded.

A client may stop reading (busy with a large result). Its door then stops reading the core, and what the
core sends would pile up in ZeroMQ's queues, which count messages, not bytes: twenty results of 20 MB
are 400 MB in the door's socket. So the core keeps count: a door that says what its client has read
(`Taken`) never has more than `budget` bytes of results on their way to it; beyond that, and whenever its
socket is full, the core keeps the rest here, in order, and holds the session (no new request of it
starts) until the door catches up. A door that lets more than `backlog_limit` bytes wait is given up.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from enum import Enum

import zmq

from mcpmux import wire

log = logging.getLogger("mcpmux.core")


class Sent(Enum):
    SENT = "sent"
    HELD = "held"  # kept for later: the door's session must start nothing new until it is released
    GONE = "gone"  # the door is unreachable, or too far behind: its session ends


@dataclass
class _Door:
    acks: bool = False  # it sends Taken: its bytes in flight are counted
    in_flight: int = 0  # bytes of results sent and not yet taken by its client
    backlog: collections.deque[tuple[list[bytes], int]] = field(default_factory=collections.deque)
    backlog_bytes: int = 0


class DoorFlow:
    def __init__(self, socket: zmq.Socket[bytes], budget: int, backlog_limit: int) -> None:
        self._socket = socket
        self._budget = budget
        self._backlog_limit = backlog_limit
        self._doors: dict[bytes, _Door] = collections.defaultdict(_Door)

    def opened(self, identity: bytes, *, acks: bool) -> None:
        self._doors[identity].acks = acks

    def forget(self, identity: bytes) -> None:
        self._doors.pop(identity, None)

    def held(self) -> list[bytes]:
        """The doors with messages waiting here."""
        return [identity for identity, door in self._doors.items() if door.backlog]

    def send(self, identity: bytes, frames: list[bytes], *, counted: bool = False) -> Sent:
        """Send a message to a door, or keep it for later. `counted`: a result, whose bytes count against
        the door's budget (the door's small control messages do not)."""
        door = self._doors[identity]
        size = len(frames[0]) if counted and door.acks else 0
        if door.backlog:
            return self._keep(identity, door, frames, size)
        if size and door.in_flight and door.in_flight + size > self._budget:
            return self._keep(identity, door, frames, size)  # one message alone always goes
        outcome = self._send(identity, frames)
        if outcome is Sent.SENT:
            door.in_flight += size
        elif outcome is Sent.HELD:
            return self._keep(identity, door, frames, size)
        return outcome

    def taken(self, identity: bytes, size: int) -> None:
        door = self._doors.get(identity)
        if door is not None:
            door.in_flight = max(0, door.in_flight - size)

    def release(self, identity: bytes) -> Sent:
        """Send what waits for a door, as far as its budget and socket allow: SENT once nothing waits."""
        door = self._doors.get(identity)
        if door is None:
            return Sent.SENT
        while door.backlog:
            frames, size = door.backlog[0]
            if size and door.in_flight and door.in_flight + size > self._budget:
                return Sent.HELD
            outcome = self._send(identity, frames)
            if outcome is not Sent.SENT:
                return outcome
            door.backlog.popleft()
            door.backlog_bytes -= sum(len(frame) for frame in frames)
            door.in_flight += size
        return Sent.SENT

    def _keep(self, identity: bytes, door: _Door, frames: list[bytes], size: int) -> Sent:
        door.backlog.append((frames, size))
        door.backlog_bytes += sum(len(frame) for frame in frames)
        if door.backlog_bytes > self._backlog_limit:
            log.warning("door %r: %d bytes wait for a client that does not read", identity, door.backlog_bytes)
            return Sent.GONE
        return Sent.HELD

    def _send(self, identity: bytes, frames: list[bytes]) -> Sent:
        try:
            wire.send(self._socket, [identity, *frames])
        except zmq.Again:
            return Sent.HELD
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the door is gone (ROUTER_MANDATORY)
            log.info("door %r unreachable: %s", identity, exc)
            return Sent.GONE
        return Sent.SENT
