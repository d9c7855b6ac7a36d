"""A bare door -> core -> shim chain over ZeroMQ ipc: the floor of mcpmux's architecture in Python.

The overhead scenario puts the lab server behind it to learn what three processes and two ZeroMQ hops
cost on their own, before mcpmux does any work: each process is a synchronous poll loop that forwards
opaque frames and nothing else (no JSON parsing, no msgpack, no bookkeeping, no heartbeats). One file,
three roles, selected by the first argument:

    python bench/servers/bare_chain.py door SERVER [ARGS...]   # what a client starts
    python bench/servers/bare_chain.py core DIR
    python bench/servers/bare_chain.py shim DIR SERVER [ARGS...]

The door makes a private directory (mode 0700) for the ipc sockets, starts the core and the shim as its
children, relays its stdin's lines to the core (a DEALER) and the frames it gets back to its stdout. The
core binds a ROUTER for doors and one for the shim, and forwards each door's frame to the shim with the
door's routing id as a frame of its own, and each of the shim's back to the door it names. The shim (a
DEALER) starts the server and relays frames to its stdin and its stdout's lines back, to the last door
heard from.

Nothing outlives the session: the core's and the shim's stdin is a pipe from the door, their lifeline.
When the client closes the door's stdin, the door closes those pipes; the core exits, the shim closes the
server's stdin, waits for it and exits, and the door removes the directory. A door that dies, however it
dies, closes the pipes all the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

import zmq

STDIN, STDOUT = 0, 1
READ_SIZE = 1 << 16
STOP_WAIT = 1.5  # the SDK client kills the session's process group 2 s after closing the door's stdin
HELLO = b""  # the shim's first frame, so the core knows its routing id (a ROUTER drops frames to unknown peers)


def endpoints(directory: Path) -> tuple[str, str]:
    """The core's two ipc endpoints: doors connect to the first, the shim to the second."""
    return f"ipc://{directory / 'doors.sock'}", f"ipc://{directory / 'shims.sock'}"


def split_lines(buffer: bytearray, data: bytes) -> list[bytes]:
    """The complete lines (newline kept, so frames are written back as they came) now in `buffer`."""
    buffer += data
    end = buffer.rfind(b"\n") + 1
    if not end:
        return []
    lines = bytes(buffer[:end]).splitlines(keepends=True)
    del buffer[:end]
    return lines


def write_all(fd: int, data: bytes) -> None:
    """A blocking write of everything (the floor does not buffer: one call at a time fits in a pipe)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def ended(fd: int) -> bool:
    """Whether a readable lifeline (stdin of the core and the shim) is closed; the door never writes to it."""
    return not os.read(fd, READ_SIZE)


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context whose I/O threads block SIGTERM, so that it reaches the main thread and interrupts its poll.

    (A signal the kernel hands to an I/O thread would leave the main thread asleep in zmq_poll.)
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        context.socket(zmq.PAIR).close()  # starts the I/O threads, which inherit the mask
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        yield context
    finally:
        context.destroy(linger=0)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds the door's stack, so its `finally` stops the chain and removes the directory."""
    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


# --- door ----------------------------------------------------------------------------------------------


def door(server: Sequence[str]) -> None:
    """Start the core and the shim in a private directory, relay stdio through them, then remove it all."""
    stop_on_sigterm()
    directory = Path(tempfile.mkdtemp(prefix="bare-chain-"))  # mode 0700
    me = [sys.executable, os.path.abspath(__file__)]
    children = [subprocess.Popen([*me, "core", str(directory)], stdin=subprocess.PIPE),
                subprocess.Popen([*me, "shim", str(directory), *server], stdin=subprocess.PIPE)]
    try:
        with zmq_context() as context:
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoints(directory)[0])  # frames queue until the core is bound
            relay_stdio(socket)
    finally:
        stop(children)
        shutil.rmtree(directory, ignore_errors=True)


def relay_stdio(socket: zmq.Socket[bytes]) -> None:
    """Each line of stdin as a frame to the core, each frame from the core to stdout, until stdin ends."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(STDIN, zmq.POLLIN)
    pending = bytearray()
    while True:
        events = dict(poller.poll())
        if events.get(socket):
            while True:
                try:
                    write_all(STDOUT, socket.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        if events.get(STDIN):
            data = os.read(STDIN, READ_SIZE)
            if not data:
                if pending:
                    socket.send(bytes(pending), copy=False)
                return
            for line in split_lines(pending, data):
                socket.send(line, copy=False)


def stop(children: Sequence[subprocess.Popen[bytes]]) -> None:
    """Close every lifeline at once, then wait for each child; SIGKILL for one that lingers."""
    for child in children:
        assert child.stdin is not None
        child.stdin.close()
    for child in children:
        try:
            child.wait(STOP_WAIT + 0.2)  # the shim may wait STOP_WAIT for its server
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# --- core ----------------------------------------------------------------------------------------------


def core(directory: Path) -> None:
    """Door frames to the one shim, prefixed with the door's routing id; the shim's frames to that door."""
    with zmq_context() as context:
        doors, shims = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
        for socket, endpoint in zip((doors, shims), endpoints(directory), strict=True):
            socket.setsockopt(zmq.LINGER, 0)
            socket.bind(endpoint)
        shim = await_shim(shims)
        if shim is not None:
            forward(doors, shims, shim)


def await_shim(shims: zmq.Socket[bytes]) -> bytes | None:
    """The shim's routing id, from its hello (door frames wait in their queue meanwhile); None if stopped."""
    poller = zmq.Poller()
    poller.register(shims, zmq.POLLIN)
    poller.register(STDIN, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if events.get(STDIN) and ended(STDIN):
            return None
        if events.get(shims):
            shim, _ = shims.recv_multipart()
            return shim


def forward(doors: zmq.Socket[bytes], shims: zmq.Socket[bytes], shim: bytes) -> None:
    """Both ways between the doors and the one shim, until the lifeline closes."""
    poller = zmq.Poller()
    poller.register(doors, zmq.POLLIN)
    poller.register(shims, zmq.POLLIN)
    poller.register(STDIN, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if events.get(doors):
            while True:
                try:
                    door_id, frame = doors.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                shims.send_multipart([shim, door_id, frame], copy=False)
        if events.get(shims):
            while True:
                try:
                    _, door_id, frame = shims.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                doors.send_multipart([door_id, frame], copy=False)
        if events.get(STDIN) and ended(STDIN):
            return


# --- shim ----------------------------------------------------------------------------------------------


def shim(directory: Path, server: Sequence[str]) -> None:
    """Run the server; frames from the core to its stdin, its stdout's lines to the core."""
    process = subprocess.Popen(list(server), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        with zmq_context() as context:
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoints(directory)[1])
            socket.send(HELLO)
            relay_server(socket, process.stdin.fileno(), process.stdout.fileno())
    finally:
        process.stdin.close()  # a stdio MCP server ends at end of input
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def relay_server(socket: zmq.Socket[bytes], server_in: int, server_out: int) -> None:
    """Until the server's stdout or the lifeline ends. Lines go to the last door heard from."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(server_out, zmq.POLLIN)
    poller.register(STDIN, zmq.POLLIN)
    pending = bytearray()
    door_id: bytes | None = None
    held: list[bytes] = []  # lines before any door spoke (none with an MCP server: it never speaks first)
    while True:
        events = dict(poller.poll())
        if events.get(socket):
            while True:
                try:
                    door_id, frame = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                write_all(server_in, frame)
            if held and door_id is not None:
                for line in held:
                    socket.send_multipart([door_id, line], copy=False)
                held.clear()
        if events.get(server_out):
            data = os.read(server_out, READ_SIZE)
            if not data:
                return
            for line in split_lines(pending, data):
                if door_id is None:
                    held.append(line)
                else:
                    socket.send_multipart([door_id, line], copy=False)
        if events.get(STDIN) and ended(STDIN):
            return


def main(argv: Sequence[str]) -> None:
    role, arguments = (argv[0], argv[1:]) if argv else ("", [])
    if role == "door" and arguments:
        door(arguments)
    elif role == "core" and len(arguments) == 1:
        core(Path(arguments[0]))
    elif role == "shim" and len(arguments) >= 2:
        shim(Path(arguments[0]), arguments[1:])
    else:
        sys.exit(f"usage: {Path(__file__).name} door SERVER... | core DIR | shim DIR SERVER...")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        main(sys.argv[1:])
