"""The shim's handling of its server's lines without a process or a socket, for the fuzz and regression tests
(the door's is `door_session.admit`, a plain function)."""

from __future__ import annotations

from mcpmux.jsonrpc import JsonObject
from mcpmux.shim import backend
from mcpmux.shim.opening import Opened, Opening
from mcpmux.shim.shim import Shim
from mcpmux.stateless import Era


def nested(depth: int) -> object:
    """Arrays `depth` deep."""
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


class ServerStdin:
    """What the shim writes back to its server (its answers to the server's malformed requests)."""

    def __init__(self) -> None:
        self.sent: list[JsonObject] = []

    def send(self, message: JsonObject) -> None:
        self.sent.append(message)


def shim_of(era: Era | None) -> tuple[Shim, ServerStdin]:
    """A shim opened in `era` (None: still opening), as far as its handling of the server's lines goes."""
    stdin = ServerStdin()
    shim = Shim.__new__(Shim)
    shim._slot, shim._backend, shim._failure = "shim:shim_00", stdin, None  # type: ignore[assignment]
    shim._opening = Opening(stdin.send)
    shim._opened = None if era is None else Opened({}, era)
    shim._send = lambda message: None  # type: ignore[method-assign]
    return shim, stdin


def server_line(line: bytes, era: Era | None = None) -> tuple[list[bytes] | None, list[JsonObject]]:
    """What the shim makes of one line its server printed: the frames for the core (None: dropped), and what
    it answered the server."""
    shim, stdin = shim_of(era)
    parsed = backend._parse(line)
    return (None if parsed is None else shim._frames(line, parsed)), stdin.sent

