"""A ZeroMQ ROUTER socket read from the asyncio loop without zmq.asyncio's per-message futures.

Each message is decoded here and handed on with its sender's routing id; undecodable frames are logged.

The socket's file descriptor is edge-triggered: it says "something changed", not "a message is here".
So each wake-up drains every waiting message, and each send looks again, since a send can consume the
edge that announced a message (the classic way to strand a ZeroMQ reader).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import zmq

from mcpmux import wire

log = logging.getLogger("mcpmux.core")

Handler = Callable[[bytes, wire.Message], Awaitable[None]]


class Inbox:
    def __init__(self, socket: zmq.Socket[bytes], handle: Handler) -> None:
        self.socket = socket
        self._handle = handle
        self._draining = False
        self._recheck_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._fd = int(socket.getsockopt(zmq.FD))

    def start(self) -> None:
        self._wanted = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve())
        asyncio.get_running_loop().add_reader(self._fd, self.wake)
        self.wake()

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        if self._task is not None:
            self._task.cancel()

    def wake(self) -> None:
        if not self._draining:
            self._wanted.set()

    async def _serve(self) -> None:
        # One long-lived task: a wake-up costs an Event.set, not a new Task per message burst.
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self._draining = True
            await self._drain()

    def send(self, identity: bytes, frame: bytes) -> None:
        """Send now (never blocks: high-water marks are far above what is in flight); ZMQError if the peer is gone."""
        self.socket.send_multipart([identity, frame], zmq.NOBLOCK)
        if not self._draining and not self._recheck_scheduled:
            # Look once after this burst of sends rather than after each (getsockopt is not free).
            self._recheck_scheduled = True
            asyncio.get_running_loop().call_soon(self._recheck)

    def _recheck(self) -> None:
        self._recheck_scheduled = False
        if self._readable():
            self.wake()

    def _readable(self) -> bool:
        return bool(int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN)

    async def _drain(self) -> None:
        try:
            while self._readable():
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
                if len(frames) != 2:
                    log.warning("dropped a message of %d frames", len(frames))
                    continue
                try:
                    message = wire.decode(frames[1])
                except wire.WireError as exc:
                    log.warning("%r sent %s", frames[0], exc)
                    continue
                try:
                    await self._handle(frames[0], message)
                except Exception:
                    log.exception("error handling a message from %r", frames[0])
        finally:
            self._draining = False
