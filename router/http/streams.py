"""A response stream of the HTTP endpoint: the server-sent events of one POST, or of a session's GET stream.

Events are numbered (`<stream>-<n>`) and kept, within a bound, after they are written: a client whose
connection broke reconnects with `Last-Event-ID` and gets what followed (the 2025-11-25 spec's resumability),
on a new connection. The stream outlives its connections: what arrives while none is attached waits here.
"""

from __future__ import annotations

import asyncio
import collections

from mcpmux.jsonrpc import RequestId

KEEP_BYTES = 4 * 1024 * 1024  # events kept for a client that reconnects, at most, per stream


class Stream:
    def __init__(self, number: int, request_id: RequestId | None = None, *, keep_bytes: int = KEEP_BYTES) -> None:
        self.number = number
        self.request_id = request_id  # the request it answers; None for a session's GET stream
        self.finished = False  # its last event (the response) is in
        self.connections = 0  # connections writing it now
        # (number, event, its JSON-RPC line): the line counts against the core's bytes in flight to this
        # session until a connection has written it (router/core/door_flow.py)
        self._events: collections.deque[tuple[int, bytes, bytes]] = collections.deque()
        self._kept = 0
        self._keep_bytes = keep_bytes
        self._last = 0
        self.written = 0  # the number of the last event a connection has written
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, line: bytes) -> int:
        """A JSON-RPC message for the client; its event's number."""
        self._last += 1
        event = b"id: %d-%d\nevent: message\ndata: %s\n\n" % (self.number, self._last, line.rstrip(b"\n"))
        self._events.append((self._last, event, line))
        self._kept += len(event)
        while self._kept > self._keep_bytes and len(self._events) > 1 and self._events[0][0] <= self.written:
            self._kept -= len(self._events.popleft()[1])  # only what a connection has had is let go
        self._wake()
        return self._last

    def finish(self) -> None:
        self.finished = True
        self._wake()

    def after(self, number: int) -> list[tuple[int, bytes, bytes]]:
        """The events after `number` that are still kept."""
        return [entry for entry in self._events if entry[0] > number]

    def wrote(self, number: int, size: int) -> int:
        """A connection wrote event `number`: the bytes the client newly took (0 for an event written before)."""
        if number <= self.written:
            return 0
        self.written = number
        return size

    @property
    def last(self) -> int:
        return self._last

    async def changed(self, timeout: float) -> None:
        """Until an event is added or the stream finishes, or `timeout` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def nudge(self) -> None:
        """Wake whoever waits on the stream (its connection closed)."""
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def event_id(text: str) -> tuple[int, int] | None:
    """`3-17` -> (3, 17): a stream's number and an event's; None for anything else."""
    stream, _, seq = text.partition("-")
    if not (stream.isdigit() and seq.isdigit()) or len(text) > 40:
        return None
    return int(stream), int(seq)
