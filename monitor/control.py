"""Ask a running stack's core a question over its control socket."""

from __future__ import annotations

from typing import Any

import zmq

from mcpmux import wire
from mcpmux.stack import StackPaths


class StackNotRunning(RuntimeError):
    pass


def query(paths: StackPaths, name: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    if not (paths.root / "control.sock").exists():
        raise StackNotRunning(f"stack {paths.root.name} is not running (no control socket in {paths.root})")
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(paths.control_endpoint)
    try:
        socket.send(wire.encode(wire.ControlRequest(name, args or {})))
        if not socket.poll(int(timeout * 1000)):
            raise StackNotRunning(f"stack {paths.root.name} did not answer within {timeout:.0f} s")
        reply = wire.decode(socket.recv())
    finally:
        socket.close()
    if not isinstance(reply, wire.ControlReply):
        raise StackNotRunning("the core answered with something that is not a control reply")
    if reply.error:
        raise RuntimeError(reply.error)
    return reply.data
