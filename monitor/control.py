"""Ask a running stack's core a question over its control socket."""

from __future__ import annotations

import time
from typing import Any

import zmq

from mcpmux import wire
from mcpmux.monitor.selection import START_HINT
from mcpmux.stack import StackPaths, accepting
from mcpmux.status import StackStatus, StatusError

CORE_POLL = 0.05


class StackNotRunning(RuntimeError):
    """No core answers for this stack: it is stopped, never started, or its core is restarting."""


class ControlError(RuntimeError):
    """The core answered, with an error."""


def core_listening(paths: StackPaths) -> bool:
    return paths.core_listening()


def wait_for_core(paths: StackPaths, patience: float) -> bool:
    """Whether the core listens, waiting for it while supervisord runs (the stack is starting, or its core
    restarting); False at once when supervisord does not run either."""
    deadline = time.monotonic() + patience
    while not core_listening(paths):
        if not accepting(paths.supervisor_sock) or time.monotonic() > deadline:
            return False
        time.sleep(CORE_POLL)  # a socket file gives no event to wait on
    return True


def query(
    paths: StackPaths, name: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    if not wait_for_core(paths, timeout):
        raise StackNotRunning(f"stack {paths.root.name} is not running (no core listening in {paths.root}); "
                              f"{START_HINT}")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(paths.control_endpoint)
    try:
        socket.send_multipart(wire.encode(wire.ControlRequest(name, args or {})))
        if not socket.poll(int(timeout * 1000)):
            raise StackNotRunning(f"stack {paths.root.name} did not answer within {timeout:.0f} s")
        reply = wire.decode(socket.recv_multipart())
    finally:
        socket.close()
    if not isinstance(reply, wire.ControlReply):
        raise StackNotRunning("the core answered with something that is not a control reply")
    if reply.error:
        raise ControlError(reply.error)
    return reply.data


def status(paths: StackPaths, timeout: float = 5.0) -> StackStatus:
    """The core's `status`, typed; a reply that does not follow the contract (a core of another mcpmux
    version, say) is a ControlError saying which key."""
    return parse_status(query(paths, "status", timeout=timeout))


def parse_status(data: Any) -> StackStatus:
    try:
        return StackStatus.from_json(data)
    except StatusError as exc:
        raise ControlError(f"the core's status is not one this monitor reads: {exc}") from None
